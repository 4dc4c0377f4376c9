"""``clinray eval``: models x tasks through lm-eval on Ray; a Table-2-style table; checkpoint sweeps."""

from __future__ import annotations

import argparse

HELP = "evaluate models (or a pretraining run's checkpoints) on the medical benchmarks with lm-eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clinray.cli import add_config_arguments

    add_config_arguments(parser, default=None)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a model row: name and HF folder (repeatable; adds to the config's models)",
    )
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="TASK",
        help="task or group, e.g. clinray_medqa_4 (repeatable; replaces the config's tasks)",
    )
    parser.add_argument("--data-dir", help="folder of the datasets in their native layouts")
    parser.add_argument("--out", help="output folder (results.json, table.md, table.csv, samples/)")
    parser.add_argument(
        "--sweep",
        metavar="RUN_DIR",
        help="sweep the hf/step_* checkpoints of this pretraining run (Figure 2)",
    )
    parser.add_argument(
        "--medprompt",
        action="store_true",
        help="evaluate Medprompt strategies instead (--config is then a MedpromptEvalConfig YAML)",
    )
    parser.add_argument(
        "--address",
        default="local",
        help="Ray address: 'local' (a private local cluster, default) or 'auto' / ray://...",
    )


def build_config(args: argparse.Namespace):
    """The EvalConfig from --config, --set and the shortcut flags."""
    from clinray.config import load
    from clinray.eval.config import EvalConfig

    extra: dict = {}
    if args.model:
        models = {}
        for item in args.model:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--model {item!r} must be NAME=PATH")
            models[name] = path
        extra["models"] = models
    if args.task:
        extra["tasks"] = list(args.task)
    if args.data_dir:
        extra["data_dir"] = args.data_dir
    if args.out:
        extra["out_dir"] = args.out
    if args.sweep:
        extra["sweep"] = {"pretrain_run": args.sweep}
    cfg = load(EvalConfig, args.config, args.overrides)
    if extra:
        from clinray.config import from_dict, to_dict

        merged = to_dict(cfg)
        merged["models"] = {**merged["models"], **extra.pop("models", {})}
        merged["sweep"] = {**merged["sweep"], **extra.pop("sweep", {})}
        if "tasks" in extra:  # --task replaces the tasks: keep only the merged columns that still apply
            merges = {
                name: [t for t in members if t in extra["tasks"]]
                for name, members in merged["merge_columns"].items()
            }
            merged["merge_columns"] = {name: members for name, members in merges.items() if members}
        cfg = from_dict(EvalConfig, {**merged, **extra})
    return cfg


def run_medprompt(args: argparse.Namespace) -> int:
    """Figure 3: each strategy's accuracy (likelihood after reasoning, and parsed-answer vote)."""
    from clinray.config import load
    from clinray.eval.medprompt_eval import MedpromptEvalConfig, run_medprompt_eval

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.model:
        overrides.append(f"setup.engine.model={args.model[0].partition('=')[2] or args.model[0]}")
    result = run_medprompt_eval(load(MedpromptEvalConfig, args.config, overrides))
    print("| strategy | likelihood acc (%) | vote acc (%) | runs parsed (%) |\n|---|---:|---:|---:|")
    for name, row in result["strategies"].items():
        vote = "-" if row["vote"] is None else f"{100 * row['vote']:.1f}"
        parsed = "-" if row["parse_rate"] is None else f"{100 * row['parse_rate']:.0f}"
        print(f"| {name} | {100 * row['likelihood']:.1f} | {vote} | {parsed} |")
    print(f"results: {result['json']}  chart: {result['png']}")
    return 0


def run(args: argparse.Namespace) -> int:
    import ray

    if args.medprompt:
        return run_medprompt(args)

    from clinray.eval.harness import run_eval
    from clinray.eval.sweep import run_sweep

    cfg = build_config(args)
    if args.address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=args.address)
    try:
        result = run_sweep(cfg) if cfg.sweep.pretrain_run else run_eval(cfg)
    finally:
        ray.shutdown()
    print(result["table_md"].read_text())
    for note in result.get("notes", []):
        print(note)
    print(f"results: {result['results_json']}  table: {result['table_md']}, {result['table_csv']}")
    if "sweep_png" in result:
        print(f"sweep plot: {result['sweep_png']}")
    return 0
