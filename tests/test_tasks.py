"""Task rows (completions, masked LM + next sentence, classification, seq2seq) and random-access
batching."""

import numpy as np
import pytest

from jaxlm.config import DataConfig, load_config
from jaxlm.data.batching import IndexedBatches, prefetch
from jaxlm.data.masked_lm import mask_tokens, masked_lm_rows
from jaxlm.data.tasks import (
    BATCH_FEATURES,
    chat_rows,
    classification_rows,
    completion_rows,
    seq2seq_rows,
    seq2seq_sources,
    span_corruption_rows,
    tokens_per_row,
)
from jaxlm.errors import DataError, JaxlmError
from jaxlm.translation_eval import translation_bleu


class WordTokenizer:
    """One id per distinct whitespace-separated word, after 7 special ids."""

    pad_id, unk_id, bos_id, eos_id, mask_id, cls_id, sep_id = range(7)

    def __init__(self, vocab_size=5000):
        self.words, self.vocab_size = {}, vocab_size

    def encode_batch(self, texts):
        return [[self.words.setdefault(w, 7 + len(self.words)) for w in t.split()] for t in texts]

    def token_id(self, token):
        """Span corruption's sentinel `<extra_id_N>` is id 4000 + N."""
        return 4000 + int(token.removeprefix("<extra_id_").removesuffix(">"))


def _documents(num_docs=40, lines=12, words=6):
    """Documents whose words name their document, line and position: d3l4w5."""
    return [
        "\n".join(" ".join(f"d{d}l{i}w{w}" for w in range(words)) for i in range(lines))
        for d in range(num_docs)
    ]


# Completion


def _completion_reference(pairs: list[tuple[list[int], list[int]]], seq_len: int) -> dict:
    """The row of the token pairs (head, tail), position by position: each input of a pair
    predicts the pair's next token, counted where that token is in the tail."""
    row = {key: [] for key in ("inputs", "targets", "weights", "positions", "segment_ids")}
    for segment, (head, tail) in enumerate(pairs, 1):
        tokens = head + tail
        for j in range(len(tokens) - 1):
            row["inputs"].append(tokens[j])
            row["targets"].append(tokens[j + 1])
            row["weights"].append(float(j + 1 >= len(head)))
            row["positions"].append(j)
            row["segment_ids"].append(segment)
    return {key: values + [0] * (seq_len - len(values)) for key, values in row.items()}


@pytest.mark.parametrize("truncate", [True, False])
def test_completion_rows_train_on_the_completion_and_its_eos(truncate):
    tokenizer = WordTokenizer()
    pairs = [("q1 q2", "a1 a2 a3"), ("q1 q2 q3 q4 q5", "a1 a2 a3 a4"), ("q1 " * 8, "a1")]
    rows = completion_rows(pairs, tokenizer, seq_len=7, truncate=truncate, pack=False)
    ids = tokenizer.encode_batch([text for pair in pairs for text in pair])
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    expected = [_completion_reference([([bos, *ids[0]], [*ids[1], eos])], 7)]
    if truncate:  # 6 prompt tokens leave room for 2 of the 5 completion tokens
        expected.append(_completion_reference([([bos, *ids[2]], ids[3][:2])], 7))
    assert (rows.count, rows.truncated, rows.skipped) == (
        len(expected),
        int(truncate),
        {"too long": 3 - len(expected)},  # the 9-token prompt leaves no room
    )
    for example, want in enumerate(expected):
        row = rows.make_row(example, None)
        assert {key: row[key].tolist() for key in want} == want
    with pytest.raises(DataError, match="all 1 prompts and completions are longer"):
        completion_rows(pairs[2:], tokenizer, seq_len=7, truncate=True, pack=False)


def test_packed_completions_share_rows_while_they_fit():
    """Pairs of 6, 4, 5 and 9 tokens (5, 3, 4 and 8 input positions) in rows of 10: the first
    two share one, the others take one each."""
    tokenizer = WordTokenizer()
    pairs = [("q1 q2", "a1 a2"), ("q3", "a3"), ("q4", "a4 a5"), ("q5 q6 q7", "a6 a7 a8 a9")]
    rows = completion_rows(pairs, tokenizer, seq_len=10, truncate=False, pack=True)
    bos, eos = tokenizer.bos_id, tokenizer.eos_id
    ids = tokenizer.encode_batch([text for pair in pairs for text in pair])
    tokens = [([bos, *ids[2 * i]], [*ids[2 * i + 1], eos]) for i in range(len(pairs))]
    expected = [tokens[:2], tokens[2:3], tokens[3:]]
    assert rows.count == len(expected)
    for example, packed in enumerate(expected):
        row = rows.make_row(example, None)
        want = _completion_reference(packed, 10)
        assert {key: row[key].tolist() for key in want} == want


def test_packed_completions_have_the_loss_of_one_pair_a_row():
    """The summed loss of a tiny GPT over packed rows equals its loss over a row per pair:
    each pair attends within itself, from position 0."""
    import flax.linen as nn
    import jax

    from jaxlm.models import build_model, init_params
    from jaxlm.train.losses import causal_lm_loss

    overrides = ["model.num_layers=2", "model.embed_dim=32", "model.num_heads=4"]
    cfg = load_config(
        None, [*overrides, "model.vocab_size=100", "model.max_len=32", "data.seq_len=24"]
    ).model
    model, params = build_model(cfg), nn.unbox(init_params(cfg, jax.random.key(0)))
    pairs = [(f"q{i} " * (1 + i % 4), f"a{i} " * (1 + i % 3)) for i in range(12)]
    tokenizer = WordTokenizer(vocab_size=100)
    totals = {}
    for pack in (False, True):
        rows = completion_rows(pairs, tokenizer, seq_len=24, truncate=False, pack=pack)
        batch = {
            key: np.stack([rows.make_row(i, None)[key] for i in range(rows.count)])
            for key in BATCH_FEATURES["completion"]
        }
        _, stats = causal_lm_loss(model, params, batch, None, True)
        totals[pack] = rows.count, float(stats["nll"])
    assert totals[True][0] < totals[False][0] == len(pairs)
    assert totals[True][1] == pytest.approx(totals[False][1], rel=1e-5)


# Masked LM


def test_masking_statistics_over_100k_tokens():
    rng = np.random.default_rng(0)
    tokens = rng.integers(100, 30000, size=(800, 128)).astype(np.int32)
    maskable = np.ones(tokens.shape, bool)
    maskable[:, 0] = maskable[:, -1] = False  # [CLS] ... [SEP]
    inputs, weights = mask_tokens(
        tokens, maskable, rng, probability=0.15, mask_id=4, random_ids=(7, 30000)
    )
    selected = weights.astype(bool)
    assert not selected[~maskable].any() and (inputs[~maskable] == tokens[~maskable]).all()
    n = maskable.sum()  # 100k maskable tokens
    assert n > 100_000
    # Binomial standard errors: selection 0.0011, shares of selected ~0.003; allow ~4 sigma.
    assert abs(selected.sum() / n - 0.15) < 0.005
    masked = (inputs == 4) & selected
    unchanged = (inputs == tokens) & selected
    randomized = selected & ~masked & ~unchanged
    for part, share in ((masked, 0.8), (randomized, 0.1), (unchanged, 0.1)):
        assert abs(part.sum() / selected.sum() - share) < 0.012
    assert ((inputs[randomized] >= 7) & (inputs[randomized] < 30000)).all()
    assert (inputs[~selected] == tokens[~selected]).all()


def test_next_sentence_pairs_are_balanced_and_right():
    tokenizer = WordTokenizer()
    rows = masked_lm_rows(_documents(), tokenizer, seq_len=32, probability=0.15, next_sentence=True)
    words = {i: w for w, i in tokenizer.words.items()}
    batches = IndexedBatches(
        rows.count, rows.make_row, batch_size=50, seed=0, weight_keys=rows.weight_keys
    )
    labels = []
    for batch in batches.batches():
        for row in range(50):
            tokens = batch["mlm_targets"][row]
            seps = np.flatnonzero(tokens == tokenizer.sep_id)
            assert tokens[0] == tokenizer.cls_id and len(seps) == 2
            first, second = tokens[1 : seps[0]], tokens[seps[0] + 1 : seps[1]]
            type_ids = batch["type_ids"][row]
            assert (type_ids[: seps[0] + 1] == 0).all() and (
                type_ids[seps[0] + 1 : seps[1] + 1] == 1
            ).all()
            assert (batch["segment_ids"][row] == (np.arange(32) <= seps[1])).all()
            assert not batch["mlm_weights"][row][[0, seps[0], seps[1]]].any()
            doc = lambda ids: {words[int(i)].split("l")[0] for i in ids}  # noqa: E731
            label = int(batch["nsp_labels"][row])
            if label == 0:  # B continues A: the word after A's last word starts B
                last = words[int(first[-1])]
                d, rest = last[1:].split("l")
                line, w = map(int, rest.split("w"))
                following = f"d{d}l{line + (w == 5)}w{(w + 1) % 6}"
                assert words[int(second[0])] == following
            else:
                assert doc(first).isdisjoint(doc(second))
            labels.append(label)
        if len(labels) >= 2000:
            break
    assert abs(np.mean(labels) - 0.5) < 0.035  # 2000 fair coin flips: sigma 0.011


def test_masked_lm_without_pairs_and_bad_input():
    tokenizer = WordTokenizer()
    rows = masked_lm_rows(
        _documents(3), tokenizer, seq_len=20, probability=0.15, next_sentence=False
    )
    row = rows.make_row(0, np.random.default_rng(0))
    assert set(row) == {"inputs", "type_ids", "segment_ids", "mlm_targets", "mlm_weights"}
    assert row["mlm_targets"][0] == tokenizer.cls_id
    assert row["mlm_targets"][19] == tokenizer.sep_id  # 18 text tokens fill the row
    with pytest.raises(DataError, match="at least two documents"):
        masked_lm_rows(_documents(1), tokenizer, seq_len=20, probability=0.15, next_sentence=True)
    with pytest.raises(DataError, match="no room"):
        masked_lm_rows(_documents(2), tokenizer, seq_len=4, probability=0.15, next_sentence=True)


# Classification and seq2seq


def test_classification_rows_truncate_or_skip():
    tokenizer = WordTokenizer()
    examples = [("a b c", 1), ("a b c d e f g h", 0), ("d", 1)]
    rows = classification_rows(examples, tokenizer, seq_len=6, truncate=True)
    assert (rows.count, rows.truncated) == (3, 1)
    row = rows.make_row(1, None)
    a, b, c, d = (tokenizer.words[w] for w in "abcd")
    assert row["inputs"].tolist() == [5, a, b, c, d, 6]
    assert (int(row["labels"]), float(row["label_weights"])) == (0, 1.0)
    row = rows.make_row(0, None)
    assert row["inputs"].tolist() == [5, a, b, c, 6, 0]
    assert row["segment_ids"].tolist() == [1, 1, 1, 1, 1, 0]
    skipping = classification_rows(examples, tokenizer, seq_len=6, truncate=False)
    assert (skipping.count, skipping.skipped) == (2, {"too long": 1})
    with pytest.raises(DataError, match="longer than data.seq_len"):
        classification_rows(examples[1:2], tokenizer, seq_len=6, truncate=False)


def test_seq2seq_rows_shift_targets():
    tokenizer = WordTokenizer()
    rows = seq2seq_rows([("x y", "u v w")], tokenizer, seq_len=5, truncate=True)
    row = rows.make_row(0, None)
    x, y, u, v, w = (tokenizer.words[t] for t in "xyuvw")
    assert row["source"].tolist() == [x, y, 3, 0, 0]
    assert row["source_segments"].tolist() == [1, 1, 1, 0, 0]
    assert row["target_inputs"].tolist() == [2, u, v, w, 0]
    assert row["targets"].tolist() == [u, v, w, 3, 0]
    assert row["weights"].tolist() == [1, 1, 1, 1, 0]
    assert (row["target_inputs"][1:4] == row["targets"][:3]).all()


def test_seq2seq_targets_have_a_length_of_their_own():
    """Targets of `target_len` - 1 tokens and EOS fit; longer ones are cut, or skipped."""
    tokenizer = WordTokenizer()
    pairs = [("a b c d e f", "u v"), ("a", "u v w x")]
    rows = seq2seq_rows(pairs, tokenizer, seq_len=8, target_len=3, truncate=True)
    u, v = tokenizer.words["u"], tokenizer.words["v"]
    first, second = (rows.make_row(i, None) for i in range(2))
    assert first["source"].shape == (8,) and first["targets"].tolist() == [u, v, 3]
    assert second["targets"].tolist() == [u, v, 3] and rows.truncated == 1
    kept = seq2seq_rows(pairs, tokenizer, seq_len=8, target_len=3, truncate=False)
    assert kept.count == 1 and kept.skipped == {"too long": 1}
    with pytest.raises(DataError, match=r"longer than data.seq_len=8 \(sources\) or 2"):
        seq2seq_rows(pairs[1:], tokenizer, seq_len=8, target_len=2, truncate=False)


@pytest.mark.parametrize(
    "task, target_len, expected",
    [
        ("causal_lm", None, 512),
        ("seq2seq", None, 512 + 512),
        ("seq2seq", 96, 512 + 96),
        ("span_corruption", None, 512 + 114),  # T5's: 568-token chunks leave 114 targets
    ],
)
def test_tokens_per_second_count_an_encoder_decoders_targets_too(task, target_len, expected):
    data = DataConfig(task=task, seq_len=512, target_len=target_len)
    assert tokens_per_row(data) == expected


@pytest.mark.parametrize("truncate", [True, False])
def test_seq2seq_sources_are_the_rows_encoder_inputs(truncate):
    """What translation evaluation feeds the encoder is what training fed it: the row's source
    without its padding; a source too long for the row is cut, or None where training skips
    it."""
    tokenizer = WordTokenizer()
    sources = ["a b", "c d e f", "g h i j k l m"]
    sources_alone = seq2seq_sources(sources, tokenizer, seq_len=5, truncate=truncate)
    rows = seq2seq_rows([(s, "t") for s in sources], tokenizer, seq_len=5, truncate=truncate)
    kept = [ids for ids in sources_alone if ids is not None]
    assert len(kept) == rows.count == (3 if truncate else 2)
    for example, ids in enumerate(kept):
        row = rows.make_row(example, None)
        assert ids == row["source"][row["source_segments"] > 0].tolist()
    assert (sources_alone[2] is None) != truncate


# Batching


def _identity_batches(count=10, **kwargs):
    def make_row(example, rng):
        return {"example": np.int32(example), "draw": rng.random(), "weights": np.float32(1)}

    return IndexedBatches(count, make_row, **kwargs)


def test_same_seed_same_batches_and_epochs_are_permutations():
    a, b = _identity_batches(batch_size=4, seed=3), _identity_batches(batch_size=4, seed=3)
    first = [x["example"] for x, _ in zip(a.batches(), range(5), strict=False)]
    assert all((x == y["example"]).all() for x, y in zip(first, b.batches(), strict=False))
    stream = np.concatenate([x["example"] for x, _ in zip(a.batches(), range(10), strict=False)])
    epochs = stream.reshape(4, 10)  # 40 rows = 4 epochs of 10 examples
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)
    assert len({tuple(epoch) for epoch in epochs}) == 4  # reshuffled every epoch
    other = _identity_batches(batch_size=4, seed=4)
    assert not (next(other.batches())["example"] == first[0]).all()


def test_resume_gives_the_identical_next_10_batches():
    fresh = list(zip(_identity_batches(batch_size=3, seed=0).batches(), range(17), strict=False))
    resumed = _identity_batches(batch_size=3, seed=0).batches(start=7)
    for (expected, _), got in zip(fresh[7:], resumed, strict=False):
        for key in expected:
            np.testing.assert_array_equal(expected[key], got[key])


def test_two_processes_read_disjoint_blocks_that_cover_the_batch():
    whole = _identity_batches(count=50, batch_size=8, seed=1)
    parts = [
        _identity_batches(count=50, batch_size=8, seed=1, process_index=p, process_count=2)
        for p in range(2)
    ]
    for k in range(6):
        blocks = [part.batch(k) for part in parts]
        assert set(blocks[0]["example"]).isdisjoint(blocks[1]["example"])
        for key in ("example", "draw"):
            np.testing.assert_array_equal(
                np.concatenate([b[key] for b in blocks]), whole.batch(k)[key]
            )
    with pytest.raises(DataError, match="not divisible by the 3 processes"):
        _identity_batches(batch_size=8, seed=0, process_count=3, process_index=0)


def test_evaluation_counts_every_example_once():
    batches = _identity_batches(count=10, batch_size=4, seed=0, shuffle=False, repeat=False)
    got = list(batches.batches())
    assert len(got) == len(batches) == 3
    examples = np.concatenate([b["example"] for b in got])
    weights = np.concatenate([b["weights"] for b in got])
    assert examples[weights > 0].tolist() == list(range(10))
    assert weights.tolist() == [1] * 10 + [0, 0]


def test_prefetch_keeps_order_and_raises_errors():
    batches = _identity_batches(count=10, batch_size=2, seed=0, repeat=False)
    expected = [b["example"].tolist() for b in batches.batches()]
    assert [b["example"].tolist() for b in prefetch(batches.batches())] == expected

    def failing():
        yield {"x": 1}
        raise DataError("broken file")

    stream = prefetch(failing())
    assert next(stream) == {"x": 1}
    with pytest.raises(DataError, match="broken file"):
        next(stream)


def test_prefetch_to_device_keeps_order_and_shards_over_the_batch_axes():
    import jax

    from jaxlm.config import MeshConfig
    from jaxlm.parallel import make_mesh, prefetch_to_device

    mesh = make_mesh(MeshConfig(data=4, fsdp=2))
    host = [{"x": np.arange(16).reshape(8, 2) + 100 * k} for k in range(5)]
    device = list(prefetch_to_device(iter(host), mesh, size=3))
    assert len(device) == 5
    for got, expected in zip(device, host, strict=True):
        np.testing.assert_array_equal(jax.device_get(got["x"]), expected["x"])
        assert len(got["x"].addressable_shards) == 8 and got["x"].sharding.spec[0] == (
            "data",
            "fsdp",
        )


def test_batch_features_describe_the_rows_of_every_task():
    """Rows of 16 source tokens and, for seq2seq and span corruption, 6 target tokens."""
    tokenizer, chat_tokenizer = WordTokenizer(), WordTokenizer()
    chat_tokenizer.special = {}
    chat_tokenizer.chat_template = (
        "{% for m in messages %}{{ m.role }}: {{ m.content }} {% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    rows = {
        "masked_lm": masked_lm_rows(
            _documents(4), tokenizer, seq_len=16, probability=0.15, next_sentence=True
        ),
        "classification": classification_rows([("a b", 1)], tokenizer, seq_len=16, truncate=True),
        "completion": completion_rows(
            [("a b", "c")], tokenizer, seq_len=16, truncate=True, pack=False
        ),
        "chat": chat_rows(
            [[{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]],
            chat_tokenizer,
            seq_len=16,
            truncate=True,
            pack=False,
        ),
        "seq2seq": seq2seq_rows([("a b", "c")], tokenizer, seq_len=16, target_len=6, truncate=True),
        "span_corruption": span_corruption_rows(
            _documents(4), tokenizer, seq_len=16, target_len=6, density=0.15, mean_span=3.0
        ),
    }
    assert set(rows) | {"causal_lm"} == set(BATCH_FEATURES)
    lengths = {"source": (16,), "target": (6,), None: ()}
    for task, task_rows in rows.items():
        row = task_rows.make_row(0, np.random.default_rng(0))
        assert set(row) == set(BATCH_FEATURES[task]), task
        for key, (dtype, length) in BATCH_FEATURES[task].items():
            assert np.asarray(row[key]).dtype == dtype, (task, key)
            assert np.shape(row[key]) == lengths[length], (task, key)


def test_translation_bleu_says_when_there_is_nothing_to_score():
    cfg = load_config(
        None, ["model.family=seq2seq", "data.task=seq2seq", "data.seq_len=4", "data.truncate=false"]
    )
    with pytest.raises(JaxlmError, match="there are none"):
        translation_bleu(cfg, {}, WordTokenizer(), [])
    with pytest.raises(JaxlmError, match=r"none of the 1 pairs fits data.seq_len=4 \(set data"):
        translation_bleu(cfg, {}, WordTokenizer(), [("a b c d e", "x")])


def test_row_lines_show_what_a_row_feeds_and_predicts():
    from jaxlm.data.row_text import row_lines

    class Ids:
        def decode(self, ids):
            return " ".join(map(str, ids))

    classification = {
        "inputs": np.array([5, 9, 6, 0]),
        "segment_ids": np.array([1, 1, 1, 0]),
        "labels": np.int32(1),
    }
    assert row_lines("classification", classification, Ids(), ["no", "yes"]) == [
        "text (3 tokens): '5 9 6'",
        "label: yes",
    ]
    masked = {
        "inputs": np.array([5, 4, 8, 6]),
        "segment_ids": np.array([1, 1, 1, 1]),
        "mlm_targets": np.array([5, 7, 8, 6]),
        "mlm_weights": np.array([0, 1, 1, 0]),
        "nsp_labels": np.int32(0),
    }
    assert row_lines("masked_lm", masked, Ids()) == [
        "inputs (4 tokens): '5 4 8 6'",
        "predicts (2 tokens): '7' '8'",
        "second block: next",
    ]
