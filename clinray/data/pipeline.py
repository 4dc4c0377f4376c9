"""The curation pipeline: ``CurateConfig`` and ``run_curation(cfg)`` -> kept docs, rejects, report.

Ordered stages, each ``(name, fn)`` with ``fn(ds, ctx) -> ds`` on a lazy Ray Dataset in the working
schema (see :mod:`clinray.data.stage`): ``parse`` (the readers) then ``normalize``, ``length_filter``,
``pii_filter``, ``exact_dedup``, and the stages issue C appends in :func:`build_stages` (near-dup,
substring dedup, decontamination), each with its own sub-config field in :class:`CurateConfig`.
Nothing runs until the final ``write_parquet``: the whole chain streams through Ray Data once, and
stage counts come from the per-batch accounting files the workers write, summed at the end, so the
driver never holds the dataset. Stages that need a global view (dedup) shuffle inside Ray Data.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from clinray.config import dump
from clinray.data.decontaminate import DecontamConfig, decontaminate
from clinray.data.dedup_exact import ExactDedupConfig, exact_dedup
from clinray.data.dedup_minhash import MinHashConfig, minhash_dedup
from clinray.data.dedup_substring import SubstringConfig, stage_name, substring_dedup
from clinray.data.filters import LengthFilter, LengthFilterConfig, PIIFilter, PIIFilterConfig
from clinray.data.normalize import Normalize, NormalizeConfig
from clinray.data.readers import InputSpec, ReadersConfig, read_documents
from clinray.data.stage import (
    DETAIL,
    REASON,
    RowStage,
    RowStageChain,
    StageStats,
    collect_stats,
    shared_operator_resources,
)
from clinray.results import StageResult, missing_dir, missing_glob


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
    # --- issue C stages (near-dup, substring dedup, decontamination) ---
    minhash: MinHashConfig = dataclasses.field(default_factory=MinHashConfig)
    """MinHash LSH near-duplicate removal."""
    substring: SubstringConfig = dataclasses.field(default_factory=SubstringConfig)
    """Exact-substring dedup (suffix array), one pass per threshold."""
    decontaminate: DecontamConfig = dataclasses.field(default_factory=DecontamConfig)
    """Decontamination against evaluation test sets (needs ``decontaminate.questions_root``)."""
    # --- end issue C ---
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
        out = Path(self.output.dir)
        if not self.output.overwrite and out.is_dir() and any(out.iterdir()):
            problems.append(
                f"output.dir {str(out)!r} is not empty (choose another or set output.overwrite=true)"
            )
        return problems


@dataclasses.dataclass(kw_only=True)
class PipelineContext:
    """What every stage function gets besides the dataset."""

    cfg: CurateConfig
    out_dir: Path
    sink_root: str
    """The accounting folder (``<out>/accounting``): give it to every Accountant / RowStage."""


StageFn = Callable[..., object]  # (ray.data.Dataset, PipelineContext) -> ray.data.Dataset


def _row_stage(cls, cfg_attr: str) -> StageFn:
    """A stage function for a per-row stage; consecutive ones are chained into one UDF by
    :func:`_apply_stages` (``apply.make`` builds the stage)."""

    def make(ctx: PipelineContext) -> RowStage:
        return cls(getattr(ctx.cfg, cfg_attr), sink_root=ctx.sink_root)

    def apply(ds, ctx: PipelineContext):
        return ds.map_batches(make(ctx), batch_size=None, batch_format="pyarrow", zero_copy_batch=False)

    apply.make = make
    return apply


def _apply_stages(ds, stages: list[tuple[str, StageFn]], ctx: PipelineContext):
    """Apply the stage functions in order, running each run of consecutive row stages as one chain."""
    chain: list[RowStage] = []
    for _name, fn in [*stages, ("", None)]:
        make = getattr(fn, "make", None)
        if make is not None:
            chain.append(make(ctx))
            continue
        if chain:
            ds = ds.map_batches(
                RowStageChain(chain), batch_size=None, batch_format="pyarrow", zero_copy_batch=False
            )
            chain = []
        if fn is not None:
            ds = fn(ds, ctx)
    return ds


def _exact_dedup(ds, ctx: PipelineContext):
    return exact_dedup(ds, ctx.cfg.exact_dedup, sink_root=ctx.sink_root)


def build_stages(cfg: CurateConfig) -> list[tuple[str, StageFn]]:
    """The stages after ``parse``, in order; disabled ones are left out.

    Each name is the stage name the stage's accounting writes under. Later stages (issue C: MinHash
    near-dup, substring dedup, decontamination) are appended here, after ``exact_dedup``.
    """
    stages: list[tuple[str, StageFn]] = [("normalize", _row_stage(Normalize, "normalize"))]
    if cfg.length.enabled:
        stages.append(("length_filter", _row_stage(LengthFilter, "length")))
    if cfg.pii.enabled:
        stages.append(("pii_filter", _row_stage(PIIFilter, "pii")))
    if cfg.exact_dedup.enabled:
        stages.append(("exact_dedup", _exact_dedup))
    stages += _issue_c_stages(cfg)
    return stages


# --- issue C stages -------------------------------------------------------------------------------------
def _minhash(ds, ctx: PipelineContext):
    return minhash_dedup(ds, ctx.cfg.minhash, sink_root=ctx.sink_root)


def _substring(ds, ctx: PipelineContext):
    return substring_dedup(ds, ctx.cfg.substring, sink_root=ctx.sink_root)


def _decontaminate(ds, ctx: PipelineContext):
    return decontaminate(ds, ctx.cfg.decontaminate, sink_root=ctx.sink_root)


def _issue_c_stages(cfg: CurateConfig) -> list[tuple[str, StageFn]]:
    """Near-dup, substring passes, decontamination. All substring passes run in one shard task (one sort),
    so only the first pass's entry does work; the others are listed for their accounting names."""
    import logging

    stages: list[tuple[str, StageFn]] = []
    if cfg.minhash.enabled:
        stages.append(("minhash", _minhash))
    if cfg.substring.enabled:
        first, *rest = cfg.substring.thresholds
        stages.append((stage_name(first), _substring))
        stages += [(stage_name(t), lambda ds, ctx: ds) for t in rest]
    if cfg.decontaminate.enabled and cfg.decontaminate.questions_root:
        stages.append(("decontaminate", _decontaminate))
    elif cfg.decontaminate.enabled:
        logging.getLogger(__name__).warning(
            "decontaminate.questions_root is not set: decontamination skipped"
        )
    return stages


# --- end issue C stages ---------------------------------------------------------------------------------


@dataclasses.dataclass(kw_only=True)
class CurationResult(StageResult):
    """Paths and counts of one curation run."""

    out_dir: Path
    docs_dir: Path
    rejects_dir: Path
    report_json: Path
    report_md: Path
    funnel_png: Path
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


def _prepare_out_dir(cfg: CurateConfig) -> Path:
    out = Path(cfg.output.dir)
    if out.exists() and any(out.iterdir()):
        if not cfg.output.overwrite:
            raise ValueError(
                f"output folder {out} is not empty; choose another output.dir or set output.overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_curation(cfg: CurateConfig) -> CurationResult:
    """Run the whole pipeline on the current Ray cluster (``ray.init`` first); return the outputs."""
    from clinray.data.report import check_identities, write_report

    out = _prepare_out_dir(cfg)
    config_path = dump(cfg, out / "config.yaml")
    ctx = PipelineContext(cfg=cfg, out_dir=out, sink_root=str(out / "accounting"))
    start = time.time()
    stages = build_stages(cfg)
    docs_dir = out / "docs"
    # The row stages right after parsing (normalize, filters) run inside the parse tasks.
    num_leading = next((i for i, (_, fn) in enumerate(stages) if not hasattr(fn, "make")), len(stages))
    leading = [fn.make(ctx) for _, fn in stages[:num_leading]]
    with shared_operator_resources():
        ds = read_documents(
            cfg.inputs, cfg.readers, root=cfg.input_root, sink_root=ctx.sink_root, then=leading
        )
        ds = _apply_stages(ds, stages[num_leading:], ctx)
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
    stats = collect_stats(ctx.sink_root, order=["parse", *[name for name, _ in stages]])
    paths = write_report(stats, out_dir=out, wall_s=wall_s, sink_root=ctx.sink_root)
    (out / "_SUCCESS").write_text(json.dumps({"wall_s": wall_s}))
    return CurationResult(
        out_dir=out,
        docs_dir=docs_dir,
        rejects_dir=Path(ctx.sink_root) / "rejects",
        report_json=paths["json"],
        report_md=paths["md"],
        funnel_png=paths["png"],
        stages=stats,
        wall_s=wall_s,
        config_path=config_path,
        problems=[f"accounting: {p}" for p in check_identities(stats)],
    )
