"""The one interface every generation engine implements, and its config.

Strategies, evaluation and serving talk to a model only through :class:`GenerationEngine`:
``generate`` a batch of prompts (one call, so an engine can batch the n prompts of an ensemble) and
``score`` continuations of a context by log-likelihood (the paper's answer extraction). Engines differ
in where the model runs: in this process (transformers), behind an OpenAI-compatible HTTP server, or
in vLLM on a GPU. Engines may also offer ``score_batch([(context, continuations), ...])``, which the
strategies use when present to score every run of every question in one pass, and the
:class:`TokenWindow` pair (``max_prompt_tokens``, ``count_tokens``), with which the strategies fit a
few-shot prompt to the model's window by dropping whole examples instead of letting the engine cut it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

from clinray.models.chat_template import STOP_STRINGS

__all__ = ["GenerationEngine", "TokenWindow", "EngineConfig", "EngineUnavailableError", "truncate_at_stop"]


class EngineUnavailableError(ValueError):
    """The configured engine cannot run here (a missing package or device); the message says what to do."""


@runtime_checkable
class GenerationEngine(Protocol):
    """A text generator that can also score continuations."""

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """One completion per prompt (greedy at temperature 0), cut at the first stop string."""
        ...

    def score(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation given ``context``."""
        ...


@runtime_checkable
class TokenWindow(Protocol):
    """An engine that knows its context window and counts tokens as its model does."""

    def max_prompt_tokens(self, *, max_new_tokens: int) -> int | None:
        """Most prompt tokens that leave room for ``max_new_tokens`` in the window (None: unknown)."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, as the engine encodes a prompt (special tokens included)."""
        ...


@dataclasses.dataclass(kw_only=True, slots=True)
class EngineConfig:
    """Which engine to build and how."""

    kind: Literal["transformers", "openai", "vllm"] = "transformers"
    """``transformers`` (in process, CPU or GPU), ``openai`` (an OpenAI-compatible server) or ``vllm`` (GPU)."""
    model: str = ""
    """Model folder or hub id (transformers, vllm); the served model name (openai)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """openai only: the server's base URL, up to and including ``/v1``."""
    api_key: str = ""
    """openai only: bearer token; empty for none. Prefer the ``OPENAI_API_KEY`` environment variable."""
    device: str = "auto"
    """transformers only: ``cpu``, ``cuda``, ``cuda:1`` or ``auto`` (CUDA when available)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype (``auto``: bfloat16 on CUDA, float32 on CPU)."""
    max_batch_size: int = 16
    """transformers only: prompts per forward batch."""
    timeout_s: float = 120.0
    """openai only: HTTP timeout per request."""
    gpu_memory_utilization: float = 0.85
    """vllm only: share of GPU memory vLLM may take."""

    def __post_init__(self) -> None:
        if self.kind != "openai" and not self.model:
            raise ValueError(f"engine.model must name a model folder or hub id for engine.kind={self.kind!r}")
        if self.max_batch_size < 1:
            raise ValueError(f"engine.max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"engine.base_url must be an http(s) URL, got {self.base_url!r}")


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_STRINGS) -> str:
    """``text`` up to the first stop string (kept whole when none occurs)."""
    cut = len(text)
    for stop in stops:
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]
