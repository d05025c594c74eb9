"""Checks that config values are allowed and consistent with each other and the task."""

from __future__ import annotations

import re
from collections.abc import Callable

from jaxlm.config.schema import DTYPES, Config, FinetuneConfig, ModelConfig, SampleConfig
from jaxlm.errors import ConfigError

CHOICES = {
    "train.nan_policy": ("stop", "skip"),
    "model.family": ("gpt", "bert", "seq2seq"),
    "model.activation": ("gelu", "gelu_exact", "relu", "silu"),
    "model.mlp_type": ("plain", "gated"),
    "model.norm": ("layernorm", "rmsnorm"),
    "model.norm_position": ("pre", "post", "sandwich", "output"),
    "model.qk_norm_scope": ("head", "heads", "each_head"),
    "model.block_layout": ("sequential", "parallel", "parallel_shared_norm"),
    "model.position_embedding": ("learned", "sinusoidal", "rotary", "relative", "alibi"),
    "model.attention_backend": ("auto", "reference", "jax", "cudnn", "pallas"),
    "model.dtype": tuple(DTYPES),
    "model.param_dtype": tuple(DTYPES),
    "model.remat_policy": ("none", "full", "dots", "dots_no_batch"),
    "model.sinusoidal_layout": ("interleaved", "halves"),
    "model.rope_scaling": ("none", "linear", "llama3", "yarn", "longrope"),
    "data.source": ("text", "jsonl", "tfds", "tokens", "vader", "gettext"),
    "data.task": (
        "causal_lm",
        "completion",
        "chat",
        "masked_lm",
        "classification",
        "seq2seq",
        "span_corruption",
    ),
    "data.document_unit": ("file", "paragraph", "line"),
    "data.tokenizer_type": ("unigram", "bpe"),
    "train.best_mode": ("min", "max"),
    "optim.optimizer": ("adamw", "adafactor", "lion", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant", "rsqrt", "wsd"),
    "finetune.mode": ("full", "partial", "prompt", "prefix", "lora"),
}
BERT_HEADS = ("mlm", "nsp", "classifier")
TASK_MODELS = {  # task: (model family, bert heads it trains)
    "causal_lm": ("gpt", ()),
    "completion": ("gpt", ()),
    "chat": ("gpt", ()),
    "masked_lm": ("bert", ("mlm", "nsp")),
    "classification": ("bert", ("classifier",)),
    "seq2seq": ("seq2seq", ()),
    "span_corruption": ("seq2seq", ()),
}


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def validate(config: Config) -> None:
    """Values within their allowed sets and consistent with each other."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")
    m = config.model
    for key in ("vocab_size", "max_len", "num_layers", "embed_dim", "num_heads", "mlp_dim"):
        _check(getattr(m, key) > 0, f"model.{key}", "must be positive")
    _check(m.vocab_multiple > 0, "model.vocab_multiple", "must be positive")
    _check(m.scan_unroll >= 0, "model.scan_unroll", "must be >= 0 (0 = all layers)")
    _check(
        not (m.output_bias and m.family == "bert"),
        "model.output_bias",
        "bert's masked-LM head has a bias of its own",
    )
    _check(
        m.position_embedding != "relative" or m.family == "seq2seq",
        "model.position_embedding",
        f"relative position bias is built for the seq2seq family, not {m.family}",
    )
    _check(
        not m.norm_unit_offset or m.norm == "rmsnorm",
        "model.norm_unit_offset",
        f"offsets the scales of rmsnorm, not {m.norm}",
    )
    _check(
        m.position_embedding != "alibi" or m.family == "gpt",
        "model.position_embedding",
        f"alibi is built for the gpt family, not {m.family}",
    )
    _check(
        not m.embed_norm or m.family == "gpt",
        "model.embed_norm",
        f"is a gpt's (bert's embedding norm comes with model.norm_position=post), not {m.family}'s",
    )
    _check(
        m.norm_bias or m.norm == "layernorm",
        "model.norm_bias",
        "drops the bias of layernorm; rmsnorm has none",
    )
    _check(m.clip_qkv is None or m.clip_qkv > 0, "model.clip_qkv", "must be positive (or null)")
    _check(
        m.num_experts == 0 or (m.num_experts >= 2 and m.family == "gpt"),
        "model.num_experts",
        f"at least 2 experts, for the gpt family (0 = one MLP), not {m.num_experts} for {m.family}",
    )
    _check(
        m.num_experts == 0 or 1 <= m.experts_per_token <= m.num_experts,
        "model.experts_per_token",
        f"between 1 and model.num_experts={m.num_experts}, not {m.experts_per_token}",
    )
    _check(m.expert_capacity_factor >= 0, "model.expert_capacity_factor", "must be >= 0")
    _check(
        m.qk_norm or m.qk_norm_scope == "head",
        "model.qk_norm_scope",
        "sets where the query/key norms reach: set model.qk_norm: true",
    )
    _check(
        m.qk_norm_scope != "heads" or m.norm == "rmsnorm",
        "model.qk_norm_scope",
        "heads (one norm over all heads' features) is built for rmsnorm, not layernorm",
    )
    _check(
        m.block_layout == "sequential" or (m.family == "gpt" and m.norm_position == "pre"),
        "model.block_layout",
        f"{m.block_layout} blocks are built for the gpt family with model.norm_position=pre",
    )
    _check(
        m.rotary_dim is None
        or (
            m.position_embedding == "rotary"
            and 0 < m.rotary_dim <= m.resolved_head_dim
            and m.rotary_dim % 2 == 0
        ),
        "model.rotary_dim",
        f"an even number of features in [2, head_dim={m.resolved_head_dim}] for rotary "
        "positions (or null: all)",
    )
    _check(
        m.rope_scaling == "none" or m.position_embedding == "rotary",
        "model.rope_scaling",
        f"scales rotary positions, not {m.position_embedding} ones",
    )
    _check(m.rope_scaling_factor > 0, "model.rope_scaling_factor", "must be positive")
    for key in ("rope_short_factors", "rope_long_factors"):
        factors, frequencies = getattr(m, key), m.resolved_rotary_dim // 2
        _check(
            m.rope_scaling != "longrope" or (len(factors) == frequencies and min(factors) > 0),
            f"model.{key}",
            f"longrope needs {frequencies} positive factors (one per rotary frequency), not "
            f"{len(factors)}",
        )
    _check(
        m.sliding_window is None or (m.sliding_window > 0 and m.family == "gpt"),
        "model.sliding_window",
        "a positive number of tokens, for the gpt family",
    )
    _check(
        m.sliding_window is None or config.finetune.mode != "prompt",
        "model.sliding_window",
        "prompt tuning's soft prompt is seen by every token, beyond any window",
    )
    _check(
        m.global_attention_every == 0 or (m.global_attention_every > 0 and m.sliding_window),
        "model.global_attention_every",
        "a positive number of layers, with model.sliding_window set (0 = none)",
    )
    _check(
        m.rope_local_base is None
        or (m.global_attention_every > 0 and m.position_embedding == "rotary"),
        "model.rope_local_base",
        "the rotary base of sliding-window layers, for models with model.global_attention_every",
    )
    _check(
        m.rope_beta_fast > m.rope_beta_slow > 0,
        "model.rope_beta_fast",
        "must exceed model.rope_beta_slow, which must be positive",
    )
    keys = ("attention_scale", "attention_softcap", "logit_softcap", "rope_local_base")
    for key in (*keys, "rope_attention_factor"):
        value = getattr(m, key)
        _check(value is None or value > 0, f"model.{key}", "must be positive (or null)")
    _check(
        m.attention_softcap is None or m.attention_backend not in ("jax", "cudnn"),
        "model.attention_softcap",
        f"the {m.attention_backend} attention backend does not cap scores (auto, reference, "
        "pallas do)",
    )
    _check(
        0 < m.rope_low_freq_factor < m.rope_high_freq_factor,
        "model.rope_high_freq_factor",
        "must exceed model.rope_low_freq_factor, which must be positive",
    )
    _check(m.rope_original_max_len > 0, "model.rope_original_max_len", "must be positive")
    _check(
        m.relative_buckets >= 4 and m.relative_buckets % 2 == 0,
        "model.relative_buckets",
        "must be even and >= 4",
    )
    _check(
        m.relative_max_distance > m.relative_buckets // 4,
        "model.relative_max_distance",
        "must exceed a quarter of model.relative_buckets (the exact distances)",
    )
    _check(
        m.head_dim is not None or m.embed_dim % m.num_heads == 0,
        "model.num_heads",
        f"embed_dim {m.embed_dim} is not divisible by num_heads {m.num_heads}",
    )
    if m.num_kv_heads is not None:
        _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads", "must divide num_heads")
    for head in m.heads:
        _check(head in BERT_HEADS, "model.heads", f"{head!r} is not one of {', '.join(BERT_HEADS)}")
    _check(0 <= m.dropout_rate < 1, "model.dropout_rate", "must be in [0, 1)")
    _check(0 <= m.attention_dropout_rate < 1, "model.attention_dropout_rate", "must be in [0, 1)")
    _check(
        m.attention_dropout_rate == 0 or m.attention_backend in ("auto", "reference"),
        "model.attention_dropout_rate",
        "needs model.attention_backend=reference",
    )
    d = config.data
    _check(0 < d.seq_len <= m.max_len, "data.seq_len", f"must be in [1, model.max_len={m.max_len}]")
    _check(d.batch_size > 0, "data.batch_size", "must be positive")
    _check(0 <= d.eval_fraction < 1, "data.eval_fraction", "must be in [0, 1)")
    _check(d.eval_examples >= 0, "data.eval_examples", "must be >= 0")
    _check(
        d.target_len is None or 0 < d.target_len <= m.max_len,
        "data.target_len",
        f"must be in [1, model.max_len={m.max_len}] (or null)",
    )
    _check(0 < d.mlm_probability < 1, "data.mlm_probability", "must be in (0, 1)")
    _check(0 < d.noise_density < 1, "data.noise_density", "must be in (0, 1)")
    _check(d.mean_noise_span >= 1, "data.mean_noise_span", "must be >= 1")
    _check(d.max_examples >= 0, "data.max_examples", "must be >= 0")

    t = config.train
    _check(t.steps >= 0, "train.steps", "must be >= 0")
    _check(
        "://" not in t.workdir,
        "train.workdir",
        f"{t.workdir!r} is a URL; give a folder (mount a bucket with gcsfuse to write there)",
    )
    _check(t.log_every > 0, "train.log_every", "must be positive")
    for key in ("eval_every", "eval_batches", "checkpoint_every", "keep_best", "profile_steps"):
        _check(getattr(t, key) >= 0, f"train.{key}", "must be >= 0")
    _check(t.keep_checkpoints > 0, "train.keep_checkpoints", "must be positive")
    _check(
        not t.eval_bleu or d.task == "seq2seq",
        "train.eval_bleu",
        f"BLEU scores translations (data.task=seq2seq), not {d.task}",
    )
    _check(t.eval_bleu_beams > 0, "train.eval_bleu_beams", "must be positive (1 = greedy)")
    _check(t.microbatches > 0, "train.microbatches", "must be positive")
    _check(t.microbatch_unroll >= 0, "train.microbatch_unroll", "must be >= 0 (0 = all)")
    _check(t.profile_start >= 0, "train.profile_start", "must be >= 0")
    _check(
        d.batch_size % t.microbatches == 0,
        "train.microbatches",
        f"{t.microbatches} does not divide data.batch_size {d.batch_size}",
    )
    _check(0 <= t.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
    _check(t.z_loss >= 0, "train.z_loss", "must be >= 0")
    _check(t.router_aux_loss >= 0, "train.router_aux_loss", "must be >= 0")
    _check(t.router_z_loss >= 0, "train.router_z_loss", "must be >= 0")
    o = config.optim
    for key in ("learning_rate", "warmup_steps", "weight_decay", "grad_clip"):
        _check(getattr(o, key) >= 0, f"optim.{key}", "must be >= 0")
    _check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    _check(0 < o.cooldown_fraction <= 1, "optim.cooldown_fraction", "must be in (0, 1]")
    for key in ("b1", "b2"):
        _check(0 <= getattr(o, key) < 1, f"optim.{key}", "must be in [0, 1)")
    _check(o.eps > 0, "optim.eps", "must be positive")
    _check(0 < o.adafactor_decay_rate <= 1, "optim.adafactor_decay_rate", "must be in (0, 1]")
    _check(0 <= o.adafactor_momentum < 1, "optim.adafactor_momentum", "must be in [0, 1)")
    validate_sample(config.sample)
    dist = config.distributed
    _check(dist.num_processes >= 0, "distributed.num_processes", "must be >= 0 (0 = detect)")
    _check(dist.process_id >= -1, "distributed.process_id", "must be >= -1 (-1 = detect)")
    _check(
        dist.num_processes == 0 or dist.process_id < dist.num_processes,
        "distributed.process_id",
        f"must be below distributed.num_processes {dist.num_processes}",
    )
    _check(dist.timeout_seconds > 0, "distributed.timeout_seconds", "must be positive")
    _validate_finetune(config.finetune, m)


SAMPLE_RULES = (  # (SampleConfig field, allowed, what the error says)
    ("temperature", lambda v: v >= 0, "must be >= 0"),
    ("top_k", lambda v: v >= 0, "must be >= 0"),
    ("top_p", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("repetition_penalty", lambda v: v > 0, "must be > 0"),
    ("num_beams", lambda v: v >= 1, "must be >= 1"),
    ("max_new_tokens", lambda v: v >= 1, "must be >= 1"),
)


def validate_sample(
    sample: SampleConfig, name: Callable[[str], str] = lambda field: f"config key 'sample.{field}'"
) -> None:
    """Decoding settings within their ranges; the error names a field as `name(field)` says
    (a config key by default; the command line names its flags)."""
    for field, allowed, message in SAMPLE_RULES:
        if not allowed(getattr(sample, field)):
            raise ConfigError(f"{name(field)}: {message}, not {getattr(sample, field)}")


def _validate_finetune(f: FinetuneConfig, m: ModelConfig) -> None:
    _check(f.mode != "full" or not f.trainable, "finetune.trainable", "mode full trains everything")
    _check(f.mode != "partial" or f.trainable, "finetune.trainable", "mode partial needs patterns")
    _check(
        f.mode not in ("prompt", "prefix") or m.family in ("gpt", "bert"),
        "finetune.mode",
        f"{f.mode} tuning supports model.family gpt and bert, not {m.family}",
    )
    _check(f.prompt_length >= 0, "finetune.prompt_length", "must be >= 0")
    _check(f.prefix_length >= 0, "finetune.prefix_length", "must be >= 0")
    _check(f.lora_rank > 0, "finetune.lora_rank", "must be positive")
    _check(f.lora_alpha > 0, "finetune.lora_alpha", "must be positive")
    _check(f.mode != "lora" or f.lora_targets, "finetune.lora_targets", "mode lora needs patterns")
    for key in ("trainable", "lora_targets"):
        for pattern in getattr(f, key):
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as e:
                    raise ConfigError(f"config key 'finetune.{key}': {pattern!r}: {e}") from None


def check_task(config: Config) -> None:
    """The model can learn `data.task`: the right family, with the heads the task trains."""
    d, m = config.data, config.model
    family, heads = TASK_MODELS[d.task]
    _check(m.family == family, "data.task", f"{d.task} trains model.family={family}")
    needed = [h for h in heads if h not in m.heads and (h != "nsp" or d.next_sentence)]
    _check(not needed, "model.heads", f"data.task={d.task} needs the heads {needed}")
