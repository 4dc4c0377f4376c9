"""Readers: every supported input format to canonical document rows, in parallel on Ray Data.

The input files, shuffled by a hash of their path, are cut into parser calls (one dataset row per call,
holding the call's files) that :class:`ParseFiles` maps as Ray tasks (or a pool of actors); each file
becomes document rows or reject rows (reason in ``_reason``), the ``parse`` stage's accounting splits
them, and the row stages that follow parsing run in the same call. No exception escapes a parser: anything unexpected
is a ``parse_error`` reject with the exception text. Formats: ``jsonl``, ``parquet``, ``text``,
``markdown``, ``html``, ``jats`` (also PMC ``.tar.gz`` packages), ``medline``, ``pdf``; gzip is detected
from the magic bytes. Encodings: ``encoding``; PubMed update files: ``pubmed_updates``.

Files are the unit of parallelism (the trade-off: one huge file is one task; split such shards
upstream, as MEDLINE and SlimPajama already are).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from clinray import storage
from clinray.data.readers._io import ReaderError, file_stem, reject_row
from clinray.data.readers.html import read_html
from clinray.data.readers.jats import read_jats
from clinray.data.readers.medline import read_medline
from clinray.data.readers.pdf import read_pdf
from clinray.data.readers.records import read_jsonl, read_parquet
from clinray.data.readers.text import read_text
from clinray.data.schema import DOMAINS
from clinray.data.stage import Accountant, RowStage, RowStageChain, batch_key, rows_to_table, table_rows

FORMATS = ("auto", "jsonl", "parquet", "text", "markdown", "html", "jats", "medline", "pdf")
_EXT_FORMAT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".nxml": "jats",
    ".pdf": "pdf",
}


@dataclasses.dataclass(kw_only=True, slots=True)
class InputSpec:
    """One group of input files: a glob and what its files are."""

    glob: str
    """Files to read, relative to ``input_root`` (``**`` recurses), e.g. ``clinical/jats/*.nxml``."""
    source: str
    """Corpus name written to every document (``pmc``, ``pubmed``, ``guidelines``, ...)."""
    domain: str = "clinical"
    """``clinical`` or ``general``."""
    format: Literal[FORMATS] = "auto"
    """File format; ``auto`` infers it from the extension (``.xml`` is sniffed: MEDLINE or JATS)."""
    text_field: str = "text"
    """JSONL / Parquet: the field holding the text."""
    id_field: str = "id"
    """JSONL / Parquet: the field holding the document id; "" derives ``folder/file-stem:record`` ids
    (for corpora without ids, such as SlimPajama)."""

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"input {self.glob!r}: domain {self.domain!r} must be one of {list(DOMAINS)}")
        if not self.glob or not self.source:
            raise ValueError("every input needs a non-empty glob and source")


@dataclasses.dataclass(kw_only=True, slots=True)
class ReadersConfig:
    """How files are parsed."""

    concurrency: int = 2
    """Parsers running at once (one CPU each). With ``compute: tasks``, a value at or above the cluster's
    CPUs leaves the cap to Ray, which lets the parse tasks also write their Parquet output (one fused
    task, no copy of the documents through the object store); a lower value caps the parse tasks and
    the write runs as separate tasks."""
    files_per_batch: int = 0
    """Files handed to a parser per call; 0 = automatic: about ``block_mb`` of input per call, and at
    least ``4 x concurrency`` calls. Each call is a Ray task with fixed costs (scheduling, a stats file per
    stage), so thousands of tiny calls are much slower than a few hundred larger ones."""
    block_mb: float = 16.0
    """Automatic batching: target input megabytes per parser call."""
    max_line_bytes: int = 8_000_000
    """JSONL and text: a longer line is a ``line_too_long`` reject (read in chunks, never whole)."""
    max_file_bytes: int = 512_000_000
    """Whole-file formats (HTML, XML, PDF, text): larger (decompressed) files are ``file_too_large``."""
    html_extractor: Literal["auto", "trafilatura", "lxml"] = "auto"
    """Main-content extractor for HTML (see ``clinray.data.readers.html``): ``auto`` uses the rule-based
    ``lxml`` cleaner on pages that mark their content with ``<main>`` or one ``<article>``, and
    trafilatura's heuristics on pages that do not."""
    jats_captions: bool = False
    """JATS: append figure and table captions after the body."""
    max_invalid_byte_share: float = 0.01
    """Bytes invalid in a document's encoding (replaced with U+FFFD, counted in ``metadata.num_invalid_bytes``)
    a document may hold, as a share of its bytes; above it the document is a ``not_utf8`` (or, for another
    encoding, ``undecodable``) reject. 0 rejects any invalid byte."""
    medline_updates: bool = True
    """PubMed update files: apply ``<DeleteCitation>`` and later versions of a citation across the MEDLINE
    files, in file order (inputs in order, then file name; a pre-pass scans them, see
    ``clinray.data.readers.pubmed_updates``). Off: every citation of every file is kept."""
    fail_once_marker: str = ""
    """Testing knob: when set, the first parser call to find no file at this path creates it after its
    first file and kills its worker process (``os._exit``); Ray retries the call, which must give the
    same documents and accounting. A path every worker sees (local tests)."""
    compute: Literal["tasks", "actors"] = "tasks"
    """``tasks``: parsers run as Ray tasks, fused with the row stages that follow (no extra processes,
    least overhead); ``actors``: a pool of long-lived parser actors (pays off when parser set-up is
    heavy, e.g. a model-based extractor)."""

    def __post_init__(self):
        if self.concurrency < 1 or self.files_per_batch < 0 or self.block_mb <= 0:
            raise ValueError(
                "readers.concurrency must be >= 1, readers.files_per_batch >= 0 (0 = automatic), block_mb > 0"
            )
        if self.max_line_bytes < 1024 or self.max_file_bytes < 1024:
            raise ValueError("readers.max_line_bytes and readers.max_file_bytes must be >= 1024")
        if not 0 <= self.max_invalid_byte_share <= 1:
            raise ValueError(
                f"readers.max_invalid_byte_share is a share of a document's bytes, 0 to 1; got {self.max_invalid_byte_share}"
            )


def infer_format(path: str) -> str:
    """Format from the extension (``.gz`` ignored); ``.xml`` is sniffed; '' if unknown."""
    if path.lower().endswith((".tar.gz", ".tgz", ".tar")):
        return "jats"  # PMC Open Access packages: a tar of JATS articles
    name = path.removesuffix(".gz").removesuffix(".zst")
    ext = os.path.splitext(name)[1].lower()
    if ext == ".xml":
        from clinray.data.readers._io import open_stream

        try:
            with open_stream(path) as f:
                head = f.read(4096)
        except (OSError, EOFError):
            return "medline"  # a broken file: let the reader record why
        return "jats" if b"<article" in head and b"MedlineCitation" not in head else "medline"
    return _EXT_FORMAT.get(ext, "")


_READERS = {
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "text": read_text,
    "html": read_html,
    "jats": read_jats,
    "medline": read_medline,
    "pdf": read_pdf,
}


def parse_file(
    path: str, *, spec: InputSpec, cfg: ReadersConfig, replaced: dict | None = None
) -> Iterator[dict]:
    """Working-schema rows of one file: documents, and rejects with their reason. Never raises.

    ``replaced``: MEDLINE only, the PMIDs that later files delete or replace (``pubmed_updates``).
    """
    fmt = spec.format if spec.format != "auto" else infer_format(path)
    try:
        if fmt == "markdown":
            yield from read_text(path, spec=spec, cfg=cfg, fmt="markdown")
        elif fmt == "medline":
            yield from read_medline(path, spec=spec, cfg=cfg, replaced=replaced)
        elif fmt in _READERS:
            yield from _READERS[fmt](path, spec=spec, cfg=cfg)
        else:
            yield reject_row(
                ReaderError("unknown_format", f"cannot tell the format of {Path(path).name}"),
                spec=spec,
                fmt=fmt or "unknown",
                path=path,
                doc_id=file_stem(path),
            )
    except Exception as exc:  # noqa: BLE001 - the contract: record, never crash the job
        err = ReaderError("parse_error", f"{type(exc).__name__}: {exc}")
        yield reject_row(err, spec=spec, fmt=fmt or "unknown", path=path, doc_id=file_stem(path))


def expand_inputs(inputs: list[InputSpec], *, root: str | os.PathLike) -> list[dict]:
    """File-list rows ``{path, spec index}``, sorted per spec; a file matched twice goes to its first spec.

    A URI ``root`` (``s3://bucket/corpus``) is listed through :mod:`clinray.storage`; its paths keep the
    scheme, and the readers open them through it.
    """
    seen, files = set(), []
    if storage.is_uri(root):
        for index, spec in enumerate(inputs):
            for path, size in storage.find(str(root), spec.glob):
                if path not in seen:
                    seen.add(path)
                    files.append({"path": path, "spec": index, "size": size})
        return files
    for index, spec in enumerate(inputs):
        pattern = os.path.abspath(os.path.join(str(root), spec.glob))  # absolute paths out of glob
        for path in sorted(glob.glob(pattern, recursive=True)):
            if path in seen:
                continue
            info = os.stat(path)  # one stat per file: is it a file, and its size
            if stat.S_ISREG(info.st_mode):
                seen.add(path)
                files.append({"path": path, "spec": index, "size": info.st_size})
    return files


class ParseFiles:
    """``map_batches`` UDF: parse a batch of files and run the ``parse`` stage's accounting, then the
    row stages handed in ``then`` (normalize, filters), each with its own accounting.

    Running the row stages here, on the parsed rows, saves an Arrow round trip and a Ray Data operator
    per batch; the counts and rejects are the same as running them as separate ``map_batches`` calls.
    """

    def __init__(
        self, inputs: list[InputSpec], cfg: ReadersConfig, *, sink_root: str, then: list[RowStage] = ()
    ):
        self.inputs, self.cfg = inputs, cfg
        self.accountant = Accountant("parse", sink_root=sink_root)
        self.then = RowStageChain(then) if then else None

    def __call__(self, batch):
        start = time.time()
        files = [  # each row is one call's file group (see file_groups)
            {"path": path, "spec": spec, "size": size, "replaced": replaced}
            for group in table_rows(batch)
            for path, spec, size, replaced in zip(
                group["path"], group["spec"], group["size"], group["replaced"], strict=True
            )
        ]
        rows, rejected_files, files_with_docs = [], 0, 0
        for n, item in enumerate(files):
            if n == 1:
                _maybe_die(self.cfg.fail_once_marker)
            spec = self.inputs[item["spec"]]
            replaced = json.loads(item["replaced"]) if item["replaced"] else None
            produced = list(parse_file(item["path"], spec=spec, cfg=self.cfg, replaced=replaced))
            if not produced:  # every file ends somewhere: kept documents or a reject
                err = ReaderError("no_records", "the file holds no record")
                produced = [reject_row(err, spec=spec, fmt=spec.format, path=item["path"])]
            num_docs = sum(1 for r in produced if not r["_reason"])
            files_with_docs += num_docs > 0
            rejected_files += num_docs == 0
            rows.extend(produced)
        extra = {
            "num_files_in": len(files),
            "num_files_with_docs": files_with_docs,
            "num_files_without_docs": rejected_files,
        }
        key = batch_key(files, fields=("path",))
        rows = self.accountant.account_rows(
            rows, key=key, start=start, num_bytes_in=sum(f["size"] for f in files), extra=extra
        )
        if self.then:
            rows = self.then.run_rows(rows, key=key, num_bytes_in=self.accountant.last_bytes_out)
        return rows_to_table(rows)


def _maybe_die(marker: str) -> None:
    """The ``fail_once_marker`` knob: kill this worker process once, mid-call (after its first file)."""
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one call dies, not several
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os._exit(1)


def files_per_call(files: list[dict], cfg: ReadersConfig) -> int:
    """Automatic batching: about ``block_mb`` per call, at least 4 calls per parser and a whole number of
    calls per parser, 1 to 10,000 files each."""
    total_mb = sum(f["size"] for f in files) / 1e6
    num_calls = max(4 * cfg.concurrency, int(total_mb / cfg.block_mb) + 1)
    num_calls = -(-num_calls // cfg.concurrency) * cfg.concurrency  # whole rounds: no lone last call
    return max(1, min(10_000, -(-len(files) // num_calls)))


def interleave(files: list[dict], *, root: str | os.PathLike = "/") -> list[dict]:
    """The file list in a fixed pseudo-random order (by a hash of the path relative to ``root``).

    ``expand_inputs`` lists files spec by spec, so consecutive files share a format, and formats differ
    tenfold in cost per byte (HTML extraction against plain text): batches cut from that order leave one
    worker with all the HTML while the other idles. Mixed batches cost about the same, so workers finish
    together. The order is deterministic and relative to the input root, so reruns batch the same way,
    wherever the corpus lies.
    """

    def key(f: dict) -> bytes:
        if storage.is_uri(root):  # the same relative names as a local copy of the corpus: the same batches
            rel = f["path"][len(str(root).rstrip("/")) :].lstrip("/")
        else:
            rel = os.path.relpath(f["path"], root)
        return hashlib.blake2b(rel.encode(), digest_size=8).digest()

    return sorted(files, key=key)


def file_groups(inputs: list[InputSpec], cfg: ReadersConfig, *, root: str | os.PathLike) -> list[dict]:
    """The parser calls: one row per call, its files as lists (``path``, ``spec``, ``size``, ``replaced``).

    ``replaced`` is, per file, the JSON of the PMIDs that later PubMed files delete or replace ("" for
    none; see :func:`clinray.data.readers.pubmed_updates.plan_updates`, the one pass before parsing).
    """
    from clinray.data.readers.pubmed_updates import plan_updates

    files = expand_inputs(inputs, root=root)
    if not files:
        globs = [os.path.join(str(root), s.glob) for s in inputs]
        raise ValueError(f"no input files matched {globs}; check input_root and the inputs' globs")
    plan = plan_updates(files, inputs, concurrency=cfg.concurrency, enabled=cfg.medline_updates)
    for f in files:
        f["replaced"] = plan.get(f["path"], "")
    files = interleave(files, root=root)
    per_batch = cfg.files_per_batch or files_per_call(files, cfg)
    # One row (and one block) per parser call, holding its files as lists: tens of thousands of files
    # cost the driver a few dozen rows, and batch_size=None maps each block whole, so calls never
    # straddle blocks (a straddling batch size leaves odd remainder calls).
    return [
        {key: [f[key] for f in files[i : i + per_batch]] for key in ("path", "spec", "size", "replaced")}
        for i in range(0, len(files), per_batch)
    ]


def read_documents(
    inputs: list[InputSpec],
    cfg: ReadersConfig,
    *,
    root: str | os.PathLike,
    sink_root: str,
    then: list[RowStage] = (),
    groups: list[dict] | None = None,
):
    """The ``parse`` stage: a lazy Ray Dataset of working-schema document rows from ``inputs``.

    ``then``: row stages to run on each parsed batch in the same task (see :class:`ParseFiles`).
    ``groups``: the parser calls, if the caller already listed them (:func:`file_groups`).
    """
    import ray

    groups = groups if groups is not None else file_groups(inputs, cfg, root=root)
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    kwargs = {"inputs": inputs, "cfg": cfg, "sink_root": str(sink_root), "then": list(then)}
    if cfg.compute == "actors":
        return ds.map_batches(
            ParseFiles,
            fn_constructor_kwargs=kwargs,
            batch_size=None,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=cfg.concurrency),
        )
    # Ray Data fuses task-pool operators only when their caps match, and the write has none: cap the
    # parse tasks only when the cap binds (see ReadersConfig.concurrency).
    cap = cfg.concurrency if cfg.concurrency < ray.cluster_resources().get("CPU", 0) else None
    return ds.map_batches(
        ParseFiles(**kwargs),
        batch_size=None,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=cap),
    )
