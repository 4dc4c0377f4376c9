"""The whole curation at growing scales: per-pass seconds, documents/s, peak driver RSS, near-dup recall.

Each scale is a tiny world (``clinray world --seed 0 --scale S``, i.e. ``generate_world``) curated by
``run_curation`` exactly as ``clinray curate`` runs it: the ``tiny/curate`` recipe with
``input_root=W/corpus``, ``output.dir``, ``decontaminate.questions_root=W/questions`` (every stage on, the
same command as ``../shared/notes/scaling.md``), loaded and checked by the job runner, on a fresh
private local Ray cluster in a fresh process per scale (cold, as the notes measured it: the first worker
start-up falls in the first phase). Reported per scale:

* per-pass wall seconds from ``report.json``'s ``passes`` (the timings the stages record: MinHash's
  signatures, shuffle, verification and clusters, the substring sort and shards, ...), each stage's
  ``busy_s`` (CPU-seconds over workers) and ``span``, and the run's total (``run_curation``);
* documents/s (documents parsed / ``run_curation`` wall) and MB/s of input;
* the driver's peak RSS during ``run_curation`` (sampled every 20 ms from ``/proc``);
* recall of the planted near-duplicates (``manifest.near_duplicates`` with Jaccard >= 0.85): a pair is
  found when ``minhash`` removed one of its two documents (which copy stays is the keep rule's choice;
  ``near_dup_recall_planted_copy`` counts only pairs where the planted copy itself went), over the pairs
  whose two documents both reached ``minhash``; kept-band pairs (Jaccard <= 0.78) wrongly removed;
  exact duplicates and contaminated documents removed;
* the growth exponent b of each timing (time ~ documents^b) between consecutive scales and overall
  (least squares on log-log over all scales). b <= 1.1 is "per-document cost flat"; timings under
  ``MIN_SECONDS`` at the largest scale are noise and are left out of ``max_exponent``.

The peer is the measurement in ``../shared/notes/scaling.md`` (2026-12-01, idle 2 cores, before issue
18's work): its figures are quoted side by side in the Markdown, marked as from the notes.

    .venv/bin/python benchmarks/curate_scale.py --quick        # scales 10 and 40
    .venv/bin/python benchmarks/curate_scale.py                # scales 10, 40 and 160
    .venv/bin/python benchmarks/curate_scale.py --scales 1 2 --out-dir /tmp/cs --note "smoke, not idle"

Run it on an idle machine: every figure is a wall time. Worlds are cached under ``--worlds-dir``
(generation takes about 25 s at scale 160); the curated outputs are deleted after each scale.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "curate_scale"
#: Timings shorter than this at the largest scale get an exponent, but it is noise: not in max_exponent.
MIN_SECONDS = 1.0
TARGETS = {"max_exponent": "<= 1.1", "near_dup_recall": ">= 0.99 at every scale"}
#: Stages that run before minhash: a planted pair counts only if neither document was removed there.
BEFORE_MINHASH = ("parse", "normalize", "length_filter", "pii_filter", "exact_dedup")
HIGH_BAND, LOW_BAND = 0.85, 0.78

#: Today's table, quoted from ../shared/notes/scaling.md ("Main table", "Quality at scale"), measured
#: 2026-12-01 on an idle 2-core machine with the same command (scale -> figures; seconds are wall).
NOTES = {
    10: {
        "input_mb": 13.9,
        "docs": "5,530 -> 5,240",
        "parse_to_exact_dedup_s": 5.5,
        "minhash_s": "2.8 (2.6 / 0.11 / 0.002 / 0.1)",
        "substring_decontam_write_s": 3.2,
        "curate_total_s": 11.5,
        "docs_per_s": 480,
        "peak_driver_rss_mb": 383,
        "near_dup_recall": "80/80 = 1.000",
    },
    40: {
        "input_mb": 55.5,
        "docs": "22,100 -> 20,959",
        "parse_to_exact_dedup_s": 8.5,
        "minhash_s": "6.7 (6.3 / 0.28 / 0.005 / 0.2)",
        "substring_decontam_write_s": 15.4,
        "curate_total_s": 30.8,
        "docs_per_s": 718,
        "peak_driver_rss_mb": 411,
        "near_dup_recall": "319/320 = 0.997",
    },
    160: {
        "input_mb": 221.8,
        "docs": "88,100 -> 83,764",
        "parse_to_exact_dedup_s": 20.3,
        "minhash_s": "21.6 (19.7 / 0.83 / 0.009 / 1.0)",
        "substring_decontam_write_s": 72.9,
        "curate_total_s": 115.2,
        "docs_per_s": 765,
        "peak_driver_rss_mb": 439,
        "near_dup_recall": "1,278/1,280 = 0.998",
    },
}
#: The notes' growth exponents, 40 -> 160 (their "Cost per document" table).
NOTES_EXPONENTS = {
    "parse ... exact dedup (wall)": 0.63,
    "MinHash signatures + band shuffle (wall)": 0.83,
    "MinHash verify (wall)": 0.78,
    "substring, CPU-s": 1.16,
    "substring + decontam + write (wall)": 1.12,
    "whole curate run": 0.95,
}


# --- one scale, in its own process ------------------------------------------------------------------


def _quality(world: Path, sink_root: Path) -> dict:
    """Planted near-duplicates, exact duplicates and contaminated documents against what was removed."""
    from clinray.data.accounting import iter_rejects

    manifest = json.loads((world / "manifest.json").read_text())
    removed_by: dict[str, str] = {}
    for batch in iter_rejects(sink_root, columns=["id", "stage"]):
        removed_by.update(zip(batch.column("id").to_pylist(), batch.column("stage").to_pylist()))

    def reached_minhash(doc_id: str) -> bool:
        return removed_by.get(doc_id) not in BEFORE_MINHASH

    high = [n for n in manifest["near_duplicates"] if n["jaccard"] >= HIGH_BAND]
    low = [n for n in manifest["near_duplicates"] if n["jaccard"] <= LOW_BAND]
    present = [n for n in high if reached_minhash(n["doc_id"]) and reached_minhash(n["original"])]
    found = [n for n in present if "minhash" in (removed_by.get(n["doc_id"]), removed_by.get(n["original"]))]
    copy_went = [n for n in present if removed_by.get(n["doc_id"]) == "minhash"]
    low_removed = [
        n for n in low if "minhash" in (removed_by.get(n["doc_id"]), removed_by.get(n["original"]))
    ]
    exact = manifest["exact_duplicates"]
    exact_found = [
        e for e in exact if "exact_dedup" in (removed_by.get(e["doc_id"]), removed_by.get(e["duplicate_of"]))
    ]
    contaminated = {c["doc_id"] for c in manifest["contaminated"]}
    return {
        "near_dup_planted": len(high),
        "near_dup_reached_minhash": len(present),
        "near_dup_found": len(found),
        "near_dup_recall": round(len(found) / len(present), 4) if present else None,
        "near_dup_recall_planted_copy": round(len(copy_went) / len(present), 4) if present else None,
        "near_dup_kept_band_planted": len(low),
        "near_dup_kept_band_removed": len(low_removed),
        "exact_dup_planted": len(exact),
        "exact_dup_found": len(exact_found),
        "contaminated_planted": len(contaminated),
        "contaminated_removed": sum(removed_by.get(d) == "decontaminate" for d in contaminated),
    }


def run_one(world: Path, out: Path, num_cpus: int | None) -> dict:
    """Curate one world as ``clinray curate`` does; the figures of that run (this process only)."""
    from clinray.data.pipeline import accounting_dir, run_curation
    from clinray.data.tasks import PeakRSS
    from clinray.jobs import get_job, load_job_config, quiet_ray_console
    from clinray.ray_session import ray_session

    overrides = [
        f"input_root={world / 'corpus'}",
        f"output.dir={out}",
        "output.overwrite=true",
        f"decontaminate.questions_root={world / 'questions'}",
    ]
    cfg = load_job_config(get_job("curate"), "tiny/curate", overrides)
    started = time.perf_counter()
    with ray_session(num_cpus=num_cpus):
        quiet_ray_console()
        ray_start_s = time.perf_counter() - started
        with PeakRSS(interval=0.02) as rss:
            start = time.perf_counter()
            result = run_curation(cfg)
            run_s = time.perf_counter() - start
        rss_start, peak = rss.start, rss.max
    report = json.loads(result.report_json.read_text())
    parse = result.stages["parse"]
    corpus_bytes = sum(p.stat().st_size for p in (world / "corpus").rglob("*") if p.is_file())
    figures = {
        "ok": result.ok,
        "problems": result.problems,
        "input_mb": round(corpus_bytes / 1e6, 2),
        "num_docs_parsed": parse.num_rows_out,
        "num_docs_kept": result.num_docs,
        "run_curation_s": round(run_s, 3),
        "pipeline_s": round(result.wall_s, 3),
        "report_s": round(run_s - result.wall_s, 3),
        "ray_start_s": round(ray_start_s, 3),
        "docs_per_s": round(parse.num_rows_out / run_s, 1),
        "mb_per_s": round(corpus_bytes / 1e6 / run_s, 3),
        "driver_rss_start_mb": round(rss_start / 1e6, 1),
        "peak_driver_rss_mb": round(peak / 1e6, 1),
        "passes": report.get("passes", []),
        "stage_busy_s": {k: round(v["busy_s"], 3) for k, v in report["stages"].items()},
        "stage_span_s": {k: v["wall_s"] for k, v in report["stages"].items()},
        "stage_bytes": {k: [v["num_bytes_in"], v["num_bytes_out"]] for k, v in report["stages"].items()},
        "num_rejects": report["num_rejects"],
        **_quality(world, Path(accounting_dir(cfg))),
    }
    return figures


# --- the driver: worlds, one process per scale, exponents, the result files --------------------------


def ensure_world(worlds_dir: Path, scale: float) -> tuple[Path, float | None]:
    """The world of ``scale`` (seed 0), generated unless cached; with its generation time (None: cached)."""
    world = worlds_dir / f"clinray_bench_world_s{scale:g}"
    if (world / "manifest.json").exists():
        return world, None
    from clinray.synthetic import generate_world

    start = time.perf_counter()
    generate_world(world, seed=0, scale=scale)
    return world, round(time.perf_counter() - start, 2)


def timings(run: dict) -> dict[str, float]:
    """Every timing of one scale, by series name: passes (wall), stages (CPU-s), the whole run."""
    series = {"run_curation (wall)": run["run_curation_s"], "report + stats (wall)": run["report_s"]}
    for p in run["passes"]:
        series[f"pass {p['stage']}.{p['pass']} (wall)"] = p["seconds"]
    for stage, busy in run["stage_busy_s"].items():
        series[f"stage {stage} (CPU-s)"] = busy
    return series


def exponent(ns: list[float], ts: list[float]) -> float | None:
    """Least-squares slope of log t against log n (None when a time is not positive or n does not grow)."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(ns, ts) if n > 0 and t is not None and t > 0]
    if len(pts) < 2 or len(pts) != len(ns):
        return None
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return round(sum((x - mx) * (y - my) for x, y in pts) / var, 3) if var else None


def growth(runs: list[dict]) -> dict[str, dict]:
    """Per timing series: its seconds per scale, b between consecutive scales, and b overall."""
    ns = [r["num_docs_parsed"] for r in runs]
    per_scale = [timings(r) for r in runs]
    names = list(dict.fromkeys(name for t in per_scale for name in t))
    out = {}
    for name in names:
        ts = [t.get(name) for t in per_scale]
        steps = [exponent(ns[i : i + 2], ts[i : i + 2]) for i in range(len(ns) - 1)]
        last = ts[-1] or 0.0
        out[name] = {
            "seconds": ts,
            "b_consecutive": steps,
            "b_overall": exponent(ns, ts),
            "counts": last >= MIN_SECONDS,
        }
    return out


def work(runs: list[dict]) -> dict[str, dict]:
    """The cross-shard rounds of each substring pass against the work they were given.

    Their input is what the shards share, not the documents: per scale, the share of the pass's bytes
    it removed, the context records per document, and seconds per million records; ``b_per_record``
    is the exponent of seconds against records (1.0: linear in the records, whatever they are per
    document), ``b_records`` that of records against documents (how the shared text grew).
    """
    ns = [r["num_docs_parsed"] for r in runs]
    out = {}
    for stage in sorted(
        {p["stage"] for r in runs for p in r["passes"] if p["stage"].startswith("substring_")}
    ):
        rec = [
            next((p for p in r["passes"] if p["stage"] == stage and p["pass"] == "contexts"), None)
            for r in runs
        ]
        if any(p is None or not p.get("context_records") for p in rec) or rec[-1]["seconds"] < MIN_SECONDS:
            continue  # (a round that short measures task start-up, not its work)
        records = [p["context_records"] for p in rec]
        secs = [p["seconds"] for p in rec]
        removed = []
        for r in runs:
            b_in, b_out = r.get("stage_bytes", {}).get(stage, [0, 0])
            removed.append(round(1 - b_out / b_in, 4) if b_in else None)
        out[stage] = {
            "removed_share": removed,
            "records": records,
            "records_per_doc": [round(k / n, 1) for k, n in zip(records, ns)],
            "contexts_s": secs,
            "us_per_record": [round(t / k * 1e6, 2) for t, k in zip(secs, records)],
            "b_per_record": exponent(records, secs),
            "b_records": exponent(ns, records),
        }
    return out


def _fmt(v, spec: str = ".2f") -> str:
    if v is None:
        return "–"
    return format(v, spec) if isinstance(v, int | float) else str(v)


def markdown(result: dict) -> str:
    runs, scales = result["runs"], result["scales"]
    lines = [
        f"# {NAME}: the whole curation at scales {', '.join(f'{s:g}' for s in scales)}",
        "",
        f"Measured {result['date']} on {result['machine']['cpus']} CPUs ({result['machine']['platform']}), "
        f"Python {result['machine']['python']}. {result['note']}",
        "",
        "Command per scale (fresh process and local Ray cluster): `tiny/curate` with `input_root=W/corpus`, "
        "`output.dir`, `decontaminate.questions_root=W/questions`, run as `clinray curate` runs it. Times are "
        "wall seconds unless marked CPU-s. Columns marked *notes* quote `../shared/notes/scaling.md` "
        "(2026-12-01, idle 2 cores, before issue 18): the peer.",
        "",
        "| scale | input MB | docs parsed -> kept | run_curation s | *notes* curate s | docs/s | *notes* docs/s "
        "| peak driver RSS MB | *notes* RSS MB | near-dup recall (found / reached minhash) | *notes* recall "
        "| planted copy removed | kept-band removed | exact dups found | contaminated removed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in zip(scales, runs):
        n = NOTES.get(int(s)) if float(s).is_integer() else None
        n = n or {}
        lines.append(
            f"| {s:g} | {r['input_mb']:.1f} | {r['num_docs_parsed']:,} -> {r['num_docs_kept']:,} | "
            f"{r['run_curation_s']:.1f} | {_fmt(n.get('curate_total_s'), '.1f')} | {r['docs_per_s']:,.0f} | "
            f"{_fmt(n.get('docs_per_s'), ',')} | {r['peak_driver_rss_mb']:.0f} | "
            f"{_fmt(n.get('peak_driver_rss_mb'), ',')} | {_fmt(r['near_dup_recall'], '.3f')} "
            f"({r['near_dup_found']} / {r['near_dup_reached_minhash']}) | {n.get('near_dup_recall', '–')} | "
            f"{_fmt(r['near_dup_recall_planted_copy'], '.3f')} | {r['near_dup_kept_band_removed']} / "
            f"{r['near_dup_kept_band_planted']} | {r['exact_dup_found']} / {r['exact_dup_planted']} | "
            f"{r['contaminated_removed']} / {r['contaminated_planted']} |"
        )
    head = " | ".join(f"s{s:g}" for s in scales)
    steps = " | ".join(f"b {a:g}->{b:g}" for a, b in zip(scales, scales[1:]))
    lines += [
        "",
        f"## Seconds per pass and growth exponent b (time ~ documents^b; b counts only at >= {MIN_SECONDS:g} s)",
        "",
        f"| timing | {head} | {steps} | b overall |",
        "|---|" + "---|" * (2 * len(scales)),
    ]
    for name, g in result["growth"].items():
        secs = " | ".join(_fmt(t) for t in g["seconds"])
        bs = " | ".join(_fmt(b, ".2f") for b in g["b_consecutive"])
        overall = _fmt(g["b_overall"], ".2f") + ("" if g["counts"] else " (short)")
        lines.append(f"| {name} | {secs} | {bs} | {overall} |")
    if result.get("work"):
        per = " / ".join(f"s{s:g}" for s in scales)
        lines += [
            "",
            "## The cross-shard rounds against their work (round 3 + 4: `contexts`)",
            "",
            "Their input is the text the shards share, which this world grows faster than its documents "
            "(its templates repeat more in a bigger world). b per record: seconds ~ records^b; b of records: "
            "records ~ documents^b.",
            "",
            f"| pass | share of bytes removed ({per}) | records per doc ({per}) | us per record ({per}) "
            "| b per record | b of records |",
            "|---|---|---|---|---|---|",
        ]
        for stage, w in result["work"].items():
            lines.append(
                f"| {stage} | {' / '.join(_fmt(x, '.3f') for x in w['removed_share'])} | "
                f"{' / '.join(_fmt(x, '.1f') for x in w['records_per_doc'])} | "
                f"{' / '.join(_fmt(x, '.2f') for x in w['us_per_record'])} | {_fmt(w['b_per_record'])} | "
                f"{_fmt(w['b_records'])} |"
            )
    lines += [
        "",
        "## *From the notes*: today's phases (wall seconds, `../shared/notes/scaling.md`, Main table)",
        "",
        "| scale | input MB | docs parsed -> kept | parse ... exact dedup | MinHash (sign+shuffle / verify / "
        "union-find / mark) | substring + decontam + write | curate total | docs/s | peak driver RSS MB | "
        "near-dup recall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, n in NOTES.items():
        lines.append(
            f"| {s} | {n['input_mb']} | {n['docs']} | {n['parse_to_exact_dedup_s']} | {n['minhash_s']} | "
            f"{n['substring_decontam_write_s']} | {n['curate_total_s']} | {n['docs_per_s']} | "
            f"{n['peak_driver_rss_mb']} | {n['near_dup_recall']} |"
        )
    lines += [
        "",
        "The notes' growth exponents, 40 -> 160: "
        + "; ".join(f"{k} {v}" for k, v in NOTES_EXPONENTS.items()),
    ]
    summary = result["verdict"]
    lines += [
        "",
        "## Verdict",
        "",
        f"- Largest growth exponent over the timings that count: **{_fmt(summary['max_exponent'])}** "
        f"({summary['max_exponent_timing']}); target {TARGETS['max_exponent']}. Over the target: "
        f"{', '.join(summary['over_target']) or 'none'}.",
        f"- Lowest near-duplicate recall: **{_fmt(summary['min_near_dup_recall'], '.3f')}**; target "
        f"{TARGETS['near_dup_recall']}.",
        "- Against the notes (same command, same worlds): run_curation / notes' curate total = "
        + (", ".join(f"{k}: {v}" for k, v in summary["vs_notes_total"].items()) or "–")
        + "; peak driver RSS / notes' = "
        + (", ".join(f"{k}: {v}" for k, v in summary["vs_notes_rss"].items()) or "–")
        + ".",
    ]
    for stage, w in result.get("work", {}).items():
        lines.append(
            f"- {stage} cross-shard rounds: seconds ~ records^{_fmt(w['b_per_record'])} (flat per record); "
            f"records ~ documents^{_fmt(w['b_records'])}, as the share of bytes removed goes "
            f"{' -> '.join(_fmt(x, '.3f') for x in w['removed_share'])}: the rounds follow the text the "
            "shards share, which this world grows faster than its documents."
        )
    lines.append("")
    return "\n".join(lines)


def verdict(result: dict) -> dict:
    counted = {
        k: g["b_overall"] for k, g in result["growth"].items() if g["counts"] and g["b_overall"] is not None
    }
    worst = max(counted, key=counted.get) if counted else None
    recalls = [r["near_dup_recall"] for r in result["runs"] if r["near_dup_recall"] is not None]
    vs_total, vs_rss = {}, {}
    for s, r in zip(result["scales"], result["runs"]):
        n = NOTES.get(int(s)) if float(s).is_integer() else None
        if n:
            vs_total[f"s{s:g}"] = round(r["run_curation_s"] / n["curate_total_s"], 2)
            vs_rss[f"s{s:g}"] = round(r["peak_driver_rss_mb"] / n["peak_driver_rss_mb"], 2)
    return {
        "max_exponent": counted[worst] if worst else None,
        "max_exponent_timing": worst,
        "over_target": sorted(k for k, b in counted.items() if b > 1.1),
        "min_near_dup_recall": min(recalls) if recalls else None,
        "vs_notes_total": vs_total,
        "vs_notes_rss": vs_rss,
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--scales", type=float, nargs="+", help="world scales (default 10 40 160; --quick: 10 40)")
    p.add_argument("--out-dir", type=Path, default=common.RESULTS, help="where curate_scale.{json,md} go")
    p.add_argument("--worlds-dir", type=Path, default=Path(tempfile.gettempdir()), help="cache of the worlds")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of each local Ray cluster (default: all)")
    p.add_argument("--note", default="", help="a remark kept with the result (e.g. 'machine not idle')")
    p.add_argument("--_one", nargs=3, metavar=("WORLD", "OUT", "NUM_CPUS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._one:
        world, out, cpus = args._one
        print(json.dumps(run_one(Path(world), Path(out), int(cpus) or None)))
        return
    scales = sorted(args.scales or ([10.0, 40.0] if args.quick else [10.0, 40.0, 160.0]))
    runs, generated = [], {}
    with tempfile.TemporaryDirectory(prefix="curate_scale_") as tmp:
        for scale in scales:
            world, gen_s = ensure_world(args.worlds_dir, scale)
            generated[f"{scale:g}"] = gen_s
            out = Path(tmp) / f"curated_s{scale:g}"
            cmd = [sys.executable, __file__, "--_one", str(world), str(out), str(args.num_cpus or 0)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT, timeout=3600)
            if proc.returncode != 0:
                raise RuntimeError(f"scale {scale:g} failed:\n{proc.stderr[-3000:]}")
            run = {"scale": scale, **json.loads(proc.stdout.strip().splitlines()[-1])}
            shutil.rmtree(out, ignore_errors=True)
            print(
                f"[{NAME}] scale {scale:g}: {run['run_curation_s']:.1f} s, {run['docs_per_s']:.0f} docs/s, "
                f"peak driver RSS {run['peak_driver_rss_mb']:.0f} MB, near-dup recall {run['near_dup_recall']}",
                file=sys.stderr,
            )
            runs.append(run)
    result = {
        "benchmark": NAME,
        "quick": args.quick,
        "scales": scales,
        "date": time.strftime("%Y-%m-%d"),
        "note": args.note or "Run on an idle machine (every figure is a wall time).",
        "runs": runs,
        "growth": growth(runs),
        "work": work(runs),
        "world_generation_s": generated,
        "targets": TARGETS,
        "notes_baseline": {
            "table": NOTES,
            "exponents_40_160": NOTES_EXPONENTS,
            "source": "../shared/notes/scaling.md",
        },
        "machine": common.machine(),
    }
    result["verdict"] = verdict(result)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{NAME}.md").write_text(markdown(result))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
