"""Model FLOPs per token: the convention behind every MFU that jaxlm reports.

Training FLOPs per token of a decoder-only model, as in the PaLM paper (arXiv 2204.02311,
appendix B) and nanoGPT's `estimate_mfu`:

    6 * N  +  12 * L * H * Q * T

- N: the parameters that take part in arithmetic. Every Dense kernel and bias and every norm
  scale and bias count, and so does the output projection over the padded vocabulary (with tied
  embeddings the token table counts once, as that projection). Tables that are only indexed
  (the token lookup, learned positions, token types) do not count: a lookup does no arithmetic.
- 6: a weight does one multiply-add (2 FLOPs) per token forward and two backward (the gradients
  of its input and of itself).
- 12 * L * H * Q * T: attention scores q.k and the weighted sum of values, 2 FLOPs per
  multiply-add, forward and twice backward, over L layers, H heads of dimension Q and all T key
  positions: the whole T x T square, not halved for the causal mask (as the reference attention
  computes it; a flash kernel that skips the masked half does less work for the same figure).

Model FLOPs count what the model needs, not what the program runs: recomputation (remat) and
masked attention blocks are not added, so MFU compares implementations of the same model fairly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jaxlm.config import ModelConfig
from jaxlm.models.summary import abstract_params, parameter_leaves

LOOKUP_AXES = {"vocab", "position", "type"}  # tables that are indexed, not multiplied


@dataclass(frozen=True)
class ModelFlops:
    """The two terms of the convention for one model and sequence length."""

    arithmetic_params: int  # N
    attention_per_token: int  # 12 * L * H * Q * T

    @property
    def per_token(self) -> int:
        return 6 * self.arithmetic_params + self.attention_per_token


def model_flops(cfg: ModelConfig, seq_len: int) -> ModelFlops:
    """Training FLOPs per token of a decoder-only (`gpt`) model trained on rows of `seq_len`."""
    n = sum(
        math.prod(shape)
        for _, shape, names in parameter_leaves(abstract_params(cfg))
        if not LOOKUP_AXES & set(names or ())
    )
    n += cfg.padded_vocab_size * cfg.embed_dim  # the output projection
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
    return ModelFlops(arithmetic_params=n, attention_per_token=attention)
