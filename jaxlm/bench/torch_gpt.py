"""A plain PyTorch reference of jaxlm's GPT (GPT-2 style): KV-cache decoding and training.

Learned positions, pre-LN blocks, multi-head attention, tanh-GELU MLP, a final LayerNorm and
output logits tied to the token embedding, padded vocabulary rows masked to float32 min.
Needs torch (the `reference` extra): import this module only when it is wanted.

    model = TorchGPT(GPTConfig.from_model_config(cfg.model))
    load_jaxlm_params(model, params)  # the (unboxed) jaxlm parameter tree
    new_tokens = generate(model, prompts, max_new_tokens=64)  # greedy, with the KV cache
    trainer = TorchTrainer(model, cfg.optim, total_steps=100)  # jaxlm's AdamW and schedule
    loss = trainer.step(batch)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    padded_vocab_size: int
    max_len: int
    num_layers: int
    embed_dim: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    norm_eps: float = 1e-5

    @classmethod
    def from_model_config(cls, cfg) -> GPTConfig:
        """From a `jaxlm.config.ModelConfig`; raises ValueError for features not implemented."""
        expected = {
            "family": "gpt",
            "norm": "layernorm",
            "norm_position": "pre",
            "block_layout": "sequential",
            "position_embedding": "learned",
            "activation": "gelu",
            "scale_embeddings": False,
            "tie_embeddings": True,
            "use_bias": True,
            "attention_bias": None,
        }
        for key, value in expected.items():
            if getattr(cfg, key) != value:
                raise ValueError(f"torch reference needs model.{key}={value!r}")
        if cfg.num_kv_heads not in (None, cfg.num_heads):
            raise ValueError("torch reference has no grouped-query attention")
        return cls(
            vocab_size=cfg.vocab_size,
            padded_vocab_size=cfg.padded_vocab_size,
            max_len=cfg.max_len,
            num_layers=cfg.num_layers,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            head_dim=cfg.resolved_head_dim,
            mlp_dim=cfg.mlp_dim,
            norm_eps=cfg.norm_eps,
        )


class KVCache:
    """Keys and values of every layer, preallocated as [batch, heads, max_len, head_dim]."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, dtype=torch.float32):
        shape = (batch, cfg.num_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype) for _ in range(cfg.num_layers)]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.num_heads * cfg.head_dim)
        self.out = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.embed_dim)

    def forward(
        self, x: torch.Tensor, start: int, cache: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        """x: [batch, length, embed] at positions start, start + 1, ..."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, length, head_dim]
        end = start + length
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:, :, start:end] = k
            cache_v[:, :, start:end] = v
            k, v = cache_k[:, :, :end], cache_v[:, :, :end]
        if length == 1:  # one new token attends to every cached one
            y = F.scaled_dot_product_attention(q, k, v)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # a chunk after cached tokens: causal mask aligned to the end
            mask = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(batch, length, -1))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.wi = nn.Linear(cfg.embed_dim, cfg.mlp_dim)
        self.wo = nn.Linear(cfg.mlp_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor, start: int, cache) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), start, cache)
        return x + self.wo(F.gelu(self.wi(self.mlp_norm(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.padded_vocab_size, cfg.embed_dim)
        self.position_embed = nn.Embedding(cfg.max_len, cfg.embed_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        padding = torch.arange(cfg.padded_vocab_size) >= cfg.vocab_size
        self.register_buffer("vocab_padding", padding, persistent=False)

    def forward(
        self, tokens: torch.Tensor, start: int = 0, cache: KVCache | None = None
    ) -> torch.Tensor:
        """tokens [batch, length] at positions start, start + 1, ...; without a cache, start
        must be 0. Returns logits [batch, length, padded_vocab_size] (float32; bfloat16 under
        bf16 autocast)."""
        if cache is None and start != 0:
            raise ValueError("a forward pass from position start > 0 needs the KV cache")
        positions = torch.arange(start, start + tokens.shape[1])
        x = self.token_embed(tokens) + self.position_embed(positions)
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x = block(x, start, layer_cache)
        logits = self.final_norm(x) @ self.token_embed.weight.T
        return logits.masked_fill(self.vocab_padding, torch.finfo(logits.dtype).min)


@torch.inference_mode()
def generate(
    model: TorchGPT, prompt: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True
) -> torch.Tensor:
    """Greedy continuation of prompt [batch, P] (LongTensor): new tokens [batch, max_new_tokens].

    With the cache: one prefill pass over the prompt, then one token per step. Without: the
    whole growing sequence is run through the model at every step.
    """
    batch, prompt_len = prompt.shape
    total = prompt_len + max_new_tokens
    if total > model.cfg.max_len:
        raise ValueError(f"{total} tokens exceed max_len={model.cfg.max_len}")
    if not use_cache:
        tokens = prompt
        for _ in range(max_new_tokens):
            next_token = model(tokens)[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
        return tokens[:, prompt_len:]
    cache = KVCache(model.cfg, batch, total, dtype=model.token_embed.weight.dtype)
    next_token = model(prompt, 0, cache)[:, -1].argmax(-1, keepdim=True)
    new = [next_token]
    for position in range(prompt_len, total - 1):
        next_token = model(next_token, position, cache)[:, -1].argmax(-1, keepdim=True)
        new.append(next_token)
    return torch.cat(new, dim=1)


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


@torch.no_grad()
def load_jaxlm_params(model: TorchGPT, params: Mapping) -> None:
    """Copy an unboxed jaxlm GPT parameter tree (NumPy or JAX arrays) into `model`.

    jaxlm stacks the decoder layers (nn.scan): every leaf under decoder/layers has a leading
    [num_layers] axis. Kernels are [in, out] (attention: [embed, heads, head_dim] and
    [heads, head_dim, embed]); torch Linear weights are [out, in].
    """

    def copy(target: torch.Tensor, source: torch.Tensor) -> None:
        if target.shape != source.shape:
            raise ValueError(f"shape mismatch: {tuple(source.shape)} for {tuple(target.shape)}")
        target.copy_(source)

    def linear(target: nn.Linear, kernel, bias, n_in: int = 1) -> None:
        kernel, bias = _tensor(kernel), _tensor(bias)
        copy(target.weight, kernel.reshape(int(np.prod(kernel.shape[:n_in])), -1).T)
        copy(target.bias, bias.reshape(-1))

    decoder, layers = params["decoder"], params["decoder"]["layers"]
    attention, embed = layers["self_attention"], model.cfg.embed_dim
    copy(model.token_embed.weight, _tensor(params["token_embed"]["embedding"]))
    copy(model.position_embed.weight, _tensor(params["position_embed"]["embedding"]))
    for i, block in enumerate(model.blocks):
        for norm, name in (
            (block.attention_norm, "self_attention_norm"),
            (block.mlp_norm, "mlp_norm"),
        ):
            copy(norm.weight, _tensor(layers[name]["scale"][i]))
            copy(norm.bias, _tensor(layers[name]["bias"][i]))
        qkv = [attention[name] for name in ("query", "key", "value")]
        kernel = np.concatenate([np.reshape(p["kernel"][i], (embed, -1)) for p in qkv], axis=1)
        bias = np.concatenate([np.reshape(p["bias"][i], -1) for p in qkv])
        linear(block.attention.qkv, kernel, bias)
        linear(block.attention.out, attention["out"]["kernel"][i], attention["out"]["bias"][i], 2)
        linear(block.wi, layers["mlp"]["wi"]["kernel"][i], layers["mlp"]["wi"]["bias"][i])
        linear(block.wo, layers["mlp"]["wo"]["kernel"][i], layers["mlp"]["wo"]["bias"][i])
    copy(model.final_norm.weight, _tensor(decoder["final_norm"]["scale"]))
    copy(model.final_norm.bias, _tensor(decoder["final_norm"]["bias"]))


class TorchTrainer:
    """jaxlm's training step in PyTorch: mean next-token cross-entropy, global-norm gradient
    clipping, AdamW (decay on matrices only: Linear weights and embedding tables) following
    jaxlm's learning-rate schedule, given as one learning rate per step. With `autocast` (e.g.
    torch.bfloat16) the forward pass runs under `torch.autocast`: PyTorch's mixed precision,
    float32 weights and loss."""

    def __init__(
        self,
        model: TorchGPT,
        optim,
        learning_rates: list[float],
        autocast: torch.dtype | None = None,
    ):
        self.model, self.optim, self.learning_rates = model.train(), optim, learning_rates
        self.autocast = autocast
        params = list(model.parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ],
            lr=learning_rates[0],
            betas=(optim.b1, optim.b2),
            eps=optim.eps,
            fused=True,
        )
        self.steps = 0

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        """One update on inputs, targets [batch, length] (LongTensor); returns the loss."""
        lr = self.learning_rates[min(self.steps, len(self.learning_rates) - 1)]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
            logits = self.model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        if self.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        self.steps += 1
        return loss.item()
