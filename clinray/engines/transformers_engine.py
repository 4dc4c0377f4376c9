"""In-process generation with Hugging Face transformers (CPU or GPU).

Prompts are generated in batches with left padding, so the n prompts of a choice-shuffle ensemble
cost one batched ``generate`` rather than n (the retrieval benchmark measures the ratio), with a
key/value cache that grows in place (:mod:`clinray.engines.kv_cache`) rather than by a copy per token. Scoring runs each
distinct context once and every continuation on top of its key/value cache
(:func:`clinray.models.scoring.score_continuations`, shared with the lm-eval scorer), and sums the
log-probabilities of the continuation tokens; the continuation's tokens are those of the whole text
beyond the context's own encoding, as lm-eval does, so a BPE merge across the boundary is counted
once. The trade-off against vLLM: no paged attention or continuous batching, but no GPU needed
and the same code on a laptop and a node.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path

from clinray.engines.base import truncate_at_stop
from clinray.models.chat_template import STOP_STRINGS

__all__ = ["TransformersEngine"]

log = logging.getLogger(__name__)


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"engine.device={device!r} but no CUDA device is visible; use device=cpu or auto")
    return device


class TransformersEngine:
    """A causal LM loaded from a folder or hub id, behind the GenerationEngine interface."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_size: int = 16,
        stop: Sequence[str] = STOP_STRINGS,
        ignore_eos: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from clinray.models.scoring import cache_argument

        self.device = _pick_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model), dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.max_batch_size = max_batch_size
        self.stop = tuple(stop)
        self.ignore_eos = ignore_eos
        """Generate exactly ``max_new_tokens`` (benchmarks: fixed-length reasoning, like vLLM's ignore_eos)."""
        self.max_length = int(
            getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        )
        self.max_options_per_batch = 4 * max_batch_size
        """Most continuations scored on top of one batch of contexts (each holds a copy of its cache)."""
        self._sliding_window = getattr(self.model.config, "sliding_window", None)
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._cache_arg = cache_argument(self.model)
        self.num_truncated = 0
        """Prompts cut on the left to fit the context window so far."""

    def max_prompt_tokens(self, *, max_new_tokens: int) -> int:
        """The window (``max_position_embeddings``) less the generated tokens (:class:`TokenWindow`)."""
        return self.max_length - max_new_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, without the tokenizer's over-length warning (:class:`TokenWindow`)."""
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), verbose=False)["input_ids"]]

    def _encode_prompts(self, prompts: Sequence[str], *, max_new_tokens: int):
        budget = self.max_length - max_new_tokens
        if budget < 8:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room in a {self.max_length}-token window"
            )
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer(
            list(prompts), return_tensors="pt", padding=True, truncation=True, max_length=budget
        )
        cut = sum(n > budget for n in self.count_tokens(prompts))
        if cut:  # the strategies fit their prompts by whole examples first (clinray.prompting.fit)
            self.num_truncated += cut
            log.warning("%d prompt(s) longer than %d tokens were cut on the left", cut, budget)
        return enc.to(self.device)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[str]:
        """One completion per prompt, in batches of ``max_batch_size``, cut at the first stop string."""
        import torch

        from clinray.engines.kv_cache import growing_cache

        if not prompts:
            return []
        if seed is not None:
            torch.manual_seed(seed)
        out: list[str] = []
        for start in range(0, len(prompts), self.max_batch_size):
            batch = prompts[start : start + self.max_batch_size]
            enc = self._encode_prompts(batch, max_new_tokens=max_new_tokens)
            sample = temperature > 0
            kwargs = (
                {"do_sample": sample, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                if sample
                else {"do_sample": False}
            )
            cache = growing_cache(self.model.config, total_length=enc["input_ids"].shape[1] + max_new_tokens)
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc,
                    **({self._cache_arg: cache} if cache is not None else {}),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    min_new_tokens=max_new_tokens if self.ignore_eos else None,
                    **kwargs,
                )
            new = ids[:, enc["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=False)
            out.extend(truncate_at_stop(t.replace(self.tokenizer.pad_token, ""), self.stop) for t in texts)
        return out

    def score(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation after ``context`` (the context runs once)."""
        return self.score_batch([(context, continuations)])[0]

    @property
    def _score_window(self) -> int:
        """Longest scored row (context + continuation): the window, or a sliding window within it.

        The context's key/value cache must hold every context token, which a sliding-window cache
        does not beyond its window: such contexts are cut to the sliding window.
        """
        return min(self.max_length, self._sliding_window or self.max_length)

    def _score_rows(self, context: str, continuations: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        """``(context tokens, continuation tokens)`` of each continuation, cut to the scoring window.

        The continuation's tokens are those of ``context + continuation`` beyond the context's own
        encoding (one fewer context token where a BPE merge crosses the boundary). A context too long
        for the window is cut on the left once for all its continuations, by what the longest row
        needs (every row fits; keeping at least one context token), so the continuations are
        compared after the same context and it runs once.
        """
        ctx_ids = self.tokenizer(context, verbose=False)["input_ids"]
        encoded = []
        for cont in continuations:
            whole = self.tokenizer(context + cont, verbose=False)["input_ids"]
            start = len(ctx_ids) if whole[: len(ctx_ids)] == ctx_ids else len(ctx_ids) - 1
            encoded.append((whole, max(1, min(start, len(whole) - 1))))
        drop = max([0] + [len(whole) - self._score_window for whole, _ in encoded])
        return [(whole[min(drop, start - 1) : start], whole[start:]) for whole, start in encoded]

    def score_batch(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """:meth:`score` for many contexts: each distinct context runs once, then its continuations.

        Continuations are grouped by their (tokenized) context; up to ``max_batch_size`` contexts and
        ``max_options_per_batch`` continuations go to
        :func:`~clinray.models.scoring.score_continuations` at a time: one pass over the right-padded
        contexts (only their last positions through the LM head), one pass over every continuation on
        top of its context's key/value cache. A 5-run ensemble's few-shot context is thus computed
        once per run, not once per option.
        """
        from clinray.models.scoring import score_continuations

        out: list[list[float]] = [[0.0] * len(conts) for _, conts in requests]
        groups: dict[tuple[int, ...], list[tuple[int, int, list[int]]]] = {}
        for i, (ctx, conts) in enumerate(requests):
            for k, (ctx_ids, cont_ids) in enumerate(self._score_rows(ctx, conts)):
                if cont_ids:  # an empty continuation (empty text) scores 0.0
                    groups.setdefault(tuple(ctx_ids), []).append((i, k, cont_ids))
        todo = sorted(groups.items(), key=lambda g: -len(g[0]))  # longest first: less padding
        for chunk in self._score_chunks(todo):
            answers = score_continuations(
                self.model,
                [list(ctx) for ctx, _ in chunk],
                [[cont for _, _, cont in members] for _, members in chunk],
                pad_id=self.tokenizer.pad_token_id,
                device=self.device,
                keeps_logits=self._keeps_logits,
            )
            for (_, members), group_answers in zip(chunk, answers, strict=True):
                for (i, k, _), (logprob, _) in zip(members, group_answers, strict=True):
                    out[i][k] = logprob
        return out

    def _score_chunks(self, todo: list):
        """Batches of up to ``max_batch_size`` contexts and ``max_options_per_batch`` continuations."""
        from clinray.models.scoring import chunk_requests

        return chunk_requests(todo, max_prompts=self.max_batch_size, max_options=self.max_options_per_batch)

    def token_logprobs(self, text: str) -> list[tuple[str, int, float | None]]:
        """``(token text, character offset, log-probability)`` of every token of ``text`` (echo scoring)."""
        import torch

        enc = self.tokenizer(text, return_offsets_mapping=True, verbose=False)
        ids = enc["input_ids"][-self.max_length :]
        offsets = enc["offset_mapping"][-len(ids) :]
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        out: list[tuple[str, int, float | None]] = []
        for i, (tok_id, (lo, hi)) in enumerate(zip(ids, offsets)):
            lp = None if i == 0 else float(logprobs[i - 1, tok_id])
            out.append((text[lo:hi], lo, lp))
        return out
