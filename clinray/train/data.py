"""Token blocks into the training loop through Ray Data, with a resumable, deterministic order.

The token-block Parquet (``input_ids`` list<int32> of exactly ``seq_len``, ``source``; see
``manifest.json``) is read with Ray Data and handed to every worker whole (not streaming-split): each
worker iterates global micro-batches of ``micro_batch_size x world_size`` blocks in the same seeded
order and keeps its own stride ``rank::world_size``. The trade-off: every worker reads all blocks
(cheap next to the model's compute, since blocks are already tokenized) in exchange for an order that
is identical on every run and every restart, so the data position (epoch, batches consumed) is a plain
pair of integers in the checkpoint and a resumed run sees exactly the batches an uninterrupted one would.

``blocks_from_corpus`` tokenizes a corpus per domain into the same format: the stand-in of the packing
stage for the tests and the demo when no packed blocks are given.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from clinray import storage

IGNORE_INDEX = -100
__all__ = ["DataPosition", "build_dataset", "iter_micro_batches", "blocks_from_corpus"]


@dataclasses.dataclass(kw_only=True, slots=True)
class DataPosition:
    """Where the reader is: the epoch and the global micro-batches of it already consumed."""

    epoch: int = 0
    num_batches: int = 0


def build_dataset(path: str | Path, *, materialize_below_mb: float = 0.0):
    """The token blocks as a Ray Dataset (only the columns the loop needs).

    Folders smaller than ``materialize_below_mb`` are read here with pyarrow and put in the object store
    as they are (no read tasks: workers that hold every CPU still get batches); larger ones stream.
    ``path`` may be a URI (``s3://...``): listed and read through :mod:`clinray.storage`'s filesystem.
    """
    import pyarrow.parquet as pq
    import ray.data

    if storage.is_uri(path):
        found = storage.find(str(path), "**/*.parquet")
        files, sizes = [p for p, _ in found], [s for _, s in found]
        fs = storage.filesystem(str(path))[0]
        fs_paths = [storage.filesystem(p)[1] for p in files]
    else:
        files = sorted(str(p) for p in Path(path).rglob("*.parquet"))
        sizes = [Path(f).stat().st_size for f in files] if files else []
        fs, fs_paths = None, files
    if not files:
        raise ValueError(f"no Parquet files under {str(path)!r}")
    names = set(pq.read_schema(fs_paths[0], filesystem=fs).names)
    packed = "seq_lens" in names  # packed SFT rows (clinray.sft.prepare) rather than token blocks
    required = {"input_ids", "labels", "seq_lens", "sources"} if packed else {"input_ids", "source"}
    missing = required - names
    if missing:
        raise ValueError(
            f"token blocks in {str(path)!r} lack column(s) {sorted(missing)}; found {sorted(names)}"
        )
    columns = (
        sorted(required) if packed else ["input_ids", "source"] + (["labels"] if "labels" in names else [])
    )
    size_mb = sum(sizes) / 1e6
    if size_mb < materialize_below_mb:
        return ray.data.from_arrow([pq.read_table(f, columns=columns, filesystem=fs) for f in fs_paths])
    return ray.data.read_parquet(fs_paths, columns=columns, shuffle=None, filesystem=fs)


def packed_fields(seq_lens: list, num_tokens: int) -> dict[str, np.ndarray]:
    """Per-token fields of packed rows from each row's sample lengths (padding fills each row's tail).

    ``position_ids`` restart at 0 at every sample (and at the padding); ``sample_len`` is the length of
    the sample a token belongs to, 0 on padding (NEFTune's L); ``segment`` numbers the samples of a row
    from 0 (padding: -1); ``cu_seq_lens`` are the boundaries of every sample and padding run when the
    rows are laid end to end (flash attention's varlen layout).
    """
    rows = len(seq_lens)
    position = np.zeros((rows, num_tokens), dtype=np.int64)
    sample_len = np.zeros((rows, num_tokens), dtype=np.int64)
    segment = np.full((rows, num_tokens), -1, dtype=np.int64)
    bounds = [0]
    for r, lengths in enumerate(seq_lens):
        at = 0
        for k, n in enumerate(np.asarray(lengths, dtype=np.int64).tolist()):
            position[r, at : at + n] = np.arange(n)
            sample_len[r, at : at + n] = n
            segment[r, at : at + n] = k
            at += n
            bounds.append(r * num_tokens + at)
        if at > num_tokens:
            raise ValueError(f"row {r}: samples of {at} tokens exceed the row length {num_tokens}")
        if at < num_tokens:
            position[r, at:] = np.arange(num_tokens - at)
            bounds.append((r + 1) * num_tokens)
    return {
        "position_ids": position,
        "sample_len": sample_len,
        "segment": segment,
        "cu_seq_lens": np.asarray(bounds, dtype=np.int32),
    }


def make_collate(sources: list[str]):
    """Collate numpy batches into tensors: ``input_ids``, ``labels`` (-100 = no loss), ``source_id``
    (one per row for token blocks; one per token for packed SFT rows, with :func:`packed_fields`)."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class _Collate(NumpyBatchCollateFn):
        def __init__(self) -> None:
            self.index = {name: i for i, name in enumerate(sources)}

        def __call__(self, batch: dict) -> dict:
            import torch

            if "seq_lens" in batch:
                return self.packed(batch)
            ids = torch.as_tensor(np.stack(batch["input_ids"]).astype(np.int64))
            labels = (
                torch.as_tensor(np.stack(batch["labels"]).astype(np.int64))
                if "labels" in batch
                else ids.clone()
            )
            other = len(self.index)
            source_id = torch.as_tensor(
                [self.index.get(str(s), other) for s in batch["source"]], dtype=torch.long
            )
            return {"input_ids": ids, "labels": labels, "source_id": source_id}

        def packed(self, batch: dict) -> dict:
            import torch

            ids = np.stack(batch["input_ids"]).astype(np.int64)
            fields = packed_fields(list(batch["seq_lens"]), ids.shape[1])
            other = len(self.index)
            source_id = np.full(ids.shape, other, dtype=np.int64)
            for r, (lengths, names) in enumerate(zip(batch["seq_lens"], batch["sources"], strict=True)):
                at = 0
                for n, name in zip(np.asarray(lengths).tolist(), list(names), strict=True):
                    source_id[r, at : at + n] = self.index.get(str(name), other)
                    at += n
            out = {
                "input_ids": ids,
                "labels": np.stack(batch["labels"]).astype(np.int64),
                "source_id": source_id,
                **{k: v for k, v in fields.items() if k != "cu_seq_lens"},
            }
            return {k: torch.as_tensor(v) for k, v in out.items()}

    return _Collate()


def iter_micro_batches(
    shard,
    *,
    position: DataPosition,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    sources: list[str],
    shuffle_seed: int,
    shuffle_buffer_blocks: int,
) -> Iterator[tuple[DataPosition, dict]]:
    """Yield ``(position after this batch, this worker's micro-batch)`` forever, epoch after epoch.

    Resuming at ``position`` skips the batches it already consumed (they are read, not trained on).
    """
    global_batch = micro_batch_size * world_size
    epoch, skip = position.epoch, position.num_batches
    collate = make_collate(sources)
    while True:
        num_batches = 0
        iterator = shard.iter_torch_batches(
            batch_size=global_batch,
            drop_last=True,
            collate_fn=collate,
            local_shuffle_buffer_size=shuffle_buffer_blocks or None,
            local_shuffle_seed=(shuffle_seed + epoch) if shuffle_buffer_blocks else None,
            prefetch_batches=2,
        )
        for batch in iterator:
            num_batches += 1
            if num_batches <= skip:
                continue
            mine = {k: v[rank::world_size] for k, v in batch.items()}
            yield DataPosition(epoch=epoch, num_batches=num_batches), mine
        if num_batches == 0:
            raise ValueError(
                f"the token blocks hold fewer than {global_batch} blocks (micro_batch_size x workers): "
                "lower train.micro_batch_size or scaling.num_workers, or pack more data"
            )
        epoch, skip = epoch + 1, 0


def blocks_from_corpus(
    corpus: str | Path, tokenizer_path: str | Path, out: str | Path, *, seq_len: int = 128
) -> dict:
    """Tokenize ``corpus/<domain>/**`` per domain into token-block Parquet + manifest; return the manifest.

    Plain text extraction (tags stripped, JSONL text fields), documents joined with EOS, chunked to
    ``seq_len``, the tail dropped. Stand-in for ``clinray pack`` in the tests and the demo.
    """
    import re

    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from clinray.models.tiny import iter_corpus_texts

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows_ids, rows_src = [], []
    tokens_per_source, blocks_per_source = {}, {}
    for domain_dir in sorted(p for p in Path(corpus).iterdir() if p.is_dir()):
        buffer: list[int] = []
        for text in iter_corpus_texts(domain_dir):
            text = re.sub(r"<[^>]+>", " ", text)
            buffer.extend(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        num_blocks = len(buffer) // seq_len
        for i in range(num_blocks):
            rows_ids.append(np.asarray(buffer[i * seq_len : (i + 1) * seq_len], dtype=np.int32))
            rows_src.append(domain_dir.name)
        tokens_per_source[domain_dir.name] = num_blocks * seq_len
        blocks_per_source[domain_dir.name] = num_blocks
    if not rows_ids:
        raise ValueError(f"no text under {str(corpus)!r} long enough for one block of {seq_len} tokens")
    order = np.random.default_rng(0).permutation(len(rows_ids))  # interleave the domains
    table = pa.table(
        {
            "input_ids": pa.array([rows_ids[i] for i in order], type=pa.list_(pa.int32())),
            "source": pa.array([rows_src[i] for i in order], type=pa.string()),
        }
    )
    pq.write_table(table, out / "part-00000.parquet")
    manifest = {
        "seq_len": seq_len,
        "tokenizer": str(tokenizer_path),
        "num_blocks": len(rows_ids),
        "tokens_per_source": tokens_per_source,
        "blocks_per_source": blocks_per_source,
        "epochs": 1,
        "mixture": None,  # each domain whole, no token-ratio mixing (clinray pack does that)
        "producer": "clinray.train.data.blocks_from_corpus",
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
