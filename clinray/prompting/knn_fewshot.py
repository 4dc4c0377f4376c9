"""Dynamic few-shot selection: the k training examples most similar to the question (Medprompt kNN).

Pure Python: the nearest-neighbour search is behind the :class:`Retriever` protocol, implemented by
:class:`clinray.retrieval.milvus_store.MilvusRetriever` (embedder + Milvus collection) and by any
in-memory stand-in. Two rules hold whatever the retriever: the asked question is never its own example
(excluded by id in the search and again by text here, which also catches a training copy of a test
question under another id), and the examples are ordered from least to most similar, so the most
similar one sits right before the question, where a model attends to it most.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from clinray.prompting.cot import same_question
from clinray.prompting.templates import Example

__all__ = ["Retriever", "knn_examples"]


class Retriever(Protocol):
    """Nearest stored examples of a question."""

    def search(
        self, question: str, options: Sequence[str], *, k: int, exclude_ids: Collection[str] = ()
    ) -> list[tuple[Example, float]]:
        """Up to ``k`` examples with their similarity, most similar first, none with an excluded id."""
        ...


def knn_examples(
    question: str,
    options: Sequence[str],
    *,
    retriever: Retriever,
    k: int = 5,
    question_id: str | None = None,
) -> list[Example]:
    """The ``k`` nearest stored examples, least similar first (the most similar goes last).

    Args:
        question: the asked question's stem.
        options: its options (part of the embedded text).
        retriever: where the examples are searched.
        k: number of examples.
        question_id: the asked question's id, when it may be stored (leak guard).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    exclude = [question_id] if question_id else []
    hits = retriever.search(question, options, k=k + 1, exclude_ids=exclude)
    kept = [
        (ex, score) for ex, score in hits if ex.id not in exclude and not same_question(ex.question, question)
    ]
    kept.sort(key=lambda hit: hit[1], reverse=True)
    return [ex for ex, _ in reversed(kept[:k])]
