"""The served app for real: Ray Serve on 127.0.0.1, the tiny model, a Milvus Lite index, real HTTP.

Serve starts once for the module (about a minute on 2 cores: three replicas load torch); every test
talks to it over HTTP, with httpx or the official ``openai`` client (``max_retries=0``, so an error is
seen once, not retried). The retriever-failure test kills the retriever's replica actor, so it runs last.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from pathlib import Path

import httpx
import pytest

KEY = "test-key-1"
OTHER_KEY = "second-key"
QUESTION = {
    "question": "A 60-year-old man has crushing chest pain radiating to the left arm. First drug?",
    "options": ["aspirin", "insulin", "levothyroxine", "amoxicillin"],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lite_index(world_dir, tmp_path_factory):
    """The world's training questions with CoT in a Milvus Lite file (closed: the retriever opens it)."""
    from clinray.retrieval.build_index import IndexConfig, load_examples
    from clinray.retrieval.embed import EmbedConfig, Embedder
    from clinray.retrieval.milvus_store import MilvusExampleStore, StoreConfig

    rows, _ = load_examples(IndexConfig(world=str(world_dir)))
    db = tmp_path_factory.mktemp("serve_index") / "index.db"
    store = MilvusExampleStore(StoreConfig(uri=str(db), index_type="FLAT"))
    store.ensure_collection()
    vectors = Embedder(EmbedConfig()).embed([r["text"] for r in rows])
    store.upsert([{**r, "vector": v} for r, v in zip(rows, vectors)])
    store.flush()
    store.close()
    return db, len(rows)


@pytest.fixture(scope="module")
def served(ray_local, tiny_model_dir, lite_index, tmp_path_factory, monkeypatch_module):
    from ray import serve

    from clinray.serve.app import ServeArgs, build_app

    db, _ = lite_index
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text(f"# clinray API keys\n{OTHER_KEY}\n")
    monkeypatch_module.setenv("CLINRAY_TEST_KEYS", KEY)
    args = ServeArgs.model_validate(
        {
            "engine": {"model": str(tiny_model_dir), "name": "tiny"},
            "store": {"uri": str(db)},
            "auth": {"api_keys_env": "CLINRAY_TEST_KEYS", "api_keys_file": str(key_file)},
            "medprompt": {"k": 3, "n_ensemble": 5, "max_new_tokens": 8},
            "limits": {
                "max_question_chars": 2_000,
                "max_body_bytes": 16_000,
                "max_new_tokens": 64,
                "max_inflight": 8,
            },
            "timeouts": {"request_s": 60, "retrieval_s": 5},
            "llm": {"num_cpus": 0.5},
            "retriever": {"num_cpus": 0.25},
            "ingress": {"num_cpus": 0.25},
        }
    )
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="clinray", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.delete("clinray")
    serve.shutdown()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served, timeout=120, headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client


def _assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["code"], str)
    assert "Traceback" not in response.text
    return body["error"]


def test_healthz_needs_no_key_and_models_lists_the_model(served, http):
    assert httpx.get(f"{served}/healthz").json() == {"status": "ok", "model": "tiny"}
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]


def test_medprompt_answers_with_votes_and_exemplars(http, lite_index):
    body = {**QUESTION, "seed": 7}
    r = http.post("/v1/medprompt", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] in "ABCD" and out["answer_text"] == QUESTION["options"]["ABCD".index(out["answer"])]
    assert out["strategy"] == "cot_ensemble" and out["model"] == "tiny" and out["seed"] == 7
    assert sum(out["votes"].values()) == 5 and len(out["runs"]) == 5
    assert out["confidence"] == max(out["votes"].values()) / 5 == out["votes"][out["answer"]] / 5
    for run in out["runs"]:
        assert sorted(run["option_order"]) == list("ABCD") and run["method"] in ("parsed", "scored")
        assert run["answer"] in "ABCD"
    assert len({tuple(run["option_order"]) for run in out["runs"]}) == 5  # distinct shuffles
    assert len(out["exemplars"]) == 3
    for ex in out["exemplars"]:
        assert ex["id"].startswith(("medqa/", "medmcqa/")) and 0 < ex["score"] <= 1 and ex["source"] == "knn"
    assert set(out["latency_ms"]) == {"embed", "search", "generate", "score", "total"}
    assert out["warnings"] == [] and out["request_id"]
    again = http.post("/v1/medprompt", json=body, headers={"x-request-id": "audit-42"}).json()
    assert again["request_id"] == "audit-42"
    assert (again["answer"], again["votes"], again["runs"]) == (out["answer"], out["votes"], out["runs"])


def test_medprompt_options_as_an_object_answer_by_key(http):
    options = dict(zip("WXYZ", QUESTION["options"], strict=True))
    r = http.post(
        "/v1/medprompt",
        json={"question": QUESTION["question"], "options": options, "strategy": "knn_fewshot_cot", "k": 2},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["answer"] in options and out["answer_text"] == options[out["answer"]]
    assert len(out["runs"]) == 1 and len(out["exemplars"]) == 2


def test_openai_client_chat_streaming_and_completions(served):
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key=KEY, max_retries=0)
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Which drug for angina?"}], max_tokens=6, seed=1
    )
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str) and chat.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Which drug for angina?"}],
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    greedy = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Which drug for angina?"}],
        max_tokens=6,
        temperature=0,
    )
    assert streamed == greedy.choices[0].message.content
    done = client.completions.create(
        model="tiny", prompt=["The patient", "A drug"], max_tokens=4, temperature=0
    )
    assert [c.index for c in done.choices] == [0, 1] and done.object == "text_completion"
    echo = client.completions.create(
        model="tiny", prompt="The patient was", max_tokens=0, echo=True, logprobs=1
    )
    lp = echo.choices[0].logprobs
    assert echo.choices[0].text == "The patient was"
    assert "".join(lp.tokens) == "The patient was" and lp.text_offset[0] == 0
    assert all(x is not None and x < 0 for x in lp.token_logprobs) and len(lp.top_logprobs) == len(lp.tokens)
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_sse_ends_with_done(http):
    with http.stream(
        "POST", "/v1/completions", json={"prompt": "The patient", "max_tokens": 3, "stream": True}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(json.loads(line[len("data: ") :]) for line in lines[:-1])


def test_openai_client_errors_are_typed(served):
    import openai

    wrong = openai.OpenAI(base_url=f"{served}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    client = openai.OpenAI(base_url=f"{served}/v1", api_key=OTHER_KEY, max_retries=0)  # the file's key
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            response_format={"type": "json_object"},
        )
    assert info.value.param == "response_format"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)


_OK = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}

#: (name, path, body bytes or JSON, headers, status, param)
BAD_REQUESTS = [
    ("missing field", "/v1/medprompt", {"options": ["a", "b"]}, _OK, 422, "question"),
    ("wrong type", "/v1/medprompt", {**QUESTION, "n_ensemble": "five"}, _OK, 422, "n_ensemble"),
    ("1 option", "/v1/medprompt", {**QUESTION, "options": ["only"]}, _OK, 422, "options"),
    (
        "11 options",
        "/v1/medprompt",
        {**QUESTION, "options": [f"o{i}" for i in range(11)]},
        _OK,
        422,
        "options",
    ),
    ("n_ensemble 12", "/v1/medprompt", {**QUESTION, "n_ensemble": 12}, _OK, 422, "n_ensemble"),
    ("k 21", "/v1/medprompt", {**QUESTION, "k": 21}, _OK, 422, "k"),
    ("temperature 3", "/v1/medprompt", {**QUESTION, "temperature": 3}, _OK, 422, "temperature"),
    ("huge question", "/v1/medprompt", {**QUESTION, "question": "pain " * 600}, _OK, 413, "question"),
    ("huge body", "/v1/medprompt", {**QUESTION, "question": "x" * 20_000}, _OK, 413, None),
    ("bad JSON", "/v1/medprompt", b'{"question": "x", ', _OK, 400, None),
    ("not an object", "/v1/medprompt", b"[1, 2]", _OK, 400, None),
    ("no key", "/v1/medprompt", QUESTION, {"content-type": "application/json"}, 401, None),
    ("wrong key", "/v1/medprompt", QUESTION, {**_OK, "Authorization": "Bearer wrong"}, 401, None),
    (
        "non-ASCII key",
        "/v1/medprompt",
        QUESTION,
        {**_OK, "Authorization": "Bearer clé-ü".encode()},
        401,
        None,
    ),
    ("basic scheme", "/v1/models", None, {"Authorization": f"Basic {KEY}"}, 401, None),
    ("unsupported field", "/v1/medprompt", {**QUESTION, "tools": []}, _OK, 400, "tools"),
    (
        "unsupported chat field",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}},
        _OK,
        400,
        "logit_bias",
    ),
    ("too many tokens", "/v1/completions", {"prompt": "x", "max_tokens": 10_000}, _OK, 422, "max_tokens"),
    ("unknown model", "/v1/medprompt", {**QUESTION, "model": "gpt-4"}, _OK, 404, "model"),
    ("unknown route", "/v1/nothing", None, _OK, 404, None),
    ("wrong method", "/v1/medprompt", None, _OK, 405, None),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "headers", "status", "param"), BAD_REQUESTS, ids=[row[0] for row in BAD_REQUESTS]
)
def test_bad_requests_get_their_4xx_and_the_error_shape(served, name, path, body, headers, status, param):
    with httpx.Client(base_url=served, timeout=30) as client:
        if body is None:
            r = client.get(path, headers=headers)
        else:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            r = client.post(path, content=content, headers=headers)
    error = _assert_error_shape(r, status)
    if param is not None:
        assert error["param"] == param, error
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers.get("x-request-id")


def test_load_200_requests_at_concurrency_8_has_no_5xx(served, tmp_path):
    body = {**QUESTION, "n_ensemble": 1, "k": 2, "max_new_tokens": 4, "strategy": "cot_ensemble"}

    async def run() -> tuple[list[int], list[float], float]:
        statuses, latencies = [], []
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(200):
            queue.put_nowait(i)
        async with httpx.AsyncClient(
            base_url=served, timeout=120, headers={"Authorization": f"Bearer {KEY}"}
        ) as c:

            async def worker():
                while not queue.empty():
                    i = queue.get_nowait()
                    t0 = time.perf_counter()
                    r = await c.post("/v1/medprompt", json={**body, "seed": i})
                    latencies.append((time.perf_counter() - t0) * 1e3)
                    statuses.append(r.status_code)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(8)))
            return statuses, latencies, time.perf_counter() - t0

    statuses, latencies, wall = asyncio.run(run())
    assert len(statuses) == 200
    assert not [s for s in statuses if s >= 500], statuses
    assert all(s in (200, 429) for s in statuses)
    assert statuses.count(200) >= 190
    q = statistics.quantiles(latencies, n=100)
    record = {
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "rps": round(200 / wall, 2),
        "wall_s": wall,
    }
    (tmp_path / "load.json").write_text(json.dumps(record))
    print("serve load (200 requests, concurrency 8):", record)
    assert record["p50_ms"] > 0 and record["p99_ms"] >= record["p50_ms"]


def test_over_capacity_gets_429_with_retry_after(served):
    body = {**QUESTION, "n_ensemble": 5, "max_new_tokens": 8}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=served, timeout=120, headers={"Authorization": f"Bearer {KEY}"}
        ) as c:
            return await asyncio.gather(
                *(c.post("/v1/medprompt", json={**body, "seed": i}) for i in range(24))
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8 and statuses.count(429) >= 1, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert _assert_error_shape(r, 429)["code"] == "rate_limit_exceeded"


def test_question_text_is_not_logged(served, ray_local):
    """The replicas' log files (Serve's access logs and ours) never contain the question text."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    logs = [p for p in (session / "logs").rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    assert any("serve" in str(p) for p in logs)
    needle = QUESTION["question"][:40]
    assert not [p for p in logs if needle in p.read_text(errors="replace")]


def test_a_failing_retriever_gives_static_fewshot_and_a_warning(http, ray_local):
    """Runs last: the retriever's replica actor is killed for real; Serve replaces it afterwards."""
    import ray

    names = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "Retriever" in a["name"] and "REPLICA" in a["name"]
    ]
    assert names, "no retriever replica found"
    for actor in names:
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
    r = http.post("/v1/medprompt", json={**QUESTION, "n_ensemble": 2, "k": 2, "seed": 1})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["warnings"] == ["retrieval_unavailable: fell back to static_fewshot_cot"]
    assert len(out["exemplars"]) == 2 and all(
        ex["source"] == "static" and ex["score"] is None for ex in out["exemplars"]
    )
    assert sum(out["votes"].values()) == 2
