"""The Medprompt example store: training questions with verified chain of thought in a Milvus collection.

One row per example (``id`` primary key, ``vector``, ``question``, ``options`` as JSON, ``answer_index``,
``answer``, ``explanation``, ``source``), searched by COSINE similarity; the index type is configurable
(AUTOINDEX, FLAT, IVF_FLAT, HNSW where the server supports it). Writes are upserts keyed by ``id``, so
rebuilding an index from the same data leaves it unchanged. ``uri`` is a ``*.db`` path for Milvus Lite
(embedded, one process per file: write from one process, e.g. the Ray Data driver) or
``http://host:19530`` for a Milvus server. :class:`MilvusRetriever` pairs a store with an embedder and
implements the :class:`~clinray.prompting.knn_fewshot.Retriever` protocol.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from clinray.prompting.templates import Example

if TYPE_CHECKING:
    from clinray.retrieval.embed import Embedder

__all__ = ["StoreConfig", "MilvusExampleStore", "MilvusRetriever", "MAX_TEXT_CHARS"]

#: Longest question or explanation the VARCHAR fields hold (Milvus counts bytes; we keep a margin).
MAX_TEXT_CHARS = 16_000
_OUTPUT_FIELDS = ["id", "question", "options", "answer_index", "answer", "explanation", "source"]


@dataclasses.dataclass(kw_only=True, slots=True)
class StoreConfig:
    """Where the examples live and how they are indexed."""

    uri: str = "runs/index/medprompt.db"
    """A ``*.db`` path (Milvus Lite) or ``http://host:19530`` (Milvus server)."""
    collection: str = "medprompt_examples"
    """Collection name."""
    dim: int = 384
    """Vector dimension (384 for all-MiniLM-L6-v2 and gte-small)."""
    index_type: Literal["AUTOINDEX", "FLAT", "IVF_FLAT", "HNSW"] = "AUTOINDEX"
    """Vector index type (Milvus Lite 3 builds HNSW and IVF_FLAT with faiss-cpu, FLAT with NumPy)."""
    index_params: dict[str, int] = dataclasses.field(default_factory=dict)
    """Build parameters of the index, e.g. ``{nlist: 128}`` for IVF_FLAT or ``{M: 16, efConstruction: 200}``."""
    search_params: dict[str, int] = dataclasses.field(default_factory=dict)
    """Search parameters, e.g. ``{nprobe: 16}`` or ``{ef: 64}``."""
    token: str = ""
    """Milvus server only: ``user:password`` or an API key."""

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"store.dim must be positive, got {self.dim}")
        if not self.uri:
            raise ValueError("store.uri must be a *.db path (Milvus Lite) or http://host:19530")
        if self.uri.startswith(("http://", "https://", "tcp://")):
            return
        if not self.uri.endswith(".db"):
            raise ValueError(
                f"store.uri {self.uri!r}: a Milvus Lite path must end in .db, or give http://host:port"
            )


class MilvusExampleStore:
    """A Milvus collection of :class:`~clinray.prompting.templates.Example` rows with vectors.

    Milvus Lite runs one embedded server per ``*.db`` file per process and holds a file lock on it
    until that server stops; ``MilvusClient.close()`` alone does not stop it, so a process that built
    an index kept every other process (a serving replica, the next job) from opening the file. The
    last store of a process to close a Lite file stops its server.
    """

    _lite_users: ClassVar[Counter] = Counter()
    """Open stores per Milvus Lite file in this process."""

    def __init__(self, cfg: StoreConfig) -> None:
        from pymilvus import MilvusClient

        self.cfg = cfg
        self._lite_path = None
        if not cfg.uri.startswith(("http://", "https://", "tcp://")):
            Path(cfg.uri).parent.mkdir(parents=True, exist_ok=True)
            self._lite_path = os.path.abspath(cfg.uri)
        self.client = MilvusClient(cfg.uri, token=cfg.token) if cfg.token else MilvusClient(cfg.uri)
        if self._lite_path:
            MilvusExampleStore._lite_users[self._lite_path] += 1
        self._loaded = False

    def _load(self) -> None:
        """Load the collection for search (a reopened collection starts released)."""
        if not self._loaded:
            if not self.client.has_collection(self.cfg.collection):
                raise ValueError(
                    f"no collection {self.cfg.collection!r} at {self.cfg.uri}; build it with `clinray index`"
                )
            self.client.load_collection(self.cfg.collection)
            self._loaded = True

    def ensure_collection(self, *, drop: bool = False) -> None:
        """Create the collection (and its index) unless it exists; check the dimension if it does."""
        from pymilvus import DataType, MilvusClient

        name = self.cfg.collection
        if drop and self.client.has_collection(name):
            self.client.drop_collection(name)
        self._loaded = False
        if self.client.has_collection(name):
            fields = self.client.describe_collection(name)["fields"]
            dims = [f.get("params", {}).get("dim") for f in fields if f["name"] == "vector"]
            if dims and int(dims[0]) != self.cfg.dim:
                raise ValueError(
                    f"collection {name!r} at {self.cfg.uri} holds {dims[0]}-dim vectors but store.dim is "
                    f"{self.cfg.dim}; rebuild with --set drop_existing=true or use another collection"
                )
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.cfg.dim)
        schema.add_field("question", DataType.VARCHAR, max_length=65_535)
        schema.add_field("options", DataType.JSON)
        schema.add_field("answer_index", DataType.INT64)
        schema.add_field("answer", DataType.VARCHAR, max_length=65_535)
        schema.add_field("explanation", DataType.VARCHAR, max_length=65_535)
        schema.add_field("source", DataType.VARCHAR, max_length=256)
        index = self.client.prepare_index_params()
        index.add_index(
            field_name="vector",
            index_type=self.cfg.index_type,
            metric_type="COSINE",
            params=dict(self.cfg.index_params),
        )
        self.client.create_collection(name, schema=schema, index_params=index)

    def upsert(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert or replace rows by ``id``; return how many were written."""
        if not rows:
            return 0
        data = []
        for row in rows:
            vector = np.asarray(row["vector"], dtype=np.float32)
            if vector.shape != (self.cfg.dim,):
                raise ValueError(
                    f"row {row['id']!r}: vector shape {vector.shape} but store.dim is {self.cfg.dim}"
                )
            options = row["options"]
            options = json.loads(options) if isinstance(options, str) else list(options)
            data.append(
                {
                    "id": str(row["id"]),
                    "vector": vector.tolist(),
                    "question": str(row["question"]),
                    "options": [str(o) for o in options],
                    "answer_index": int(row["answer_index"]),
                    "answer": str(options[int(row["answer_index"])]),
                    "explanation": str(row.get("explanation") or ""),
                    "source": str(row.get("source") or ""),
                }
            )
        self.client.upsert(self.cfg.collection, data)
        return len(data)

    def flush(self) -> None:
        """Seal what was written into indexed segments (Milvus Lite searches unsealed rows by brute force,
        about 15x slower at 20k rows), so call it once after a bulk load."""
        self.client.flush(self.cfg.collection)

    def count(self) -> int:
        """Rows in the collection (upserted ids counted once)."""
        self._load()
        res = self.client.query(self.cfg.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def search(
        self, vectors: np.ndarray | Sequence[Sequence[float]], *, k: int, exclude_ids: Collection[str] = ()
    ) -> list[list[tuple[Example, float]]]:
        """The ``k`` most similar examples of each query vector, most similar first, excluding ids."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        self._load()
        flt = f"id not in {json.dumps(sorted(str(i) for i in exclude_ids))}" if exclude_ids else ""
        hits = self.client.search(
            self.cfg.collection,
            data=queries.tolist(),
            limit=k,
            filter=flt,
            output_fields=_OUTPUT_FIELDS,
            search_params={"metric_type": "COSINE", "params": dict(self.cfg.search_params)},
        )
        return [[(_to_example(h["entity"]), float(h["distance"])) for h in per_query] for per_query in hits]

    def all_examples(self, *, limit: int = 16_384) -> list[Example]:
        """Up to ``limit`` stored examples, sorted by id (the pool of static few-shot)."""
        self._load()
        rows = self.client.query(
            self.cfg.collection, filter='id != ""', output_fields=_OUTPUT_FIELDS, limit=limit
        )
        return sorted((_to_example(r) for r in rows), key=lambda ex: ex.id)

    def close(self) -> None:
        """Close the client; the last store of this process on a Milvus Lite file also stops its server
        (releasing the file's lock for other processes). Closing twice is harmless."""
        if self.client is None:
            return
        self.client.close()
        self.client = None
        if self._lite_path:
            users = MilvusExampleStore._lite_users
            users[self._lite_path] -= 1
            if users[self._lite_path] <= 0:
                del users[self._lite_path]
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(self._lite_path)


def _to_example(entity: dict[str, Any]) -> Example:
    return Example(
        id=entity["id"],
        question=entity["question"],
        options=tuple(entity["options"]),
        answer_index=int(entity["answer_index"]),
        explanation=entity.get("explanation", ""),
        source=entity.get("source", ""),
    )


class MilvusRetriever:
    """Embeds a question and searches the store: the Retriever of the kNN strategies."""

    def __init__(self, store: MilvusExampleStore, embedder: Embedder) -> None:
        if embedder.dim != store.cfg.dim:
            raise ValueError(
                f"embedder gives {embedder.dim}-dim vectors but the store holds {store.cfg.dim}-dim ones"
            )
        self.store, self.embedder = store, embedder

    def search(
        self, question: str, options: Sequence[str], *, k: int, exclude_ids: Collection[str] = ()
    ) -> list[tuple[Example, float]]:
        from clinray.retrieval.embed import embedding_text

        vector = self.embedder.embed([embedding_text(question, options)])
        return self.store.search(vector, k=k, exclude_ids=exclude_ids)[0]
