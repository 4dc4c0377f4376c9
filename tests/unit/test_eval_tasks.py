"""Eval tasks, loaders, tables, sweep discovery, and the prompt-once scorer against lm-eval's ``hf``.

No Ray here. Question files are written in their native layouts by ``clinray.eval.fixtures``; the
model is a tiny random Mistral whose tokenizer is trained on those files (a second or two).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from clinray.eval.fixtures import write_sample_questions
from clinray.eval.tasks import utils
from clinray.models.chat_template import ANSWER_PREFIX, mcq_prompt, render_messages

TASKS_DIR = Path(utils.__file__).parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_sample_questions(tmp_path_factory.mktemp("questions"), num_questions=6, seed=1)


@pytest.fixture(scope="module")
def small_model(data_dir, tmp_path_factory) -> Path:
    from clinray.models.tiny import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(vocab_size=500, hidden_size=64, num_layers=2, intermediate_size=128)
    return build_tiny_model(data_dir, tmp_path_factory.mktemp("model"), cfg)


def _test_rows(dataset) -> list[dict]:
    return list(dataset["test"])


def test_medqa_layouts_normalize(data_dir):
    rows = _test_rows(utils.load_medqa(test_file="medqa/test.jsonl", data_dir=str(data_dir)))
    raw = [json.loads(line) for line in (data_dir / "medqa/test.jsonl").read_text().splitlines()]
    assert len(rows) == len(raw) == 6
    for row, native in zip(rows, raw, strict=True):
        assert row["labels"] == ["A", "B", "C", "D"]
        assert row["options"][row["answer_index"]] == native["answer"]
    five = _test_rows(utils.load_medqa(test_file="medqa_5/test.jsonl", data_dir=str(data_dir)))
    assert {len(r["options"]) for r in five} == {5}


def test_medmcqa_json_is_1_based_and_parquet_0_based(data_dir):
    from_json = _test_rows(utils.load_medmcqa(test_file="medmcqa/dev.json", data_dir=str(data_dir)))
    from_parquet = _test_rows(
        utils.load_medmcqa(test_file="medmcqa/validation.parquet", data_dir=str(data_dir))
    )
    assert [r["answer_index"] for r in from_json] == [r["answer_index"] for r in from_parquet]
    native = [json.loads(line) for line in (data_dir / "medmcqa/dev.json").read_text().splitlines()]
    assert [r["answer_index"] for r in from_json] == [n["cop"] - 1 for n in native]
    with pytest.raises(ValueError, match="cop_base"):
        utils.load_medmcqa(test_file="medmcqa/dev.json", data_dir=str(data_dir), cop_base=2)


def test_mmlu_and_pubmedqa(data_dir, tmp_path):
    rows = _test_rows(utils.load_mmlu(subject="anatomy", data_dir=str(data_dir)))
    assert rows and all(len(r["options"]) == 4 for r in rows)
    pqa = _test_rows(utils.load_pubmedqa(test_file="pubmedqa/ori_pqal.json", data_dir=str(data_dir)))
    native = json.loads((data_dir / "pubmedqa/ori_pqal.json").read_text())
    assert [r["id"] for r in pqa] == [f"pubmedqa/ori_pqal/{pmid}" for pmid in native]  # clinray.qa ids
    assert all(r["options"] == ["yes", "no", "maybe"] for r in pqa)
    first_pmid = pqa[0]["id"].rsplit("/", 1)[1]
    assert pqa[0]["question"].endswith(native[first_pmid]["QUESTION"])
    ids = tmp_path / "test_ground_truth.json"
    ids.write_text(json.dumps({pqa[1]["id"].rsplit("/", 1)[1]: "yes"}))
    subset = _test_rows(
        utils.load_pubmedqa(
            test_file="pubmedqa/ori_pqal.json", test_ids_file=str(ids), data_dir=str(data_dir)
        )
    )
    assert [r["id"] for r in subset] == [pqa[1]["id"]]


def test_malformed_rows_are_counted_not_fatal(tmp_path, caplog):
    good = {"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "B"}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "answer_idx": "Z"}),
        json.dumps({"question": "Q"}),
    ]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="clinray.eval.tasks"):
        rows = _test_rows(utils.load_medqa(test_file="q.jsonl", data_dir=str(tmp_path)))
    assert len(rows) == 1 and rows[0]["answer_index"] == 1
    assert "skipped 3 question rows" in caplog.text
    assert "not JSON" in caplog.text and "bad_json" in caplog.text and "bad_options" in caplog.text
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="no valid question rows"):
        utils.load_medqa(test_file="bad.jsonl", data_dir=str(tmp_path))


def test_data_dir_from_env_paths_override_and_errors(data_dir, monkeypatch):
    monkeypatch.delenv(utils.DATA_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="CLINRAY_DATA_DIR"):
        utils.load_medqa(test_file="medqa/test.jsonl")
    monkeypatch.setenv(utils.DATA_DIR_ENV, str(data_dir))
    assert len(utils.load_medqa(test_file="medqa/test.jsonl")["test"]) == 6
    # paths[task] wins for that task (and its letter variant), found from the YAML's file name
    source = str(TASKS_DIR / "clinray_medqa_4_letter.yaml")
    five = utils.load_medqa(
        test_file="medqa/test.jsonl", paths={"clinray_medqa_4": "medqa_5/test.jsonl"}, config_source=source
    )
    assert len(five["test"][0]["options"]) == 5
    with pytest.raises(ValueError, match="does not exist"):
        utils.load_medqa(test_file="nope/test.jsonl")


def test_prompts_are_figure_4_through_the_chat_template():
    doc = {"question": "Which drug?", "options": ["Alpha", "Beta"], "labels": ["A", "B"], "answer_index": 1}
    text = utils.doc_to_text(doc)
    assert text == mcq_prompt("Which drug?", ["Alpha", "Beta"]) + " " + ANSWER_PREFIX
    messages = [
        {
            "role": "system",
            "content": "You are a biomedical expert. Select the correct option for the following question:",
        },
        {"role": "user", "content": "Which drug?\nAlpha\nBeta"},
    ]
    assert text == render_messages(messages, add_generation_prompt=True) + " The correct answer is:"
    assert utils.doc_to_text_letter(doc).endswith(
        "Which drug?\nA. Alpha\nB. Beta\n<|assistant|>: " + ANSWER_PREFIX
    )
    assert utils.doc_to_choice(doc) == ["Alpha", "Beta"] and utils.doc_to_choice_letter(doc) == ["A", "B"]


def test_every_paper_task_is_registered_with_lm_eval():
    from lm_eval.tasks import TaskManager

    names = set(TaskManager(include_path=str(TASKS_DIR), include_defaults=False).all_tasks)
    base = [
        "clinray_medqa_4",
        "clinray_medqa_5",
        "clinray_usmle_sample_exam",
        "clinray_usmle_self_assessment",
        "clinray_medmcqa",
        "clinray_pubmedqa",
        *(f"clinray_mmlu_{s}" for s in utils.MMLU_MEDICAL_SUBJECTS),
    ]
    assert len(utils.MMLU_MEDICAL_SUBJECTS) == 13
    for name in [*base, "clinray_usmle", "clinray_mmlu_medical"]:
        assert name in names and f"{name}_letter" in names


def test_tables_merge_and_missing_cells(tmp_path):
    from clinray.eval.tables import build_table, to_csv, to_markdown, write_tables

    results = [
        {
            "model": "a",
            "results": {"t1": {"acc": 0.5}, "m1": {"acc": 1.0}, "m2": {"acc": 0.0}},
            "num_questions": {"t1": 4, "m1": 1, "m2": 3},
        },
        {"model": "b", "results": {"t1": {"acc": 0.25}}, "num_questions": {"t1": 4}},
    ]
    table = build_table(results, ["t1", "m1", "m2"], merge={"mm": ["m1", "m2"]})
    assert table["columns"] == ["t1", "mm"]
    assert table["rows"][0]["cells"] == {"t1": 50.0, "mm": 25.0}  # (1*1 + 0*3) / 4
    assert table["rows"][1]["cells"]["mm"] is None
    md = to_markdown(table)
    assert "| a | 50.00 | 25.00 |" in md and "| b | 25.00 | - |" in md and "| *questions* | 4 | 4 |" in md
    assert to_csv(table).splitlines() == ["model,t1,mm", "a,50.0000,25.0000", "b,25.0000,"]
    paths = write_tables(table, tmp_path)
    assert paths["table_md"].read_text().count("\n| ") >= 3


def test_find_checkpoints_and_missing_tuner(tmp_path, caplog):
    from clinray.eval.sweep import NO_TUNER_NOTE, _choose_tuner, find_checkpoints

    for name, step, tokens in [
        ("step_20", 20, 2000),
        ("step_10", 10, 1000),
        ("final", 20, 2000),
        ("step_5", 5, 500),
    ]:
        (tmp_path / "hf" / name).mkdir(parents=True)
        if name != "step_5":  # unfinished export: no meta
            meta = {"step": step, "tokens_seen": tokens, "source_run": "r"}
            (tmp_path / "hf" / name / "clinray_meta.json").write_text(json.dumps(meta))
    (tmp_path / "hf" / "step_30.tmp-x").mkdir()
    found = find_checkpoints(tmp_path)
    assert [(c.name, c.tokens_seen) for c in found] == [("step_10", 1000), ("step_20", 2000)]
    with pytest.raises(ValueError, match="pretraining run folder"):
        find_checkpoints(tmp_path / "nope")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clinray.eval.sweep"):
        tuner, note = _choose_tuner(None, requested=True)
    assert tuner is None and note == NO_TUNER_NOTE
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.WARNING, NO_TUNER_NOTE)]
    assert _choose_tuner(lambda *a, **k: a[0], requested=False)[0] is None


def test_explicit_tuner_is_called_once_per_checkpoint(tmp_path):
    from clinray.eval.sweep import Checkpoint, _choose_tuner, _tuned_models

    calls = []

    def tune(model_dir: Path, *, out_dir: Path, config: str) -> Path:
        calls.append((model_dir, out_dir, config))
        return out_dir / "hf"

    checkpoints = [
        Checkpoint(name=name, path=tmp_path / "hf" / name, step=step, tokens_seen=10 * step)
        for name, step in [("base", 0), ("step_10", 10), ("final", 20)]
    ]
    tuner, note = _choose_tuner(tune, requested=True)
    assert tuner is tune and "tune" in note
    models = _tuned_models(checkpoints, tuner, tmp_path / "out", config="sft.yaml")
    assert calls == [(c.path, tmp_path / "out" / "sft" / c.name, "sft.yaml") for c in checkpoints]
    assert models == {c.name: str(tmp_path / "out" / "sft" / c.name / "hf") for c in checkpoints}
    assert _tuned_models(checkpoints, None, tmp_path / "out") == {c.name: str(c.path) for c in checkpoints}


def test_config_errors_are_actionable():
    from clinray.config import ConfigError, load
    from clinray.eval.config import EvalConfig

    with pytest.raises(ConfigError, match="merge_columns"):
        load(EvalConfig, None, {"tasks": ["a"], "merge_columns": {"m": ["b"]}})
    with pytest.raises(ConfigError, match="metric"):
        load(EvalConfig, None, ["metric=f1"])
    cfg = load(EvalConfig, "tiny/eval", ["models.tiny=/m"])
    assert cfg.models == {"tiny": "/m"} and "mmlu_medical" in cfg.merge_columns


def test_fast_scorer_matches_hf_loglikelihoods(data_dir, small_model):
    """Per-option log-likelihoods of --model clinray equal lm-eval's hf within 1e-4 (float32)."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from clinray.eval.scorer import PrefixCachedLM

    manager = TaskManager(
        include_path=str(TASKS_DIR), include_defaults=False, metadata={"data_dir": str(data_dir)}
    )
    loaded = manager.load(["clinray_medqa_5", "clinray_pubmedqa", "clinray_medmcqa_letter"])
    requests = []
    for task in loaded["tasks"].values():
        task.build_all_requests(rank=0, world_size=1)
        requests += task.instances
    assert len(requests) == 6 * 5 + 6 * 3 + 6 * 4
    kwargs = {"pretrained": str(small_model), "device": "cpu", "dtype": "float32", "batch_size": 4}
    reference = HFLM(**kwargs).loglikelihood(requests, disable_tqdm=True)
    fast = PrefixCachedLM(**kwargs)
    ours = fast.loglikelihood(requests, disable_tqdm=True)
    assert fast.num_prompt_passes == 18  # one per question, not one per option
    assert max(abs(a[0] - b[0]) for a, b in zip(reference, ours, strict=True)) < 1e-4
    assert [a[1] for a in reference] == [b[1] for b in ours]
    # contexts longer than the model's window take hf's left-truncating path, still equal
    short = {**kwargs, "max_length": 48}
    ref_short = HFLM(**short).loglikelihood(requests[:5], disable_tqdm=True)
    ours_short = PrefixCachedLM(**short).loglikelihood(requests[:5], disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(ref_short, ours_short, strict=True)) < 1e-4


def test_medprompt_vote_reads_parsed_answers_back_through_the_permutation():
    from clinray.eval.medprompt_eval import _vote
    from clinray.prompting.medprompt import MedpromptAnswer, RunRecord

    def run(completion, perm):
        return RunRecord(
            prompt="p",
            completion=completion,
            permutation=perm,
            example_ids=[],
            parsed=None,
            parse_form="answer_mode=score",
            method="scored",
            mapped_back=0,
        )

    options = ["Alpha", "Beta", "Gamma"]
    runs = [
        run("Therefore, the correct answer is: Beta", [0, 1, 2]),
        run("Therefore, the correct answer is: Beta", [2, 1, 0]),
        run("no idea", [1, 0, 2]),
    ]
    answer = MedpromptAnswer(
        answer_index=0, answer_text="Alpha", confidence=1.0, votes={0: 3}, strategy="cot_ensemble", runs=runs
    )
    assert _vote(answer, options) == (1, 2)  # two parsed runs vote Beta; the third abstains
    assert _vote(
        MedpromptAnswer(
            answer_index=0,
            answer_text="Alpha",
            confidence=1.0,
            votes={},
            strategy="zero_shot_cot",
            runs=[runs[2]],
        ),
        options,
    ) == (None, 0)


def test_medprompt_eval_scores_after_generated_reasoning(data_dir, small_model, tmp_path):
    from clinray.config import load
    from clinray.eval.medprompt_eval import MedpromptEvalConfig, run_medprompt_eval

    cfg = load(
        MedpromptEvalConfig,
        None,
        {
            "setup": {
                "engine": {"kind": "transformers", "model": str(small_model), "device": "cpu"},
                "medprompt": {"max_new_tokens": 6},
                "use_store": False,
            },
            "strategies": ["zero_shot_cot"],
            "data_dir": str(data_dir),
            "limit": 3,
            "out_dir": str(tmp_path),
        },
    )
    result = run_medprompt_eval(cfg)
    rows = result.strategies
    assert set(rows) == {"zero_shot", "zero_shot_cot"} and result.num_questions == 3 and result.ok
    assert (
        0.0 <= rows["zero_shot_cot"]["likelihood"] <= 1.0
        and 0.0 <= rows["zero_shot_cot"]["parse_rate"] <= 1.0
    )
    lines = [json.loads(x) for x in (tmp_path / "medprompt_samples.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(
        len(x["completions"]) == 1 for x in lines if x["strategy"] == "zero_shot_cot"
    )
    assert result.png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="strategies"):
        load(MedpromptEvalConfig, None, {"strategies": ["magic"]})


def test_cli_flags_build_the_config():
    """The eval shortcuts are --set overrides, so every door resolves the same config."""
    import argparse

    from clinray.config import ConfigError, load
    from clinray.jobs import JOBS, add_job_arguments, flag_overrides

    job = JOBS["eval"]
    parser = argparse.ArgumentParser()
    add_job_arguments(parser, job)
    argv = ["--config", "tiny/eval", "--model", "a=/m/a", "--model", "b=/m/b", "--data-dir", "/q"]
    args = parser.parse_args([*argv, "--sweep", "/run", "--set", "limit=5"])
    overrides = [*args.overrides, *flag_overrides(job, args)]
    cfg = load(job.config_class(), args.config, overrides)
    assert cfg.models == {"a": "/m/a", "b": "/m/b"}
    assert (cfg.data_dir, cfg.limit, cfg.sweep.pretrain_run) == ("/q", 5, "/run")
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        flag_overrides(job, parser.parse_args(["--config", "tiny/eval", "--model", "nopath"]))
