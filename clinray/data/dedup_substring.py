"""Exact-substring dedup (Lee et al. 2021): repeated byte spans found with a suffix array and removed.

The paper runs it twice, with length thresholds of 400 then 100 bytes. Within one *shard* the texts,
sorted by id, are UTF-8 encoded and concatenated with a ``0xFF`` separator (a byte that never occurs in
UTF-8, so no match can cross a document boundary without containing it); pydivsufsort builds the suffix
array and the LCP array (Kasai). A run of adjacent suffixes whose LCP is at least ``L`` are occurrences
of one repeated string of at least ``L`` bytes; every member of a run other than the smallest position
(the document whose id sorts first) is a repeat, and marking ``[pos, pos + L)`` for each such member
covers exactly the bytes of every later copy (every shift of a long match is itself in a run). The
whole computation is vectorized numpy, O(n) after the suffix array.

Removal works on whole words. Each maximal marked span is shrunk inward so that it cuts no word: an
edge that falls inside a word (``\\w`` characters; every non-ASCII byte counts as a word byte, so a
cut is always next to an ASCII space or punctuation byte and never splits a UTF-8 character) moves to
that word's boundary, inside the span; spaces and punctuation at the edges go with the span. A span
left shorter than ``L`` is kept whole. The seam is one space, or one newline when the removed text held
one, and the text is normalized again. The shrink is a few vectorized passes over the marked bytes
(precomputed non-word positions, ``searchsorted`` per edge): O(1) per span after them. The price: a
repeat inside one long "word" (a URL, unspaced CJK text) is not removed.

Sharding (corpora larger than memory): the id-sorted dataset is cut into contiguous shards of at most
``shard_bytes`` of text, one Ray task each. Peak memory is about ``MEMORY_BYTES_PER_INPUT_BYTE`` times
the shard's text (measured by ``benchmarks/dedup_substring.py``): the text, the int32/int64 suffix
array and LCP array, and a few per-byte masks. What sharding misses: a span repeated *across* shards
but not within one is not found, so the first shard keeps its copy and later shards keep theirs.
Lee et al. merge per-shard suffix arrays to close that gap; here it is a documented approximation
whose cost shrinks as shards grow (the same passage is usually repeated within a shard too).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from clinray.data.stage import DETAIL, REASON, GlobalStage
from clinray.data.text import normalize_text, word_tokens

SEPARATOR = 0xFF
#: Rough peak bytes of working memory per byte of shard text (see the module docstring).
MEMORY_BYTES_PER_INPUT_BYTE = 16
#: Bytes that belong to a word: ASCII letters, digits and ``_`` (as ``\w``), and every non-ASCII byte.
WORD_BYTE = np.zeros(256, dtype=bool)
WORD_BYTE[[ord(c) for c in "0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]] = True
WORD_BYTE[0x80:SEPARATOR] = True
NEWLINE = 0x0A


@dataclass(kw_only=True, slots=True)
class SubstringConfig:
    """Exact-substring dedup (suffix array)."""

    enabled: bool = True
    """Run the passes at all."""
    thresholds: list[int] = field(default_factory=lambda: [400, 100])
    """Minimum repeated span in bytes, one pass per entry, in order (the paper: 400 then 100)."""
    mode: Literal["keep_first", "remove_all"] = "keep_first"
    """``keep_first``: the copy in the document whose id sorts first stays; ``remove_all``: every copy goes."""
    shard_bytes: int = 256 * 1024 * 1024
    """Most text bytes per suffix-array shard (peak memory is about 16x this per task)."""
    min_words_after: int = 1
    """A document left with fewer words after removal is dropped (reason ``substring_emptied``)."""

    def __post_init__(self):
        if not self.thresholds or any(t < 1 for t in self.thresholds):
            raise ValueError(f"substring.thresholds must be positive byte lengths, got {self.thresholds}")
        if self.shard_bytes < 1024:
            raise ValueError(f"substring.shard_bytes must be at least 1024, got {self.shard_bytes}")
        if self.min_words_after < 0:
            raise ValueError("substring.min_words_after must be >= 0")


def concat_docs(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 texts joined by ``0xFF``; returns (writable uint8 array, start offset of each text)."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    data = np.frombuffer(bytes([SEPARATOR]).join(encoded), dtype=np.uint8).copy()  # pydivsufsort writes
    return data, starts


def repeat_mask(data: np.ndarray, *, min_len: int, keep_first: bool = True) -> np.ndarray:
    """Boolean mask of the bytes of ``data`` inside a repeated span of at least ``min_len`` bytes.

    With ``keep_first`` the earliest occurrence of each repeated string is left unmarked. The mask is
    exact (byte level); :func:`word_spans` turns it into the spans that are removed.
    """
    from pydivsufsort import divsufsort, kasai

    n = len(data)
    if n < 2 * min_len:
        return np.zeros(n, dtype=bool)
    sa = divsufsort(data)
    lcp = kasai(data, sa)  # lcp[i] = common prefix of suffixes sa[i] and sa[i + 1]
    linked = lcp >= min_len
    del lcp
    prev = np.zeros(n, dtype=bool)
    prev[1:] = linked[:-1]
    member = linked | prev
    idx = np.flatnonzero(member)
    if idx.size == 0:
        return np.zeros(n, dtype=bool)
    pos = sa[idx].astype(np.int64)
    del sa
    # A match of min_len bytes must not contain a separator (then every member of its run is clean).
    seps = np.flatnonzero(data == SEPARATOR)
    next_sep = np.append(seps, n)[np.searchsorted(seps, pos)]
    clean = next_sep - pos >= min_len
    run_start = ~prev[idx]
    run_id = np.cumsum(run_start) - 1
    if keep_first:
        run_min = np.minimum.reduceat(pos, np.flatnonzero(run_start))
        marked = pos[clean & (pos != run_min[run_id])]
    else:
        marked = pos[clean]
    diff = np.zeros(n + 1, dtype=np.int32)
    diff[marked] += 1  # suffix positions are unique, so plain fancy indexing adds once per position
    diff[marked + min_len] -= 1
    return np.cumsum(diff[:n], dtype=np.int32) > 0


def word_spans(data: np.ndarray, cover: np.ndarray, *, min_len: int) -> tuple[np.ndarray, ...]:
    """The maximal runs of ``cover`` shrunk inward to whole words, those still ``min_len`` bytes long.

    Returns ``(starts, ends, has_newline)``: half-open byte spans of ``data`` in increasing order and
    whether each removed span holds a newline. An edge inside a word (word bytes on both sides of it)
    moves inward to that word's boundary; any other edge stays.
    """
    edges = np.flatnonzero(np.diff(cover.view(np.int8), prepend=0, append=0))
    starts, ends = edges[::2], edges[1::2]
    if starts.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=bool)
    inside = np.flatnonzero(cover)
    covered = data[inside]
    breaks = inside[~WORD_BYTE[covered]]  # non-word bytes inside the runs, in order
    newlines = inside[covered == NEWLINE]
    n = len(data)
    word = WORD_BYTE[data[np.concatenate([starts - 1, starts, ends - 1, np.minimum(ends, n - 1)])]]
    k = starts.size
    cut_start = (starts > 0) & word[:k] & word[k : 2 * k]
    cut_end = (ends < n) & word[2 * k : 3 * k] & word[3 * k :]
    # start inside a word: the span starts at the first non-word byte after it (none: nothing left)
    first = np.searchsorted(breaks, starts)
    after = np.append(breaks, n)[first]
    starts = np.where(cut_start, np.minimum(after, ends), starts)
    # end inside a word: the span ends after the last non-word byte before it
    last = np.searchsorted(breaks, ends) - 1
    before = np.where(last >= 0, np.append(breaks, -1)[last] + 1, 0)
    ends = np.where(cut_end, np.maximum(before, starts), ends)
    keep = ends - starts >= min_len
    starts, ends = starts[keep], ends[keep]
    has_newline = np.searchsorted(newlines, ends) > np.searchsorted(newlines, starts)
    return starts, ends, has_newline


def remove_repeats(texts: list[str], *, min_len: int, keep_first: bool = True) -> tuple[list[str], list[int]]:
    """Texts with repeated spans removed on word boundaries, and the bytes removed from each.

    A changed text is normalized again; its count is the true difference of UTF-8 bytes.
    """
    if not texts:
        return [], []
    data, doc_starts = concat_docs(texts)
    cover = repeat_mask(data, min_len=min_len, keep_first=keep_first)
    starts, ends, has_newline = word_spans(data, cover, min_len=min_len)
    del cover
    out, removed = list(texts), [0] * len(texts)
    if starts.size == 0:
        return out, removed
    doc_of = np.searchsorted(doc_starts, starts, side="right") - 1
    doc_ends = np.append(doc_starts[1:] - 1, len(data))
    view = memoryview(data)
    bounds = np.flatnonzero(np.diff(doc_of, prepend=-1, append=len(texts)))
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        d = int(doc_of[lo])
        pieces, prev = [], int(doc_starts[d])
        for s, e, nl in zip(starts[lo:hi].tolist(), ends[lo:hi].tolist(), has_newline[lo:hi].tolist()):
            pieces += [view[prev:s], b"\n" if nl else b" "]
            prev = e
        pieces.append(view[prev : int(doc_ends[d])])
        text = normalize_text(b"".join(pieces).decode("utf-8", "surrogatepass"))
        out[d] = text
        removed[d] = int(doc_ends[d] - doc_starts[d]) - len(text.encode("utf-8", "surrogatepass"))
    return out, removed


def stage_name(min_len: int) -> str:
    return f"substring_{min_len}"


class SubstringStage(GlobalStage):
    """The substring passes as a :class:`GlobalStage`: one marking pass per threshold, in one shard task.

    A shard is the unit of the global view, so the analysis (suffix array) runs inside the shard's
    task with the marking; the driver-side analysis only plans the shards.
    """

    name = "substring"
    requires = ("id", "text")

    def __init__(self, cfg: SubstringConfig, *, sink_root: str):
        super().__init__(sink_root=sink_root)
        self.cfg = cfg

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage_name(t) for t in self.cfg.thresholds)

    def analyze(self, ds) -> int:
        """The number of shards (at most ``shard_bytes`` of text each)."""
        return max(1, math.ceil(ds.size_bytes() / self.cfg.shard_bytes))

    def partition(self, ds, analysis: int):
        # One shard needs no global sort (mark sorts its rows); several need contiguous id ranges.
        if analysis == 1:
            return ds.repartition(1)
        return ds.sort("id").materialize().repartition(analysis)

    def mark(self, rows: list[dict], analysis: int, *, step: int, counters: Counter) -> list[dict]:
        rows.sort(key=lambda r: r["id"])
        texts, removed = remove_repeats(
            [r["text"] for r in rows],
            min_len=self.cfg.thresholds[step],
            keep_first=self.cfg.mode == "keep_first",
        )
        for row, text, num in zip(rows, texts, removed):
            if text == row["text"]:
                continue
            counters["num_docs_modified"] += 1
            counters["num_bytes_removed"] += num
            row["text"] = text
            if len(word_tokens(text)) < self.cfg.min_words_after:
                row[REASON], row[DETAIL] = "substring_emptied", f"{num} repeated bytes removed"
        return rows


def substring_dedup(ds, cfg: SubstringConfig | None = None, *, sink_root: str):
    """The substring passes on a working-schema dataset: sort by id, shard, suffix-array each shard.

    The input is materialized (every pass needs the whole shard); the passes themselves are lazy.
    """
    return SubstringStage(cfg or SubstringConfig(), sink_root=str(sink_root)).apply(ds)
