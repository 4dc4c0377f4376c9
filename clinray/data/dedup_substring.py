"""Exact-substring dedup (Lee et al. 2021): repeated byte spans found with a suffix array and removed.

The paper runs it twice, with length thresholds of 400 then 100 bytes. Within one *shard* the texts,
sorted by id, are UTF-8 encoded and concatenated with a ``0xFF`` separator (a byte that never occurs in
UTF-8, so no match can cross a document boundary without containing it); pydivsufsort builds the suffix
array and the LCP array (Kasai). A run of adjacent suffixes whose LCP is at least ``L`` are occurrences
of one repeated string of at least ``L`` bytes; every member of a run other than the smallest position
(the document whose id sorts first) is a repeat, and marking ``[pos, pos + L)`` for each such member
covers exactly the bytes of every later copy (every shift of a long match is itself in a run). The
whole computation is vectorized numpy, O(n) after the suffix array. Marked spans are snapped to UTF-8
character boundaries (a character is removed only if all its bytes are marked) before removal.

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
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from clinray.data.stage import DETAIL, REASON, Accountant, batch_key, rows_to_table, table_rows, text_bytes
from clinray.data.text import normalize_text, word_tokens

SEPARATOR = 0xFF
#: Rough peak bytes of working memory per byte of shard text (see the module docstring).
MEMORY_BYTES_PER_INPUT_BYTE = 16


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

    With ``keep_first`` the earliest occurrence of each repeated string is left unmarked.
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
    cover = np.cumsum(diff[:n], dtype=np.int32) > 0
    return snap_to_characters(data, cover)


def snap_to_characters(data: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Shrink a byte mask so it covers only whole UTF-8 characters (never half of a multi-byte one).

    Works on the runs of the mask only: a run starting on a continuation byte starts at the next
    character instead, and one ending inside a character ends before it.
    """
    edges = np.flatnonzero(np.diff(np.concatenate([[False], cover, [False]]).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    if starts.size == 0:
        return cover
    cont = (data & 0xC0) == 0x80
    cover = cover.copy()
    for s, e in zip(starts[cont[starts]], ends[cont[starts]]):  # rare: only runs that start mid-character
        k = s
        while k < e and cont[k]:
            k += 1
        cover[s:k] = False
    inside = ends < len(data)
    for e in ends[inside][cont[ends[inside]]]:  # the character straddling the run's end stays whole
        k = e - 1
        while k >= 0 and cover[k] and cont[k]:
            cover[k] = False
            k -= 1
        if k >= 0 and cover[k]:
            cover[k] = False  # the lead byte of the straddling character
    return cover


def remove_repeats(texts: list[str], *, min_len: int, keep_first: bool = True) -> tuple[list[str], list[int]]:
    """Texts with repeated spans removed (normalized again where changed) and the bytes removed from each."""
    if not texts:
        return [], []
    data, starts = concat_docs(texts)
    cover = repeat_mask(data, min_len=min_len, keep_first=keep_first)
    out, removed = [], []
    ends = np.append(starts[1:] - 1, len(data))
    for text, s, e in zip(texts, starts, ends):
        mask = cover[s:e]
        num = int(mask.sum())
        removed.append(num)
        if num == 0:
            out.append(text)
        else:
            out.append(_cut(data[s:e], mask))
    return out, removed


def _cut(doc: np.ndarray, mask: np.ndarray) -> str:
    """Remove the masked bytes of one document, leaving one space where each removed run was."""
    doc, keep = doc.copy(), ~mask
    run_starts = np.flatnonzero(mask & np.concatenate([[True], ~mask[:-1]]))
    doc[run_starts] = 0x20  # so words on both sides of a removed span do not merge
    keep[run_starts] = True
    return normalize_text(doc[keep].tobytes().decode("utf-8", "surrogatepass"))


class SubstringShard:
    """``map_batches`` UDF over one id-sorted shard (``batch_size=None``): every pass, each accounted."""

    def __init__(self, cfg: SubstringConfig, *, sink_root: str):
        self.cfg = cfg
        self.accountants = [Accountant(stage_name(t), sink_root=sink_root) for t in cfg.thresholds]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = sorted(table_rows(batch), key=lambda r: r["id"])
        for min_len, accountant in zip(self.cfg.thresholds, self.accountants):
            start = time.time()
            key = batch_key(rows)
            num_bytes_in = sum(text_bytes(r.get("text")) for r in rows)
            texts, removed = remove_repeats(
                [r["text"] for r in rows], min_len=min_len, keep_first=self.cfg.mode == "keep_first"
            )
            extra = Counter()
            for row, text, num in zip(rows, texts, removed):
                if num:
                    extra["num_docs_modified"] += 1
                    extra["num_bytes_removed"] += num
                    row["text"] = text
                    if len(word_tokens(text)) < self.cfg.min_words_after:
                        row[REASON], row[DETAIL] = "substring_emptied", f"{num} repeated bytes removed"
            table = accountant.account(
                rows, key=key, start=start, num_bytes_in=num_bytes_in, extra=dict(extra)
            )
            rows = table.to_pylist()
        return rows_to_table(rows)


def stage_name(min_len: int) -> str:
    return f"substring_{min_len}"


def substring_dedup(ds, cfg: SubstringConfig | None = None, *, sink_root: str):
    """The substring passes on a working-schema dataset: sort by id, shard, suffix-array each shard.

    The sort materializes the dataset (an all-to-all step); the passes themselves are lazy.
    """
    cfg = cfg or SubstringConfig()
    ds = ds.materialize()
    if not {"id", "text"} <= set(ds.columns()):
        raise ValueError("substring dedup needs the document columns 'id' and 'text'")
    num_shards = max(1, math.ceil(ds.size_bytes() / cfg.shard_bytes))
    # One shard needs no global sort (the shard task sorts its rows); several need contiguous id ranges.
    shards = ds.repartition(1) if num_shards == 1 else ds.sort("id").materialize().repartition(num_shards)
    return shards.map_batches(
        SubstringShard(cfg, sink_root=str(sink_root)),
        batch_size=None,
        batch_format="pyarrow",
        zero_copy_batch=False,
    )
