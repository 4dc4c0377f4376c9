"""Request bodies of the served routes, as strict pydantic models, and the server's limits.

Every body model forbids fields it does not know (``extra="forbid"``): a client that sends ``tools`` or
``response_format`` learns at once, by a 400 naming the field, that the server does not honour it,
instead of getting an answer that silently ignored it. The few OpenAI fields that are harmless to ignore
at their neutral value (``user``, ``frequency_penalty: 0``...) are accepted and checked to be neutral.
Ranges are checked here, before any model work (422 with the offending ``param``); the question and
option sizes come from :class:`Limits`, which the ingress also uses for the body size (413).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Limits",
    "MedpromptRequest",
    "ChatMessage",
    "StreamOptions",
    "ChatCompletionRequest",
    "CompletionRequest",
    "NEUTRAL_FIELDS",
]

#: OpenAI fields accepted only at their neutral value (anything else is unsupported: 400 naming it).
NEUTRAL_FIELDS: dict[str, Any] = {
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logit_bias": None,
    "user": "*",
    "suffix": None,
    "best_of": 1,
    "parallel_tool_calls": None,
    "tool_choice": "none",
}


class Limits(BaseModel):
    """Request limits, all checked before any model work."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(default=64_000, ge=1_024)
    """Largest request body (413 above it)."""
    max_question_chars: int = Field(default=8_000, ge=16)
    """Longest question, and longest chat or completion prompt text (413 above it)."""
    max_option_chars: int = Field(default=1_000, ge=1)
    """Longest option text (422 above it)."""
    max_new_tokens: int = Field(default=512, ge=1)
    """Most tokens a request may ask to generate (422 above it)."""
    max_inflight: int = Field(default=32, ge=1)
    """Requests an ingress replica works on at once; more get 429 with ``Retry-After``."""
    retry_after_s: int = Field(default=2, ge=1)
    """``Retry-After`` of a 429."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    @model_validator(mode="before")
    @classmethod
    def _neutral(cls, data: Any) -> Any:
        """Accept the neutral-valued OpenAI fields and drop them; any other value is unsupported."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, neutral in NEUTRAL_FIELDS.items():
            if name in out and name not in cls.model_fields:
                value = out.pop(name)
                if neutral != "*" and value not in (neutral, None):
                    raise ValueError(f"unsupported:{name}")
        return out


class MedpromptRequest(_Strict):
    """``POST /v1/medprompt``: one multiple-choice question."""

    question: str = Field(min_length=1)
    options: list[str] | dict[str, str]
    """Option texts in order, or ``{"A": text, ...}`` (answered by key)."""
    strategy: Literal["zero_shot_cot", "static_fewshot_cot", "knn_fewshot_cot", "cot_ensemble"] | None = None
    k: int | None = Field(default=None, ge=1, le=20)
    """Few-shot examples (server default when absent)."""
    n_ensemble: int | None = Field(default=None, ge=1, le=11)
    """cot_ensemble runs (server default when absent)."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    shuffle_examples: bool | None = None
    """cot_ensemble: also permute the exemplars (the paper's preset; no shared prefix). Server default
    when absent."""
    model: str | None = None

    @field_validator("options")
    @classmethod
    def _options(cls, value: list[str] | dict[str, str]) -> list[str] | dict[str, str]:
        texts = list(value.values()) if isinstance(value, dict) else value
        if not 2 <= len(texts) <= 10:
            raise ValueError(f"options must hold 2 to 10 options, got {len(texts)}")
        if any(not str(t).strip() for t in texts):
            raise ValueError("options must not be empty strings")
        return value

    def option_texts(self) -> tuple[list[str], list[str] | None]:
        """``(texts, keys)``: keys are the dict's keys (None for a list)."""
        if isinstance(self.options, dict):
            return list(self.options.values()), list(self.options.keys())
        return list(self.options), None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Generation(_Strict):
    model: str | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float) -> float:
        if value != 1.0:
            raise ValueError("unsupported:top_p (only 1.0: the engine samples from the full distribution)")
        return value

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions`` (the subset the engine honours)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, value: bool) -> bool:
        if value:
            raise ValueError("unsupported:logprobs (use /v1/completions with echo and logprobs)")
        return value


class CompletionRequest(_Generation):
    """``POST /v1/completions``, including ``echo`` with ``logprobs`` (continuation scoring)."""

    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not 1 <= len(value) <= 32:
            raise ValueError(f"prompt must be a string or a list of 1 to 32 strings, got {len(value)}")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
