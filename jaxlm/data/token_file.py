"""Pre-tokenized token files: memory-mapped token ids and packed causal-LM batches in NumPy.

    write_token_file(documents, tokenizer, "train.tokens")
    train, held_out = TokenFile.open("train.tokens").split(0.05)
    for batch in train.batches(seq_len=128, batch_size=32, seed=0, start=step): ...

A token file holds its documents as `[bos] ids [eos]`, one after another, as uint16 (vocabulary
up to 65,536) or uint32; the sidecar `PATH.json` records the dtype, token and document counts,
vocabulary size, special ids and the tokenizer's fingerprint (`fingerprint()`: a sha256 of
what decides its ids). Any tokenizer jaxlm reads writes them. Reading needs neither TensorFlow
nor the tokenizer.

Batches have the format of `jaxlm.data.pipeline.lm_dataset`. Rows are the file's consecutive
windows of seq_len + 1 tokens, visited epoch after epoch in a seeded random order, so batch k is
a function of (seed, k) alone: resuming at batch k costs nothing, and each of several processes
reads its own contiguous block of rows of every global batch (the block
`jax.make_array_from_process_local_data` expects from it).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxlm.data.tokenizer import Tokenizer, atomic_write, document_start
from jaxlm.errors import DataError

FORMAT = "jaxlm-tokens-1"
CHUNK_DOCUMENTS = 1024  # documents tokenized per call while writing


def sidecar_path(path: str | Path) -> Path:
    return Path(f"{path}.json")


def write_token_file(
    documents: Iterable[str | Sequence[int]], tokenizer: Tokenizer, path: str | Path
) -> TokenFile:
    """Writes documents (texts, or token ids without bos/eos) as a token file and its sidecar.

    The file appears only once complete, and its sidecar after it (a stale sidecar is removed
    first). Ids outside the vocabulary, or bos/eos inside a document, raise `DataError`.
    """
    path = Path(path)
    sidecar_path(path).unlink(missing_ok=True)
    vocab_size = tokenizer.vocab_size
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    start, eos = document_start(tokenizer), tokenizer.eos_id
    count = num_documents = 0
    iterator = iter(documents)
    with atomic_write(path) as f:
        while chunk := list(itertools.islice(iterator, CHUNK_DOCUMENTS)):
            encoded = list(chunk)
            texts = [i for i, doc in enumerate(chunk) if isinstance(doc, str)]
            for i, ids in zip(
                texts, tokenizer.encode_batch([chunk[i] for i in texts]), strict=True
            ):
                encoded[i] = ids
            for number, ids in enumerate(encoded, num_documents):
                ids = np.asarray(ids, np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                    raise DataError(f"document {number} has token ids outside [0, {vocab_size})")
                if np.isin(ids, (*start, eos)).any():
                    raise DataError(f"document {number} holds the bos or eos id inside its text")
                f.write(np.concatenate([start, ids, [eos]]).astype(dtype).tobytes())
                count += len(start) + ids.size + 1
            num_documents += len(chunk)
        if not num_documents:
            raise DataError(f"no documents to write to {path}")
    meta = {
        "format": FORMAT,
        "dtype": dtype.name,
        "tokens": count,
        "documents": num_documents,
        "vocab_size": vocab_size,
        "bos_id": start[0] if start else None,
        "eos_id": eos,
        "tokenizer_sha256": tokenizer.fingerprint(),
    }
    with atomic_write(sidecar_path(path)) as f:
        f.write(json.dumps(meta, indent=2).encode())
    return TokenFile.open(path)


@dataclass(eq=False)
class TokenFile:
    """The tokens of a token file (a memory map, or a slice of one) and its sidecar values."""

    path: Path
    tokens: np.ndarray  # [count] uint16 | uint32
    vocab_size: int
    bos_id: int | None  # None: documents start after an eos
    eos_id: int
    tokenizer_sha256: str
    _order_cache: tuple = field(default=(None, None), init=False, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> TokenFile:
        """Maps a token file, reading it once to check its ids; a missing, truncated or
        inconsistent one raises `DataError`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"token file not found: {path} (write one with `jaxlm data tokenize`)")
        meta = _read_sidecar(path)
        dtype = np.dtype(meta["dtype"])
        size = path.stat().st_size
        if size != meta["tokens"] * dtype.itemsize:
            raise DataError(
                f"{path} holds {size} bytes but its sidecar says {meta['tokens']} {dtype.name} "
                "tokens: the file is truncated or not the one the sidecar describes"
            )
        tokens = np.memmap(path, dtype, mode="r") if size else np.zeros(0, dtype)
        if tokens.size and int(tokens.max()) >= meta["vocab_size"]:
            bad = int(np.argmax(tokens >= meta["vocab_size"]))
            raise DataError(
                f"{path}: token {bad} is id {int(tokens[bad])}, outside the sidecar's "
                f"vocabulary of {meta['vocab_size']}"
            )
        return cls(
            path,
            tokens,
            meta["vocab_size"],
            meta["bos_id"],
            meta["eos_id"],
            meta["tokenizer_sha256"],
        )

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raises `DataError` unless `tokenizer` is the one the file was written with."""
        if tokenizer.fingerprint() != self.tokenizer_sha256:
            raise DataError(f"{self.path} was written with another tokenizer than the given one")

    def __len__(self) -> int:
        return len(self.tokens)

    def split(self, eval_fraction: float) -> tuple[TokenFile, TokenFile | None]:
        """(train, eval): the last `eval_fraction` of the tokens, from a document start on, are
        held out (eval is None when eval_fraction is 0)."""
        if eval_fraction == 0:
            return self, None
        cut = int(len(self.tokens) * (1 - eval_fraction))
        if self.bos_id is not None:
            starts = np.flatnonzero(self.tokens[cut:] == self.bos_id)
        else:  # a document starts after each eos
            after_eos = self.tokens[cut - 1 : -1] == self.eos_id if cut else np.zeros(0, bool)
            starts = np.flatnonzero(after_eos)
        if not starts.size:
            raise DataError(
                f"data.eval_fraction={eval_fraction} holds out no whole document of {self.path}"
            )
        cut += int(starts[0])
        if cut == 0:
            raise DataError(
                f"data.eval_fraction={eval_fraction} leaves no training tokens in {self.path}"
            )
        return self._slice(0, cut), self._slice(cut, len(self.tokens))

    def _slice(self, start: int, stop: int) -> TokenFile:
        return TokenFile(
            self.path,
            self.tokens[start:stop],
            self.vocab_size,
            self.bos_id,
            self.eos_id,
            self.tokenizer_sha256,
        )

    def num_rows(self, seq_len: int) -> int:
        return len(self.tokens) // (seq_len + 1)

    def batches(
        self,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        start: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        repeat: bool = True,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches `start, start + 1, ...`: dicts of [batch_size // process_count, seq_len]
        arrays, this process's rows of each global batch.

        With shuffle, epoch e visits the rows in the order of a permutation seeded by (seed, e);
        without repeat, the iterator ends after the last full batch of the first epoch.
        """
        rows = self.num_rows(seq_len)
        if rows == 0:
            raise DataError(
                f"{self.path}: {len(self.tokens)} tokens are fewer than one row of "
                f"seq_len + 1 = {seq_len + 1}"
            )
        if batch_size % process_count:
            raise DataError(
                f"batch_size {batch_size} cannot be split over {process_count} processes"
            )
        last = rows // batch_size if not repeat else None
        if last == 0:
            raise DataError(
                f"{self.path}: {rows} rows of {seq_len + 1} tokens are fewer than one batch "
                f"of {batch_size}"
            )
        local_size = batch_size // process_count  # this process's contiguous block of rows
        local = np.arange(local_size) + process_index * local_size
        for k in itertools.count(start) if repeat else range(start, last):
            yield self._batch(k * batch_size + local, seq_len, seed, shuffle)

    def _batch(
        self, global_rows: np.ndarray, seq_len: int, seed: int, shuffle: bool
    ) -> dict[str, np.ndarray]:
        epochs, within = np.divmod(global_rows, self.num_rows(seq_len))
        rows = within.copy()
        if shuffle:
            for epoch in np.unique(epochs):
                order = self._order(seq_len, seed, int(epoch))
                rows[epochs == epoch] = order[within[epochs == epoch]]
        windows = rows[:, None] * (seq_len + 1) + np.arange(seq_len + 1)  # [batch, seq_len + 1]
        return packed_features(np.asarray(self.tokens[windows], np.int32), self.bos_id, self.eos_id)

    def _order(self, seq_len: int, seed: int, epoch: int) -> np.ndarray:
        """The row order of an epoch (the last one is cached: batches mostly stay in one)."""
        key = (seq_len, seed, epoch)
        if self._order_cache[0] != key:
            order = np.random.default_rng([seed, epoch]).permutation(self.num_rows(seq_len))
            self._order_cache = key, order
        return self._order_cache[1]


def packed_features(tokens: np.ndarray, bos_id: int | None, eos_id: int) -> dict[str, np.ndarray]:
    """Model inputs of packed rows of token ids, [batch, seq_len + 1].

    A document ends after an eos and starts at a bos (or after the eos, without bos): inputs
    there get a new segment id and position 0, and a target from another document than its
    input gets weight 0.
    """
    boundary = tokens[:, :-1] == eos_id  # [batch, seq_len]
    if bos_id is not None:
        boundary |= tokens[:, 1:] == bos_id
    inputs = tokens[:, :-1]
    new_segment = np.concatenate(
        [np.zeros_like(boundary[:, :1]), boundary[:, :-1]], axis=1
    )  # [batch, seq_len]: a segment starts at input j when j-1, j are a boundary
    segment_ids = 1 + np.cumsum(new_segment, axis=1)
    index = np.broadcast_to(np.arange(inputs.shape[1]), inputs.shape)
    segment_start = np.maximum.accumulate(np.where(new_segment, index, 0), axis=1)
    return {
        "inputs": inputs,
        "targets": tokens[:, 1:],
        "weights": (~boundary).astype(np.float32),
        "positions": (index - segment_start).astype(np.int32),
        "segment_ids": segment_ids.astype(np.int32),
    }


def _read_sidecar(path: Path) -> dict:
    sidecar = sidecar_path(path)
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{path} has no sidecar {sidecar.name}: write it with `jaxlm data tokenize`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {sidecar}: {e}") from None
    keys = ("format", "dtype", "tokens", "vocab_size", "bos_id", "eos_id", "tokenizer_sha256")
    if (
        not isinstance(meta, dict)
        or meta.get("format") != FORMAT
        or not all(k in meta for k in keys)
    ):
        raise DataError(f"{sidecar} is not a {FORMAT} sidecar (keys: {', '.join(keys)})")
    if meta["dtype"] not in ("uint16", "uint32"):
        raise DataError(f"{sidecar}: dtype {meta['dtype']!r} is not uint16 or uint32")
    return meta
