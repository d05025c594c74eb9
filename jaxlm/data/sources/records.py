"""Records, where they were found, and the class labels checked as they are read."""

from __future__ import annotations

from collections.abc import Sequence

from jaxlm.errors import DataError

# A record is (example, where): the example with a raw label (a class name or an index) for
# classification, and where it was found, e.g. ("file.jsonl", 3), for error messages.
Record = tuple[object, tuple]
# Tasks whose examples are (text, target) pairs: data.text_field and data.target_field.
PAIR_TASKS = ("seq2seq", "completion")
# Tasks whose examples are conversations: data.messages_field.
CONVERSATION_TASKS = ("chat",)


def _where(where: tuple) -> str:
    return ":".join(map(str, where))


class _Labels:
    """Raw class labels (names or indices) -> class indices, checked against `data.labels`.

    Without `data.labels` the classes are the source's own names (a ClassLabel feature, VADER's
    negative/positive), else the sorted names found, else `0 .. max index found`.
    """

    def __init__(self, names: Sequence[str]):
        self.given = list(names)
        self.source_names: list[str] = []
        self.found: set = set()

    def check(self, label, where: tuple) -> None:
        """A label outside the classes raises `DataError` naming it and where it was found."""
        names = self.given or self.source_names
        if isinstance(label, str):
            if names and label not in names:
                raise DataError(
                    f"{_where(where)}: label {label!r} is not one of the classes "
                    f"({', '.join(names)}); set data.labels to the class names"
                )
        elif isinstance(label, int) and not isinstance(label, bool):
            if label < 0 or (names and label >= len(names)):
                classes = f"{len(names)} classes" if names else "indices must be >= 0"
                raise DataError(f"{_where(where)}: label index {label} is out of range ({classes})")
        else:
            raise DataError(
                f"{_where(where)}: label {label!r} is neither a class name nor a class index"
            )
        self.found.add(label)
        kinds = {type(found) for found in self.found}
        if len(kinds) > 1 and not names:
            raise DataError(
                f"{_where(where)}: labels mix class names and indices: set data.labels to "
                "the class names in index order"
            )

    def names(self) -> list[str]:
        if self.given or self.source_names:
            return self.given or self.source_names
        if all(isinstance(label, str) for label in self.found):
            return sorted(self.found)
        return [str(i) for i in range(max(self.found) + 1)] if self.found else []

    def indexed(self, examples: list) -> list[tuple[str, int]]:
        index = {name: i for i, name in enumerate(self.names())}
        return [
            (text, index[label] if isinstance(label, str) else label) for text, label in examples
        ]
