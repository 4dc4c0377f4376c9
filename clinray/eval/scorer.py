"""A faster lm-eval model for multiple-choice scoring: the shared prompt is computed once per question.

lm-eval's ``hf`` model scores each (prompt, option) pair as its own sequence, so a 5-option question
runs the long prompt through the model 5 times. :class:`PrefixCachedLM` (registered in lm-eval as
``clinray``) is the ``hf`` model with one method replaced: requests are grouped by their tokenized
context; a batch of prompts runs once (right-padded, as in ``hf``) with ``use_cache=True``, each
prompt's key/value cache is selected once per option, and all options' continuations run as one batch
on top of it with explicit positions and a mask hiding the prompt padding. Tokenization, model
loading, truncation and the returned ``(log-likelihood, is-greedy)`` pairs are those of ``hf`` (same
``_encode_pair``, same softmax dtype), so the numbers agree to float rounding (tested to 1e-4).
The scoring core, :func:`clinray.models.scoring.score_continuations`, is shared with
:meth:`clinray.engines.transformers_engine.TransformersEngine.score_batch`.

The trade-off: the cache is copied once per option (memory grows with options x prompt length, bounded
by ``max_options_per_batch``) to save recomputing the prompt; the gain is about the number of options
when prompts dominate, as in MedQA. Requests longer than the model's window (or its sliding window)
take ``hf``'s own left-truncating code path.

lm-eval is imported only when the class is first used (``from clinray.eval.scorer import
PrefixCachedLM``, :func:`register`, or this module imported after lm-eval, as the harness does), so
importing the module costs nothing on a machine without lm-eval.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections import defaultdict

from clinray.models.scoring import chunk_requests, score_continuations

__all__ = ["register"]  # and PrefixCachedLM, made on first access (module __getattr__)

log = logging.getLogger(__name__)

Request = tuple[tuple[str, str], list[int], list[int]]


def register() -> type:
    """Define :class:`PrefixCachedLM` on lm-eval's ``HFLM`` and register it as ``clinray`` (once).

    lm-eval is imported here, at the point of use, not when this module is imported: GPU machines
    that score with :func:`clinray.models.scoring.score_continuations` alone need no lm-eval.
    """
    cls = globals().get("PrefixCachedLM")
    if cls is None:
        from lm_eval.api.registry import register_model
        from lm_eval.models.huggingface import HFLM

        cls = register_model("clinray")(
            type("PrefixCachedLM", (_PrefixCachedMixin, HFLM), {"__module__": __name__})
        )
        cls.__doc__ = _PrefixCachedMixin.__doc__
        globals()["PrefixCachedLM"] = cls
    return cls


def __getattr__(name: str):
    if name == "PrefixCachedLM":  # ``from clinray.eval.scorer import PrefixCachedLM``
        return register()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _PrefixCachedMixin:
    """lm-eval's ``hf`` model with prompt-once multiple-choice scoring (``--model clinray``).

    Args:
        max_options_per_batch: most continuations scored in one forward pass on top of one prompt.
        **kwargs: every ``hf`` model argument (``pretrained``, ``dtype``, ``device``, ``batch_size``...).
    """

    def __init__(self, *args, max_options_per_batch: int = 64, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.backend != "causal":
            raise ValueError("the clinray scorer supports decoder-only (causal) models; use --model hf")
        self.max_options_per_batch = int(max_options_per_batch)
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.num_prompt_passes = 0
        """Prompt forward passes run so far (one per distinct context)."""

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i, (_, context_enc, _) in enumerate(requests):
            groups[tuple(context_enc)].append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        window = min(self.max_length + 1, getattr(self.model.config, "sliding_window", None) or 1 << 62)
        fallback = [i for i, (_, ctx, cont) in enumerate(requests) if len(ctx) + len(cont) > window]
        if fallback:  # hf truncates from the left: its own code path for these
            answers = super()._loglikelihood_tokens([requests[i] for i in fallback], disable_tqdm=True)
            for i, answer in zip(fallback, answers, strict=True):
                results[i] = answer
        skip = set(fallback)
        todo = [(ctx, [i for i in idx if i not in skip]) for ctx, idx in groups.items()]
        todo = sorted((t for t in todo if t[1]), key=lambda t: -len(t[0]))  # longest first, as hf
        from tqdm import tqdm

        pbar = tqdm(
            total=len(requests), disable=(disable_tqdm or self.rank != 0), desc="Scoring (prompt once)"
        )
        pbar.update(len(fallback))
        for chunk in self._chunks(todo):
            conts = [[requests[i][2] for i in idx] for _, idx in chunk]
            answers = self._score_batch([list(ctx) for ctx, _ in chunk], conts)
            for (_, idx), group_answers in zip(chunk, answers, strict=True):
                for i, answer in zip(idx, group_answers, strict=True):
                    results[i] = answer
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
                pbar.update(len(idx))
        pbar.close()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    def _chunks(self, todo: list[tuple[tuple[int, ...], list[int]]]):
        """Batches of up to ``batch_size`` prompts and ``max_options_per_batch`` options."""
        size = self.batch_size if isinstance(self.batch_size, int) else 8
        return chunk_requests(todo, max_prompts=size, max_options=self.max_options_per_batch)

    def _score_batch(self, contexts: list[list[int]], continuations: list[list[list[int]]]):
        """Per prompt, the (log-likelihood, is-greedy) of each continuation; each prompt runs once.

        See :func:`clinray.models.scoring.score_continuations`: the right-padded prompts run once
        (positions 0..len-1, as in ``hf``), then every option's continuation minus its last token runs
        on top of its own prompt's key/value cache.
        """
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        answers = score_continuations(
            self.model,
            contexts,
            continuations,
            pad_id=pad,
            device=self.device,
            keeps_logits=self._keeps_logits,
            softmax_dtype=self.softmax_dtype,
        )
        self.num_prompt_passes += len(contexts)
        return answers


if "lm_eval" in sys.modules:  # lm-eval already loaded (the harness): ``--model clinray`` is ready at once
    register()

if __name__ == "__main__":  # lm-eval's own CLI with ``--model clinray`` registered
    from lm_eval.__main__ import cli_evaluate

    register()
    cli_evaluate()
