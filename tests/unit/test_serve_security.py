"""Auth, limits and the error shape of the served app, without Ray (the ASGI layers on a small app)."""

from __future__ import annotations

import hmac
import json

import pytest
from pydantic import ValidationError

from clinray.serve.app import ServeArgs, _Gate, _validation_error
from clinray.serve.schemas import ChatCompletionRequest, CompletionRequest, MedpromptRequest
from clinray.serve.security import BodyLimit, KeyRing, error_body, is_loopback, request_id_of

ARGS = {"engine": {"model": "some/model"}, "store": {"uri": "index.db"}}


def test_keys_are_hashed_and_every_key_is_accepted():
    ring = KeyRing(["alpha", "béta"])
    assert len(ring) == 2 and all(len(d) == 32 for d in ring.digests())
    assert b"alpha" not in b"".join(ring.digests())
    assert ring.check("Bearer alpha") and ring.check("bearer béta") and ring.check("BEARER  alpha ")
    for header in (None, "", "Bearer", "Bearer alph", "Basic alpha", "alpha", "Bearer alpha2"):
        assert not ring.check(header), header


def test_a_non_ascii_token_is_a_mismatch_not_an_exception():
    with pytest.raises(TypeError):  # why the ring hashes first: the naive compare raises on non-ASCII str
        hmac.compare_digest("clé", "clé")
    ring = KeyRing(["ascii-key"])
    assert ring.check("Bearer clé-ü") is False
    assert ring.check("Bearer \udcff") is False  # a lone surrogate (latin-1 decoding never makes one)


def test_keys_load_from_env_and_file(tmp_path, monkeypatch):
    keys = tmp_path / "keys.txt"
    keys.write_text("# comment\nfrom-file\n\n")
    monkeypatch.setenv("MY_KEYS", "one, two")
    ring = KeyRing.load(api_keys_env="MY_KEYS", api_keys_file=str(keys), disabled=False, host="0.0.0.0")
    assert len(ring) == 3 and ring.check("Bearer two") and ring.check("Bearer from-file")
    assert not ring.check("Bearer # comment")
    monkeypatch.delenv("MY_KEYS")
    with pytest.raises(ValueError, match="no API key configured"):
        KeyRing.load(api_keys_env="MY_KEYS", api_keys_file="", disabled=False, host="127.0.0.1")
    with pytest.raises(ValueError, match="does not exist"):
        KeyRing.load(api_keys_env="", api_keys_file=str(tmp_path / "none"), disabled=False, host="127.0.0.1")


def test_auth_off_only_explicitly_and_only_on_loopback():
    assert KeyRing.load(api_keys_env="", api_keys_file="", disabled=True, host="127.0.0.1").check(None)
    for host in ("0.0.0.0", "10.0.0.5", "example.org", "::"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="refused"):
            KeyRing.load(api_keys_env="", api_keys_file="", disabled=True, host=host)
        with pytest.raises(ValidationError, match="refused"):
            ServeArgs.model_validate({**ARGS, "auth": {"disabled": True}, "host": host})
    assert is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")


def test_wildcard_cors_is_refused():
    with pytest.raises(ValidationError, match="refused"):
        ServeArgs.model_validate({**ARGS, "cors_origins": ["*"]})
    assert ServeArgs.model_validate({**ARGS, "cors_origins": ["https://ehr.example.org"]}).cors_origins


def test_error_body_is_openai_shaped():
    body = error_body(429, "slow down", code="rate_limit_exceeded", param=None)
    assert body == {
        "error": {
            "message": "slow down",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert error_body(500, "x")["error"]["code"] == "500"


@pytest.mark.parametrize(
    ("model", "data", "status", "param"),
    [
        (MedpromptRequest, {"options": ["a", "b"]}, 422, "question"),
        (MedpromptRequest, {"question": "q", "options": ["a"]}, 422, "options"),
        (MedpromptRequest, {"question": "q", "options": [str(i) for i in range(11)]}, 422, "options"),
        (MedpromptRequest, {"question": "q", "options": ["a", "b"], "n_ensemble": 12}, 422, "n_ensemble"),
        (MedpromptRequest, {"question": "q", "options": ["a", "b"], "k": 0}, 422, "k"),
        (MedpromptRequest, {"question": "q", "options": ["a", "b"], "stream": True}, 400, "stream"),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "tools": []}, 400, "tools"),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "top_p": 0.5}, 400, "top_p"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": "x"}], "frequency_penalty": 1},
            400,
            "frequency_penalty",
        ),
        (ChatCompletionRequest, {"messages": [{"role": "tool", "content": "x"}]}, 422, "messages.role"),
        (CompletionRequest, {"prompt": "x", "logprobs": 9}, 422, "logprobs"),
    ],
)
def test_validation_errors_name_the_field(model, data, status, param):
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    error = _validation_error(info.value)
    assert (error.status, error.param) == (status, param), error.message


def test_neutral_openai_fields_are_accepted():
    req = ChatCompletionRequest.model_validate(
        {
            "messages": [{"role": "user", "content": "x"}],
            "user": "u1",
            "frequency_penalty": 0,
            "presence_penalty": 0,
        }
    )
    assert req.messages[0].content == "x"
    assert MedpromptRequest.model_validate(
        {"question": "q", "options": {"A": "a", "B": "b"}}
    ).option_texts() == (
        ["a", "b"],
        ["A", "B"],
    )


def test_request_ids_are_sanitized():
    assert request_id_of({"x-request-id": "abc-123:x.y"}) == "abc-123:x.y"
    for bad in ("a b", "x" * 65, "id\nInjected: 1", "<script>"):
        rid = request_id_of({"x-request-id": bad})
        assert rid != bad and len(rid) == 32


def _app(keys: KeyRing, *, max_bytes: int = 100):
    """A tiny ASGI app behind the served app's own BodyLimit and _Gate layers."""

    async def echo(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if body == b"boom":
            raise RuntimeError("secret internal detail")
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})

    return _Gate(BodyLimit(echo, max_bytes=max_bytes), keys=keys)


def test_gate_and_body_limit_over_asgi():
    from starlette.testclient import TestClient

    client = TestClient(_app(KeyRing(["k1"])), raise_server_exceptions=False)
    ok = {"Authorization": "Bearer k1"}
    assert client.post("/v1/x", content=b"hello", headers=ok).text == "hello"
    r = client.post("/v1/x", content=b"hello")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert json.loads(r.text)["error"]["code"] == "invalid_api_key"
    assert client.post("/healthz", content=b"open").status_code == 200  # only /v1 needs a key
    r = client.post("/v1/x", content=b"x" * 101, headers=ok)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():
        for _ in range(5):
            yield b"x" * 30

    r = client.post("/v1/x", content=chunks(), headers=ok)  # no Content-Length: counted as received
    assert r.status_code == 413
    r = client.post("/v1/x", content=b"boom", headers=ok)
    assert r.status_code == 500 and "secret" not in r.text and r.json()["error"]["code"] == "internal_error"
    assert r.headers["x-should-retry"] == "false" and r.headers["x-request-id"]
