"""The curation report at scale, and the curate plan's refusal to run without its evaluation sets.

No Ray: the report reads only the accounting folder, so a synthetic one stands in for a run. A million
rejects (the paper's filters drop millions) are written in ``REJECT_SCHEMA`` with matching stats records,
generated column-wise with pyarrow; the report must stream them (bounded driver memory), count them,
and keep the first reject per stage and reason and the contamination summary exact.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from clinray.config import from_dict
from clinray.data.accounting import StageStats, collect_stats
from clinray.data.pipeline import NO_QUESTIONS_ROOT, CurateConfig, build_stages, stage_names
from clinray.data.report import write_report
from clinray.data.schema import REJECT_SCHEMA
from clinray.data.tasks import PeakRSS
from clinray.data.timings import record_pass

NUM_REJECTS = 1_000_000
ROWS_PER_FILE = 50_000
NUM_KEPT = 200_000
#: Share of the rejects per (stage, reason), in pipeline order.
MIX = [
    ("parse", "bad_json", 0.02),
    ("parse", "binary", 0.01),
    ("length_filter", "too_few_words", 0.40),
    ("pii_filter", "pii_email", 0.10),
    ("pii_filter", "pii_phone", 0.07),
    ("exact_dedup", "exact_duplicate", 0.25),
    ("minhash", "near_duplicate", 0.149),
    ("decontaminate", "contaminated", 0.001),
]
STAGES = list(dict.fromkeys(stage for stage, _, _ in MIX))
#: Distinct question ids the contaminated documents hit, per benchmark.
NUM_QIDS = {"medqa": 300, "mmlu": 50}


def _words(rng: np.random.Generator, num: int) -> pa.Array:
    """``num`` short texts of 10 to 60 words drawn from a small vocabulary (a reject's text)."""
    vocab = np.array([f"w{i:04d}" for i in range(2000)])
    return pa.array([" ".join(rng.choice(vocab, rng.integers(10, 60))) for _ in range(num)])


def _reject_table(stage: str, reason: str, start: int, n: int, texts: pa.Array, rng) -> pa.Table:
    """``n`` rejects of one stage and reason, ids ``doc-<start..>``: every column built vectorized."""
    numbers = pc.cast(pa.array(np.arange(start, start + n)), pa.string())
    ids = pc.binary_join_element_wise("doc-", numbers, "")
    if reason == "exact_duplicate":
        detail = pc.binary_join_element_wise("kept ", ids, "")
    elif reason == "contaminated":
        qids = {
            b: pc.cast(pa.array(np.arange(start, start + n) % k), pa.string()) for b, k in NUM_QIDS.items()
        }
        detail = pc.binary_join_element_wise(
            "medqa:medqa/test/q-", qids["medqa"], ";mmlu:mmlu/test/anatomy:", qids["mmlu"], ""
        )
    else:
        detail = pa.nulls(n, pa.string())
    files = pa.array([f"/data/in/{stage}/part-{i:03d}.jsonl" for i in range(64)])
    one = np.zeros(n, dtype=np.int64)
    return pa.table(
        {
            "id": ids,
            "input_file": files.take(rng.integers(0, len(files), n)),
            "locator": pc.cast(pa.array(np.arange(start, start + n) % 9_973 + 1), pa.string()),
            "stage": pa.array([stage]).take(one),
            "reason": pa.array([reason]).take(one),
            "detail": detail,
            "text": texts.take(rng.integers(0, len(texts), n)),
        },
        schema=REJECT_SCHEMA,
    )


def _write_sink(root: Path) -> dict:
    """A million rejects as ``<stage>__<key>.parquet`` files and one stats record per file, balanced
    stage by stage (each stage receives what the previous one kept). Returns the expected counts."""
    rng = np.random.default_rng(0)
    texts = _words(rng, 2000)
    (root / "rejects").mkdir(parents=True)
    counts = {(s, r): int(round(share * NUM_REJECTS)) for s, r, share in MIX}
    rows_in = NUM_KEPT + sum(counts.values())
    next_id, first = 0, {}
    for stage in STAGES:
        (root / "stats" / stage).mkdir(parents=True)
        rows_out = rows_in - sum(n for (s, _), n in counts.items() if s == stage)
        part = 0
        for (s, reason), total in counts.items():
            if s != stage:
                continue
            for start in range(0, total, ROWS_PER_FILE):
                n = min(ROWS_PER_FILE, total - start)
                table = _reject_table(stage, reason, next_id, n, texts, rng)
                first.setdefault((stage, reason), table.slice(0, 1).to_pylist()[0])
                key = f"{part:05d}"
                pq.write_table(table, root / "rejects" / f"{stage}__{key}.parquet")
                kept = rows_out if part == 0 else 0  # the stage's kept rows ride on its first record
                stats = StageStats(
                    stage=stage,
                    num_rows_in=n + kept,
                    num_rows_out=kept,
                    dropped={reason: n},
                    num_batches=1,
                    busy_s=0.01,
                    first_start=1.0,
                    last_end=2.0,
                )
                (root / "stats" / stage / f"{key}.json").write_text(json.dumps(dataclasses.asdict(stats)))
                next_id, part = next_id + n, part + 1
        rows_in = rows_out
    assert rows_in == NUM_KEPT
    return {"counts": counts, "first": first}


@pytest.fixture(scope="module")
def million(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("accounting")
    return root, _write_sink(root)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="RSS sampled from /proc (Linux)")
def test_a_report_over_a_million_rejects_streams_with_bounded_memory(million, tmp_path):
    root, expected = million
    record_pass(root, "minhash", "signatures", 12.5, num_docs=NUM_KEPT)
    record_pass(root, "minhash", "band_shuffle", 3.25, partitions=64)
    stats = collect_stats(root, order=STAGES)
    from clinray.plotting import pyplot

    pyplot()  # matplotlib's import (tens of MB, once per process) is not the report's memory
    gc.collect()
    pa.default_memory_pool().release_unused()
    with PeakRSS(interval=0.002) as rss:
        paths = write_report(stats, out_dir=tmp_path, wall_s=10.0, sink_root=str(root))
    growth_mb = rss.peak / 1e6
    print(f"report over {NUM_REJECTS:,} rejects: driver RSS grew {growth_mb:.0f} MB")
    # the old report (every reject read into the driver, five columns as Python dicts) grew by ~1 GB here
    assert growth_mb < 200, f"RSS grew {growth_mb:.0f} MB while writing the report"

    report = json.loads(paths["json"].read_text())
    assert report["num_rejects"] == NUM_REJECTS
    assert report["identities_hold"], report["problems"]
    assert report["stages"]["length_filter"]["dropped"] == {"too_few_words": 400_000}
    assert report["num_docs_out"] == NUM_KEPT
    num_contaminated = expected["counts"][("decontaminate", "contaminated")]
    assert {b: (e["num_docs"], len(e["question_ids"])) for b, e in report["contamination"].items()} == {
        b: (num_contaminated, k) for b, k in NUM_QIDS.items()
    }
    assert report["contamination"]["mmlu"]["question_ids"][:2] == [
        "mmlu/test/anatomy:0",
        "mmlu/test/anatomy:1",
    ]
    assert [(p["stage"], p["pass"], p["seconds"]) for p in report["passes"]] == [
        ("minhash", "signatures", 12.5),
        ("minhash", "band_shuffle", 3.25),
    ]
    md = paths["md"].read_text()
    assert "| minhash | band_shuffle | 3.25 | partitions = 64 |" in md
    assert "(+290)" in md  # medqa: 10 of 300 question ids shown
    # one example per stage and reason: the first reject of each, in file order
    rows = [
        line.split(" | ") for line in md.split("## Example rejects")[1].splitlines() if line.startswith("| ")
    ]
    examples = {(r[0].lstrip("| "), r[1]): r for r in rows[1:]}  # after the header
    assert set(examples) == set(expected["counts"])
    for (stage, reason), first in expected["first"].items():
        assert examples[stage, reason][3] == first["locator"]
        assert Path(first["input_file"]).name == examples[stage, reason][2]


def test_a_dropped_row_without_its_reject_record_is_a_violation(tmp_path):
    """Rejects and stats disagree (a reject file lost): the report names the stage and reason."""
    (tmp_path / "rejects").mkdir()
    (tmp_path / "stats" / "length_filter").mkdir(parents=True)
    rng = np.random.default_rng(1)
    table = _reject_table("length_filter", "too_few_words", 0, 3, _words(rng, 5), rng)
    pq.write_table(table, tmp_path / "rejects" / "length_filter__a.parquet")
    stats = StageStats(stage="length_filter", num_rows_in=10, num_rows_out=6, dropped={"too_few_words": 4})
    (tmp_path / "stats" / "length_filter" / "a.json").write_text(json.dumps(dataclasses.asdict(stats)))
    paths = write_report(collect_stats(tmp_path), out_dir=tmp_path, wall_s=1.0, sink_root=str(tmp_path))
    report = json.loads(paths["json"].read_text())
    assert report["problems"] == ["length_filter: 4 rows dropped as too_few_words but 3 reject records"]
    assert not report["identities_hold"] and report["passes"] == []
    assert "VIOLATION: length_filter: 4 rows dropped" in paths["md"].read_text()


def _cfg(tmp_path: Path, **decontaminate) -> CurateConfig:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / "a.txt").write_text("one document")
    return from_dict(
        CurateConfig,
        {
            "input_root": str(tmp_path / "in"),
            "inputs": [{"glob": "*.txt", "source": "notes"}],
            "decontaminate": decontaminate,
            "output": {"dir": str(tmp_path / "out")},
        },
    )


def test_decontamination_without_its_evaluation_sets_refuses_to_start(tmp_path):
    """No questions_root with decontamination on: one line from the input check (before Ray) and from
    the plan (run_curation called directly); an explicit ``enabled: false`` curates without it."""
    cfg = _cfg(tmp_path)
    assert cfg.check_inputs() == [NO_QUESTIONS_ROOT]
    assert "\n" not in NO_QUESTIONS_ROOT and "decontaminate.enabled=false" in NO_QUESTIONS_ROOT
    with pytest.raises(ValueError, match="decontaminate.questions_root is not set"):
        build_stages(cfg)
    assert not (tmp_path / "out").exists()
    off = _cfg(tmp_path, enabled=False)
    assert off.check_inputs() == [] and "decontaminate" not in stage_names(build_stages(off))
    on = _cfg(tmp_path, questions_root=str(tmp_path / "in"))
    assert on.check_inputs() == [] and stage_names(build_stages(on))[-1] == "decontaminate"
