"""Cross-shard exact-substring dedup: winnowed fingerprints, a hash shuffle, exact verification.

Split from :mod:`clinray.data.dedup_substring` (the method and its cost are stated there). This module
is the pure numpy half: what each shard and each reducer computes. The Ray orchestration that moves the
pieces between tasks is in :mod:`clinray.data.dedup_substring_shards`; :func:`cross_marks_local` runs
the same steps in one process (tests compare it with one suffix array over the whole corpus).

Notation for one pass with threshold ``L`` (bytes): the winnowing window ``t = ceil(L / 4)`` and the
fingerprint length ``w = L - t + 1``, so an ``L``-gram holds exactly ``t`` consecutive ``w``-grams.

1. **Fingerprints** (per shard, :func:`winnow`). Every ``w``-gram is hashed (a polynomial rolling hash
   mod 2^64, then mixed); a position is *selected* when its hash is the minimum of some window of ``t``
   consecutive ``w``-gram hashes that lies inside one ``L``-gram of one document (all tied minima are
   selected). The minimum of an ``L``-gram's ``t`` hashes depends only on its bytes, so **every
   occurrence of an ``L``-gram has a selected fingerprint at the same offset**: two shards that share an
   ``L``-gram share a selected hash. Each selected position also gets the range of ``L``-grams it is a
   minimum of (``jlo..jhi``, a contiguous range): it is *charged* with those.
2. **Shared hashes** (:func:`shared_hashes`): each shard's distinct selected hashes, shuffled by hash;
   a hash selected in two or more shards is *shared*; only those go on.
3. **Contexts** (:func:`context_records`): for every selected position with a shared hash, the
   ``K = L + t - 1`` bytes around it in which its charged ``L``-grams lie (other bytes set to ``0xFF``,
   the separator, which never occurs in text). Identical records of one shard are sent once (the first):
   a later identical one is a repeat inside the shard, which the shard's own suffix array finds.
4. **Resolve** (:func:`resolve_records`, per hash partition): every charged ``L``-gram of every record,
   grouped by a hash of its bytes and **verified byte for byte** against the group's earliest
   occurrence (corpus order: shard, then position). A group that fails verification (a hash collision)
   is regrouped exactly on its bytes. Each ``L``-gram whose content occurs in an earlier shard is a
   *cross mark* of its shard (with ``remove_all``: every ``L``-gram whose content occurs in two shards).

The cross marks of a shard are runs of ``L``-gram start positions in the shard's concatenated text
(:func:`start_runs`); the shard's suffix array adds the repeats inside the shard
(:func:`clinray.data.dedup_substring.repeat_mask`). The
union is exactly the set of ``L``-grams that occur earlier in the corpus, the set one suffix array over
the whole corpus marks: hash collisions cost work, never a wrong or a missed mark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clinray.data.arrays import sorted_unique, unique_first_inverse

SEPARATOR = 0xFF
_B = np.uint64(0x100000001B3)  # an odd multiplier (FNV-64's prime): invertible mod 2^64
_B_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_MIX1, _MIX2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
#: Text bytes hashed per step of :func:`winnow` (segments end at document boundaries): its temporary
#: arrays take about 100 bytes per segment byte, so this bounds them at ~100 MB whatever the shard.
SEGMENT_BYTES = 1 << 20
#: ``t = ceil(L / WINDOW_DIVISOR)``. A smaller window selects more positions (``2 / (t + 1)`` of them,
#: so more hashes are shuffled) but longer fingerprints (``w`` bytes), which fewer unrelated contexts
#: share, and shorter records with fewer ``L``-grams each. Measured on the tiny world at scale 40,
#: pass 100, 2 shards (one process): divisor 2 (t = 50, w = 51) sent 787k records and spent 9.5 s in
#: rounds 1-4; 3 (t = 34) 499k and 3.7 s; 4 (t = 25, w = 76) 380k and 3.1 s; 8 (t = 13) 325k and 4.1 s.
WINDOW_DIVISOR = 4
#: Records hashed per step of :func:`resolve_records` (bounds its temporary arrays).
RESOLVE_CHUNK = 16_384
_POWERS: dict[bool, np.ndarray] = {}


def window_params(min_len: int) -> tuple[int, int]:
    """``(t, w)`` for threshold ``min_len``: winnowing window and fingerprint length, ``t + w - 1 = L``."""
    t = max(1, math.ceil(min_len / WINDOW_DIVISOR))
    return t, min_len - t + 1


def _powers(n: int, inverse: bool = False) -> np.ndarray:
    """``B**j`` (or ``B**-j``) mod 2^64 for ``j < n``, cached and grown on demand."""
    have = _POWERS.get(inverse)
    if have is None or len(have) < n:
        size = max(n, 2 * len(have) if have is not None else 1024)
        base = np.full(size, _B_INV if inverse else _B, dtype=np.uint64)
        base[0] = 1
        with np.errstate(over="ignore"):
            have = np.cumprod(base, dtype=np.uint64)
        _POWERS[inverse] = have
    return have[:n]


def _mix(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer, in place: spreads the polynomial hash's weak low bits."""
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= _MIX1
        x ^= x >> np.uint64(33)
        x *= _MIX2
        x ^= x >> np.uint64(33)
    return x


def gram_hashes(data: np.ndarray, w: int) -> np.ndarray:
    """Mixed 64-bit hashes of every ``w``-gram of ``data`` (``len(data) - w + 1`` values, never 0)."""
    n = len(data)
    with np.errstate(over="ignore"):
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(data.astype(np.uint64) * _powers(n), out=prefix[1:])
        h = (prefix[w:] - prefix[:-w]) * _powers(n - w + 1, inverse=True)
    return _mix(h) | np.uint64(1)


def _sliding(x: np.ndarray, t: int, op, fill) -> np.ndarray:
    """``op`` (np.minimum or np.maximum) over every window of ``t`` values (van Herk / Gil-Werman, O(n))."""
    n = len(x)
    if t == 1:
        return x.copy()
    nb = -(-n // t)
    blocks = np.concatenate([x, np.full(nb * t - n, fill, dtype=x.dtype)]).reshape(nb, t)
    pre = op.accumulate(blocks, axis=1).ravel()
    suf = op.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].ravel()
    return op(suf[: n - t + 1], pre[t - 1 : n])


@dataclass
class Fingerprints:
    """The selected positions of one shard: position, hash, charged ``L``-gram range ``jlo..jhi``.

    ``jlo``/``jhi`` index the ``t`` windows that contain the position: the ``L``-gram starting at
    ``pos - (t - 1) + j`` is charged to it for ``jlo <= j <= jhi``.
    """

    pos: np.ndarray  # int64
    hash: np.ndarray  # uint64
    jlo: np.ndarray  # int32
    jhi: np.ndarray  # int32

    @classmethod
    def empty(cls) -> Fingerprints:
        i32 = np.zeros(0, dtype=np.int32)
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), i32, i32.copy())

    @classmethod
    def concat(cls, parts: list[Fingerprints]) -> Fingerprints:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("pos", "hash", "jlo", "jhi")))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.pos, self.hash, self.jlo, self.jhi))


def _winnow_segment(seg: np.ndarray, offset: int, min_len: int) -> Fingerprints:
    t, w = window_params(min_len)
    n = len(seg)
    if n < min_len:
        return Fingerprints.empty()
    h = gram_hashes(seg, w)
    seps = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(seg == SEPARATOR, out=seps[1:])
    num_windows = n - min_len + 1
    mins = _sliding(h, t, np.minimum, np.uint64(np.iinfo(np.uint64).max))
    mins[seps[min_len:] != seps[:num_windows]] = 0  # a window across a document boundary selects nothing
    padded = np.concatenate([np.zeros(t - 1, np.uint64), mins, np.zeros(t - 1, np.uint64)])
    selected = np.flatnonzero(_sliding(padded, t, np.maximum, np.uint64(0)) == h)
    if selected.size == 0:
        return Fingerprints.empty()
    hs = h[selected]
    # charged windows: padded[q + j] is the minimum of the window starting at q - (t - 1) + j
    view = np.lib.stride_tricks.sliding_window_view(padded, t)
    jlo = np.empty(selected.size, dtype=np.int32)
    jhi = np.empty(selected.size, dtype=np.int32)
    for lo in range(0, selected.size, RESOLVE_CHUNK):
        eq = view[selected[lo : lo + RESOLVE_CHUNK]] == hs[lo : lo + RESOLVE_CHUNK, None]
        jlo[lo : lo + RESOLVE_CHUNK] = eq.argmax(axis=1)
        jhi[lo : lo + RESOLVE_CHUNK] = t - 1 - eq[:, ::-1].argmax(axis=1)
    return Fingerprints(selected.astype(np.int64) + offset, hs, jlo, jhi)


def segments(data: np.ndarray, size: int = SEGMENT_BYTES) -> list[tuple[int, int]]:
    """``data`` cut at separators into ``[start, end)`` pieces of about ``size`` bytes (a longer
    document is one piece). No ``L``-gram crosses a separator, so the pieces are independent."""
    n = len(data)
    if n <= size:
        return [(0, n)]
    seps = np.flatnonzero(data == SEPARATOR)
    out, start = [], 0
    while start < n:
        i = np.searchsorted(seps, start + size)
        end = n if i >= len(seps) else int(seps[i])
        out.append((start, end))
        start = end + 1
    return out


def winnow(data: np.ndarray, min_len: int) -> Fingerprints:
    """The selected fingerprints of a shard's concatenated text (see the module docstring, step 1)."""
    return Fingerprints.concat([_winnow_segment(data[s:e], s, min_len) for s, e in segments(data)])


def partition_of(hashes: np.ndarray, num_parts: int) -> np.ndarray:
    """The reducer of each hash (its high bits: the low bit is always set)."""
    return ((hashes >> np.uint64(32)) % np.uint64(num_parts)).astype(np.int64)


def split_by_part(parts: np.ndarray, num_parts: int, *arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Each array cut into ``num_parts`` pieces by ``parts`` (order inside a piece kept)."""
    order = np.argsort(parts, kind="stable")
    bounds = np.searchsorted(parts[order], np.arange(num_parts + 1))
    return [tuple(a[order[lo:hi]] for a in arrays) for lo, hi in zip(bounds[:-1], bounds[1:])]


def distinct_hash_parts(fp: Fingerprints, num_parts: int) -> list[np.ndarray]:
    """Step 2's map: the shard's distinct selected hashes, one sorted array per reducer."""
    distinct = sorted_unique(fp.hash)
    return [p[0] for p in split_by_part(partition_of(distinct, num_parts), num_parts, distinct)]


def shared_hashes(per_shard: list[np.ndarray]) -> list[np.ndarray]:
    """Step 2's reduce: for each shard, its hashes (of this partition) that another shard also selected."""
    if not per_shard:
        return []
    values, counts = np.unique(np.concatenate(per_shard), return_counts=True)
    shared = values[counts > 1]
    return [h[np.isin(h, shared, assume_unique=True)] for h in per_shard]


@dataclass
class Records:
    """Context records (step 3) of one hash partition: hash, shard, position, ``K`` bytes each."""

    hash: np.ndarray  # uint64
    shard: np.ndarray  # int32
    pos: np.ndarray  # int64: the fingerprint's position in its shard
    window: np.ndarray  # uint8 (n, K): bytes pos - (t - 1) .. pos + w + t - 2, uncharged ones 0xFF

    @classmethod
    def concat(cls, parts: list[Records], width: int) -> Records:
        parts = [p for p in parts if len(p.pos)]
        if not parts:
            return cls(
                np.zeros(0, np.uint64),
                np.zeros(0, np.int32),
                np.zeros(0, np.int64),
                np.zeros((0, width), np.uint8),
            )
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("hash", "shard", "pos", "window"))
        )

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.hash, self.shard, self.pos, self.window))


def _masked_windows(view: np.ndarray, pos: np.ndarray, jlo: np.ndarray, jhi: np.ndarray, min_len: int):
    """The records' ``K`` bytes (rows of ``view``), bytes outside their charged ``L``-grams set to ``0xFF``
    (built ``RESOLVE_CHUNK`` rows at a time: the mask is never larger than a chunk)."""
    windows = np.empty((len(pos), view.shape[1]), dtype=np.uint8)
    cols = np.arange(view.shape[1])
    for lo in range(0, len(pos), RESOLVE_CHUNK):
        sl = slice(lo, lo + RESOLVE_CHUNK)
        chunk = view[pos[sl]]
        chunk[(cols < jlo[sl, None]) | (cols >= jhi[sl, None] + min_len)] = SEPARATOR
        windows[sl] = chunk
    return windows


def context_records(
    data: np.ndarray, fp: Fingerprints, shared: np.ndarray, *, shard: int, min_len: int, num_parts: int
) -> list[Records]:
    """Step 3: the context record of every selected position whose hash is shared, one list per reducer.

    Records with identical bytes are sent once per shard (the first): the later ones are repeats of it
    inside the shard, found by the shard's suffix array. Identity is a hash of the record's bytes,
    checked byte for byte (a collision keeps both records); records are built in chunks, so the task
    holds little more than its output.
    """
    t, _ = window_params(min_len)
    width = min_len + t - 1
    keep = np.isin(fp.hash, shared)
    pos, hashes, jlo, jhi = fp.pos[keep], fp.hash[keep], fp.jlo[keep], fp.jhi[keep]
    padded = np.full(len(data) + 2 * width, SEPARATOR, dtype=np.uint8)
    padded[t - 1 : t - 1 + len(data)] = data
    view = np.lib.stride_tricks.sliding_window_view(padded, width)  # view[q] = the record of position q
    pw = _powers(width)
    ids = np.zeros(len(pos), dtype=np.uint64)
    for lo in range(0, len(pos), RESOLVE_CHUNK):
        sl = slice(lo, lo + RESOLVE_CHUNK)
        with np.errstate(over="ignore"):
            ids[sl] = _masked_windows(view, pos[sl], jlo[sl], jhi[sl], min_len).astype(np.uint64) @ pw
    first, inverse = unique_first_inverse(ids)
    rep = first[inverse]  # the first record with the same hash (itself when it is the first)
    unique = rep == np.arange(len(pos))
    for lo in range(0, len(pos), RESOLVE_CHUNK):  # a later record is dropped only if its bytes are equal
        i = np.flatnonzero(~unique[lo : lo + RESOLVE_CHUNK]) + lo
        if i.size:
            a = _masked_windows(view, pos[i], jlo[i], jhi[i], min_len)
            b = _masked_windows(view, pos[rep[i]], jlo[rep[i]], jhi[rep[i]], min_len)
            unique[i[(a != b).any(axis=1)]] = True
    sel = np.flatnonzero(unique)
    pos, hashes, jlo, jhi = pos[sel], hashes[sel], jlo[sel], jhi[sel]
    pieces = split_by_part(partition_of(hashes, num_parts), num_parts, hashes, pos, jlo, jhi)
    return [  # each piece's bytes gathered once, straight into its own array
        Records(h, np.full(len(q), shard, dtype=np.int32), q, _masked_windows(view, q, lo, hi, min_len))
        for h, q, lo, hi in pieces
    ]


def _lgram_entries(rec: Records, min_len: int):
    """Every charged ``L``-gram of the records: (content hash, record index, window offset ``j``)."""
    t, _ = window_params(min_len)
    width = rec.window.shape[1]
    pw, ipw = _powers(width), _powers(t, inverse=True)
    hashes, rows, offsets = [], [], []
    for lo in range(0, len(rec.pos), RESOLVE_CHUNK):
        win = rec.window[lo : lo + RESOLVE_CHUNK]
        with np.errstate(over="ignore"):
            prefix = np.zeros((len(win), width + 1), dtype=np.uint64)
            np.cumsum(win.astype(np.uint64) * pw, axis=1, out=prefix[:, 1:])
            lh = (prefix[:, min_len : min_len + t] - prefix[:, :t]) * ipw
        seps = np.zeros((len(win), width + 1), dtype=np.int32)
        np.cumsum(win == SEPARATOR, axis=1, out=seps[:, 1:])
        r, j = np.nonzero(seps[:, min_len : min_len + t] == seps[:, :t])
        hashes.append(lh[r, j])
        rows.append(r.astype(np.int32) + np.int32(lo))
        offsets.append(j.astype(np.int32))
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(hashes), np.concatenate(rows), np.concatenate(offsets)


def resolve_records(
    rec: Records, *, min_len: int, num_shards: int, keep_first: bool = True
) -> list[np.ndarray]:
    """Step 4: the cross marks of each shard (runs of ``L``-gram starts), from one hash partition."""
    if len(rec.pos) == 0:
        return [np.zeros((0, 2), dtype=np.int64) for _ in range(num_shards)]
    t, _ = window_params(min_len)
    lh, row, j = _lgram_entries(rec, min_len)
    order = np.argsort(lh)
    lh, row, j = lh[order], row[order], j[order]
    del order
    shard = rec.shard[row]
    new_group = np.ones(len(lh), dtype=bool)
    new_group[1:] = lh[1:] != lh[:-1]
    del lh
    group = np.cumsum(new_group) - 1
    head = np.flatnonzero(new_group)
    lowest, highest = np.minimum.reduceat(shard, head), np.maximum.reduceat(shard, head)
    # the representative of a group: its first entry in the group's earliest shard
    first = np.minimum.reduceat(np.where(shard == lowest[group], np.arange(len(shard)), len(shard)), head)
    grams = np.lib.stride_tricks.sliding_window_view(rec.window, min_len, axis=1)  # (n, t, L) view
    candidate = shard > lowest[group] if keep_first else (lowest != highest)[group]
    idx = np.flatnonzero(candidate)
    rep = first[group[idx]]
    same = np.ones(len(idx), dtype=bool)
    for lo in range(0, len(idx), RESOLVE_CHUNK):
        a, b = idx[lo : lo + RESOLVE_CHUNK], rep[lo : lo + RESOLVE_CHUNK]
        same[lo : lo + RESOLVE_CHUNK] = (grams[row[a], j[a]] == grams[row[b], j[b]]).all(axis=1)
    bad_groups = sorted_unique(group[idx[~same]])
    # (with remove_all every member of a group is a candidate, the earliest copy included)
    marked = [idx[same & ~np.isin(group[idx], bad_groups)]]
    for g in bad_groups.tolist():  # a hash collision: group this hash's L-grams on their bytes
        members = np.flatnonzero(group == g)
        by_content: dict[bytes, list[int]] = {}
        for m in members.tolist():
            by_content.setdefault(grams[row[m], j[m]].tobytes(), []).append(m)
        for ms in by_content.values():
            shards_of = shard[ms]
            if keep_first:
                marked.append(np.asarray(ms)[shards_of > shards_of.min()])
            elif shards_of.min() != shards_of.max():
                marked.append(np.asarray(ms))
    hit = np.concatenate(marked)
    start = rec.pos[row[hit]] - (t - 1) + j[hit]
    pieces = split_by_part(shard[hit].astype(np.int64), num_shards, start)
    return [start_runs(starts) for (starts,) in pieces]


def start_runs(starts: np.ndarray) -> np.ndarray:
    """Marked ``L``-gram starts as runs ``[a, b)`` of consecutive positions, shape ``(k, 2)``: the
    cross marks travel as runs (one per stretch of a repeat, not one per byte)."""
    starts = sorted_unique(starts)
    if starts.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    new_run = np.flatnonzero(np.diff(starts) != 1) + 1
    lo = starts[np.concatenate([[0], new_run])]
    hi = starts[np.concatenate([new_run - 1, [starts.size - 1]])] + 1
    return np.stack([lo, hi], axis=1).astype(np.int64)


def cross_marks_local(
    shards: list[np.ndarray], *, min_len: int, keep_first: bool = True, num_parts: int | None = None
) -> list[np.ndarray]:
    """Steps 1-4 in one process: the cross marks (start runs) of each shard.

    The reference for the Ray version (:func:`clinray.data.dedup_substring_shards.run_pass`), which runs
    the same functions in tasks; tests compare both with one suffix array over the whole corpus.
    ``num_parts``: hash partitions (default: one per shard).
    """
    num, parts = len(shards), num_parts or len(shards)
    t, _ = window_params(min_len)
    fps = [winnow(d, min_len) for d in shards]
    maps = [distinct_hash_parts(fp, parts) for fp in fps]
    reduced = [shared_hashes([maps[s][p] for s in range(num)]) for p in range(parts)]
    shared = [np.concatenate([reduced[p][s] for p in range(parts)]) for s in range(num)]
    recs = [
        context_records(d, fp, sh, shard=s, min_len=min_len, num_parts=parts)
        for s, (d, fp, sh) in enumerate(zip(shards, fps, shared))
    ]
    width = min_len + t - 1
    marks = [
        resolve_records(
            Records.concat([recs[s][p] for s in range(num)], width),
            min_len=min_len,
            num_shards=num,
            keep_first=keep_first,
        )
        for p in range(parts)
    ]
    return [np.concatenate([marks[p][s] for p in range(parts)]) for s in range(num)]
