"""``clinray serve``: start the Medprompt app on Ray Serve, optionally send it one real request, stop.

The job's config (:class:`ServeConfig`, recipe ``tiny/serve``) is a flat, strictly loaded dataclass
that :meth:`ServeConfig.to_args` turns into the app's typed :class:`~clinray.serve.app.ServeArgs`; the
long-running form is ``serve run serve/medprompt.yaml`` (or ``keep_running=true`` here). The entry
(:func:`run_serve`) binds ``host`` (loopback by default), waits until the app is RUNNING, sends one
Medprompt request over HTTP when ``send_request`` is on, writes the response next to its
``config.yaml``, and deletes only the application it started (never another app on a shared cluster).

API keys: from ``$api_keys_env`` / ``api_keys_file``; ``ephemeral_key=true`` (the tiny recipe) makes a
random key for this run only, held in memory and never written, so a self-test needs no secret set up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from clinray.results import StageResult, missing_file, missing_model

__all__ = ["ServeConfig", "ServeResult", "run_serve"]

APP_NAME = "clinray"


@dataclasses.dataclass(kw_only=True, slots=True)
class ServeConfig:
    """``clinray serve``: which model and index to serve, where, and the one test request."""

    model: str = "runs/tiny_model"
    """HF folder of the served model (the tiny model, a pretraining or SFT export)."""
    model_name: str = ""
    """Model id of the routes (default: the folder's name)."""
    store_uri: str = "runs/index/medprompt.db"
    """The Medprompt example store: a Milvus Lite file (searched in memory) or http://host:19530."""
    collection: str = "medprompt_examples"
    embed_model: str = "all-MiniLM-L6-v2"
    """The embedder the index was built with."""
    host: str = "127.0.0.1"
    """HTTP host; auth may be off only on a loopback host."""
    port: int = 8000
    """HTTP port (0: a free port picked at start)."""
    auth_disabled: bool = False
    api_keys_env: str = "CLINRAY_API_KEYS"
    api_keys_file: str = ""
    ephemeral_key: bool = False
    """Make a random key for this run only (used by the self-request; never written)."""
    strategy: str = "cot_ensemble"
    k: int = 5
    n_ensemble: int = 5
    temperature: float = 0.2
    max_new_tokens: int = 64
    shuffle_examples: bool = False
    """False: one exemplar order, options shuffled (shared prefix); True: the paper's preset."""
    max_batch_size: int = 16
    batching: bool = True
    share_prefix: bool = True
    llm_num_cpus: float = 1.0
    retriever_num_cpus: float = 0.25
    ingress_num_cpus: float = 0.25
    request_timeout_s: float = 60.0
    retrieval_timeout_s: float = 2.0
    send_request: bool = True
    """Send one Medprompt request over HTTP once the app is up, and keep its response."""
    questions_file: str = ""
    """Question file (MedQA JSONL...) whose first question is sent; empty: ``question``/``options``."""
    question: str = (
        "A 60-year-old man has crushing chest pain radiating to the left arm. What is given first?"
    )
    options: list[str] = dataclasses.field(
        default_factory=lambda: ["Aspirin", "Insulin", "Levothyroxine", "Amoxicillin"]
    )
    seed: int = 0
    keep_running: bool = False
    """Serve until interrupted (Ctrl-C) instead of stopping after the request."""
    out_dir: str = "runs/serve"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65_535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.n_ensemble < 1 or self.n_ensemble > 11:
            raise ValueError(f"n_ensemble must be 1..11, got {self.n_ensemble}")
        if self.k < 1 or self.k > 20:
            raise ValueError(f"k must be 1..20, got {self.k}")
        if len(self.options) < 2:
            raise ValueError("options must hold at least 2 options")

    def check_inputs(self) -> list[str]:
        """The model folder, the index file, the question file and the auth setting, all at once."""
        from clinray.serve.security import is_loopback

        problems = missing_model(self.model, "model")
        remote = self.store_uri.startswith(("http://", "https://", "tcp://"))
        if not remote and not Path(self.store_uri).exists():  # a Lite "file" is a folder in Milvus Lite 3
            problems.append(f"store_uri {self.store_uri!r} does not exist (build it with `clinray index`)")
        if self.questions_file:
            problems += missing_file(self.questions_file, "questions_file")
        if self.auth_disabled and not is_loopback(self.host):
            problems.append(f"auth_disabled=true is refused on non-loopback host {self.host!r}")
        if not (
            self.auth_disabled
            or self.ephemeral_key
            or self.api_keys_file
            or os.environ.get(self.api_keys_env)
        ):
            problems.append(
                f"no API key: set ${self.api_keys_env}, api_keys_file or ephemeral_key=true "
                "(or auth_disabled=true on a loopback host)"
            )
        return problems

    def to_args(self) -> Any:
        """The app's typed arguments."""
        from clinray.serve.app import ServeArgs

        return ServeArgs.model_validate(
            {
                "engine": {"model": self.model, "name": self.model_name},
                "store": {"uri": self.store_uri, "collection": self.collection},
                "embed": {"model": self.embed_model},
                "medprompt": {
                    "strategy": self.strategy,
                    "k": self.k,
                    "n_ensemble": self.n_ensemble,
                    "temperature": self.temperature,
                    "max_new_tokens": self.max_new_tokens,
                    "seed": self.seed,
                    "shuffle_examples": self.shuffle_examples,
                },
                "batch": {
                    "enabled": self.batching,
                    "max_batch_size": self.max_batch_size,
                    "share_prefix": self.share_prefix,
                },
                "auth": {
                    "api_keys_env": self.api_keys_env,
                    "api_keys_file": self.api_keys_file,
                    "disabled": self.auth_disabled,
                },
                "timeouts": {"request_s": self.request_timeout_s, "retrieval_s": self.retrieval_timeout_s},
                "host": self.host,
                "llm": {"num_cpus": self.llm_num_cpus},
                "retriever": {"num_cpus": self.retriever_num_cpus},
                "ingress": {"num_cpus": self.ingress_num_cpus},
            }
        )


@dataclasses.dataclass(kw_only=True)
class ServeResult(StageResult):
    """What one ``clinray serve`` run did."""

    out_dir: Path
    url: str
    startup_s: float
    response_path: Path | None = None
    response: dict[str, Any] | None = None
    request_s: float | None = None

    def outputs(self) -> dict[str, str]:
        return {"serve_response": str(self.response_path)} if self.response_path else {}

    def summary(self) -> str:
        lines = [f"served {self.url} (up in {self.startup_s:.1f} s)"]
        if self.response:
            r = self.response
            votes = ", ".join(f"{k}: {v}" for k, v in r["votes"].items())
            lines.append(
                f"answer {r['answer']} ({r['answer_text']}), confidence {r['confidence']:.2f}, votes {votes}; "
                f"{len(r['exemplars'])} exemplars; {self.request_s:.2f} s"
            )
            lines += [f"warning: {w}" for w in r["warnings"]]
        return "\n".join([*lines, super().summary()])


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _question(cfg: ServeConfig) -> dict[str, Any]:
    if cfg.questions_file:
        from clinray.qa import read_questions

        first = read_questions(cfg.questions_file).questions[0]
        return {"question": first.stem, "options": list(first.options)}
    return {"question": cfg.question, "options": list(cfg.options)}


def run_serve(cfg: ServeConfig) -> ServeResult:
    """Start the app (inside the caller's Ray session), send the request, stop; see the module doc."""
    import httpx
    from ray import serve

    from clinray.config import dump
    from clinray.serve.app import build_app

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = dump(cfg, out / "config.yaml")
    key = secrets.token_urlsafe(24) if cfg.ephemeral_key else ""
    args = cfg.to_args()
    saved = os.environ.get(cfg.api_keys_env)
    if key:
        os.environ[cfg.api_keys_env] = ",".join(k for k in (saved, key) if k)
    try:
        app = build_app(args)  # keys are read and hashed here
    finally:
        if key:
            if saved is None:
                os.environ.pop(cfg.api_keys_env, None)
            else:
                os.environ[cfg.api_keys_env] = saved
    port = cfg.port or _free_port(cfg.host)
    started = time.perf_counter()
    serve.start(http_options={"host": cfg.host, "port": port})
    url = f"http://{cfg.host}:{port}"
    result = ServeResult(config_path=config_path, out_dir=out, url=url, startup_s=0.0)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
        result.startup_s = time.perf_counter() - started
        if cfg.send_request:
            if not key:
                key = (os.environ.get(cfg.api_keys_env, "").split(",") or [""])[0].strip()
                if not key and cfg.api_keys_file:
                    lines = Path(cfg.api_keys_file).read_text(encoding="utf-8").splitlines()
                    key = next((x.strip() for x in lines if x.strip() and not x.startswith("#")), "")
            body = {**_question(cfg), "seed": cfg.seed}
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            t0 = time.perf_counter()
            response = httpx.post(
                f"{url}/v1/medprompt", json=body, headers=headers, timeout=cfg.request_timeout_s + 10
            )
            result.request_s = time.perf_counter() - t0
            payload = response.json()
            result.response_path = out / "response.json"
            result.response_path.write_text(
                json.dumps({"request": body, "status": response.status_code, "response": payload}, indent=2)
            )
            if response.status_code != 200:
                result.problems.append(
                    f"/v1/medprompt answered {response.status_code}: {payload.get('error', {}).get('message')}"
                )
            else:
                result.response = payload
        if cfg.keep_running:
            print(f"serving on {url} (Ctrl-C to stop)", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        serve.delete(APP_NAME)
        if not serve.status().applications:
            serve.shutdown()
    return result
