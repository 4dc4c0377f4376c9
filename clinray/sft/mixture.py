"""The SFT mixture (the paper's Table 3): which sources, in which layouts, at which share of the samples.

An :class:`SFTMixture` names each source (a mixture component, e.g. ``medmcqa``) with its layout, its
files and its ``ratio``: the percent of the mixture's *samples* Table 3 prints (MedMCQA 23.49, SlimOrca
T0 14.22, ...; they sum to 100). :func:`sample_mixture` turns the read sources into one list:

* a total (``total``) is split into per-source quotas by the largest-remainder rule on the normalised
  ratios, so every quota is within one sample of ``total * ratio / 100`` and they sum to ``total``;
* ``total=None`` takes the largest total the ratios allow without repeating any source's sample;
* a source with more samples than its quota is downsampled without replacement; one with fewer is
  repeated in whole passes, then a seeded remainder (the accounting says how many were repeated);
* each source draws from its own generator seeded by ``(seed, name)``, so adding a source or changing
  another's ratio never changes what this one draws.

Trade-off: ratios are in samples, as Table 3 gives them, not tokens (a MedMCQA question is ~10x shorter
than an UltraChat dialogue), so the token mix differs from the sample mix; the SFT report shows both.
Repeated samples keep their id (decontamination and the logs join on it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from clinray.sft.sources import (
    LAYOUTS,
    MCQ_LAYOUTS,
    Conversation,
    ConversationSet,
    layout_options,
    read_source,
)

__all__ = ["SourceSpec", "SFTMixture", "load_mixture", "read_mixture", "quotas", "sample_mixture"]

#: How far from 100 the ratios may sum (Table 3 prints two decimals).
RATIO_TOLERANCE = 0.01


@dataclass(kw_only=True, slots=True)
class SourceSpec:
    """One source of the mixture: where its files are, how to read them, its share."""

    layout: str
    """A reader of :data:`clinray.sft.sources.LAYOUTS` (``medmcqa``, ``orca``, ``jsonl``, ...)."""
    path: str
    """A file or folder, relative to the mixture's ``data_root`` unless absolute."""
    ratio: float
    """Percent of the mixture's samples (Table 3's "Mixture ratio (%)")."""
    field_map: dict[str, str | list[str]] = field(default_factory=dict)
    """``{layout's field: the file's field}`` (see :mod:`clinray.sft.sources`)."""
    mcq_reasoning: Literal["never", "when_present"] = "when_present"
    """MCQ layouts: Figure 5 (step-by-step) when the row has an explanation, or always Figure 4."""
    max_samples: int = 0
    """Cap on the source's samples before mixing (a seeded subset); 0 = all."""
    options: dict[str, Any] = field(default_factory=dict)
    """The layout's own options (``subset: t0`` for orca, ``cop_base: 1`` for medmcqa, ...)."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown SFT layout {self.layout!r}; choose from {', '.join(sorted(LAYOUTS))}")
        if not self.ratio > 0:
            raise ValueError(f"ratio must be > 0 (percent of the mixture), got {self.ratio}")
        if self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0 (0 = all), got {self.max_samples}")
        allowed = [o for o in layout_options(self.layout) if o != "mcq_reasoning"]
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"layout {self.layout!r} has no option {unknown[0]!r}; its options: {', '.join(allowed) or 'none'}"
            )

    def read_options(self) -> dict[str, Any]:
        """The keyword options for :func:`read_source` (``mcq_reasoning`` for the MCQ layouts only)."""
        extra = {"mcq_reasoning": self.mcq_reasoning} if self.layout in MCQ_LAYOUTS else {}
        return {**extra, **self.options}


@dataclass(kw_only=True, slots=True)
class SFTMixture:
    """The instruction-tuning mixture: named sources whose ratios sum to 100 (percent of samples)."""

    data_root: str = ""
    """Folder the sources' relative paths start from (set it: ``--set data_root=/data/sft``)."""
    sources: dict[str, SourceSpec] = field(default_factory=dict)
    """Source name (the ``source`` of its conversations, e.g. ``medmcqa``) -> its spec."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("an SFT mixture needs at least one source")
        for name in self.sources:
            if not name or "/" in name:
                raise ValueError(f"SFT source name {name!r} must be non-empty and contain no '/'")
        total = sum(s.ratio for s in self.sources.values())
        if abs(total - 100.0) > RATIO_TOLERANCE:
            raise ValueError(
                f"SFT mixture ratios must sum to 100 (percent of samples) within {RATIO_TOLERANCE}, "
                f"got {total:.4f} over {len(self.sources)} sources"
            )

    def path_of(self, name: str) -> Path:
        path = Path(self.sources[name].path).expanduser()
        return path if path.is_absolute() or not self.data_root else Path(self.data_root).expanduser() / path


def load_mixture(name_or_path: str | Path, overrides: list[str] | dict | None = None) -> SFTMixture:
    """A mixture recipe (``paper/sft_mix`` or a YAML path), strictly, with ``--set``-style overrides."""
    from clinray.config import load

    return load(SFTMixture, name_or_path, overrides)


def read_mixture(mixture: SFTMixture) -> dict[str, ConversationSet]:
    """Every source of the mixture read from its files (a missing one is a ``ValueError`` naming it)."""
    return {
        name: read_source(
            spec.layout,
            mixture.path_of(name),
            source=name,
            field_map=spec.field_map or None,
            **spec.read_options(),
        )
        for name, spec in mixture.sources.items()
    }


def _shares(mixture: SFTMixture) -> dict[str, Fraction]:
    ratios = {name: Fraction(repr(float(s.ratio))) for name, s in mixture.sources.items()}
    whole = sum(ratios.values())
    return {name: r / whole for name, r in ratios.items()}


def quotas(mixture: SFTMixture, total: int) -> dict[str, int]:
    """Samples per source for ``total``: largest remainder on the normalised ratios (each within 1 sample)."""
    shares = _shares(mixture)
    exact = {name: share * total for name, share in shares.items()}
    out = {name: int(v) for name, v in exact.items()}  # floor: the values are >= 0
    order = sorted(exact, key=lambda n: (-(exact[n] - out[n]), list(exact).index(n)))
    for name in order[: total - sum(out.values())]:
        out[name] += 1
    return out


def _pool(name: str, conversations: list[Conversation], max_samples: int, seed: int) -> list[Conversation]:
    """The source's samples in its seeded order, capped at ``max_samples`` (0: all)."""
    order = list(conversations)
    random.Random(f"clinray.sft.mixture:{seed}:{name}").shuffle(order)
    return order[:max_samples] if max_samples else order


def sample_mixture(
    sets: dict[str, ConversationSet], mixture: SFTMixture, *, total: int | None, seed: int
) -> tuple[list[Conversation], dict[str, dict[str, Any]]]:
    """Draw each source's share of ``total`` samples, deterministically for ``seed``.

    Args:
        sets: source name -> its read conversations (one entry per source of ``mixture``).
        mixture: the ratios (and ``max_samples`` caps).
        total: samples in the mixture; ``None``: the largest total that repeats no source.
        seed: the draw's seed (the same seed, sets and mixture give the same list).

    Returns:
        The conversations in a seeded shuffled order, and per source ``{ratio, read, available, quota,
        taken, unique, repeated, passes}``: ``available`` is ``read`` capped by ``max_samples``; ``repeated``
        = taken - unique, the samples drawn a second time or more.
    """
    missing = sorted(set(mixture.sources) - set(sets))
    extra = sorted(set(sets) - set(mixture.sources))
    if missing or extra:
        raise ValueError(
            f"the sets and the mixture name different sources: missing {missing or 'none'}, not in the mixture "
            f"{extra or 'none'}"
        )
    pools = {
        name: _pool(name, sets[name].conversations, spec.max_samples, seed)
        for name, spec in mixture.sources.items()
    }
    empty = [name for name, pool in pools.items() if not pool]
    if empty:
        raise ValueError(f"SFT sources with no sample to draw from: {', '.join(empty)}")
    shares = _shares(mixture)
    if total is None:
        total = min(int(len(pools[n]) / shares[n]) for n in pools)  # floor of an exact Fraction
    if total <= 0:
        raise ValueError(f"the mixture total must be > 0, got {total}")
    want = quotas(mixture, total)
    drawn: list[Conversation] = []
    accounting: dict[str, dict[str, Any]] = {}
    for name, pool in pools.items():
        quota, n = want[name], len(pool)
        passes, rest = divmod(quota, n)
        rng = random.Random(f"clinray.sft.mixture.rest:{seed}:{name}")
        taken = pool * passes + (rng.sample(pool, rest) if passes else pool[:rest])
        drawn += taken
        unique = min(quota, n)
        accounting[name] = {
            "ratio": mixture.sources[name].ratio,
            "read": len(sets[name].conversations),
            "available": n,
            "quota": quota,
            "taken": len(taken),
            "unique": unique,
            "repeated": len(taken) - unique,
            "passes": round(quota / n, 4),
        }
    random.Random(f"clinray.sft.mixture.order:{seed}").shuffle(drawn)
    return drawn, accounting
