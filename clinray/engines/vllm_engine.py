"""Generation with vLLM on a GPU, imported lazily so that clinray installs and runs without it.

vLLM batches the prompts of one call with paged attention; scoring asks for prompt log-probabilities of
``context + continuation`` and sums those of the continuation's tokens. Not exercised by the CPU test
suite (vLLM needs CUDA); where vLLM is missing the constructor raises a clear
:class:`~clinray.engines.base.EngineUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from clinray.engines.base import EngineUnavailableError, truncate_at_stop
from clinray.models.chat_template import STOP_STRINGS

__all__ = ["VLLMEngine"]


class VLLMEngine:
    """A GenerationEngine backed by ``vllm.LLM``."""

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise EngineUnavailableError(
                "engine.kind=vllm needs the vllm package and a CUDA GPU (pip install vllm); on CPU use "
                "engine.kind=transformers, or engine.kind=openai against a running vLLM server"
            ) from exc
        self._vllm = vllm
        self.llm = vllm.LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop = tuple(stop)

    def max_prompt_tokens(self, *, max_new_tokens: int) -> int | None:
        """vLLM's ``max_model_len`` less the generated tokens (None when this vLLM does not say)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len) - max_new_tokens
        except AttributeError:
            return None

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(self.tokenizer(t)["input_ids"]) for t in texts]

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        params = self._vllm.SamplingParams(
            max_tokens=max_new_tokens, temperature=temperature, seed=seed, stop=list(self.stop)
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [truncate_at_stop(o.outputs[0].text, self.stop) for o in outputs]

    def score(self, context: str, continuations: Sequence[str]) -> list[float]:
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        num_ctx = len(self.tokenizer(context)["input_ids"])
        outputs = self.llm.generate([context + c for c in continuations], params, use_tqdm=False)
        scores = []
        for out in outputs:
            ids, lps = out.prompt_token_ids, out.prompt_logprobs
            scores.append(float(sum(lps[i][ids[i]].logprob for i in range(max(1, num_ctx), len(ids)))))
        return scores
