"""Hugging Face checkpoint import and export (safetensors): GPT-2, BERT, Llama,
Mistral, Qwen2, Qwen3, Marian, T5."""

from jaxlm.interop.hf import from_pretrained, save_pretrained

__all__ = ["from_pretrained", "save_pretrained"]
