"""Packing SFT samples into fixed-length rows: best-fit decreasing over the whole dataset, or wrapped.

``bfd`` (the default) sorts every sample by length, longest first, and puts each into the open row
whose free space fits it most tightly (a segment tree over free-space values finds it in
``O(log seq_len)``), opening a row when none fits. It runs over the whole dataset at once, not TRL's
windows of 1,000 samples, and samples are never cut. ``wrapped`` is the paper's literal "concatenate
across the dataset": samples in a seeded order, cut every ``seq_len`` tokens, so a sample may continue
in the next row (its second piece starts without its prompt; counted as ``split``). ``none`` is one
sample per row, padded: the baseline packing is measured against.

Each epoch is packed anew from ``seed + epoch`` (ties of equal length broken by a seeded key, rows in a
seeded order), so epochs differ and a run is reproducible. Rows keep every sample's boundaries
(``seq_lens``): the loop restarts ``position_ids`` at each one, and the label of each sample's first
token is ``-100`` so no sample learns from its predecessor. Samples longer than ``seq_len`` are dropped
(``too_long``) or truncated, and samples left with no trainable token are dropped
(``no_trainable_tokens``): both counted in the report, never lost silently. The trade-off: the whole
dataset's lengths are held on the driver (8 bytes a sample), in exchange for the best fill.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Literal

import numpy as np

from clinray.sft.encode import EncodedSample
from clinray.train.data import IGNORE_INDEX

__all__ = ["Piece", "PackingReport", "plan_rows", "materialize_rows", "pack_epoch", "filter_samples"]

Strategy = Literal["bfd", "wrapped", "none"]


@dataclasses.dataclass(frozen=True, slots=True)
class Piece:
    """Tokens ``[start, stop)`` of sample ``index`` placed in a row."""

    index: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


class _FreeSpace:
    """Open rows by free space; ``best(n)`` is a row with the least free space >= n (segment tree)."""

    def __init__(self, capacity: int):
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = [0] * (2 * self.size)
        self.rows: dict[int, list[int]] = {}

    def _bump(self, free: int, delta: int) -> None:
        i = free + self.size
        while i:
            self.count[i] += delta
            i //= 2

    def add(self, row: int, free: int) -> None:
        if free > 0:
            self.rows.setdefault(free, []).append(row)
            self._bump(free, 1)

    def take(self, need: int) -> tuple[int, int] | None:
        """Remove and return ``(row, free)`` of the tightest row with free >= need, or None."""
        free = self._leftmost(1, 0, self.size - 1, need)
        if free is None:
            return None
        row = self.rows[free].pop()
        self._bump(free, -1)
        return row, free

    def _leftmost(self, node: int, lo: int, hi: int, need: int) -> int | None:
        """The smallest free-space value >= need held by an open row, under ``node`` (covers lo..hi)."""
        if hi < need or self.count[node] == 0:
            return None
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        found = self._leftmost(2 * node, lo, mid, need)
        return found if found is not None else self._leftmost(2 * node + 1, mid + 1, hi, need)


def plan_rows(lengths: Sequence[int], seq_len: int, *, strategy: Strategy, seed: int) -> list[list[Piece]]:
    """The rows of one epoch as pieces of samples, in a seeded order (lengths must be <= seq_len)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > seq_len:
        raise ValueError(f"a sample of {int(lengths.max())} tokens exceeds seq_len {seq_len}: filter first")
    rng = np.random.default_rng(seed)
    if strategy == "none":
        rows = [[Piece(int(i), 0, int(n))] for i, n in enumerate(lengths)]
    elif strategy == "wrapped":
        rows, row, used = [], [], 0
        for i in rng.permutation(len(lengths)):
            start, n = 0, int(lengths[i])
            while start < n:
                take = min(n - start, seq_len - used)
                row.append(Piece(int(i), start, start + take))
                start, used = start + take, used + take
                if used == seq_len:
                    rows.append(row)
                    row, used = [], 0
        if row:
            rows.append(row)
    elif strategy == "bfd":
        order = np.lexsort((rng.random(len(lengths)), -lengths))  # longest first, ties seeded
        free = _FreeSpace(seq_len)
        rows = []
        for i in order:
            n = int(lengths[i])
            found = free.take(n)
            if found is None:
                row, space = len(rows), seq_len
                rows.append([])
            else:
                row, space = found
            rows[row].append(Piece(int(i), 0, n))
            free.add(row, space - n)
    else:
        raise ValueError(f"unknown packing strategy {strategy!r}: bfd, wrapped or none")
    return [rows[i] for i in rng.permutation(len(rows))]


def filter_samples(
    samples: Sequence[EncodedSample],
    seq_len: int,
    *,
    overlong: Literal["drop", "truncate"],
    rejected: list[tuple[EncodedSample, str]] | None = None,
) -> tuple[list[EncodedSample], Counter]:
    """Samples that fit (truncated when asked) and have a trainable token; the rest counted by reason
    (and appended to ``rejected`` as ``(sample as read, reason)`` when a list is given)."""
    kept, dropped = [], Counter()
    for sample in samples:
        read = sample
        if len(sample) > seq_len:
            if overlong == "drop":
                dropped["too_long"] += 1
                if rejected is not None:
                    rejected.append((read, "too_long"))
                continue
            sample = dataclasses.replace(
                sample, input_ids=sample.input_ids[:seq_len], labels=sample.labels[:seq_len]
            )
            dropped["truncated (kept)"] += 1
        if (sample.labels[1:] != IGNORE_INDEX).sum() == 0:  # the first token is never a target
            dropped["no_trainable_tokens"] += 1
            if rejected is not None:
                rejected.append((read, "no_trainable_tokens"))
            continue
        kept.append(sample)
    return kept, dropped


def materialize_rows(
    rows: list[list[Piece]], samples: Sequence[EncodedSample], seq_len: int, *, pad_id: int
) -> dict[str, list]:
    """Columns of the packed rows: ``input_ids``, ``labels`` (padded to ``seq_len``), ``seq_lens``,
    ``sources`` and ``sample_ids`` (one entry per piece)."""
    out: dict[str, list] = {k: [] for k in ("input_ids", "labels", "seq_lens", "sources", "sample_ids")}
    for row in rows:
        ids = np.full(seq_len, pad_id, dtype=np.int32)
        labels = np.full(seq_len, IGNORE_INDEX, dtype=np.int32)
        at = 0
        for piece in row:
            sample = samples[piece.index]
            n = len(piece)
            ids[at : at + n] = sample.input_ids[piece.start : piece.stop]
            labels[at : at + n] = sample.labels[piece.start : piece.stop]
            labels[at] = IGNORE_INDEX  # never predict a sample's first token from the previous sample
            at += n
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["seq_lens"].append(np.asarray([len(p) for p in row], dtype=np.int32))
        out["sources"].append([samples[p.index].source for p in row])
        out["sample_ids"].append([samples[p.index].id for p in row])
    return out


@dataclasses.dataclass(kw_only=True)
class PackingReport:
    """How one epoch packed: fill rate, samples per row, samples split across rows."""

    epoch: int
    strategy: str
    seq_len: int
    rows: int
    samples: int
    tokens: int
    """Non-padding tokens."""
    trainable_tokens: int
    split: int
    """Samples cut across rows (``wrapped`` only)."""

    @property
    def fill(self) -> float:
        return self.tokens / max(1, self.rows * self.seq_len)

    def to_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "fill": round(self.fill, 5),
            "samples_per_row": round(self.samples / max(1, self.rows), 3),
        }


def pack_epoch(
    samples: Sequence[EncodedSample], seq_len: int, *, strategy: Strategy, seed: int, epoch: int, pad_id: int
) -> tuple[dict[str, list], PackingReport]:
    """Pack one epoch (seeded by ``seed + epoch``): the row columns and the epoch's report."""
    rows = plan_rows([len(s) for s in samples], seq_len, strategy=strategy, seed=seed + epoch)
    columns = materialize_rows(rows, samples, seq_len, pad_id=pad_id)
    pieces = Counter(p.index for row in rows for p in row)
    report = PackingReport(
        epoch=epoch,
        strategy=strategy,
        seq_len=seq_len,
        rows=len(rows),
        samples=len(samples),
        tokens=int(sum(len(s) for s in samples)),
        trainable_tokens=int(sum(int((np.asarray(lab) != IGNORE_INDEX).sum()) for lab in columns["labels"])),
        split=sum(1 for n in pieces.values() if n > 1),
    )
    return columns, report
