"""The served app: ``clinray.serve.app:build_app`` composes the LLM, the retriever and a FastAPI ingress.

``serve run serve/medprompt.yaml`` (or ``clinray serve``) builds it from typed :class:`ServeArgs`.
Deployments:

- ``LLM`` (:class:`~clinray.serve.deployments.LLMServer`): the transformers engine behind a
  prompt-level ``@serve.batch``; ``max_ongoing_requests`` is sized from the batch (a running batch plus
  the next one filling), not Serve's default 5, which would cap every batch at 5 prompts. With
  ``engine.kind: vllm`` it is Ray Serve LLM's ``build_llm_deployment`` behind
  :class:`~clinray.serve.deployments.VLLMBridge` (imported only then: ``import ray.serve.llm`` fails
  where vLLM is not installed; not run here, no GPU).
- ``Retriever`` (:class:`~clinray.serve.deployments.Retriever`): embedder + exact in-memory search over
  the Milvus Lite collection, or Milvus queries for a server URI.
- ``Ingress``: auth, limits, deadlines, request ids, the Medprompt orchestration and the OpenAI routes
  (``/v1/medprompt``, ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/healthz``).

Every deployment gets fractional CPUs and its autoscaling settings from the args, so the whole app runs
on 2 cores. The trade-off of a custom ingress over Ray Serve LLM's ``OpenAiIngress``: more code here,
but auth, OpenAI-shaped errors everywhere, no wildcard CORS and the Medprompt route, none of which
``OpenAiIngress`` has in Ray 2.60.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
import uuid
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray import serve

from clinray.serve.deployments import GenItem, LLMServer, Retriever, VLLMBridge
from clinray.serve.schemas import ChatCompletionRequest, CompletionRequest, Limits, MedpromptRequest
from clinray.serve.security import APIError, BodyLimit, KeyRing, error_body, is_loopback, request_id_of

__all__ = [
    "ServeArgs",
    "EngineArgs",
    "StoreArgs",
    "EmbedArgs",
    "MedpromptDefaults",
    "BatchArgs",
    "AuthArgs",
    "TimeoutArgs",
    "DeploymentArgs",
    "AutoscalingArgs",
    "build_app",
]

log = logging.getLogger("clinray.serve")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EngineArgs(_Args):
    kind: Literal["transformers", "vllm"] = "transformers"
    """transformers (CPU or GPU, in the LLM replica) or vllm (GPU, Ray Serve LLM)."""
    model: str
    """Model folder (an HF folder: the tiny model, a pretraining or SFT export)."""
    name: str = ""
    """Model id clients send and see in /v1/models (default: the folder's name)."""
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class StoreArgs(_Args):
    uri: str
    """The Milvus Lite ``*.db`` file (loaded into memory at replica start) or ``http://host:19530``."""
    collection: str = "medprompt_examples"
    token: str = ""


class EmbedArgs(_Args):
    model: str = "all-MiniLM-L6-v2"
    """The embedder the index was built with (packaged MiniLM: no download)."""
    device: str = "cpu"


class MedpromptDefaults(_Args):
    """What a /v1/medprompt request gets for the fields it leaves out."""

    strategy: Literal["zero_shot_cot", "static_fewshot_cot", "knn_fewshot_cot", "cot_ensemble"] = (
        "cot_ensemble"
    )
    k: int = Field(default=5, ge=1, le=20)
    n_ensemble: int = Field(default=5, ge=1, le=11)
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_new_tokens: int = Field(default=64, ge=1)
    seed: int = 0
    shuffle_examples: bool = False
    """False: one exemplar order for every run, only the options shuffled (a shared prefix, computed
    once); True: the paper's preset, exemplars permuted too. Measured in benchmarks/serve_load.py."""
    answer_mode: Literal["generate", "score"] = "generate"


class BatchArgs(_Args):
    enabled: bool = True
    """Cross-request batching (off: every request's prompts are their own generate call)."""
    max_batch_size: int = Field(default=16, ge=1)
    """Most prompts in one generate call."""
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=1.0)
    share_prefix: bool = True
    """Compute a prefix shared by a batch's prompts once (transformers engine)."""


class AuthArgs(_Args):
    api_keys_env: str = "CLINRAY_API_KEYS"
    """Environment variable with comma-separated keys (read by build_app, hashed there)."""
    api_keys_file: str = ""
    """File with one key per line (``#`` comments)."""
    disabled: bool = False
    """No auth: only by this explicit setting, and refused unless ``host`` is loopback."""


class TimeoutArgs(_Args):
    request_s: float = Field(default=60.0, gt=0)
    """Ingress deadline of a request (clients cannot lift it; Serve's proxy timeout they can)."""
    retrieval_s: float = Field(default=2.0, gt=0)
    """Retrieval sub-deadline: past it, static few-shot answers (HTTP 200 with a warning)."""


class AutoscalingArgs(_Args):
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)


class DeploymentArgs(_Args):
    num_cpus: float = Field(default=0.5, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    autoscaling: AutoscalingArgs = Field(default_factory=AutoscalingArgs)
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    """Default: from the batch settings (LLM) or the in-flight limit (ingress)."""


class ServeArgs(_Args):
    """Typed arguments of :func:`build_app` (``args:`` of an application in serve/medprompt.yaml)."""

    engine: EngineArgs
    store: StoreArgs
    embed: EmbedArgs = Field(default_factory=EmbedArgs)
    medprompt: MedpromptDefaults = Field(default_factory=MedpromptDefaults)
    batch: BatchArgs = Field(default_factory=BatchArgs)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    limits: Limits = Field(default_factory=Limits)
    timeouts: TimeoutArgs = Field(default_factory=TimeoutArgs)
    host: str = "127.0.0.1"
    """The HTTP host Serve binds (auth may be off only when it is loopback)."""
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed by CORS (none by default; ``*`` is refused)."""
    log_questions: bool = False
    """Log question text (off by default: clinical content)."""
    static_pool_size: int = Field(default=256, ge=0)
    """Examples kept by the ingress for the static few-shot fallback."""
    llm: DeploymentArgs = Field(default_factory=lambda: DeploymentArgs(num_cpus=1.0))
    retriever: DeploymentArgs = Field(default_factory=lambda: DeploymentArgs(num_cpus=0.25))
    ingress: DeploymentArgs = Field(default_factory=lambda: DeploymentArgs(num_cpus=0.25))

    @model_validator(mode="after")
    def _check(self) -> ServeArgs:
        if "*" in self.cors_origins:
            raise ValueError("cors_origins must list origins; '*' (any origin) is refused")
        if self.auth.disabled and not is_loopback(self.host):
            raise ValueError(f"auth.disabled=true is refused on non-loopback host {self.host!r}")
        return self

    def model_id(self) -> str:
        from pathlib import Path

        return self.engine.name or Path(self.engine.model.rstrip("/")).name or "clinray"


def _serve_options(d: DeploymentArgs, *, default_ongoing: int) -> dict[str, Any]:
    a = d.autoscaling
    return {
        "ray_actor_options": {"num_cpus": d.num_cpus, **({"num_gpus": d.num_gpus} if d.num_gpus else {})},
        "max_ongoing_requests": d.max_ongoing_requests or default_ongoing,
        "autoscaling_config": {
            "min_replicas": a.min_replicas,
            "max_replicas": max(a.max_replicas, a.min_replicas),
            "initial_replicas": max(a.min_replicas, 1),
            "target_ongoing_requests": a.target_ongoing_requests,
        },
    }


_LETTERS = "ABCDEFGHIJ"


def _row_seed(seed: int, run: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{run}".encode()).digest()[:8], "big") % (2**63)


def _validation_error(exc: ValidationError) -> APIError:
    """The first problem of a pydantic error as an APIError: 400 for unsupported fields, 422 else."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid request"))
    if err.get("type") == "extra_forbidden":
        return APIError(400, f"unsupported field {param!r}", code="unsupported_parameter", param=param)
    if "unsupported:" in msg:
        name = msg.split("unsupported:", 1)[1].split()[0].strip(" ()")
        return APIError(400, f"unsupported field {name!r}", code="unsupported_parameter", param=name)
    if err.get("type") == "missing":
        return APIError(
            422, f"missing required field {param!r}", code="missing_required_parameter", param=param
        )
    return APIError(422, f"{param or 'body'}: {msg}", code="invalid_value", param=param)


class _Gate:
    """ASGI middleware: request id, API key on /v1, access log, and a JSON 500 for anything unexpected."""

    def __init__(self, app, *, keys: KeyRing) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        headers = Headers(scope=scope)
        rid = request_id_of(headers)
        scope.setdefault("state", {})["request_id"] = rid
        path = scope.get("path", "")
        start = time.perf_counter()
        status = {"code": 0}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            guarded_path = path.startswith("/v1") and scope.get("method") != "OPTIONS"
            if guarded_path and not self.keys.check(headers.get("authorization")):
                await _send_json(
                    send_with_id,
                    401,
                    error_body(
                        401,
                        "missing or invalid API key (Authorization: Bearer <key>)",
                        code="invalid_api_key",
                    ),
                    extra=[(b"www-authenticate", b'Bearer realm="clinray"')],
                )
                return
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # never a traceback to the client
            log.error("request_id=%s path=%s internal error: %s", rid, path, type(exc).__name__)
            if not status["code"]:
                await _send_json(
                    send_with_id,
                    500,
                    error_body(500, f"internal error (request id {rid})", code="internal_error"),
                    extra=[(b"x-should-retry", b"false")],
                )
        finally:
            log.info(
                "request_id=%s method=%s path=%s status=%s ms=%.1f",
                rid,
                scope.get("method"),
                path,
                status["code"],
                (time.perf_counter() - start) * 1e3,
            )


async def _send_json(send, status: int, body: dict, *, extra: list | None = None) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + list(extra or [])})
    await send({"type": "http.response.body", "body": data})


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Auth, limits, Medprompt orchestration and the OpenAI routes over the LLM and retriever handles."""

    async def __init__(
        self, llm, retriever, settings: dict[str, Any], key_digests: list[bytes], disabled: bool
    ):
        from transformers import AutoTokenizer

        self.llm, self.retriever = llm, retriever
        self.args = ServeArgs.model_validate(settings)
        self.keys = KeyRing.from_digests(key_digests, disabled=disabled)
        self.tokenizer = AutoTokenizer.from_pretrained(self.args.engine.model)
        self.model_id = self.args.model_id()
        self.created = int(time.time())
        self.inflight = 0
        info = await self.llm.info.remote()
        self.max_length = int(info["max_length"])
        self.pool: list = []
        if self.args.static_pool_size:
            from clinray.prompting.templates import Example

            try:
                rows = await asyncio.wait_for(
                    self.retriever.pool.remote(self.args.static_pool_size), self.args.timeouts.request_s
                )
                self.pool = [Example(**{**r, "options": tuple(r["options"])}) for r in rows]
            except Exception as exc:  # the fallback then answers zero-shot
                log.warning("static few-shot pool unavailable: %s", type(exc).__name__)

    def __serve_build_asgi_app__(self):
        return _build_fastapi(self)

    # ----- helpers -------------------------------------------------------------------------------
    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), verbose=False)["input_ids"]]

    def check_model(self, model: str | None) -> None:
        if model and model != self.model_id:
            raise APIError(
                404, f"model {model!r} is not served; GET /v1/models", code="model_not_found", param="model"
            )

    def check_new_tokens(self, n: int, param: str) -> None:
        if n > self.args.limits.max_new_tokens:
            raise APIError(
                422,
                f"{param} must be at most {self.args.limits.max_new_tokens}",
                code="invalid_value",
                param=param,
            )

    def check_text(self, chars: int, param: str) -> None:
        if chars > self.args.limits.max_question_chars:
            raise APIError(
                413,
                f"{param} is longer than {self.args.limits.max_question_chars} characters",
                code="request_too_large",
                param=param,
            )

    async def generate(self, item: GenItem) -> list[str]:
        return await self.llm.generate.remote(item)

    # ----- Medprompt -----------------------------------------------------------------------------
    async def medprompt(self, req: MedpromptRequest, rid: str) -> dict[str, Any]:
        from clinray.prompting.ensemble import plurality_vote
        from clinray.prompting.fit import Window
        from clinray.prompting.medprompt import MedpromptConfig, _plan, apply_scores, parse_runs
        from clinray.prompting.parsing import reasoning_of
        from clinray.prompting.templates import Example

        t_start = time.perf_counter()
        texts, keys = req.option_texts()
        self.check_text(len(req.question), "question")
        for i, text in enumerate(texts):
            if len(text) > self.args.limits.max_option_chars:
                raise APIError(422, f"option {i} is too long", code="invalid_value", param="options")
        d = self.args.medprompt
        strategy = req.strategy or d.strategy
        k = req.k or d.k
        n = req.n_ensemble or d.n_ensemble
        temperature = d.temperature if req.temperature is None else req.temperature
        max_new = req.max_new_tokens or d.max_new_tokens
        self.check_new_tokens(max_new, "max_new_tokens")
        seed = d.seed if req.seed is None else req.seed
        warnings: list[str] = []
        latency = {"embed": 0.0, "search": 0.0, "generate": 0.0, "score": 0.0}
        examples_kind = "knn"
        needs_knn = strategy in ("knn_fewshot_cot", "cot_ensemble")
        hits: list[tuple[Example, float]] = []
        if needs_knn:
            try:
                found = await asyncio.wait_for(
                    self.retriever.search.remote(req.question, texts, k + 1), self.args.timeouts.retrieval_s
                )
                hits = [(Example(**{**ex, "options": tuple(ex["options"])}), s) for ex, s in found["hits"]]
                latency["embed"], latency["search"] = found["embed_ms"], found["search_ms"]
            except Exception as exc:  # graceful degradation: static few-shot, said in warnings
                log.warning("request_id=%s retrieval failed (%s): static few-shot", rid, type(exc).__name__)
                examples_kind = "static"
                if strategy == "knn_fewshot_cot":
                    strategy = "static_fewshot_cot"
                warnings.append("retrieval_unavailable: fell back to static_fewshot_cot")
        if (strategy == "static_fewshot_cot" or examples_kind == "static") and len(self.pool) < k + 1:
            warnings.append("static_pool_unavailable: fell back to zero_shot_cot")
            strategy = "zero_shot_cot" if strategy != "cot_ensemble" else strategy
            examples_kind = "none"
        cfg = MedpromptConfig(
            strategy=strategy,
            num_shots=k,
            num_runs=n,
            ensemble_temperature=temperature,
            temperature=temperature if strategy != "cot_ensemble" else 0.0,
            ensemble_examples=examples_kind,
            max_new_tokens=max_new,
            answer_mode=d.answer_mode,
            seed=seed,
            shuffle_examples=d.shuffle_examples if req.shuffle_examples is None else req.shuffle_examples,
        )

        class _Found:
            def search(self, question, options, *, k, exclude_ids=()):
                return [(ex, s) for ex, s in hits if ex.id not in set(exclude_ids)][:k]

        window = Window(self.max_length - max_new, self.count)
        item = {"question": req.question, "options": texts, "id": None}
        try:
            plan = _plan(item, cfg, _Found(), self.pool, window)
        except ValueError as exc:
            raise APIError(422, str(exc), code="invalid_value") from None
        run_temperature = cfg.ensemble_temperature if strategy == "cot_ensemble" else cfg.temperature
        seeds = [_row_seed(seed, r) for r in range(len(plan.prompts))] if run_temperature > 0 else None
        t0 = time.perf_counter()
        completions = await self.generate(
            GenItem(prompts=plan.prompts, max_new_tokens=max_new, temperature=run_temperature, seeds=seeds)
        )
        latency["generate"] = (time.perf_counter() - t0) * 1e3
        (runs,), pending, requests = parse_runs([plan], completions, cfg)
        if requests:
            t0 = time.perf_counter()
            apply_scores(pending, await self.llm.score_batch.remote(requests))
            latency["score"] = (time.perf_counter() - t0) * 1e3
        winner, votes, share = plurality_vote([run.mapped_back for run in runs])
        labels = keys or list(_LETTERS[: len(texts)])
        scores = {ex.id: s for ex, s in hits}
        shown = plan.example_ids[0] if plan.example_ids else []
        exemplars = [
            {"id": i, "score": scores.get(i), "source": "knn" if i in scores else "static"} for i in shown
        ]
        latency["total"] = (time.perf_counter() - t_start) * 1e3
        return {
            "answer": labels[winner],
            "answer_text": texts[winner],
            "confidence": share,
            "votes": {labels[i]: c for i, c in votes.items()},
            "runs": [
                {
                    "option_order": [labels[i] for i in run.permutation],
                    "reasoning": reasoning_of(run.completion),
                    "answer": labels[run.mapped_back],
                    "method": run.method,
                }
                for run in runs
            ],
            "exemplars": exemplars,
            "strategy": strategy,
            "model": self.model_id,
            "seed": seed,
            "latency_ms": {key: round(v, 2) for key, v in latency.items()},
            "warnings": warnings,
            "request_id": rid,
        }

    # ----- OpenAI routes ---------------------------------------------------------------------------
    def _sampling(self, req, count: int) -> tuple[float, list[int] | None, int | None]:
        temperature = float(req.temperature)
        if temperature <= 0:
            return 0.0, None, req.seed
        seed = req.seed if req.seed is not None else random.SystemRandom().randrange(2**31)
        return temperature, [_row_seed(seed, i) for i in range(count)], seed

    async def chat(self, req: ChatCompletionRequest) -> tuple[dict, list[str], int, int]:
        from clinray.models.chat_template import render_messages

        self.check_model(req.model)
        self.check_text(sum(len(m.content) for m in req.messages), "messages")
        max_new = req.max_completion_tokens or req.max_tokens or min(256, self.args.limits.max_new_tokens)
        self.check_new_tokens(max_new, "max_completion_tokens" if req.max_completion_tokens else "max_tokens")
        prompt = render_messages(
            [{"role": m.role, "content": m.content} for m in req.messages],
            eos_token=self.tokenizer.eos_token or "</s>",
            add_generation_prompt=True,
        )
        temperature, seeds, _ = self._sampling(req, req.n)
        texts = await self.generate(
            GenItem(
                prompts=[prompt] * req.n,
                max_new_tokens=max_new,
                temperature=temperature,
                seeds=seeds,
                stops=req.stops(),
            )
        )
        texts = [t.strip() for t in texts]
        prompt_tokens = self.count([prompt])[0]
        completion_tokens = sum(self.count(texts)) if texts else 0
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "logprobs": None,
                    "finish_reason": "stop" if self.count([t])[0] < max_new else "length",
                }
                for i, t in enumerate(texts)
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
        }
        return body, texts, prompt_tokens, completion_tokens

    async def completions(self, req: CompletionRequest) -> dict:
        self.check_model(req.model)
        prompts = req.prompts()
        self.check_text(sum(len(p) for p in prompts), "prompt")
        self.check_new_tokens(req.max_tokens, "max_tokens")
        if req.stream and req.logprobs is not None:
            raise APIError(
                400, "logprobs with stream is not supported", code="unsupported_parameter", param="logprobs"
            )
        rows = [p for p in prompts for _ in range(req.n)]
        temperature, seeds, _ = self._sampling(req, len(rows))
        texts = [""] * len(rows)
        if req.max_tokens > 0:
            texts = await self.generate(
                GenItem(
                    prompts=rows,
                    max_new_tokens=req.max_tokens,
                    temperature=temperature,
                    seeds=seeds,
                    stops=req.stops(),
                )
            )
        choices = []
        for i, (prompt, text) in enumerate(zip(rows, texts, strict=True)):
            shown = prompt + text if req.echo else text
            logprobs = None
            if req.logprobs is not None:
                full = await self.llm.echo_logprobs.remote(prompt + text, req.logprobs)
                if not req.echo:  # only the generated tokens
                    keep = [j for j, off in enumerate(full["text_offset"]) if off >= len(prompt)]
                    full = {key: [full[key][j] for j in keep] for key in full}
                    full["text_offset"] = [off - len(prompt) for off in full["text_offset"]]
                logprobs = full
            choices.append(
                {
                    "index": i,
                    "text": shown,
                    "logprobs": logprobs,
                    "finish_reason": "length"
                    if req.max_tokens == 0 or self.count([text])[0] >= req.max_tokens
                    else "stop",
                }
            )
        prompt_tokens = sum(self.count(prompts))
        completion_tokens = sum(self.count([t for t in texts if t])) if any(texts) else 0
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_id,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _event_stream(body: dict, *, object_type: str, choices, usage: dict | None):
    """An OpenAI server-sent-event stream: one chunk per choice delta, the usage chunk when asked, ``[DONE]``."""
    from fastapi.responses import StreamingResponse

    base = {"id": body["id"], "object": object_type, "created": body["created"], "model": body["model"]}

    def events():
        for choice in choices:
            yield _sse({**base, "choices": [choice]})
        if usage is not None:
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def _pieces(text: str) -> list[str]:
    """Stream chunks: words with their leading space (the engine returns whole completions)."""
    if not text:
        return []
    out, current = [], ""
    for ch in text:
        if ch.isspace() and current.strip():
            out.append(current)
            current = ""
        current += ch
    out.append(current)
    return out


def _build_fastapi(ing: Ingress):
    """The FastAPI app of one ingress replica (routes close over the replica's handles and settings)."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from clinray.serve.security import error_response

    app = FastAPI(title="clinray", docs_url=None, redoc_url=None, openapi_url=None)
    args = ing.args

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(422, "invalid request", code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), code=str(exc.status_code))

    async def parse(request: Request, model: type[BaseModel]):
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype not in ("application/json", ""):
            raise APIError(415, "the body must be application/json", code="unsupported_media_type")
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from None

    async def guarded(coro_fn):
        """Capacity (429 with Retry-After) and the ingress deadline (504) around model work."""
        if ing.inflight >= args.limits.max_inflight:
            raise APIError(
                429,
                "the server is at capacity; retry later",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(args.limits.retry_after_s)},
            )
        ing.inflight += 1
        try:
            async with asyncio.timeout(args.timeouts.request_s):
                return await coro_fn()
        except TimeoutError:
            raise APIError(
                504,
                f"the request took longer than {args.timeouts.request_s:g} s",
                code="timeout",
                headers={"x-should-retry": "false"},
            ) from None
        finally:
            ing.inflight -= 1

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "model": ing.model_id}

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": ing.model_id, "object": "model", "created": ing.created, "owned_by": "clinray"}],
        }

    @app.post("/v1/medprompt")
    async def medprompt(request: Request):
        req = await parse(request, MedpromptRequest)
        rid = request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
        if args.log_questions:
            log.info("request_id=%s question=%r", rid, req.question)
        ing.check_model(req.model)
        return await guarded(lambda: ing.medprompt(req, rid))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await parse(request, ChatCompletionRequest)
        body, texts, prompt_tokens, completion_tokens = await guarded(lambda: ing.chat(req))
        if not req.stream:
            return JSONResponse(body)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunks():
            for i, text in enumerate(texts):
                yield {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                for piece in _pieces(text):
                    yield {"index": i, "delta": {"content": piece}, "finish_reason": None}
                yield {"index": i, "delta": {}, "finish_reason": body["choices"][i]["finish_reason"]}

        usage = _usage(prompt_tokens, completion_tokens) if include_usage else None
        return _event_stream(body, object_type="chat.completion.chunk", choices=chunks(), usage=usage)

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        body = await guarded(lambda: ing.completions(req))
        if not req.stream:
            return JSONResponse(body)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunks():
            for choice in body["choices"]:
                index = choice["index"]
                for piece in _pieces(choice["text"]):
                    yield {"index": index, "text": piece, "logprobs": None, "finish_reason": None}
                yield {"index": index, "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]}

        usage = body["usage"] if include_usage else None
        return _event_stream(body, object_type="text_completion", choices=chunks(), usage=usage)

    if args.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(args.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "x-request-id"],
        )
    app.add_middleware(BodyLimit, max_bytes=args.limits.max_body_bytes)
    app.add_middleware(_Gate, keys=ing.keys)
    return app


def _vllm_llm(args: ServeArgs):
    """Ray Serve LLM's vLLM deployment (GPU); imported here only, since ``ray.serve.llm`` needs vLLM."""
    try:
        from ray.serve.llm import LLMConfig, build_llm_deployment
    except ImportError as exc:
        from clinray.engines.base import EngineUnavailableError

        raise EngineUnavailableError(
            f"engine.kind=vllm needs vLLM on a GPU node ({exc}); use engine.kind=transformers"
        ) from None
    a = args.llm.autoscaling
    config = LLMConfig(
        model_loading_config={"model_id": args.model_id(), "model_source": args.engine.model},
        engine_kwargs={"enable_prefix_caching": True, "dtype": args.engine.dtype},
        deployment_config={
            "autoscaling_config": {
                "min_replicas": a.min_replicas,
                "max_replicas": max(a.min_replicas, a.max_replicas),
                "target_ongoing_requests": a.target_ongoing_requests,
            }
        },
    )
    return build_llm_deployment(config)


def _transformers_llm(args: ServeArgs):
    """The ``LLM`` deployment with the transformers engine; ``max_ongoing_requests`` from the batch."""
    b = args.batch
    llm_opts = _serve_options(args.llm, default_ongoing=2 * b.max_batch_size + 8)
    return LLMServer.options(**llm_opts, user_config={"batching": b.enabled}).bind(
        engine=args.engine.model_dump(),
        max_batch_size=b.max_batch_size,
        batch_wait_timeout_s=b.batch_wait_timeout_s,
        share_prefix=b.share_prefix,
        num_threads=max(1, int(round(args.llm.num_cpus))),
        model_name=args.model_id(),
    )


def build_app(args: ServeArgs | dict[str, Any]):
    """The Serve application: ``Ingress`` over ``LLM`` and ``Retriever`` handles.

    API keys are read and hashed here (the replicas get only the SHA-256 digests). A misconfiguration
    (no key and auth not disabled, auth disabled on a non-loopback host, ``cors_origins: ['*']``) is a
    ``ValueError`` before anything starts.
    """
    if not isinstance(args, ServeArgs):
        args = ServeArgs.model_validate(args)
    keys = KeyRing.load(
        api_keys_env=args.auth.api_keys_env,
        api_keys_file=args.auth.api_keys_file,
        disabled=args.auth.disabled,
        host=args.host,
    )
    if args.engine.kind == "vllm":  # raises EngineUnavailableError where vLLM is not installed
        llm = VLLMBridge.options(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=1_000).bind(
            _vllm_llm(args), model_id=args.model_id(), model_path=args.engine.model
        )
    else:
        llm = _transformers_llm(args)
    retriever_opts = _serve_options(args.retriever, default_ongoing=16)
    if not args.store.uri.startswith(("http://", "https://", "tcp://")):
        # a Lite file: one process may open it at a time, and each replica holds the whole index
        retriever_opts["autoscaling_config"].update(min_replicas=1, max_replicas=1, initial_replicas=1)
    retriever = Retriever.options(**retriever_opts).bind(
        store=args.store.model_dump(), embed=args.embed.model_dump(), num_threads=1
    )
    ingress_opts = _serve_options(args.ingress, default_ongoing=args.limits.max_inflight + 16)
    return Ingress.options(**ingress_opts).bind(
        llm, retriever, args.model_dump(exclude={"batch"}), keys.digests(), keys.disabled
    )
