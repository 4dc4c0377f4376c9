"""``clinray cot`` on the tiny world through Ray Data actors: a scripted OpenAI-compatible teacher (exact
counts), the tiny model as a local teacher, and the output read back by the SFT reader and the index."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from clinray.cot.run import run_cot
from clinray.jobs import get_job, load_job_config
from clinray.models.chat_template import ASSISTANT_TOKEN, COT_ANSWER_PREFIX, PROMPTER_TOKEN
from clinray.qa import read_questions
from clinray.retrieval.build_index import IndexConfig, load_examples
from clinray.sft.sources import read_source

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]
LIMIT, K = 4, 2
#: What the scripted teacher does with the i-th question of each file (cycled).
POLICIES = ("right_text", "wrong", "no_marker", "right_letter")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scripted_teacher(policy: dict[str, tuple[str, str]]):
    """A /v1/completions server that answers each prompt by its question's policy: the gold option by text
    or by its letter *as shown*, a wrong option, or no final answer. ``policy``: stem -> (policy, gold)."""
    from fastapi import FastAPI

    app = FastAPI()

    def answer(prompt: str) -> str:
        turn = prompt.rsplit(f"{PROMPTER_TOKEN}: ", 1)[1].split(f"\n{ASSISTANT_TOKEN}:", 1)[0]
        stem, *shown = turn.split("\n")
        rule, gold = policy[stem]
        if rule == "no_marker":
            return " It is hard to say."
        if rule == "wrong":
            pick = next(o for o in shown if o != gold)
        elif rule == "right_letter":
            pick = "ABCDE"[shown.index(gold)] + "."
        else:
            pick = gold
        return f" The drug acts on the pathway of the condition. {COT_ANSWER_PREFIX} {pick}"

    @app.post("/v1/completions")
    def completions(body: dict):
        return {"choices": [{"index": i, "text": answer(p)} for i, p in enumerate(body["prompt"])]}

    return app


@pytest.fixture(scope="module")
def inputs(world_dir, tmp_path_factory):
    """A copied MedQA test question (contaminated) beside the world's train files; the policy per stem."""
    extra = tmp_path_factory.mktemp("extra") / "extra" / "train.jsonl"
    extra.parent.mkdir()
    first = json.loads((world_dir / "questions/medqa/test.jsonl").read_text().splitlines()[0])
    extra.write_text(json.dumps({**first, "id": "copied-0000"}) + "\n")
    policy = {}
    for path in ("medqa/train.jsonl", "medmcqa/train.json"):
        for i, q in enumerate(read_questions(world_dir / "questions" / path).questions[:LIMIT]):
            policy[q.stem] = (POLICIES[i % len(POLICIES)], q.answer)
    return extra, policy


@pytest.fixture(scope="module")
def scripted_run(ray_local, world_dir, inputs, tmp_path_factory):
    import uvicorn

    extra, policy = inputs
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(_scripted_teacher(policy), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    out = tmp_path_factory.mktemp("cot_scripted")
    overrides = [
        f"world={world_dir}",
        f"inputs=[{{path: {extra}, source: extra, benchmark: medqa}}]",
        f"limit={LIMIT}",
        f"k={K}",
        "teacher.kind=openai",
        f"teacher.base_url=http://127.0.0.1:{port}/v1",
        "teacher.model=scripted",
        "teacher.batch_size=4",
        "teacher.num_cpus=0.5",
        "min_written=1",
        f"out_dir={out}",
    ]
    try:
        yield run_cot(load_job_config(get_job("cot"), "tiny/cot", overrides))
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_every_question_and_sample_is_accounted(scripted_run):
    result = scripted_run
    assert result.ok, result.problems
    r = result.report
    assert r["balanced"]
    assert r["questions"] == {
        "read": 100 + 100 + 1,
        "skipped_by_reason": {"over_limit": 2 * (100 - LIMIT)},
        "contaminated": 1,  # the copied test question: never sent to the teacher
        "generated": 2 * LIMIT,
    }
    s = r["samples"]
    # per file: right_text and right_letter accepted, wrong rejected, no_marker unparseable (x k chains)
    assert (s["planned"], s["judged"], s["accepted"], s["wrong_answer"], s["unparseable"]) == (
        16,
        16,
        8,
        4,
        4,
    )
    assert s["unparseable_by_reason"] == {"no_final_answer": 4}
    assert s["answer_forms"] == {
        "marker_text": 4,
        "marker_letter": 4,
    }  # letters mapped back through the shuffle
    assert r["rows"] == {"written": 8, "duplicate": 0, "over_keep": 0}
    for group in ("by_source", "by_benchmark"):
        assert {name: t["acceptance_rate"] for name, t in r[group].items()} == {"medqa": 0.5, "medmcqa": 0.5}
    assert r["chains_per_question"] == {"0": 4, "2": 4}
    rejects = [json.loads(line) for line in result.rejects_path.read_text().splitlines()]
    (hit,) = [x for x in rejects if x["reason"] == "contaminated"]
    assert hit["id"] == "medqa/train/copied-0000" and "medqa:medqa/test/medqa-test-0000" in hit["detail"]
    assert (
        sorted(x["reason"] for x in rejects if x["level"] == "sample")
        == ["no_final_answer"] * 4 + ["wrong_answer"] * 4
    )
    assert "| medqa | 4 | 8 | 4 | 2 | 2 | 50.0% | 2 |" in (result.out_dir / "cot_report.md").read_text()
    assert (result.out_dir / "config.yaml").is_file() and "api_key" not in r["teacher"]


def test_the_rows_feed_sft_and_the_index(scripted_run, inputs):
    _, policy = inputs
    gold = {stem: answer for stem, (_, answer) in policy.items()}
    sft = read_source("chat", scripted_run.rows_path, source="cot")
    assert sft.counts() == {"read": 8, "kept": 8, "skipped_by_reason": {}}
    for conv in sft:
        stem = conv.messages[1]["content"].split("\n")[0]
        assert conv.messages[-1]["content"].endswith(f"{COT_ANSWER_PREFIX} {gold[stem]}")
        assert conv.meta["has_cot"] and conv.meta["row_source"] in ("medqa", "medmcqa")
    examples, rejects = load_examples(IndexConfig(cot=[str(scripted_run.rows_path)]))
    assert len(examples) == 4 and [r["reason"] for r in rejects] == ["duplicate_id"] * 4  # 2nd chains
    for ex in examples:
        assert json.loads(ex["options"])[ex["answer_index"]] == gold[ex["question"]]
        assert ex["explanation"] == "The drug acts on the pathway of the condition."


def test_the_tiny_model_teaches_through_ray_data_actors(ray_local, world_dir, tiny_model_dir, tmp_path):
    cfg = load_job_config(
        get_job("cot"),
        "tiny/cot",
        [
            f"world={world_dir}",
            "limit=2",
            "k=2",
            "max_new_tokens=8",
            f"teacher.model={tiny_model_dir}",
            "teacher.batch_size=4",
            f"out_dir={tmp_path}",
        ],
    )
    result = run_cot(cfg)
    assert result.ok, result.problems  # min_written 0: a random model verifies nothing, and says so
    s = result.report["samples"]
    assert s["planned"] == s["judged"] == 8 and result.report["balanced"]
    rows = result.rows_path.read_text().splitlines()
    sample_rejects = [
        x for x in map(json.loads, result.rejects_path.read_text().splitlines()) if x["level"] == "sample"
    ]
    assert len(rows) + len(sample_rejects) == 8  # every chain is a row or a reject with its reason
    assert "cot:" in result.summary() and "Acceptance rate" in (tmp_path / "cot_report.md").read_text()


def test_an_unreachable_server_is_counted_and_not_ok(ray_local, world_dir, tmp_path):
    cfg = load_job_config(
        get_job("cot"),
        "tiny/cot",
        [
            f"world={world_dir}",
            "limit=1",
            "k=2",
            "teacher.kind=openai",
            f"teacher.base_url=http://127.0.0.1:{_free_port()}/v1",
            "teacher.model=nobody",
            "teacher.num_cpus=0.5",
            f"out_dir={tmp_path}",
        ],
    )
    result = run_cot(cfg)
    assert not result.ok and "every teacher request failed: ConnectionError" in result.problems[0]
    assert (
        result.report["samples"]["unparseable_by_reason"] == {"teacher_error": 4}
        and result.report["balanced"]
    )
