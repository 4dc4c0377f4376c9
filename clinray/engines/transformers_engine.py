"""In-process generation with Hugging Face transformers (CPU or GPU).

Prompts are generated in batches with left padding, so the n prompts of a choice-shuffle ensemble
cost one batched ``generate`` rather than n (the retrieval benchmark measures the ratio). Scoring runs
one forward pass over ``context + continuation`` for all continuations of a context, right-padded, and
sums the log-probabilities of the continuation tokens; the continuation's tokens are those of the
whole text beyond the context's own encoding, as lm-eval does, so a BPE merge across the boundary is
counted once. The trade-off against vLLM: no paged attention or continuous batching, but no GPU needed
and the same code on a laptop and a node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from clinray.engines.base import truncate_at_stop
from clinray.prompting.parsing import STOP_STRINGS

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
        self.num_truncated = 0
        """Prompts cut on the left to fit the context window so far."""

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
        lengths = [len(self.tokenizer(p)["input_ids"]) for p in prompts]
        cut = sum(n > budget for n in lengths)
        if cut:
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
            with torch.inference_mode():
                ids = self.model.generate(
                    **enc,
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
        """Summed log-probability of each continuation after ``context`` (one padded forward pass)."""
        return self.score_batch([(context, continuations)])[0]

    def _score_rows(self, context: str, continuations: Sequence[str]) -> list[tuple[list[int], int, int]]:
        ctx_ids = self.tokenizer(context)["input_ids"]
        rows = []
        for cont in continuations:
            whole = self.tokenizer(context + cont)["input_ids"]
            start = len(ctx_ids) if whole[: len(ctx_ids)] == ctx_ids else len(ctx_ids) - 1
            start = max(1, min(start, len(whole) - 1))
            drop = max(0, len(whole) - self.max_length)  # cut the context's left end if needed
            rows.append((whole[drop:], start - drop, len(whole) - drop))
        return rows

    def score_batch(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[float]]:
        """:meth:`score` for many contexts, ``max_batch_size`` rows per forward pass.

        Rows are left-padded so every continuation ends the row, and only the last positions' logits
        are computed (``logits_to_keep``): the vocabulary projection of a long few-shot context is
        most of the cost otherwise.
        """
        import torch

        rows = [(i, row) for i, (ctx, conts) in enumerate(requests) for row in self._score_rows(ctx, conts)]
        out: list[list[float]] = [[] for _ in requests]
        pad = self.tokenizer.pad_token_id
        for at in range(0, len(rows), self.max_batch_size):
            chunk = rows[at : at + self.max_batch_size]
            width = max(len(r[0]) for _, r in chunk)
            keep = max(hi - lo for _, (_, lo, hi) in chunk) + 1
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, (_, (row, _, _)) in enumerate(chunk):
                ids[j, width - len(row) :] = torch.tensor(row)
                mask[j, width - len(row) :] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
                ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for j, (i, (_, lo, hi)) in enumerate(chunk):
                n = hi - lo
                targets = ids[j, width - n :]
                picked = logprobs[j, keep - n - 1 : keep - 1].gather(-1, targets[:, None]).squeeze(-1)
                out[i].append(float(picked.sum()))
        return out

    def token_logprobs(self, text: str) -> list[tuple[str, int, float | None]]:
        """``(token text, character offset, log-probability)`` of every token of ``text`` (echo scoring)."""
        import torch

        enc = self.tokenizer(text, return_offsets_mapping=True)
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
