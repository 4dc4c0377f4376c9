"""Wire a Medprompt setup from one config: engine, embedder, Milvus store, retriever, static pool.

``clinray medprompt``, the demo stage and the serving layer all need the same four objects; this module
builds them from :class:`MedpromptRunConfig` (the ``tiny/medprompt`` recipe) so that each caller stays a
few lines. The store is opened read-only in spirit (no writes), but Milvus Lite still allows one process
per file, which is why a served retriever runs as a single replica.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clinray.engines.base import EngineConfig
from clinray.prompting.medprompt import MedpromptConfig
from clinray.retrieval.embed import EmbedConfig
from clinray.retrieval.milvus_store import StoreConfig

__all__ = ["MedpromptRunConfig", "MedpromptSetup", "open_setup"]


@dataclasses.dataclass(kw_only=True, slots=True)
class MedpromptRunConfig:
    """Everything a Medprompt answer needs."""

    engine: EngineConfig = dataclasses.field(default_factory=lambda: EngineConfig(kind="openai"))
    """The generation engine (set engine.model to a model folder for kind=transformers)."""
    medprompt: MedpromptConfig = dataclasses.field(default_factory=MedpromptConfig)
    """The strategy and its settings."""
    embed: EmbedConfig = dataclasses.field(default_factory=EmbedConfig)
    """The embedder of the kNN strategies (must be the one the index was built with)."""
    store: StoreConfig = dataclasses.field(default_factory=StoreConfig)
    """The example store built by ``clinray index``."""
    use_store: bool = True
    """Open the store (needed by kNN and static few-shot; zero-shot CoT runs without it)."""


@dataclasses.dataclass(kw_only=True)
class MedpromptSetup:
    """Loaded engine, retriever and static pool."""

    engine: Any
    retriever: Any | None
    pool: list | None
    config: MedpromptRunConfig

    def answer(
        self,
        question: str,
        options: list[str],
        *,
        question_id: str | None = None,
        strategy: str | None = None,
    ):
        from clinray.prompting.medprompt import answer_question

        return answer_question(
            question,
            options,
            engine=self.engine,
            strategy=strategy,
            config=self.config.medprompt,
            retriever=self.retriever,
            pool=self.pool,
            question_id=question_id,
        )

    def close(self) -> None:
        if self.retriever is not None:
            self.retriever.store.close()


def open_setup(cfg: MedpromptRunConfig) -> MedpromptSetup:
    """Load the engine, and the embedder, store and static pool when ``cfg.use_store``."""
    from clinray.engines import build_engine

    engine = build_engine(cfg.engine)
    retriever, pool = None, None
    if cfg.use_store:
        from clinray.retrieval.embed import Embedder
        from clinray.retrieval.milvus_store import MilvusExampleStore, MilvusRetriever

        store = MilvusExampleStore(cfg.store)
        if not store.client.has_collection(cfg.store.collection):
            raise ValueError(
                f"no collection {cfg.store.collection!r} at {cfg.store.uri}; build it first with `clinray index`"
            )
        retriever = MilvusRetriever(store, Embedder(cfg.embed))
        pool = store.all_examples()
    return MedpromptSetup(engine=engine, retriever=retriever, pool=pool, config=cfg)
