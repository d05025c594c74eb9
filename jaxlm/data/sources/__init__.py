"""Data sources: the examples of a task, read from files or TFDS and split into train and eval.

    splits = load_splits(cfg.data)   # Splits(train, eval, labels, skipped)

Examples by `data.task`: causal_lm, masked_lm and span_corruption take documents (`str`);
classification takes `(text, label index)` with `Splits.labels` the class names; seq2seq takes
`(source, target)`.

Sources (`data.source`), all reading `data.train_files` (paths or globs) except tfds:

- text: UTF-8 text files, one document per file, paragraph or line (`data.document_unit`).
- jsonl: one JSON object per line, with the fields `data.text_field`, `data.label_field` (a class
  name or index) and `data.target_field`. Whitespace-only lines are ignored.
- tfds: a prepared TensorFlow Datasets dataset, never downloaded; `build_tfds_dataset` prepares
  one from local examples. Class names come from a ClassLabel feature.
- vader: the VADER sentiment ground truth (Hutto & Gilbert, ICWSM 2014), lines of
  `id<TAB>mean valence<TAB>sentence`, labelled negative or positive by the sign of the valence.
- gettext: English -> German message pairs of compiled gettext catalogs (`.mo`). A plural entry
  gives its singular pair (msgid -> msgstr[0]); message contexts are dropped.
- tokens: a pre-tokenized token file, read by `jaxlm.data.token_file`, not here.

Bad data is either a one-line `DataError` naming the file and line (or byte offset), or a skip
counted in `Splits.skipped`: files without text, empty texts, zero-valence VADER sentences,
gettext catalogs whose bytes do not match their declared charset, empty, untranslated and
duplicate gettext pairs.
"""

from jaxlm.data.sources.splits import Splits, load_splits
from jaxlm.data.sources.tfds import build_tfds_dataset

__all__ = ["Splits", "build_tfds_dataset", "load_splits"]
