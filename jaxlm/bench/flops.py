"""Model FLOPs per token: the convention behind every MFU that jaxlm reports.

Training FLOPs per token of a decoder-only model, as in the PaLM paper (arXiv 2204.02311,
appendix B) and nanoGPT's `estimate_mfu`:

    6 * N  +  12 * L * H * Q * T

- N: the parameters that take part in arithmetic. Every Dense kernel and bias and every norm
  scale and bias count, and so does the output projection over the padded vocabulary (with tied
  embeddings the token table counts once, as that projection). Tables that are only indexed
  (the token lookup, learned positions, token types) do not count: a lookup does no arithmetic.
  A mixture of experts' expert weights count experts_per_token / num_experts of their size:
  each token meets that many experts (its router counts whole). Experts that run on more
  tokens than chose them (buffers of unused capacity) do work the figure leaves out.
- 6: a weight does one multiply-add (2 FLOPs) per token forward and two backward (the gradients
  of its input and of itself).
- 12 * L * H * Q * T: attention scores q.k and the weighted sum of values, 2 FLOPs per
  multiply-add, forward and twice backward, over L layers, H heads of dimension Q and all T key
  positions: the whole T x T square, not halved for the causal mask (as the reference attention
  computes it; a flash kernel that skips the masked half does less work for the same figure).

An encoder-decoder's parameters meet the tokens of their side: the encoder's (and the decoder's
cross-attention keys and values) the S source tokens of a row, the rest of the decoder's and the
output projection the T target tokens; its attention covers S x S, T x T and T x S
(`step_model_flops`).

Model FLOPs count what the model needs, not what the program runs: recomputation (remat) and
masked attention blocks are not added, so MFU compares implementations of the same model fairly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from jaxlm.config import Config, ModelConfig
from jaxlm.data.tasks import target_length
from jaxlm.models.summary import abstract_params, parameter_leaves

# tables that are indexed, not multiplied
LOOKUP_AXES = {"vocab", "position", "type", "relative_buckets"}
SOURCE_SIDE = re.compile(r"encoder/|.*cross_attention/(key|value)/")  # meet the source tokens


@dataclass(frozen=True)
class ModelFlops:
    """The two terms of the convention for one model and sequence length."""

    arithmetic_params: int  # N
    attention_per_token: int  # 12 * L * H * Q * T

    @property
    def per_token(self) -> int:
        return 6 * self.arithmetic_params + self.attention_per_token


def _arithmetic_params(cfg: ModelConfig) -> dict[str, int]:
    """{path: size} of the parameters that take part in arithmetic (no lookup tables), the
    experts' weights in the share of them that a token meets."""
    sizes = {}
    for path, shape, names in parameter_leaves(abstract_params(cfg)):
        names = set(names or ())
        if not LOOKUP_AXES & names:
            size = math.prod(shape)
            if "experts" in names:
                size = size * cfg.experts_per_token // cfg.num_experts
            sizes[path] = size
    return sizes


def model_flops(cfg: ModelConfig, seq_len: int) -> ModelFlops:
    """Training FLOPs per token of a decoder-only (`gpt`) model trained on rows of `seq_len`."""
    n = sum(_arithmetic_params(cfg).values())
    n += cfg.padded_vocab_size * cfg.embed_dim  # the output projection
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
    return ModelFlops(arithmetic_params=n, attention_per_token=attention)


def step_model_flops(cfg: Config) -> int:
    """Model FLOPs of one training step over the whole global batch of `cfg.data`."""
    m, rows, source = cfg.model, cfg.data.batch_size, cfg.data.seq_len
    if m.family != "seq2seq":
        return model_flops(m, source).per_token * rows * source
    target = target_length(cfg.data)
    params = _arithmetic_params(m)
    on_source = sum(size for path, size in params.items() if SOURCE_SIDE.match(path))
    on_target = sum(params.values()) - on_source + m.padded_vocab_size * m.embed_dim
    squares = m.num_layers * source**2 + m.decoder_layers * (target**2 + target * source)
    attention = 12 * m.num_heads * m.resolved_head_dim * squares
    return rows * (6 * (on_source * source + on_target * target) + attention)
