"""Span corruption: lengths against T5's published figures, the noise against its definition,
and rows that give back their text when each sentinel is replaced by its span."""

import itertools
from collections import Counter

import numpy as np
import pytest

from jaxlm.config import check_task, load_config, to_yaml
from jaxlm.data.span_corruption import (
    SENTINEL,
    SpanLengths,
    corrupt,
    fit_chunk,
    noise_counts,
    noise_mask,
    sentinel_ids,
)
from jaxlm.data.tasks import span_corruption_rows, target_length
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.errors import ConfigError, DataError


class SentinelTokenizer:
    """One id per distinct whitespace-separated word after 4 special ids; `<extra_id_N>` is
    id 99,999 - N, as T5 numbers its sentinels down from the top of the vocabulary."""

    pad_id, unk_id, bos_id, eos_id = range(4)
    vocab_size = 100_000

    def __init__(self, sentinels=100):
        self.words, self.sentinels = {}, sentinels

    def token_id(self, token):
        number = token.removeprefix("<extra_id_").removesuffix(">")
        return 99_999 - int(number) if int(number) < self.sentinels else None

    def encode_batch(self, texts):
        return [[self.words.setdefault(w, 4 + len(self.words)) for w in t.split()] for t in texts]


def _runs(mask):
    """(value, length) of each run of equal values, in order."""
    return [(value, len(list(group))) for value, group in itertools.groupby(mask)]


def _merge(source, target, sentinels):
    """The text a source and target were made from: each sentinel of the source replaced by the
    tokens after that sentinel in the target (a plain loop over both)."""
    spans, current = {}, None
    for token in target:
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    merged = []
    for token in source:
        merged.extend(spans.pop(token) if token in sentinels else [token])
    assert not spans, "every span of the target has its sentinel in the source"
    return merged


def test_chunk_lengths_are_t5s():
    """T5 pretrains on 568-token chunks for 512-token inputs and 114-token targets (noise 0.15,
    mean span 3: 85 noise tokens in 28 spans)."""
    assert fit_chunk(512, None, 0.15, 3.0) == SpanLengths(568, 512, 114, 28)
    assert noise_counts(568, 0.15, 3.0) == (85, 28)
    assert fit_chunk(512, 114, 0.15, 3.0) == fit_chunk(512, None, 0.15, 3.0)


@pytest.mark.parametrize(
    "seq_len, target_len, density, mean_span",
    [(512, None, 0.15, 3.0), (128, 24, 0.15, 3.0), (64, None, 0.5, 8.0), (40, 40, 0.3, 1.0)],
)
def test_fit_chunk_is_the_longest_chunk_that_fits(seq_len, target_len, density, mean_span):
    def fits(length):
        lengths = SpanLengths.of_chunk(length, density, mean_span)
        return lengths.source <= seq_len and (target_len is None or lengths.target <= target_len)

    chunk = fit_chunk(seq_len, target_len, density, mean_span)
    assert fits(chunk.chunk)
    assert not any(fits(length) for length in range(chunk.chunk + 1, 4 * seq_len))


def test_fit_chunk_refuses_rows_too_short_for_any_chunk():
    with pytest.raises(ConfigError, match="data.seq_len"):
        fit_chunk(2, None, 0.15, 3.0)
    with pytest.raises(ConfigError, match="2 target tokens"):
        fit_chunk(64, 2, 0.15, 3.0)


@pytest.mark.parametrize("length", [2, 3, 7, 50, 141, 568])
@pytest.mark.parametrize("density, mean_span", [(0.15, 3.0), (0.5, 2.0), (0.9, 1.0)])
def test_noise_is_spans_of_the_counted_lengths(length, density, mean_span):
    """Kept and noise runs alternate, kept first and noise last, `noise_counts` of each; the
    source and target made from them have the lengths `SpanLengths` counts."""
    rng = np.random.default_rng(length)
    noise, spans = noise_counts(length, density, mean_span)
    lengths = SpanLengths.of_chunk(length, density, mean_span)
    for _ in range(20):
        mask = noise_mask(length, density, mean_span, rng)
        runs = _runs(mask.tolist())
        assert [value for value, _ in runs] == [False, True] * spans
        assert mask.sum() == noise
        source, target = corrupt(np.arange(length), mask, np.arange(-spans, 0))
        assert (len(source) + 1, len(target) + 1) == (lengths.source, lengths.target)


def test_noise_splits_are_uniform():
    """4 noise tokens in 2 spans split 1+3, 2+2 or 3+1, each a third of the time; 6 kept tokens
    in 2 spans 1+5 ... 5+1, each a fifth."""
    rng = np.random.default_rng(0)
    draws = 6000
    noise_splits, kept_splits = Counter(), Counter()
    for _ in range(draws):
        runs = _runs(noise_mask(10, 0.4, 2.0, rng).tolist())
        noise_splits[tuple(n for value, n in runs if value)] += 1
        kept_splits[tuple(n for value, n in runs if not value)] += 1
    assert sorted(noise_splits) == [(1, 3), (2, 2), (3, 1)]
    assert sorted(kept_splits) == [(k, 6 - k) for k in range(1, 6)]
    # Each share within 4 standard deviations of its expectation.
    for splits, share in ((noise_splits, 1 / 3), (kept_splits, 1 / 5)):
        spread = 4 * np.sqrt(draws * share * (1 - share))
        assert all(abs(n - draws * share) < spread for n in splits.values()), splits


def test_corrupt_replaces_each_span_by_its_sentinel():
    tokens = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    mask = np.array([0, 1, 1, 0, 0, 0, 1, 1], bool)
    source, target = corrupt(tokens, mask, np.array([99, 98, 97]))
    assert source.tolist() == [10, 99, 13, 14, 15, 98]
    assert target.tolist() == [99, 11, 12, 98, 16, 17]


def test_rows_give_back_the_documents(real_text_files):
    """Every row's source and target merge back into its chunk of the token stream, and the
    chunks in order are the documents, each followed by EOS; targets fit the derived length."""
    tokenizer = SentinelTokenizer()
    documents = [path.read_text() for path in real_text_files[:6]]
    seq_len = 96
    rows = span_corruption_rows(
        documents, tokenizer, seq_len=seq_len, target_len=None, density=0.15, mean_span=3.0
    )
    chunk = fit_chunk(seq_len, None, 0.15, 3.0)
    stream = [t for ids in tokenizer.encode_batch(documents) for t in (*ids, tokenizer.eos_id)]
    assert rows.count == -(-len(stream) // chunk.chunk)
    sentinels = {tokenizer.token_id(SENTINEL.format(i)) for i in range(chunk.spans)}
    rng = np.random.default_rng(0)
    merged, target_lengths = [], []
    for example in range(rows.count):
        row = rows.make_row(example, rng)
        source = row["source"][row["source_segments"] > 0]
        target = row["targets"][row["weights"] > 0]
        assert source[-1] == target[-1] == tokenizer.eos_id
        assert row["target_inputs"][0] == tokenizer.bos_id
        np.testing.assert_array_equal(row["target_inputs"][1 : len(target)], target[:-1])
        assert row["source"].shape == (seq_len,) and row["targets"].shape == (chunk.target,)
        merged.extend(_merge(source[:-1].tolist(), target[:-1].tolist(), sentinels))
        target_lengths.append(len(target))
    assert merged == stream
    assert max(target_lengths) == chunk.target  # full chunks use the whole target row


def test_rows_draw_new_noise_from_their_generator():
    rows = span_corruption_rows(
        ["a b c d e f g h i j " * 20], SentinelTokenizer(), seq_len=32, target_len=None,
        density=0.15, mean_span=3.0,
    )  # fmt: skip
    first, again = (rows.make_row(0, np.random.default_rng(seed)) for seed in (1, 1))
    other = rows.make_row(0, np.random.default_rng(2))
    np.testing.assert_array_equal(first["source"], again["source"])
    assert not np.array_equal(first["source"], other["source"])


def test_a_tokenizer_without_enough_sentinels_is_named():
    with pytest.raises(DataError, match=r"needs 7 sentinel tokens .* has no <extra_id_5>"):
        sentinel_ids(SentinelTokenizer(sentinels=5), 7)
    with pytest.raises(DataError, match="has no <extra_id_0>"):
        span_corruption_rows(
            ["a b c"], SentinelTokenizer(sentinels=0), seq_len=32, target_len=None,
            density=0.15, mean_span=3.0,
        )  # fmt: skip


def test_trained_tokenizer_keeps_sentinels_whole(real_text_files, tmp_path):
    model = tmp_path / "spans.model"
    tokenizer = train_tokenizer(real_text_files[:10], model, 600, sentinels=100)
    ids = sentinel_ids(Tokenizer.load(model), 100)
    assert ids.tolist() == list(range(7, 107))  # after pad, unk, bos, eos, [MASK], [CLS], [SEP]
    text = "The <extra_id_0> of a <extra_id_12> object"
    encoded = tokenizer.encode(text)
    assert ids[0] in encoded and ids[12] in encoded
    assert tokenizer.decode(encoded) == text
    without = train_tokenizer(real_text_files[:10], tmp_path / "plain.model", 600)
    assert without.token_id(SENTINEL.format(0)) is None


def test_config_checks_for_span_corruption():
    task = ["model.family=seq2seq", "data.task=span_corruption"]
    t5 = load_config("t5-small")  # T5's pretraining recipe
    assert (t5.data.task, t5.data.seq_len, target_length(t5.data)) == ("span_corruption", 512, 114)
    assert target_length(load_config(None, [*task, "data.target_len=40"]).data) == 40
    with pytest.raises(ConfigError, match="span_corruption trains model.family=seq2seq"):
        check_task(load_config(None, ["data.task=span_corruption"]))  # a gpt
    with pytest.raises(ConfigError, match="data.noise_density"):
        load_config(None, [*task, "data.noise_density=0"])
    with pytest.raises(ConfigError, match="data.mean_noise_span"):
        load_config(None, [*task, "data.mean_noise_span=0.5"])
    with pytest.raises(ConfigError, match="data.target_len"):
        load_config(None, [*task, "data.target_len=4096"])


def test_token_files_feed_span_corruption(real_text_files, tmp_path):
    """A token file's rows, read through its memory map, merge back into its training tokens
    (documents with their BOS and EOS); evaluation rows into the held-out tokens. Without the
    tokenizer (its sentinels), or for a task a token file cannot feed, a one-line error."""
    from jaxlm.data.loader import training_data
    from jaxlm.data.token_file import TokenFile, write_token_file

    model = tmp_path / "spans.model"
    tokenizer = train_tokenizer(real_text_files[:10], model, 600, sentinels=100)
    documents = [path.read_text() for path in real_text_files[:10]]
    write_token_file(documents, tokenizer, tmp_path / "docs.tokens")
    settings = [
        "model.family=seq2seq",
        "model.vocab_size=640",
        "data.source=tokens",
        "data.task=span_corruption",
        f"data.train_files=[{tmp_path / 'docs.tokens'}]",
        "data.seq_len=64",
        "data.batch_size=8",
        "data.eval_fraction=0.1",
    ]
    cfg = load_config(None, [*settings, f"data.tokenizer={model}"])
    data = training_data(cfg, tmp_path, log=lambda line: None)
    train, held_out = TokenFile.open(tmp_path / "docs.tokens").split(0.1)
    sentinels = set(sentinel_ids(tokenizer, 100).tolist())

    def merged_rows(batches):
        """Each row's text: its source with every sentinel replaced by its span."""
        for batch in batches:
            for row in range(len(batch["source"])):
                if batch["weights"][row].sum() == 0:  # the last eval batch's filler rows
                    continue
                source = batch["source"][row][batch["source_segments"][row] > 0]
                target = batch["targets"][row][batch["weights"][row] > 0]
                yield _merge(source[:-1].tolist(), target[:-1].tolist(), sentinels)

    evaluated = [t for row in merged_rows(data.eval_batches(0)) for t in row]
    assert evaluated == held_out.tokens.tolist()
    # The first epoch (shuffled) visits every chunk of the training tokens once.
    chunks = -(-len(train) // fit_chunk(64, None, 0.15, 3.0).chunk)
    epoch = itertools.islice(merged_rows(data.train_batches(0)), chunks)
    assert sorted(t for row in epoch for t in row) == sorted(train.tokens.tolist())

    with pytest.raises(ConfigError, match="'data.tokenizer': span corruption of a token file"):
        training_data(load_config(None, settings), tmp_path, log=lambda line: None)
    with pytest.raises(ConfigError, match="provides examples for causal_lm, span_corruption, not"):
        masked = [*settings, "model.family=bert", "data.task=masked_lm"]
        training_data(load_config(None, masked), tmp_path, log=lambda line: None)


def test_data_show_prints_rows_as_the_model_sees_them(real_text_files, tmp_path, capsys):
    """`jaxlm data show --rows` decodes the first training rows: every source is a full chunk
    (48 tokens) with sentinels, every target starts with the first one; without a tokenizer to
    decode with, a one-line error."""
    from jaxlm import cli

    model = tmp_path / "spans.model"
    train_tokenizer(real_text_files, model, 600, sentinels=100)
    settings = [
        "model.family=seq2seq",
        "data.task=span_corruption",
        f"data.train_files=[{','.join(map(str, real_text_files))}]",
        "data.seq_len=48",
        f"train.workdir={tmp_path / 'run'}",
    ]
    config = tmp_path / "spans.yaml"
    config.write_text(to_yaml(load_config(None, settings)))
    argv = ["data", "show", str(config), "--examples", "0", "--rows", "3"]
    assert cli.main([*argv, f"data.tokenizer={model}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1::3] == ["row 0", "row 1", "row 2"]
    sources, targets = lines[2::3], lines[3::3]
    target = target_length(load_config(str(config)).data)
    for source, target_line in zip(sources, targets, strict=True):
        assert source.startswith("  source (48 tokens): '") and "<extra_id_0>" in source
        assert target_line.startswith(f"  target ({target} tokens): '<extra_id_0>")
    assert cli.main(argv) == 2
    assert "--rows decodes with the run's tokenizer" in capsys.readouterr().err


def test_data_show_reads_token_files(real_text_files, tmp_path, capsys):
    """`jaxlm data show` on a token file: its size, and with --rows its first rows decoded by
    data.tokenizer (without it, a one-line error)."""
    from jaxlm import cli
    from jaxlm.data.token_file import write_token_file

    model = tmp_path / "spans.model"
    tokenizer = train_tokenizer(real_text_files[:10], model, 600, sentinels=100)
    write_token_file([p.read_text() for p in real_text_files[:10]], tokenizer, tmp_path / "t")
    settings = [
        "model.family=seq2seq",
        "data.source=tokens",
        "data.task=span_corruption",
        f"data.train_files=[{tmp_path / 't'}]",
        f"data.tokenizer={model}",
        "data.seq_len=48",
        "data.eval_fraction=0.3",
    ]
    config = tmp_path / "tokens.yaml"
    config.write_text(to_yaml(load_config(None, settings)))
    assert cli.main(["data", "show", str(config), "--rows", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"tokens source, span_corruption: token file {tmp_path / 't'}: ")
    assert lines[1] == "row 0" and lines[2].startswith("  source (48 tokens): '")
    assert "<extra_id_0>" in lines[2] and lines[3].startswith("  target (")
    causal = ["model.family=gpt", "data.task=causal_lm", "data.tokenizer=''"]
    assert cli.main(["data", "show", str(config), *causal]) == 0
    assert "tokens source, causal_lm: token file" in capsys.readouterr().out
    assert cli.main(["data", "show", str(config), *causal, "--rows", "1"]) == 2
    assert "--rows decodes a token file's rows with data.tokenizer" in capsys.readouterr().err
