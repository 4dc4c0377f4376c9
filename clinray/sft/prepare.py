"""``clinray sft``: prepare the SFT mixture (Ray Data), pack it per epoch, and train on the pretraining loop.

The data stage, inside the job so the packed rows always match the recipe that trains on them:

1. read every source of the mixture (:mod:`clinray.sft.sources`, native layouts, bad rows kept with
   their reasons);
2. drop conversations that copy an evaluation question (:mod:`clinray.data.decontaminate`'s rule,
   on the user turns), when ``sft.decontaminate`` is on;
3. draw each source's share of the mixture (:func:`clinray.sft.mixture.sample_mixture`) and, for
   multiple-choice rows, ``sft.option_orders`` orders of the options;
4. render and tokenize on Ray Data (:func:`clinray.sft.encode.encode_messages`: labels on the answers
   and their EOS only);
5. drop samples too long for ``sft.seq_len`` or left without a trainable token, then pack every epoch
   anew (:mod:`clinray.sft.packing`) into ``<run>/sft_data/epoch-XX.parquet``, in the order the loop
   reads them, with a manifest: the packing report and the accounting (every conversation read is
   drawn, not drawn, contaminated or skipped by its reader; every sample drawn is packed, too long or
   without trainable tokens).

A re-run with the same run folder reuses the packed rows when their fingerprint (the ``sft`` section,
the tokenizer, the sources' sizes and times) matches, and Ray Train resumes from the last checkpoint:
the packing position is the checkpoint's data position. The trade-off: the rows are materialized
(``epochs`` copies of the data, 12 bytes a token), which is small for SFT, in exchange for a loop that
reads SFT rows exactly as it reads pretraining blocks.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Any

from clinray import storage
from clinray.results import missing_dir, missing_model
from clinray.train.config import TrainConfig
from clinray.train.trainer import TrainResult

log = logging.getLogger(__name__)
__all__ = ["SFTResult", "check_sft_inputs", "prepare_sft_data", "run_sft", "SFTTuner", "load_mixture"]

MANIFEST = "manifest.json"


@dataclasses.dataclass(kw_only=True)
class SFTResult(TrainResult):
    """A finished SFT run: the training summary plus the data stage's packing report and accounting."""

    data_dir: Path | str
    data: dict[str, Any]
    """The packed data's manifest (packing per epoch, accounting)."""

    def outputs(self) -> dict[str, str]:
        return {
            "sft_model": str(self.hf_final),
            "sft_run": str(self.run_dir),
            "sft_loss_plot": str(self.plot),
            "sft_data": str(self.data_dir),
        }

    def summary(self) -> str:
        packing = self.data["packing"][0]
        acc = self.data["accounting"]
        lines = [
            f"sft data: {acc['conversations']['drawn']} conversations drawn of {acc['conversations']['read']} read, "
            f"{acc['samples']['packed']} samples packed into {packing['rows']} rows/epoch (fill {packing['fill']:.3f}, "
            f"{packing['samples_per_row']} samples/row) x {len(self.data['packing'])} epochs",
        ]
        return "\n".join([*lines, TrainResult.summary(self)])


def load_mixture(cfg: TrainConfig):
    """The ``sft.mixture`` recipe with ``sft.data_root`` and ``sft.paths`` applied."""
    from clinray.config import load
    from clinray.sft.mixture import SFTMixture

    if not cfg.sft.mixture:
        raise ValueError(
            "sft.mixture is not set: name a mixture recipe (tiny/sft_mix, paper/sft_mix) or YAML"
        )
    mixture = load(SFTMixture, cfg.sft.mixture)
    unknown = sorted(set(cfg.sft.paths) - set(mixture.sources))
    if unknown:
        raise ValueError(
            f"sft.paths names {unknown}, not sources of {cfg.sft.mixture} ({sorted(mixture.sources)})"
        )
    for name, path in cfg.sft.paths.items():
        mixture.sources[name].path = path
    return mixture


def check_sft_inputs(cfg: TrainConfig) -> list[str]:
    """Every missing input of an SFT run at once: model, mixture, source files, questions, batch geometry."""
    from clinray.config import ConfigError
    from clinray.train.trainer import grad_accumulation

    problems = missing_model(cfg.model.path, "model.path")
    try:
        mixture = load_mixture(cfg)
    except (ValueError, ConfigError) as exc:
        problems.append(str(exc))
    else:
        for name in mixture.sources:
            path = mixture.path_of(name)
            if not path.exists():
                problems.append(f"sft source {name!r}: {path} does not exist (set sft.paths.{name}=...)")
    if cfg.sft.decontaminate.enabled:
        problems += missing_dir(
            cfg.sft.decontaminate.questions_root or "", "sft.decontaminate.questions_root"
        )
    try:
        grad_accumulation(cfg, cfg.sft.seq_len)
    except ValueError as exc:
        problems.append(str(exc))
    if not problems:
        model_cfg = json.loads((Path(cfg.model.path) / "config.json").read_text())
        limit = model_cfg.get("max_position_embeddings", cfg.sft.seq_len)
        if cfg.sft.seq_len > limit:
            problems.append(
                f"sft.seq_len {cfg.sft.seq_len} exceeds the model's max_position_embeddings {limit}"
            )
    return problems


def _fingerprint(cfg: TrainConfig, mixture) -> str:
    from clinray.config import to_dict

    parts: dict[str, Any] = {
        "sft": to_dict(cfg.sft),
        "tokenizer": cfg.model.path,
        "mixture": to_dict(mixture),
    }
    for name in sorted(mixture.sources):
        path = mixture.path_of(name)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts[f"files:{name}"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _user_text(conversation) -> str:
    return conversation.meta.get("question") or "\n".join(
        m["content"] for m in conversation.messages if m["role"] == "user"
    )


def _option_orders(conversations: list, orders: int, seed: int) -> list:
    """Each multiple-choice conversation in ``orders`` option orders (the first as given)."""
    if orders == 1:
        return list(conversations)
    rng = random.Random(seed)
    out = []
    for conv in conversations:
        out.append(conv)
        options = conv.meta.get("options")
        users = [i for i, m in enumerate(conv.messages) if m["role"] == "user"]
        block = "\n".join(options) if options else None
        if not options or len(users) != 1 or not conv.messages[users[0]]["content"].endswith(block):
            continue
        content = conv.messages[users[0]]["content"]
        head = content[: len(content) - len(block)]
        for k in range(1, orders):
            shuffled = list(options)
            rng.shuffle(shuffled)
            messages = list(conv.messages)
            messages[users[0]] = {"role": "user", "content": head + "\n".join(shuffled)}
            out.append(dataclasses.replace(conv, id=f"{conv.id}#order{k}", messages=tuple(messages)))
    return out


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _encode_batch(batch: dict, tokenizer_path: str) -> dict:
    """Ray Data ``map_batches`` function: conversations (JSON) to token ids and labels (the tokenizer is
    loaded once per worker process)."""
    from clinray.sft.encode import encode_messages

    tokenizer = _tokenizer(tokenizer_path)
    ids, labels = [], []
    for sample_id, source, messages in zip(batch["id"], batch["source"], batch["messages"], strict=True):
        sample = encode_messages(
            json.loads(messages), tokenizer, sample_id=str(sample_id), source=str(source)
        )
        ids.append(sample.input_ids)
        labels.append(sample.labels)
    return {"id": batch["id"], "source": batch["source"], "input_ids": ids, "labels": labels}


def _encode(conversations: list, tokenizer_path: str) -> list:
    """Tokenize on Ray Data (tasks of 512 conversations), in the conversations' order."""
    import numpy as np
    import ray.data

    from clinray.sft.encode import EncodedSample

    rows = [{"id": c.id, "source": c.source, "messages": json.dumps(list(c.messages))} for c in conversations]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // 512)).map_batches(
        _encode_batch, fn_kwargs={"tokenizer_path": tokenizer_path}, batch_size=512, num_cpus=1
    )
    out = []
    for row in ds.iter_rows():
        out.append(
            EncodedSample(
                id=row["id"],
                source=row["source"],
                input_ids=np.asarray(row["input_ids"], dtype=np.int32),
                labels=np.asarray(row["labels"], dtype=np.int32),
            )
        )
    return out


def _write_epoch(columns: dict, path: Path, epoch: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "input_ids": pa.array(columns["input_ids"], type=pa.list_(pa.int32())),
            "labels": pa.array(columns["labels"], type=pa.list_(pa.int32())),
            "seq_lens": pa.array(columns["seq_lens"], type=pa.list_(pa.int32())),
            "sources": pa.array(columns["sources"], type=pa.list_(pa.string())),
            "sample_ids": pa.array(columns["sample_ids"], type=pa.list_(pa.string())),
            "epoch": pa.array([epoch] * len(columns["input_ids"]), type=pa.int16()),
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def prepare_sft_data(cfg: TrainConfig, out: str | Path) -> dict:
    """Read, decontaminate, draw, tokenize and pack the SFT mixture into ``out``; return the manifest.

    Reuses ``out`` when its manifest's fingerprint matches (a resumed run packs nothing).
    """
    from transformers import AutoTokenizer

    from clinray.sft.mixture import read_mixture, sample_mixture
    from clinray.sft.packing import filter_samples, pack_epoch

    out = Path(out)
    mixture = load_mixture(cfg)
    fingerprint = _fingerprint(cfg, mixture)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") == fingerprint:
            log.info("sft data: reusing the packed rows in %s", out)
            return manifest
        raise ValueError(
            f"{out} holds SFT rows packed from another recipe or other sources: use a new run.name "
            "(a run's data cannot change under its checkpoints)"
        )
    out.mkdir(parents=True, exist_ok=True)
    rejects: list[dict] = []
    sets = read_mixture(mixture)
    read = {name: got.counts() for name, got in sets.items()}
    for name, got in sets.items():
        rejects += [
            {"source": name, "locator": s.locator, "reason": s.reason, "detail": s.detail}
            for s in got.skipped
        ]
        for warning in got.warnings:
            log.warning("sft source %s: %s", name, warning)
    contaminated = Counter()
    if cfg.sft.decontaminate.enabled:
        from clinray.data.decontaminate import ContaminationIndex, describe

        index = ContaminationIndex.build(cfg.sft.decontaminate)
        for name, got in sets.items():
            clean = []
            for conv in got.conversations:
                hits = index.hits(_user_text(conv))
                if hits:
                    contaminated[name] += 1
                    rejects.append(
                        {
                            "source": name,
                            "locator": conv.id,
                            "reason": "contaminated",
                            "detail": describe(hits),
                        }
                    )
                else:
                    clean.append(conv)
            got.conversations = clean
    drawn, draw_report = sample_mixture(sets, mixture, total=cfg.sft.total_samples or None, seed=cfg.sft.seed)
    conversations = _option_orders(drawn, cfg.sft.option_orders, cfg.sft.seed)
    encoded = _encode(conversations, cfg.model.path)
    filtered: list = []
    samples, dropped = filter_samples(encoded, cfg.sft.seq_len, overlong=cfg.sft.overlong, rejected=filtered)
    rejects += [
        {"source": x.source, "locator": x.id, "reason": reason, "detail": f"{len(x)} tokens"}
        for x, reason in filtered
    ]
    if not samples:
        raise ValueError(f"no SFT sample left to train on: {dict(dropped)}")
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    reports, num_rows = [], 0
    for epoch in range(cfg.sft.epochs):
        columns, report = pack_epoch(
            samples, cfg.sft.seq_len, strategy=cfg.sft.packing, seed=cfg.sft.seed, epoch=epoch, pad_id=pad_id
        )
        _write_epoch(columns, out / f"epoch-{epoch:02d}.parquet", epoch)
        reports.append(report.to_dict())
        num_rows += report.rows
    with (out / "rejects.jsonl").open("w", encoding="utf-8") as fh:
        for row in rejects:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    total_read = sum(r["read"] for r in read.values())
    skipped = sum(r["read"] - r["kept"] for r in read.values())
    unique_drawn = len({c.id for c in drawn})
    not_drawn = total_read - skipped - sum(contaminated.values()) - unique_drawn
    too_long, no_train = dropped.get("too_long", 0), dropped.get("no_trainable_tokens", 0)
    accounting = {
        "conversations": {
            "read": total_read,
            "skipped_by_reader": skipped,
            "contaminated": sum(contaminated.values()),
            "not_drawn": not_drawn,
            "drawn": unique_drawn,
            "balanced": total_read == skipped + sum(contaminated.values()) + not_drawn + unique_drawn
            and not_drawn >= 0,
        },
        "samples": {
            "drawn_with_repeats_and_orders": len(conversations),
            "packed": len(samples),
            "too_long": too_long,
            "no_trainable_tokens": no_train,
            "truncated_kept": dropped.get("truncated (kept)", 0),
            "balanced": len(conversations) == len(samples) + too_long + no_train,
        },
        "per_source": {
            name: {**read[name], "contaminated": contaminated.get(name, 0), **draw_report.get(name, {})}
            for name in sets
        },
        "rejects": str(out / "rejects.jsonl"),
    }
    manifest = {
        "producer": "clinray.sft.prepare",
        "fingerprint": fingerprint,
        "path": str(out),
        "seq_len": cfg.sft.seq_len,
        "epochs": cfg.sft.epochs,
        "num_rows": num_rows,
        "packing": reports,
        "accounting": accounting,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def run_sft(cfg: TrainConfig) -> SFTResult:
    """Prepare and pack the SFT data, then train (or resume) on the pretraining loop."""
    from clinray.train.trainer import fit_and_summarize, plan_run, run_folders

    if cfg.train.task != "sft":
        raise ValueError("clinray sft needs train.task: sft (this config pretrains: run `clinray pretrain`)")
    cfg.model.path = str(Path(cfg.model.path).resolve())
    run_dir, _ = run_folders(cfg)
    data_dir = storage.join(run_dir, "sft_data")
    if storage.is_uri(data_dir):
        manifest = _prepare_on_storage(cfg, data_dir)
    else:
        manifest = prepare_sft_data(cfg, data_dir)
    train = fit_and_summarize(cfg, plan_run(cfg, sft_rows=manifest))
    problems = list(train.problems)
    for ledger in ("conversations", "samples"):
        if not manifest["accounting"][ledger]["balanced"]:
            problems.append(
                f"sft data accounting of {ledger} does not balance: {manifest['accounting'][ledger]}"
            )
    fields = {f.name: getattr(train, f.name) for f in dataclasses.fields(TrainResult)}
    fields["problems"] = problems
    path = manifest["path"]
    return SFTResult(**fields, data_dir=path if storage.is_uri(path) else Path(path), data=manifest)


def _prepare_on_storage(cfg: TrainConfig, data_dir: str) -> dict:
    """The data stage for a run on object storage: pack in a local folder, upload, manifest last.

    The workers read the rows from ``data_dir`` (a URI) like token blocks. A re-run fetches only the
    stored manifest: its fingerprint decides, as on a file system, whether the rows are reused.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="clinray-sft-data-") as tmp:
        stored = storage.join(data_dir, MANIFEST)
        if storage.isfile(stored):
            Path(tmp, MANIFEST).write_bytes(storage.read_bytes(stored))
        try:
            manifest = prepare_sft_data(cfg, tmp)
        except ValueError as err:  # name the run's folder, not the staging one
            raise ValueError(str(err).replace(tmp, data_dir)) from None
        if manifest["path"] == data_dir:  # reused: the rows are already on storage
            return manifest
        manifest["path"] = data_dir
        Path(tmp, MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        storage.upload_dir(tmp, data_dir, last=(MANIFEST,))
    return manifest


@dataclasses.dataclass(frozen=True)
class SFTTuner:
    """The checkpoint sweep's :class:`clinray.eval.sweep.InstructionTuner`: ``clinray sft`` on each export.

    ``tuner(model_dir, out_dir=..., config=recipe)`` runs the SFT recipe with ``model.path=model_dir``
    into ``out_dir`` (run folder) and returns the tuned HF folder.
    """

    overrides: tuple[str, ...] = ()
    __name__ = "clinray.sft.prepare.SFTTuner"

    def __call__(self, model_dir: Path, *, out_dir: Path, config: str) -> Path:
        from clinray.config import load

        if not config:
            raise ValueError("sweep.sft_config is not set: name the SFT recipe each checkpoint is tuned with")
        out_dir = Path(out_dir)
        cfg = load(
            TrainConfig,
            config,
            [
                *self.overrides,
                f"model.path={model_dir}",
                f"run.storage_path={out_dir.parent}",
                f"run.name={out_dir.name}",
            ],
        )
        result = run_sft(cfg)
        if not result.ok:
            raise RuntimeError(f"instruction tuning of {model_dir} failed: {'; '.join(result.problems)}")
        return result.hf_final
