"""Generation through any OpenAI-compatible completions server (vLLM, TGI, llama.cpp, Ray Serve LLM).

``generate`` posts all prompts of a call as one ``/v1/completions`` request (the server batches them);
``score`` posts ``context + continuation`` with ``echo=true, logprobs=1`` and sums the log-probabilities
of the echoed tokens whose character offset lies inside the continuation, which is how lm-eval scores
through such servers. The trade-off: a server that does not implement echo with logprobs (the hosted
OpenAI chat models) can generate but not score, and says so in the error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from clinray.engines.base import truncate_at_stop
from clinray.models.chat_template import STOP_STRINGS

__all__ = ["OpenAICompatibleEngine"]


class OpenAICompatibleEngine:
    """A GenerationEngine over HTTP (``httpx``), for a model served elsewhere."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str = "",
        api_key: str = "",
        timeout_s: float = 120.0,
        stop: Sequence[str] = STOP_STRINGS,
        transport=None,
    ) -> None:
        import httpx

        key = api_key or os.environ.get("OPENAI_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.model = model
        self.stop = tuple(stop)

    def _post(self, body: dict) -> dict:
        import httpx

        try:
            resp = self.client.post("/completions", json={"model": self.model, **body})
        except httpx.HTTPError as exc:
            raise ConnectionError(
                f"cannot reach the completions server at {self.client.base_url}: {exc}"
            ) from exc
        if resp.status_code != 200:
            raise RuntimeError(
                f"completions server at {self.client.base_url} answered {resp.status_code}: {resp.text[:300]}"
            )
        return resp.json()

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """One completion per prompt, from one request."""
        if not prompts:
            return []
        body = {
            "prompt": list(prompts),
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "stop": list(self.stop)[:4],
        }
        if seed is not None:
            body["seed"] = seed
        choices = sorted(self._post(body)["choices"], key=lambda c: c["index"])
        if len(choices) != len(prompts):
            raise RuntimeError(f"server returned {len(choices)} choices for {len(prompts)} prompts")
        return [truncate_at_stop(c["text"], self.stop) for c in choices]

    def score(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation, from echoed prompt logprobs."""
        return self.score_batch([(context, continuations)])[0]

    def score_batch(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """:meth:`score` for many contexts in one request."""
        pairs = [(ctx, ctx + cont) for ctx, conts in requests for cont in conts]
        if not pairs:
            return [[] for _ in requests]
        body = {
            "prompt": [t for _, t in pairs],
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 1,
        }
        choices = sorted(self._post(body)["choices"], key=lambda c: c["index"])
        if len(choices) != len(pairs):
            raise RuntimeError(f"server returned {len(choices)} choices for {len(pairs)} prompts")
        flat = []
        for (context, text), choice in zip(pairs, choices, strict=True):
            lp = choice.get("logprobs") or {}
            offsets, values = lp.get("text_offset"), lp.get("token_logprobs")
            if offsets is None or values is None:
                raise RuntimeError(
                    "the server did not echo prompt logprobs (echo=true, logprobs=1); it can generate but "
                    "not score: use answer_mode=generate or a server such as vLLM that supports echo"
                )
            flat.append(
                sum(v for off, v in zip(offsets, values) if v is not None and len(context) <= off < len(text))
            )
        out, at = [], 0
        for _, conts in requests:
            out.append([float(v) for v in flat[at : at + len(conts)]])
            at += len(conts)
        return out

    def close(self) -> None:
        self.client.close()
