"""``clinray pack``: curated documents -> mixed, tokenized, EOS-joined, fixed-length token blocks.

Ray Data end to end: documents are assigned to mixture components, tokenized by actors (tokenizer
loaded once per actor) with an EOS after every document, and the mixture is planned from the
per-document token counts (:mod:`clinray.data.mixture`). Each batch then concatenates its selected
documents per component and cuts whole ``seq_len`` blocks; the remainder of every batch ("tail")
is gathered on the driver, concatenated per component and cut again, so at most one partial block per
component is dropped (and counted). Each block holds tokens of one component only, so per-source loss
is well defined. Output (the contract with pretraining, read by :mod:`clinray.data.blocks`): Parquet
parts with ``input_ids`` (list<int32>, exactly ``seq_len``) and ``source``, plus ``manifest.json``.

Trade-off: the tokenized corpus is materialized once (object store, spilling to disk) because the
mixture plan needs every document's token count before any block is cut; tokenizing twice would cost
more than holding the tokens.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import ActorPoolStrategy

from clinray import storage
from clinray.config import dump
from clinray.data.blocks import MANIFEST_NAME
from clinray.data.dedup_minhash import resolve
from clinray.data.mixture import MixtureConfig, copies_of, order_key, plan_mixture
from clinray.results import StageResult, missing_dir, missing_model

logger = logging.getLogger(__name__)


@dataclass(kw_only=True, slots=True)
class PackConfig:
    """Root config of ``clinray pack`` (recipes ``tiny/pack``, ``paper/pack``)."""

    input_dir: str = "runs/curate/docs"
    """Curated documents (Parquet with ``id``, ``text``, ``domain``, ``source``; hive folders allowed); a
    local folder or a URI (``s3://...``)."""
    output_dir: str = "runs/pack"
    """Token-block folder: Parquet parts + ``manifest.json``; a local folder or a URI."""
    tokenizer: str = "mistralai/Mistral-7B-v0.1"
    """HF tokenizer: a local folder (the tiny model's) or a hub id where a hub is reachable."""
    seq_len: int = 4096
    """Tokens per block (the model's context length)."""
    epochs: int = 4
    """Passes over the blocks that pretraining should make (recorded in the manifest, blocks not repeated)."""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    """Components and how they are mixed."""
    batch_size: int = 256
    """Documents per tokenization / packing batch."""
    num_tokenizers: int = 2
    """Tokenizer actors at most."""
    shuffle_seed: int | None = 0
    """Shuffle the blocks before writing (interleaves components); None keeps component order."""
    overwrite: bool = False
    """Replace an existing non-empty output folder."""

    def __post_init__(self):
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.num_tokenizers < 1:
            raise ValueError("batch_size and num_tokenizers must be >= 1")

    def check_inputs(self) -> list[str]:
        """Missing inputs, all at once, before Ray starts."""
        problems = missing_dir(self.input_dir, "input_dir (curated documents; run `clinray curate` first)")
        if Path(self.tokenizer).exists() and not (Path(self.tokenizer) / "tokenizer_config.json").is_file():
            problems.append(f"tokenizer {self.tokenizer!r} has no tokenizer_config.json")
        elif not Path(self.tokenizer).exists():
            problems += missing_model(self.tokenizer, "tokenizer")
        if not self.overwrite and storage.isdir_nonempty(self.output_dir):
            problems.append(
                f"output_dir {self.output_dir!r} is not empty (choose another or set overwrite=true)"
            )
        return problems


@dataclass(kw_only=True)
class PackResult(StageResult):
    """The token blocks of one packing run and their manifest."""

    blocks_dir: Path | str
    """The token-block folder (a URI string for a URI ``output_dir``)."""
    manifest: dict

    def outputs(self) -> dict[str, str]:
        return {"token_blocks": str(self.blocks_dir)}

    def summary(self) -> str:
        m = self.manifest
        tokens = ", ".join(f"{k} {v:,}" for k, v in m["tokens_per_source"].items())
        head = f"pack: {m['num_blocks']:,} blocks of {m['seq_len']} tokens ({tokens}) in {m['wall_s']} s"
        return "\n".join([head, StageResult.summary(self)])


def _assign(batch: pd.DataFrame, mixture: MixtureConfig) -> pd.DataFrame:
    comps = [mixture.component_of(str(d), str(s)) for d, s in zip(batch["domain"], batch["source"])]
    out = batch[["id", "text"]].assign(component=[c or "" for c in comps])
    out["order_key"] = np.array([order_key(str(i)) for i in batch["id"]], dtype=np.int64)
    return out


class Tokenize:
    """Ray Data actor: texts -> token ids (int32) with EOS appended."""

    def __init__(self, tokenizer: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(tokenizer)
        if self.tok.eos_token_id is None:
            raise ValueError(
                f"tokenizer {tokenizer!r} has no EOS token; packing needs one to separate documents"
            )
        self.eos = int(self.tok.eos_token_id)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        ids = self.tok(list(batch["text"]), add_special_tokens=False)["input_ids"]
        arrays = [np.asarray(x + [self.eos], dtype=np.int32) for x in ids]
        return pd.DataFrame(
            {
                "component": batch["component"],
                "order_key": batch["order_key"],
                "input_ids": arrays,
                "num_tokens": [len(a) for a in arrays],
            }
        )


def _stream(part: pd.DataFrame, entry: dict) -> np.ndarray:
    """One component's token stream in a batch: pass k holds the documents with more than k copies."""
    copies = copies_of(entry, part["order_key"].to_numpy())
    pieces = [
        a for k in range(int(copies.max(initial=0))) for a, c in zip(part["input_ids"], copies) if c > k
    ]
    return np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)


def cut_blocks(stream: np.ndarray, seq_len: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Whole ``seq_len`` blocks of ``stream`` and the remainder."""
    n = len(stream) // seq_len
    return list(stream[: n * seq_len].reshape(n, seq_len)), stream[n * seq_len :]


def _pack_batch(batch: pd.DataFrame, plan_ref, seq_len: int) -> pa.Table:
    plan = resolve(plan_ref)
    ids, sources, tails = [], [], []
    for name, part in batch.groupby("component", sort=True):
        if name not in plan:
            continue
        blocks, rest = cut_blocks(_stream(part, plan[name]), seq_len)
        ids += blocks
        sources += [name] * len(blocks)
        if len(rest):
            ids.append(rest)
            sources.append(name)
        tails += [False] * len(blocks) + ([True] if len(rest) else [])
    return pa.table(
        {
            "input_ids": pa.array(ids, type=pa.list_(pa.int32())),
            "source": pa.array(sources, type=pa.string()),
            "is_tail": pa.array(tails, type=pa.bool_()),
        }
    )


def _where(batch: pa.Table, column: str, value, invert: bool = False) -> pa.Table:
    """Rows of ``batch`` whose ``column`` equals ``value`` (or not, with ``invert``); types are kept."""
    import pyarrow.compute as pc

    mask = pc.equal(batch[column], value)
    return batch.filter(pc.invert(mask) if invert else mask)


def _prepare(out: Path | str, overwrite: bool) -> None:
    if storage.is_uri(out):
        if storage.isdir_nonempty(out):
            if not overwrite:
                raise ValueError(
                    f"output folder {out} is not empty; choose another output_dir or set overwrite=true"
                )
            storage.rmtree(out)
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(
                f"output folder {out} is not empty; choose another output_dir or set overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_pack(cfg: PackConfig) -> PackResult:
    """Run the packing job on the current Ray cluster (``ray.init`` first); return the blocks."""
    import ray

    start = time.time()
    out = cfg.output_dir if storage.is_uri(cfg.output_dir) else Path(cfg.output_dir)
    if not storage.exists(cfg.input_dir):
        raise ValueError(
            f"input_dir {cfg.input_dir!r} does not exist: run `clinray curate` first or fix the path"
        )
    _prepare(out, cfg.overwrite)
    docs = ray.data.read_parquet(cfg.input_dir, columns=None)
    missing = {"id", "text", "domain", "source"} - set(docs.columns())
    if missing:
        raise ValueError(f"{cfg.input_dir!r} lacks document column(s) {sorted(missing)}")
    assigned = docs.map_batches(
        _assign, fn_args=(cfg.mixture,), batch_format="pandas", batch_size=cfg.batch_size
    )
    tokens = (
        assigned.map_batches(
            _where, fn_args=("component", ""), fn_kwargs={"invert": True}, batch_format="pyarrow"
        )
        .map_batches(
            Tokenize,
            fn_constructor_args=(cfg.tokenizer,),
            batch_format="pandas",
            batch_size=cfg.batch_size,
            compute=ActorPoolStrategy(min_size=1, max_size=cfg.num_tokenizers),
        )
        .materialize()
    )
    num_unassigned = assigned.count() - tokens.count()
    plan = plan_mixture(
        tokens.select_columns(["component", "order_key", "num_tokens"]).to_pandas(), cfg.mixture
    )
    packed = tokens.map_batches(
        _pack_batch, fn_args=(ray.put(plan), cfg.seq_len), batch_format="pandas", batch_size=cfg.batch_size
    ).materialize()
    full = packed.map_batches(
        _where, fn_args=("is_tail", True), fn_kwargs={"invert": True}, batch_format="pyarrow"
    )
    full = full.drop_columns(["is_tail"])
    if cfg.shuffle_seed is not None:
        full = full.random_shuffle(seed=cfg.shuffle_seed)
    full.write_parquet(str(out), min_rows_per_file=1024)
    tails = packed.map_batches(_where, fn_args=("is_tail", True), batch_format="pyarrow").to_pandas()
    tail_blocks, dropped = _pack_tails(tails, cfg.seq_len)
    if tail_blocks.num_rows:
        fs, tails_path = storage.filesystem(storage.join(str(out), "tails-00000.parquet"))
        pq.write_table(tail_blocks, tails_path, filesystem=fs)
    manifest = _manifest(cfg, out, plan, dropped, num_unassigned, time.time() - start)
    config_path = _dump_config(cfg, out)
    storage.write_text(storage.join(str(out), MANIFEST_NAME), json.dumps(manifest, indent=2) + "\n")
    problems = [] if manifest["num_blocks"] else ["no token block was written (too few tokens for one block)"]
    return PackResult(blocks_dir=out, manifest=manifest, config_path=config_path, problems=problems)


def _dump_config(cfg: PackConfig, out: Path | str) -> Path | str:
    """``config.yaml`` next to the blocks (through a local file for a URI: ``dump`` writes files)."""
    if not storage.is_uri(out):
        return dump(cfg, out / "config.yaml")
    target = storage.join(out, "config.yaml")
    with storage.local_dir_for(target) as local:
        dump(cfg, local)
    return target


def _pack_tails(tails: pd.DataFrame, seq_len: int) -> tuple[pa.Table, dict[str, int]]:
    ids, sources, dropped = [], [], {}
    for name, part in tails.groupby("source", sort=True):
        blocks, rest = cut_blocks(
            np.concatenate([np.asarray(a, np.int32) for a in part["input_ids"]]), seq_len
        )
        ids += blocks
        sources += [name] * len(blocks)
        dropped[name] = int(len(rest))
    table = pa.table(
        {"input_ids": pa.array(ids, type=pa.list_(pa.int32())), "source": pa.array(sources, type=pa.string())}
    )
    return table, dropped


def _manifest(
    cfg: PackConfig, out: Path | str, plan: dict, dropped: dict, num_unassigned: int, wall_s: float
) -> dict:
    blocks_per_source: dict[str, int] = {}
    for path in storage.glob(out, "*.parquet"):
        fs, fs_path = storage.filesystem(path)
        for s, n in (
            pd.Series(pq.read_table(fs_path, columns=["source"], filesystem=fs)["source"].to_pylist())
            .value_counts()
            .items()
        ):
            blocks_per_source[s] = blocks_per_source.get(s, 0) + int(n)
    for name, entry in plan.items():
        entry["tokens_dropped"] = dropped.get(name, 0)
        blocks_per_source.setdefault(name, 0)
    return {
        "seq_len": cfg.seq_len,
        "tokenizer": cfg.tokenizer,
        "num_blocks": sum(blocks_per_source.values()),
        "tokens_per_source": {s: n * cfg.seq_len for s, n in blocks_per_source.items()},
        "blocks_per_source": blocks_per_source,
        "epochs": cfg.epochs,
        "mixture": {"mode": cfg.mixture.mode, "components": plan},
        "num_documents_unassigned": int(num_unassigned),
        "wall_s": round(wall_s, 2),
        "producer": "clinray pack",
    }
