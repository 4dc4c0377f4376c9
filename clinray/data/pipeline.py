"""The curation pipeline: ``CurateConfig`` and ``run_curation(cfg)`` -> kept docs, rejects, report.

Ordered stages on a lazy Ray Dataset in the working schema (see :mod:`clinray.data.stage`): ``parse``
(the readers), then the stages :func:`build_stages` builds: the row stages ``normalize``,
``length_filter``, ``pii_filter``; ``exact_dedup`` (a hash shuffle); and the global stages ``minhash``,
``substring_<L>`` (one accounting name per pass) and ``decontaminate``, each with its own sub-config
field in :class:`CurateConfig`. Every stage declares the columns it reads, checked when it is built.
Nothing runs until the final ``write_parquet``: the whole chain streams through Ray Data once, and
stage counts come from the per-batch accounting files the workers write, summed at the end, so the
driver never holds the dataset. Stages that need a global view (dedup) shuffle inside Ray Data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from clinray import storage
from clinray.config import dump
from clinray.data.decontaminate import DecontamConfig, DecontaminateStage
from clinray.data.dedup_exact import ExactDedupConfig, exact_dedup
from clinray.data.dedup_minhash import MinHashConfig, MinHashStage
from clinray.data.dedup_substring import SubstringConfig, SubstringStage
from clinray.data.filters import LengthFilter, LengthFilterConfig, PIIFilter, PIIFilterConfig
from clinray.data.normalize import Normalize, NormalizeConfig
from clinray.data.readers import InputSpec, ReadersConfig, file_groups, read_documents
from clinray.data.stage import (
    DETAIL,
    REASON,
    WORK_SCHEMA,
    GlobalStage,
    RowStage,
    RowStageChain,
    StageStats,
    collect_stats,
    missing_columns,
    shared_operator_resources,
)
from clinray.results import StageResult, missing_dir, missing_glob

logger = logging.getLogger(__name__)

#: Why a run with decontamination on and no evaluation sets refuses to start (one line).
NO_QUESTIONS_ROOT = (
    "decontaminate.questions_root is not set: point it at the evaluation sets (a tiny world's questions/, "
    "the paper's /mnt/shared/benchmarks) or set decontaminate.enabled=false to curate without decontamination"
)


@dataclasses.dataclass(kw_only=True, slots=True)
class OutputConfig:
    """Where and how the curated documents are written."""

    dir: str = "runs/curate"
    """Run folder: ``docs/`` (kept documents, Parquet), ``accounting/`` (rejects + stats), reports."""
    partition_cols: list[str] = dataclasses.field(default_factory=lambda: ["domain"])
    """Hive partitioning of ``docs/`` (``domain=clinical/...``); [] for flat files."""
    min_rows_per_file: int = 1000
    """Rows per Parquet file at least (fewer, larger files)."""
    overwrite: bool = False
    """Replace an existing non-empty run folder (otherwise that is an error)."""

    def __post_init__(self):
        bad = sorted(set(self.partition_cols) - {"domain", "source", "format"})
        if bad:
            raise ValueError(f"output.partition_cols {bad} not allowed; use domain, source and/or format")
        if self.min_rows_per_file < 1:
            raise ValueError("output.min_rows_per_file must be >= 1")


@dataclasses.dataclass(kw_only=True, slots=True)
class CurateConfig:
    """Root config of ``clinray curate`` (recipes ``tiny/curate``, ``paper/curate``)."""

    input_root: str = "."
    """Folder the input globs are relative to (e.g. a tiny world's ``corpus/``)."""
    inputs: list[InputSpec] = dataclasses.field(default_factory=list)
    """Input groups: glob, source, domain, format (and fields for JSONL/Parquet)."""
    readers: ReadersConfig = dataclasses.field(default_factory=ReadersConfig)
    """Parsing (concurrency, caps, HTML extractor, JATS captions)."""
    normalize: NormalizeConfig = dataclasses.field(default_factory=NormalizeConfig)
    """Text normalization."""
    length: LengthFilterConfig = dataclasses.field(default_factory=LengthFilterConfig)
    """Low-length filter."""
    pii: PIIFilterConfig = dataclasses.field(default_factory=PIIFilterConfig)
    """PII filter (drop or redact)."""
    exact_dedup: ExactDedupConfig = dataclasses.field(default_factory=ExactDedupConfig)
    """Exact document dedup."""
    minhash: MinHashConfig = dataclasses.field(default_factory=MinHashConfig)
    """MinHash LSH near-duplicate removal."""
    substring: SubstringConfig = dataclasses.field(default_factory=SubstringConfig)
    """Exact-substring dedup (suffix array), one pass per threshold."""
    decontaminate: DecontamConfig = dataclasses.field(default_factory=DecontamConfig)
    """Decontamination against evaluation test sets: needs ``decontaminate.questions_root`` (a run without it
    refuses to start, unless ``decontaminate.enabled=false`` says to curate without decontamination)."""
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    """Outputs."""

    def __post_init__(self):
        if not self.inputs:
            raise ValueError("curate needs at least one entry in 'inputs' (glob, source, domain[, format])")

    def check_inputs(self) -> list[str]:
        """Every missing input at once (before Ray starts): the root, each glob, the decontamination sets."""
        problems = missing_dir(self.input_root, "input_root")
        if not problems:
            for spec in self.inputs:
                problems += missing_glob(
                    self.input_root, spec.glob, f"input glob {spec.glob!r} (source {spec.source})"
                )
        if self.decontaminate.enabled and self.decontaminate.questions_root:
            problems += missing_dir(self.decontaminate.questions_root, "decontaminate.questions_root")
        elif self.decontaminate.enabled:
            problems.append(NO_QUESTIONS_ROOT)
        out = self.output.dir
        if not self.output.overwrite and storage.isdir_nonempty(out):
            problems.append(f"output.dir {out!r} is not empty (choose another or set output.overwrite=true)")
        return problems + uri_limits(self)


def uri_limits(cfg: CurateConfig) -> list[str]:
    """What cannot take a URI yet, one message each.

    Every stage writes its side files (accounting, timings, MinHash's clusters, decontamination's
    summary) through :mod:`clinray.storage`, so ``output.dir`` may be a URI; the evaluation sets are
    still read from local files.
    """
    if cfg.decontaminate.enabled and storage.is_uri(cfg.decontaminate.questions_root):
        return ["decontaminate.questions_root must be a local (or shared file system) folder, not a URI"]
    return []


@dataclasses.dataclass(frozen=True)
class ExactDedupStage:
    """Exact dedup as a plan entry: a hash shuffle, then per-block marking (``clinray/data/dedup_exact.py``)."""

    cfg: ExactDedupConfig
    sink_root: str
    input_bytes: int = 0
    """The input files' size (sizes the shuffle; set by the pipeline once the inputs are listed)."""
    name: ClassVar[str] = "exact_dedup"
    names: ClassVar[tuple[str, ...]] = ("exact_dedup",)
    requires: ClassVar[tuple[str, ...]] = ("id", "text", "source")

    def apply(self, ds):
        return exact_dedup(ds, self.cfg, sink_root=self.sink_root, input_bytes=self.input_bytes)


Stage = RowStage | ExactDedupStage | GlobalStage
"""A plan entry: row stages are chained into one UDF; the others' ``apply(ds)`` is called in order."""


def accounting_dir(cfg: CurateConfig) -> str:
    """The accounting folder every stage writes to (``<output.dir>/accounting``; a URI for a URI)."""
    if storage.is_uri(cfg.output.dir):
        return storage.join(cfg.output.dir, "accounting")
    return str(Path(cfg.output.dir) / "accounting")


def build_stages(cfg: CurateConfig, *, columns: Iterable[str] = WORK_SCHEMA.names) -> list[Stage]:
    """The stages after ``parse``, built, in order; disabled ones are left out.

    Args:
        cfg: The curation config.
        columns: The columns the rows carry after ``parse`` (the working schema). Each stage's
            ``requires`` is checked against them here: a missing column is a ``ValueError`` naming the
            stage, before anything runs.
    """
    sink = accounting_dir(cfg)
    stages: list[Stage] = [Normalize(cfg.normalize, sink_root=sink)]
    if cfg.length.enabled:
        stages.append(LengthFilter(cfg.length, sink_root=sink))
    if cfg.pii.enabled:
        stages.append(PIIFilter(cfg.pii, sink_root=sink))
    if cfg.exact_dedup.enabled:
        stages.append(ExactDedupStage(cfg.exact_dedup, sink))
    if cfg.minhash.enabled:
        stages.append(MinHashStage(cfg.minhash, sink_root=sink))
    if cfg.substring.enabled:
        stages.append(SubstringStage(cfg.substring, sink_root=sink))
    if cfg.decontaminate.enabled:
        if not cfg.decontaminate.questions_root:
            raise ValueError(NO_QUESTIONS_ROOT)
        stages.append(DecontaminateStage(cfg.decontaminate, sink_root=sink))
    columns = list(columns)
    for stage in stages:
        missing_columns(stage.requires, columns, stage=stage.names[0])
    return stages


def stage_names(stages: list[Stage]) -> list[str]:
    """The accounting names of ``stages`` in pipeline order (a substring stage has one per pass)."""
    return [name for stage in stages for name in stage.names]


def _apply_stages(ds, stages: list[Stage]):
    """Apply the stages in order, running each run of consecutive row stages as one chain."""
    chain: list[RowStage] = []
    for stage in [*stages, None]:
        if isinstance(stage, RowStage):
            chain.append(stage)
            continue
        if chain:
            ds = ds.map_batches(
                RowStageChain(chain), batch_size=None, batch_format="pyarrow", zero_copy_batch=False
            )
            chain = []
        if stage is not None:
            ds = stage.apply(ds)
    return ds


@dataclasses.dataclass(kw_only=True)
class CurationResult(StageResult):
    """Paths and counts of one curation run (each path a URI string when ``output.dir`` is a URI)."""

    out_dir: Path | str
    docs_dir: Path | str
    rejects_dir: Path | str
    report_json: Path | str
    report_md: Path | str
    funnel_png: Path | str
    stages: dict[str, StageStats]
    wall_s: float

    @property
    def num_docs(self) -> int:
        last = list(self.stages.values())[-1]
        return last.num_rows_out

    def outputs(self) -> dict[str, str]:
        return {
            "curated": str(self.docs_dir),
            "curation_report": str(self.report_json),
            "rejects": str(self.rejects_dir),
        }

    def funnel_rows(self) -> list[str]:
        """The funnel as Markdown table rows: each stage's rows in, kept and dropped by reason."""
        rows = ["| stage | rows in | kept | dropped (by reason) |", "|---|---|---|---|"]
        for name, s in self.stages.items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(s.dropped.items())) or "-"
            rows.append(f"| {name} | {s.num_rows_in} | {s.num_rows_out} | {reasons} |")
        return rows

    def summary(self) -> str:
        head = f"curation: {self.num_docs} documents kept in {self.wall_s:.1f} s"
        return "\n".join([head, *self.funnel_rows(), StageResult.summary(self)])


def _prepare_out_dir(cfg: CurateConfig, staging: Path | None = None) -> Path:
    """The local folder the driver writes into: ``output.dir``, or ``staging`` when that is a URI (whose
    old contents are checked and removed here)."""
    if staging is not None:
        if storage.isdir_nonempty(cfg.output.dir):
            if not cfg.output.overwrite:
                raise ValueError(
                    f"output folder {cfg.output.dir} is not empty; choose another output.dir or set "
                    "output.overwrite=true"
                )
            storage.rmtree(cfg.output.dir)
        return staging
    out = Path(cfg.output.dir)
    if out.exists() and any(out.iterdir()):
        if not cfg.output.overwrite:
            raise ValueError(
                f"output folder {out} is not empty; choose another output.dir or set output.overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _ensure_rejects_dir(sink_root: str) -> None:
    """The rejects folder the report names always exists: with no reject, one empty ``REJECT_SCHEMA`` file."""
    import pyarrow.parquet as pq

    from clinray.data.stage import REJECT_SCHEMA

    rejects = Path(sink_root) / "rejects"
    rejects.mkdir(parents=True, exist_ok=True)
    if not any(rejects.glob("*.parquet")):
        pq.write_table(REJECT_SCHEMA.empty_table(), rejects / "empty.parquet")


def run_curation(cfg: CurateConfig) -> CurationResult:
    """Run the whole pipeline on the current Ray cluster (``ray.init`` first); return the outputs.

    With a URI ``output.dir`` (``s3://...``) the workers write the documents and the accounting there
    directly; the driver's own files (config, report, ``_SUCCESS``) are made in a local staging folder,
    from a copy of the accounting, and uploaded at the end with ``_SUCCESS`` last (see :func:`_publish`).
    """
    problems = uri_limits(cfg)
    if problems:
        raise ValueError("; ".join(problems))
    if not storage.is_uri(cfg.output.dir):
        return _curate(cfg)
    with tempfile.TemporaryDirectory(prefix="clinray_curate_") as staging:
        return _publish(cfg, _curate(cfg, staging=Path(staging)), Path(staging))


def _local_accounting(sink_root: str, staging: Path | None) -> str:
    """The accounting folder the driver reads: ``sink_root``, or its copy in ``staging`` for a URI."""
    if staging is None:
        return sink_root
    storage.download_dir(sink_root, staging / "accounting")
    return str(staging / "accounting")


def _publish(cfg: CurateConfig, result: CurationResult, staging: Path) -> CurationResult:
    """Upload the staged driver files to ``output.dir`` (``_SUCCESS`` last); the result's paths as URIs."""
    uri = cfg.output.dir
    remote = {path[len(uri) :].lstrip("/") for path in storage.glob(uri, "accounting/**/*")}
    storage.upload_dir(staging, uri, skip=remote, last=("_SUCCESS",))
    fields = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, Path) and value.is_relative_to(staging):
            fields[field.name] = storage.join(uri, *value.relative_to(staging).parts)
    return dataclasses.replace(result, **fields)


def _curate(cfg: CurateConfig, *, staging: Path | None = None) -> CurationResult:
    from clinray.data.report import write_report

    stages = build_stages(cfg)  # before the output folder is touched: a bad plan changes nothing
    out = _prepare_out_dir(cfg, staging)
    config_path = dump(cfg, out / "config.yaml")
    sink_root = accounting_dir(cfg)
    start = time.time()
    docs_dir = storage.join(cfg.output.dir, "docs") if staging else out / "docs"
    # The row stages right after parsing (normalize, filters) run inside the parse tasks.
    num_leading = next((i for i, s in enumerate(stages) if not isinstance(s, RowStage)), len(stages))
    groups = file_groups(cfg.inputs, cfg.readers, root=cfg.input_root)
    input_bytes = sum(sum(g["size"]) for g in groups)
    stages = [
        dataclasses.replace(s, input_bytes=input_bytes) if isinstance(s, ExactDedupStage) else s
        for s in stages
    ]
    with shared_operator_resources():
        ds = read_documents(
            cfg.inputs,
            cfg.readers,
            root=cfg.input_root,
            sink_root=sink_root,
            then=stages[:num_leading],
            groups=groups,
        )
        ds = _apply_stages(ds, stages[num_leading:])
        ds = ds.drop_columns([REASON, DETAIL])
        # Without global stages and with parse tasks, the write fuses into the parse tasks, whose input
        # rows are file groups (see read_documents): a row minimum there would make Ray bundle all the
        # groups into one task. Each parse call writes its own file of thousands of documents instead.
        fused = num_leading == len(stages) and cfg.readers.compute == "tasks"
        ds.write_parquet(
            str(docs_dir),
            partition_cols=cfg.output.partition_cols or None,
            min_rows_per_file=None if fused else cfg.output.min_rows_per_file,
        )
    wall_s = time.time() - start
    sink_root = _local_accounting(sink_root, staging)
    stats = collect_stats(sink_root, order=["parse", *stage_names(stages)])
    _ensure_rejects_dir(sink_root)
    # The report streams the rejects (bounded driver memory at any count); _SUCCESS comes last, once
    # every output (documents, accounting, report.json/md, funnel.png) is written.
    paths = write_report(stats, out_dir=out, wall_s=wall_s, sink_root=sink_root)
    problems = json.loads(paths["json"].read_text())["problems"]
    (out / "_SUCCESS").write_text(json.dumps({"wall_s": wall_s}))
    return CurationResult(
        out_dir=out,
        docs_dir=docs_dir,
        rejects_dir=Path(sink_root) / "rejects",
        report_json=paths["json"],
        report_md=paths["md"],
        funnel_png=paths["png"],
        stages=stats,
        wall_s=wall_s,
        config_path=config_path,
        problems=[f"accounting: {p}" for p in problems],
    )
