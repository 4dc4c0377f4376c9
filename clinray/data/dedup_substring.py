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

Shards, and repeats across them. The corpus (in id order: corpus order) is cut into contiguous id ranges
of about equal *text bytes* (:mod:`clinray.data.dedup_substring_shards`): ``ceil(text / shard_bytes)``
shards (8 MiB each by default: the suffix array's cost per byte grows with its input, 84 ns/B at 6 MB
against 141 at 100 MB), raised to the cluster's CPUs while each keeps ``min_shard_bytes``, at most
``MAX_SHARDS`` (past that the shards grow; overridable: ``num_shards``).
A shard's suffix array finds every repeat whose earlier copy is in the same shard. A repeat whose earlier
copy is in *another* shard is found by a fingerprint shuffle (:mod:`clinray.data.dedup_substring_cross`):
winnowed hashes of ``w``-byte grams (``t = ceil(L / 4)``, ``w = L - t + 1``) give every ``L``-byte
string a fingerprint at the same offset in all its copies; hashes selected in two shards are
*shared*; each shard sends the ``L + t - 1`` bytes around each shared fingerprint to the hash's
reducer, which groups the ``L``-grams, verifies them byte for byte and returns, per shard, the
``L``-grams whose content occurs in an earlier shard (runs of start positions). The shard marks them
with its own repeats (:func:`repeat_mask`) and removes as before. The result is **exactly** what one
suffix array over the whole corpus removes, for any shard count (tests: a brute-force scan, one suffix
array over random corpora cut at random, the tiny world at 1, 4 and 14 shards). Hash collisions cost
work, never a wrong or missed mark.

Cost of a pass over ``S > 1`` shards: five rounds of Ray tasks (fingerprints, shared hashes, context
records, resolve, suffix array + removal), plus one shard pass for the stage (an all-to-all move of the
text, as the global sort it replaces). Shuffled: the distinct selected hashes, at most ``16 / (t + 1)``
bytes per text byte (measured 0.53-0.55 B/B at L = 100 on the tiny world at scales 10-160), and the
context records, ``L + t + 19`` bytes per shared fingerprint: at most ``2 (L + t + 19) / (t + 1)`` B per
byte of text whose fingerprints are shared (measured 10.6 B/B at L = 100 with every fingerprint
shared; 0.74 to 2.45 B/B on the tiny world at scales 10 to 160, which shares more text as it grows).
Memory per task, measured as peak RSS above the task's start (``PeakRSS``) and requested from Ray
(``memory=``, at least 256 MiB, at most the largest node): the suffix-array task
``MEMORY_BYTES_PER_INPUT_BYTE`` (32) per byte of its shard (measured 19-29: the rows as Python objects,
the text twice, int32 suffix and LCP arrays, masks), the fingerprint and context tasks
``FINGERPRINT_BYTES_PER_INPUT_BYTE`` (16; measured 11.8 for the context task with *every* fingerprint
shared, 18 for the fingerprint task of an 8 MB shard, most of it the fixed ~100 MB of ``winnow``'s
segments, under the floor), a resolve task ``RESOLVE_BYTES_PER_RECORD_BYTE`` (16) per byte of records
(measured 5-16). Limits: the context volume follows the share of text in shared grams, so a corpus of
boilerplate moves several times its repeated bytes; a fingerprint common in many distinct contexts
makes one reducer hot (identical records are sent once per shard, which tames exact boilerplate); a
single document larger than ``shard_bytes`` makes its shard larger; the pieces between rounds are
``shards x partitions`` Ray objects (see ``PIECE_BYTES`` and ``REDUCER_BYTES``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from clinray.data.stage import DETAIL, REASON, GlobalStage, missing_columns
from clinray.data.text import normalize_text, word_tokens

SEPARATOR = 0xFF
#: Peak bytes of memory of a shard's suffix-array task per byte of its text (measured; see above).
MEMORY_BYTES_PER_INPUT_BYTE = 32
#: The same for a shard's fingerprint and context tasks (measured with every fingerprint shared).
FINGERPRINT_BYTES_PER_INPUT_BYTE = 16
#: Peak bytes of a resolve task per byte of the context records it receives (measured).
RESOLVE_BYTES_PER_RECORD_BYTE = 16
#: The same for the task that assembles a shard from its pieces (concatenation and sort).
BUILD_BYTES_PER_INPUT_BYTE = 4
#: Default ``min_shard_bytes``.
SHARD_MIN_BYTES_DEFAULT = 4 * 1024 * 1024
#: Bytes that belong to a word: ASCII letters, digits and ``_`` (as ``\w``), and every non-ASCII byte.
WORD_BYTE = np.zeros(256, dtype=bool)
WORD_BYTE[[ord(c) for c in "0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]] = True
WORD_BYTE[0x80:SEPARATOR] = True
NEWLINE = 0x0A


@dataclass(kw_only=True, slots=True)
class SubstringConfig:
    """Exact-substring dedup (suffix array per shard, cross-shard repeats by fingerprints)."""

    enabled: bool = True
    """Run the passes at all."""
    thresholds: list[int] = field(default_factory=lambda: [400, 100])
    """Minimum repeated span in bytes, one pass per entry, in order (the paper: 400 then 100)."""
    mode: Literal["keep_first", "remove_all"] = "keep_first"
    """``keep_first``: the copy in the document whose id sorts first stays; ``remove_all``: every copy goes."""
    shard_bytes: int = 8 * 1024 * 1024
    """Most text bytes per shard (a shard's suffix-array task needs ``MEMORY_BYTES_PER_INPUT_BYTE``
    times this; lowered automatically when that would not fit on the largest node). Past
    ``MAX_SHARDS`` (2,048) shards of this size, the shards grow instead."""
    min_shard_bytes: int = SHARD_MIN_BYTES_DEFAULT
    """Fewest text bytes per shard when the shard count is raised to the cluster's CPUs (smaller
    shards cost more in per-task overhead than they save)."""
    num_shards: int = 0
    """Shard count; 0 = automatic: ``ceil(text / shard_bytes)``, at least the cluster's CPUs while
    shards keep ``min_shard_bytes``. What is removed does not depend on it."""
    min_words_after: int = 1
    """A document left with fewer words after removal is dropped (reason ``substring_emptied``)."""

    def __post_init__(self):
        if not self.thresholds or any(t < 1 for t in self.thresholds):
            raise ValueError(f"substring.thresholds must be positive byte lengths, got {self.thresholds}")
        if self.shard_bytes < 1024:
            raise ValueError(f"substring.shard_bytes must be at least 1024, got {self.shard_bytes}")
        if self.min_shard_bytes < 1 or self.min_shard_bytes > self.shard_bytes:
            raise ValueError(
                f"substring.min_shard_bytes must be between 1 and shard_bytes ({self.shard_bytes}), "
                f"got {self.min_shard_bytes}"
            )
        if self.num_shards < 0:
            raise ValueError(f"substring.num_shards must be >= 0 (0 = automatic), got {self.num_shards}")
        if self.min_words_after < 0:
            raise ValueError("substring.min_words_after must be >= 0")


def concat_docs(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 texts joined by ``0xFF``; returns (writable uint8 array, start offset of each text)."""
    encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    data = np.frombuffer(bytes([SEPARATOR]).join(encoded), dtype=np.uint8).copy()  # pydivsufsort writes
    return data, starts


def repeat_mask(
    data: np.ndarray, *, min_len: int, keep_first: bool = True, extra_runs: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the bytes of ``data`` inside a repeated span of at least ``min_len`` bytes.

    With ``keep_first`` the earliest occurrence of each repeated string is left unmarked. The mask is
    exact (byte level); :func:`word_spans` turns it into the spans that are removed. ``extra_runs``
    (shape ``(k, 2)``) are more spans to mark: the ``min_len``-grams starting in ``[a, b)``, the
    cross-shard marks (their earlier copy is in another shard; runs may overlap).
    """
    from pydivsufsort import divsufsort, kasai

    n = len(data)
    diff = np.zeros(n + 1, dtype=np.int32)
    if extra_runs is not None and len(extra_runs):
        np.add.at(diff, extra_runs[:, 0], 1)  # runs lie inside one document each
        np.add.at(diff, extra_runs[:, 1] - 1 + min_len, -1)
    if n < 2 * min_len:
        return np.cumsum(diff[:n], dtype=np.int32) > 0
    sa = divsufsort(data)
    lcp = kasai(data, sa)  # lcp[i] = common prefix of suffixes sa[i] and sa[i + 1]
    linked = lcp >= min_len
    del lcp
    prev = np.zeros(n, dtype=bool)
    prev[1:] = linked[:-1]
    member = linked | prev
    idx = np.flatnonzero(member)
    if idx.size == 0:
        return np.cumsum(diff[:n], dtype=np.int32) > 0
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


def remove_repeats(
    texts: list[str], *, min_len: int, keep_first: bool = True, extra_runs: np.ndarray | None = None
) -> tuple[list[str], list[int]]:
    """Texts with repeated spans removed on word boundaries, and the bytes removed from each.

    A changed text is normalized again; its count is the true difference of UTF-8 bytes.
    ``extra_runs``: cross-shard marks in ``concat_docs(texts)`` coordinates (see :func:`repeat_mask`).
    """
    if not texts:
        return [], []
    data, doc_starts = concat_docs(texts)
    cover = repeat_mask(data, min_len=min_len, keep_first=keep_first, extra_runs=extra_runs)
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
    """The substring passes as a :class:`GlobalStage` whose analysis is the whole distributed pass.

    :meth:`apply` materializes the input, cuts it into byte-balanced id-range shards, and runs each
    threshold's pass over all shards (cross-shard rounds, then the suffix array and removal, accounted
    per shard); the result is the last pass's shard tables as a dataset. :meth:`mark` is the removal
    rule of one pass on one shard's rows, with that shard's cross marks.
    """

    name = "substring"
    requires = ("id", "text")

    def __init__(self, cfg: SubstringConfig, *, sink_root: str):
        super().__init__(sink_root=sink_root)
        self.cfg = cfg

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(stage_name(t) for t in self.cfg.thresholds)

    def analyze(self, ds):
        """The shards of the (materialized) dataset: byte-balanced id ranges, in corpus order."""
        from clinray.data.dedup_substring_shards import make_shards

        return make_shards(
            ds.to_arrow_refs(),
            size_bytes=ds.size_bytes(),
            cfg=self.cfg,
            sink_root=self.sink_root,
            stage=self.names[0],
        )

    def mark(self, rows: list[dict], analysis, *, step: int, counters: Counter) -> list[dict]:
        """One pass on one shard's rows; ``analysis``: the shard's cross marks (start runs in the
        concatenation of the rows' texts in id order, see :func:`repeat_mask`) or None."""
        rows.sort(key=lambda r: r["id"])  # stable: a shard is already in corpus order
        texts, removed = remove_repeats(
            [r["text"] for r in rows],
            min_len=self.cfg.thresholds[step],
            keep_first=self.cfg.mode == "keep_first",
            extra_runs=analysis,
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

    def apply(self, ds):
        """Materialize, shard, then every pass over all shards; the result is the kept rows."""
        import ray

        from clinray.data.dedup_substring_shards import run_pass

        ds = ds.materialize()
        missing_columns(self.requires, ds.columns(), stage=self.name)
        if ds.count() == 0:
            return ds
        shards = self.analyze(ds)
        del ds  # the shards hold the rows now
        for step in range(len(self.cfg.thresholds)):
            shards = run_pass(self, shards, step)
        return ray.data.from_arrow_refs(shards.refs)


def substring_dedup(ds, cfg: SubstringConfig | None = None, *, sink_root: str):
    """The substring passes on a working-schema dataset (see :class:`SubstringStage`).

    The input is materialized and the passes run when this is called (each pass needs the previous
    pass's output of every shard); the returned dataset is materialized too.
    """
    return SubstringStage(cfg or SubstringConfig(), sink_root=str(sink_root)).apply(ds)
