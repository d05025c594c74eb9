"""Packed causal-LM rows from the pipeline: no token attends across a document boundary.

Checked through the model: the logits of every document in a packed row equal the logits of that
document run alone, so nothing of the other documents in the row reaches it.
"""

import jax
import numpy as np
import pytest
from tiny import TINY_MODEL

from jaxlm.config import load_config
from jaxlm.data.documents import read_documents
from jaxlm.data.pipeline import lm_dataset
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.models import build_model, init_params


@pytest.fixture(scope="module")
def packed_batch(real_text_files, tmp_path_factory):
    tokenizer = train_tokenizer(
        real_text_files, tmp_path_factory.mktemp("tok") / "t.model", vocab_size=512
    )
    paragraphs = read_documents(real_text_files[:10], "paragraph")
    dataset = lm_dataset(paragraphs, tokenizer, seq_len=64, batch_size=8, seed=0)
    return next(dataset.as_numpy_iterator())


def test_documents_in_a_packed_row_do_not_see_each_other(packed_batch):
    cfg = load_config(None, [*TINY_MODEL, "model.vocab_size=512", "model.max_len=64"]).model
    model = build_model(cfg)
    params = init_params(cfg, jax.random.key(0))
    packed = model.apply(
        {"params": params},
        packed_batch["inputs"],
        packed_batch["positions"],
        packed_batch["segment_ids"],
    )
    # Every document of every row alone, left-aligned in its own row (right padding is masked).
    alone, where = [], []
    for row in range(8):
        segments = packed_batch["segment_ids"][row]
        for segment in np.unique(segments):
            mask = segments == segment
            tokens = np.zeros(64, np.int32)
            tokens[: mask.sum()] = packed_batch["inputs"][row][mask]
            alone.append(tokens)
            where.append((row, mask))
    alone = np.stack(alone)
    lengths = np.array([mask.sum() for _, mask in where])
    valid = (np.arange(64) < lengths[:, None]).astype(np.int32)
    alone_logits = model.apply({"params": params}, alone, None, valid)
    for (row, mask), logits, length in zip(where, alone_logits, lengths, strict=True):
        np.testing.assert_allclose(packed[row][mask], logits[:length], rtol=2e-5, atol=2e-5)
    assert len(where) > 8  # rows really hold several documents
