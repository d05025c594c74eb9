"""Data sources: text, JSON lines, TFDS (built from local files), VADER and gettext; bad data."""

import json
import struct
from pathlib import Path

import pytest

from jaxlm.config import DataConfig
from jaxlm.data.sources import build_tfds_dataset, load_splits
from jaxlm.errors import ConfigError, DataError

REPO = Path(__file__).parents[1]
SYSTEM_CATALOGS = "/usr/share/locale/de/LC_MESSAGES/*.mo"


def splits_of(**data):
    return load_splits(DataConfig(**{"eval_fraction": 0.0, **data}))


def one_line_error(match, **data):
    with pytest.raises(DataError, match=match) as error:
        splits_of(**data)
    assert "\n" not in str(error.value)
    return str(error.value)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return str(path)


# Text


def test_text_source(tmp_path):
    (tmp_path / "a.txt").write_text("One.\n\nTwo, ünïcode.\n")
    (tmp_path / "b.txt").write_text(" \n")
    (tmp_path / "c.txt").write_text("Three.\n\nFour.\n\nFive.")
    data = dict(source="text", train_files=[f"{tmp_path}/*.txt"], document_unit="paragraph")
    splits = splits_of(**data)
    assert splits.train == ["One.", "Two, ünïcode.", "Three.", "Four.", "Five."]
    assert (splits.eval, splits.labels, splits.skipped) == ([], [], {"empty files": 1})
    held = load_splits(DataConfig(**data, eval_fraction=0.5))
    assert (held.train, held.eval) == (["One.", "Three.", "Five."], ["Two, ünïcode.", "Four."])
    assert splits_of(**data, max_examples=2).train == ["One.", "Two, ünïcode."]
    assert "5 train / 0 eval examples; skipped: 1 empty files" == splits.summary()


def test_text_source_errors(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9 au lait")
    one_line_error(
        r"bad.txt is not UTF-8 text \(bad byte at offset 3\)",
        train_files=[str(tmp_path / "bad.txt")],
    )
    (tmp_path / "empty.txt").write_text("")
    one_line_error("contain no text", train_files=[str(tmp_path / "empty.txt")])
    with pytest.raises(ConfigError, match="data.task.*text source provides.*not classification"):
        splits_of(train_files=[str(tmp_path / "empty.txt")], task="classification")
    one_line_error("read with jaxlm.data.token_file", source="tokens")


# JSON lines


def test_jsonl_classification(tmp_path):
    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"text": "good film", "label": "pos", "id": 1},
            {"text": "bad film", "label": "neg"},
            {"text": "   ", "label": "neg"},
            {"text": "fine", "label": "meh"},
        ],
    )
    (tmp_path / "empty.jsonl").write_text("\n\n")
    data = dict(source="jsonl", task="classification", train_files=[f"{tmp_path}/*.jsonl"])
    splits = splits_of(**data)
    assert splits.labels == ["meh", "neg", "pos"]  # sorted
    assert splits.train == [("good film", 2), ("bad film", 1), ("fine", 0)]
    assert splits.skipped == {"empty files": 1, "empty texts": 1}
    ordered = splits_of(**data, labels=["pos", "neg", "meh"])
    assert ordered.train == [("good film", 0), ("bad film", 1), ("fine", 2)]
    one_line_error(
        r"a.jsonl:4: label 'meh' is not one of the classes \(pos, neg\)",
        **data,
        labels=["pos", "neg"],
    )
    assert list(splits.texts()) == ["good film", "bad film", "fine"]


def test_jsonl_label_indices(tmp_path):
    records = [{"text": "a", "label": 2}, {"text": "b", "label": 0}]
    data = dict(
        source="jsonl", task="classification", train_files=[write_jsonl(tmp_path / "x", records)]
    )
    splits = splits_of(**data)
    assert (splits.train, splits.labels) == ([("a", 2), ("b", 0)], ["0", "1", "2"])
    named = splits_of(**data, labels=["x", "y", "z"])
    assert (named.train, named.labels) == ([("a", 2), ("b", 0)], ["x", "y", "z"])
    one_line_error(r"x:1: label index 2 is out of range \(2 classes\)", **data, labels=["x", "y"])
    for label, message in [
        (True, "x:2: label True is neither a class name nor a class index"),
        ("b", "x:2: labels mix class names and indices: set data.labels"),
        (-1, r"x:2: label index -1 is out of range"),
    ]:
        write_jsonl(tmp_path / "x", [{"text": "a", "label": 2}, {"text": "b", "label": label}])
        one_line_error(message, **data)


def test_jsonl_lm_and_seq2seq(tmp_path):
    records = [
        {"en": "Open file", "de": "Datei öffnen"},
        {"en": "Close", "de": ""},
        {"en": "Line one\nline two", "de": "Zeile eins\nZeile zwei"},
    ]
    files = [write_jsonl(tmp_path / "pairs.jsonl", records)]
    fields = dict(train_files=files, text_field="en", target_field="de")
    pairs = splits_of(source="jsonl", task="seq2seq", **fields)
    assert pairs.train == [
        ("Open file", "Datei öffnen"),
        ("Line one\nline two", "Zeile eins\nZeile zwei"),
    ]
    assert splits_of(source="jsonl", task="completion", **fields).train == pairs.train
    assert pairs.skipped == {"empty texts": 1}
    assert list(pairs.texts()) == [text for pair in pairs.train for text in pair]
    documents = splits_of(source="jsonl", train_files=files, text_field="de")
    assert documents.train == ["Datei öffnen", "Zeile eins\nZeile zwei"]


def test_jsonl_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    data = dict(source="jsonl", task="classification", train_files=[str(path)])
    for content, message in [
        ('{"text": "a", "label": "x"}\n\n{"text": "b", "label": \n', r"bad.jsonl:3: invalid JSON"),
        ('{"text": "a", "label": "x"}\n["text"]\n', r"bad.jsonl:2: a line must hold a JSON object"),
        ('{"text": "a", "lab": "x"}\n', r"bad.jsonl:1: no field 'label' \(fields: text, lab\)"),
        ('{"txt": "a", "label": "x"}\n', r"bad.jsonl:1: no field 'text'"),
        ('{"text": 3, "label": "x"}\n', r"bad.jsonl:1: field 'text' holds 3, not a string"),
    ]:
        path.write_text(content)
        one_line_error(message, **data)
    path.write_bytes('{"text": "é"}\n'.encode() + b'{"text": "\xff"}\n')
    one_line_error(r"bad.jsonl is not UTF-8 text \(bad byte at offset 25\)", **data)
    path.write_text("")
    one_line_error(r"the jsonl source holds no examples \(skipped: 1 empty files\)", **data)


# VADER


def test_vader(tmp_path):
    (tmp_path / "movies_GroundTruth.txt").write_bytes(
        b"1\t2.26666666667\tThe Rock is destined to be great.\r\n"
        b"2\t-1.5\tDull\tand slow.\r\n"
        b"3\t0.0\tA film.\r\n"
        b"4\t0.1\t \r\n"
        b"5\t-0.05\tNot quite.\r\n"
    )
    data = dict(
        source="vader", task="classification", train_files=[f"{tmp_path}/*_GroundTruth.txt"]
    )
    splits = splits_of(**data)
    assert splits.labels == ["negative", "positive"]
    assert splits.train == [
        ("The Rock is destined to be great.", 1),
        ("Dull\tand slow.", 0),
        ("Not quite.", 0),
    ]
    assert splits.skipped == {"empty texts": 1, "zero-valence sentences": 1}
    # Only negative sentences: the classes are still VADER's two.
    only = splits_of(**data, max_examples=1, eval_fraction=0)
    assert only.labels == ["negative", "positive"]
    one_line_error("label 'negative' is not one of the classes", **data, labels=["positive"])


def test_vader_errors(tmp_path):
    path = tmp_path / "x_GroundTruth.txt"
    data = dict(source="vader", task="classification", train_files=[str(path)])
    one_line_error(r"no files match .*x_GroundTruth.txt.*run `make data-vader`", **data)
    path.write_text("1\t0.5\tfine\n2 -0.5 no tabs\n")
    one_line_error(r"x_GroundTruth.txt:2: expected 'id<TAB>mean valence<TAB>sentence'", **data)
    path.write_text("1\tvery\tfine\n")
    one_line_error(r"x_GroundTruth.txt:1: valence 'very' is not a number", **data)
    with pytest.raises(ConfigError, match="vader source provides .*classification"):
        splits_of(source="vader", train_files=[str(path)])


def test_real_vader_movie_reviews():
    path = REPO / "data/vader/movieReviewSnippets_GroundTruth.txt"
    if not path.is_file():
        pytest.skip("the VADER ground truth is not fetched: run `make data-vader`")
    splits = splits_of(source="vader", task="classification", train_files=[str(path)])
    labels = [label for _, label in splits.train]
    # The published counts: 10,605 sentences, 5,242 positive, 5,326 negative, the rest zero.
    assert (labels.count(1), labels.count(0)) == (5242, 5326)
    assert splits.skipped == {"zero-valence sentences": 10605 - 5242 - 5326}


# gettext


def write_mo(path, messages, charset="UTF-8", encoding="utf-8"):
    """A minimal msgfmt: {msgid: msgstr} with msgids 'ctx\\x04id' and (singular, plural) keys
    whose values are lists of forms, written in GNU .mo format (little-endian)."""
    header = (
        f"Content-Type: text/plain; charset={charset}\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
    )
    entries = {b"": header.encode()}
    for key, value in messages.items():
        msgid = "\0".join(key) if isinstance(key, tuple) else key
        msgstr = "\0".join(value) if isinstance(value, list) else value
        entries[msgid.encode(encoding)] = msgstr.encode(encoding)
    keys = sorted(entries)
    n = len(keys)
    ids_offset, strs_offset = 28, 28 + 8 * n
    data_offset = strs_offset + 8 * n
    tables, blob = [], b""
    for strings in ([k for k in keys], [entries[k] for k in keys]):
        table = []
        for s in strings:
            table.append((len(s), data_offset + len(blob)))
            blob += s + b"\0"
        tables.append(table)
    out = struct.pack("<7I", 0x950412DE, 0, n, ids_offset, strs_offset, 0, 0)
    for table in tables:
        out += b"".join(struct.pack("<2I", length, offset) for length, offset in table)
    path.write_bytes(out + blob)
    return path


def test_gettext(tmp_path):
    write_mo(
        tmp_path / "b.mo",
        {
            "Open file": "Datei öffnen",
            "menu\x04Quit": "Beenden",
            ("%d file", "%d files"): ["%d Datei", "%d Dateien"],
            "Untranslated": "",
            "OK": "OK",
            "Line one\nline two": "Zeile eins\nZeile zwei",
        },
    )
    write_mo(tmp_path / "a.mo", {"Open file": "Datei öffnen", "Save": "Speichern"})
    write_mo(tmp_path / "c.mo", {"Café": "Café au lait"}, encoding="latin-1")  # says UTF-8
    data = dict(source="gettext", task="seq2seq", train_files=[f"{tmp_path}/*.mo"])
    splits = splits_of(**data)
    # Files in name order, each catalog in msgid byte order (as msgfmt writes them).
    assert splits.train == [
        ("Open file", "Datei öffnen"),
        ("Save", "Speichern"),
        ("%d file", "%d Datei"),
        ("Line one\nline two", "Zeile eins\nZeile zwei"),
        ("Quit", "Beenden"),
    ]
    assert splits.skipped == {
        "duplicate pairs": 1,
        "identical pairs": 1,
        "undecodable catalogs": 1,
        "untranslated messages": 1,
    }


def test_gettext_errors(tmp_path):
    data = dict(source="gettext", task="seq2seq", train_files=[f"{tmp_path}/*.mo"])
    one_line_error(r"no files match .*\*.mo.*install German message catalogs", **data)
    (tmp_path / "x.mo").write_bytes(b"not a catalog at all, no magic")
    one_line_error(r"x.mo is not a gettext .mo catalog", **data)
    write_mo(tmp_path / "x.mo", {"Same": "Same"})
    one_line_error(r"the gettext source holds no examples \(skipped: 1 identical pairs\)", **data)
    with pytest.raises(ConfigError, match="gettext source provides .*seq2seq"):
        splits_of(source="gettext", train_files=data["train_files"])


def test_system_gettext_catalogs():
    import glob

    if not glob.glob(SYSTEM_CATALOGS):
        pytest.skip(f"no German gettext catalogs on this machine ({SYSTEM_CATALOGS})")
    splits = splits_of(source="gettext", task="seq2seq", train_files=[SYSTEM_CATALOGS])
    assert len(splits.train) > 100
    assert len(set(splits.train)) == len(splits.train)
    assert all(source and target and source != target for source, target in splits.train)


# TFDS, built from local examples


REVIEWS = {
    "train": [
        {"text": "a fine film", "label": "pos"},
        {"text": "dull, überlang", "label": "neg"},
        {"text": "great", "label": "pos"},
        {"text": "bad", "label": "neg"},
    ],
    "test": [{"text": "lovely", "label": "pos"}],
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    folder = build_tfds_dataset("reviews", data_dir, REVIEWS, labels=["neg", "pos"])
    assert folder == data_dir / "reviews" / "1.0.0"
    pairs = {"train": [{"en": "Open", "de": "Öffnen"}, {"en": "Save", "de": "Speichern"}]}
    build_tfds_dataset("pairs", data_dir, pairs)
    return str(data_dir)


def test_tfds_classification(tfds_dir):
    data = dict(source="tfds", task="classification", tfds_name="reviews", tfds_data_dir=tfds_dir)
    splits = splits_of(**data, tfds_eval_split="test")
    expected = [(r["text"], ["neg", "pos"].index(r["label"])) for r in REVIEWS["train"]]
    assert (splits.train, splits.eval) == (expected, [("lovely", 1)])
    assert splits.labels == ["neg", "pos"]  # the ClassLabel names
    swapped = splits_of(**data, labels=["pos", "neg"], max_examples=2)
    assert swapped.train == [("a fine film", 0), ("dull, überlang", 1)]
    one_line_error(
        r"TFDS reviews train:example 1: label 'neg' is not one of the classes",
        **data,
        labels=["pos"],
    )
    held = load_splits(DataConfig(**data, eval_fraction=0.5))
    assert (held.train, held.eval) == (expected[0::2], expected[1::2])


@pytest.mark.parametrize("task", ["seq2seq", "completion"])
def test_tfds_pairs_and_lm(task, tfds_dir):
    data = dict(source="tfds", tfds_name="pairs", tfds_data_dir=tfds_dir, text_field="en")
    pairs = splits_of(**data, task=task, target_field="de")
    assert pairs.train == [("Open", "Öffnen"), ("Save", "Speichern")]
    assert splits_of(**data).train == ["Open", "Save"]


def test_tfds_errors(tfds_dir, tmp_path):
    data = dict(source="tfds", tfds_name="reviews", tfds_data_dir=tfds_dir)
    message = one_line_error(
        r"TFDS dataset 'missing_set' is not prepared in data_dir .*jaxlm never downloads",
        **{**data, "tfds_name": "missing_set"},
    )
    assert "tfds build missing_set" in message
    one_line_error("'reviews' is not prepared", **{**data, "tfds_data_dir": str(tmp_path)})
    one_line_error(
        r"TFDS dataset 'reviews': Unknown split 'validation'", **data, tfds_split="validation"
    )
    one_line_error(r"has no feature 'target' \(features: label, text\)", **data, task="seq2seq")
    one_line_error("data.tfds_name is empty", source="tfds")
    with pytest.raises(DataError, match="'reviews'.*already"):
        build_tfds_dataset("reviews", tfds_dir, REVIEWS, labels=["neg", "pos"])


def test_tfds_mock_data_schema():
    """A registered dataset's schema through the tfds source (mock data: random text)."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = splits_of(source="tfds", task="classification", tfds_name="imdb_reviews")
    assert splits.labels == ["neg", "pos"]
    assert len(splits.train) == 4
    assert all(isinstance(text, str) and label in (0, 1) for text, label in splits.train)
