"""The pretraining mixture: which documents of which component go into the token blocks, by token count.

The paper mixes 50B tokens of clinical data with 15B tokens of general data (SlimPajama) and trains
4 epochs. A component is a named slice of the curated documents (by domain and/or source). After
tokenization each component's documents are ordered by a hash of their id (a deterministic shuffle);
the plan then takes whole documents in that order until the component's token target is met:

* ``targets``: each component's ``target_tokens`` (the paper's absolute numbers). A component with
  fewer tokens than its target is repeated (whole passes, then a partial one) and a warning says so.
* ``ratio``: the largest mixture that honours the ``weight`` ratio without repeating any document.
* ``all``: every document once.

Trade-off: selection is at document granularity, so a component overshoots its target by less than
one document; the manifest records the exact tokens selected. The plan needs only
``(component, order_key, num_tokens)`` per document on the driver, never the tokens themselves.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class MixtureComponent:
    """One named slice of the corpus in the mixture."""

    name: str
    """Component name; becomes the ``source`` column of its token blocks (e.g. ``clinical``)."""
    domains: list[str] = field(default_factory=list)
    """Documents whose ``domain`` is listed (empty: any domain)."""
    sources: list[str] = field(default_factory=list)
    """Documents whose ``source`` is listed (empty: any source)."""
    weight: float = 1.0
    """Share of tokens in ``ratio`` mode (the paper: clinical 50, general 15)."""
    target_tokens: int | None = None
    """Tokens wanted in ``targets`` mode (the paper: 50e9 clinical, 15e9 general), before epochs."""

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"mixture component name {self.name!r} must be non-empty and contain no '/'")
        if self.weight < 0:
            raise ValueError(f"mixture component {self.name!r}: weight must be >= 0, got {self.weight}")
        if self.target_tokens is not None and self.target_tokens < 0:
            raise ValueError(f"mixture component {self.name!r}: target_tokens must be >= 0")

    def matches(self, domain: str, source: str) -> bool:
        return (not self.domains or domain in self.domains) and (not self.sources or source in self.sources)


def _default_components() -> list[MixtureComponent]:
    return [
        MixtureComponent(name="clinical", domains=["clinical"], weight=50.0),
        MixtureComponent(name="general", domains=["general"], weight=15.0),
    ]


@dataclass(kw_only=True, slots=True)
class MixtureConfig:
    """How the components are mixed."""

    mode: Literal["ratio", "targets", "all"] = "ratio"
    """``ratio`` (by weight, no repetition), ``targets`` (absolute token targets), ``all`` (everything once)."""
    components: list[MixtureComponent] = field(default_factory=_default_components)
    """The components; a document goes to the first one it matches (unmatched documents are counted, unused)."""

    def __post_init__(self):
        if not self.components:
            raise ValueError("mixture.components must name at least one component")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture component names must be unique, got {names}")
        if self.mode == "targets" and any(c.target_tokens is None for c in self.components):
            raise ValueError("mixture.mode=targets needs target_tokens on every component")
        if self.mode == "ratio" and not any(c.weight > 0 for c in self.components):
            raise ValueError("mixture.mode=ratio needs at least one component with weight > 0")

    def component_of(self, domain: str, source: str) -> str | None:
        for c in self.components:
            if c.matches(domain, source):
                return c.name
        return None


def order_key(doc_id: str) -> int:
    """A deterministic pseudo-random int64 per document id (the mixture's shuffle order)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "little", signed=True)


def _targets(cfg: MixtureConfig, available: dict[str, int]) -> dict[str, int]:
    if cfg.mode == "all":
        return dict(available)
    if cfg.mode == "targets":
        return {c.name: int(c.target_tokens) for c in cfg.components}
    weighted = [c for c in cfg.components if c.weight > 0]
    scale = min(available.get(c.name, 0) / c.weight for c in weighted)
    return {c.name: int(scale * c.weight) for c in cfg.components}


def plan_mixture(docs: pd.DataFrame, cfg: MixtureConfig) -> dict[str, dict]:
    """Per component: full ``copies`` of every document plus one more for ``order_key <= cutoff``.

    Args:
        docs: one row per tokenized document: ``component``, ``order_key``, ``num_tokens``.
        cfg: the mixture.
    """
    available = {
        c.name: int(docs.loc[docs["component"] == c.name, "num_tokens"].sum()) for c in cfg.components
    }
    targets = _targets(cfg, available)
    plan = {}
    for c in cfg.components:
        avail, target = available[c.name], targets[c.name]
        part = docs[docs["component"] == c.name].sort_values("order_key")
        if target > 0 and avail == 0:
            raise ValueError(
                f"mixture component {c.name!r} wants {target:,} tokens but no document matches it "
                f"(domains={c.domains}, sources={c.sources}); fix the component or its inputs"
            )
        copies, rest = divmod(target, avail) if avail else (0, 0)
        cutoff, partial = None, 0
        if rest > 0:
            cum = np.cumsum(part["num_tokens"].to_numpy())
            i = int(np.searchsorted(cum, rest))  # first document at which the partial pass reaches ``rest``
            cutoff, partial = int(part["order_key"].iloc[i]), int(cum[i])
        if copies >= 1 and cfg.mode == "targets" and target > avail:
            logger.warning(
                "mixture component %r has %s tokens but its target is %s: repeating it %.2f times",
                c.name,
                f"{avail:,}",
                f"{target:,}",
                target / avail,
            )
        plan[c.name] = {
            "weight": c.weight,
            "target_tokens": target,
            "available_tokens": avail,
            "copies": int(copies),
            "cutoff": cutoff,
            "selected_tokens": int(copies * avail + partial),
            "num_docs": int(len(part)),
        }
    return plan


def copies_of(plan_entry: dict, keys: np.ndarray) -> np.ndarray:
    """How many times each document (by ``order_key``) of one component enters the stream."""
    extra = (keys <= plan_entry["cutoff"]) if plan_entry["cutoff"] is not None else np.zeros(len(keys), bool)
    return plan_entry["copies"] + extra.astype(np.int64)
