"""A faster lm-eval model for multiple-choice scoring: the shared prompt is computed once per question.

lm-eval's ``hf`` model scores each (prompt, option) pair as its own sequence, so a 5-option question
runs the long prompt through the model 5 times. :class:`PrefixCachedLM` (registered in lm-eval as
``clinray``) is the ``hf`` model with one method replaced: requests are grouped by their tokenized
context; each context is run once with ``use_cache=True``, its key/value cache is repeated across the
options, and all options' continuations run as one right-padded batch on top of it. Tokenization,
model loading, truncation and the returned ``(log-likelihood, is-greedy)`` pairs are those of ``hf``
(same ``_encode_pair``, same softmax dtype), so the numbers agree to float rounding (tested to 1e-4).

The trade-off: one question per forward pass (contexts of different lengths are not batched together,
since left padding would shift positions and break equality with ``hf``), so the gain comes from not
recomputing the prompt: about the number of options when prompts dominate, as in MedQA. Requests whose
context plus continuation exceed the model's length fall back to ``hf``'s own code path.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import torch
import torch.nn.functional as F
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

log = logging.getLogger(__name__)

Request = tuple[tuple[str, str], list[int], list[int]]


@register_model("clinray")
class PrefixCachedLM(HFLM):
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
        pbar = tqdm(
            total=len(requests),
            disable=(disable_tqdm or self.rank != 0),
            desc="Scoring options (prompt once)",
        )
        for context, indices in groups.items():
            too_long = [i for i in indices if len(context) + len(requests[i][2]) > self.max_length + 1]
            if too_long:  # hf truncates from the left: use its code path for these
                fallback = super()._loglikelihood_tokens([requests[i] for i in too_long], disable_tqdm=True)
                for i, answer in zip(too_long, fallback, strict=True):
                    results[i] = answer
            short = [i for i in indices if i not in set(too_long)]
            for start in range(0, len(short), self.max_options_per_batch):
                chunk = short[start : start + self.max_options_per_batch]
                answers = self._score_options(list(context), [requests[i][2] for i in chunk])
                for i, answer in zip(chunk, answers, strict=True):
                    results[i] = answer
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            pbar.update(len(indices))
        pbar.close()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _score_options(self, context: list[int], continuations: list[list[int]]) -> list[tuple[float, bool]]:
        """Log-likelihood and greedy flag of each continuation after ``context`` (prompt run once)."""
        assert context and all(continuations), "empty context or continuation"
        ctx = torch.tensor([context], dtype=torch.long, device=self.device)
        out = self.model(ctx, use_cache=True)
        self.num_prompt_passes += 1
        first = F.log_softmax(out.logits[0, -1], dim=-1, dtype=self.softmax_dtype)  # predicts token 0
        rest_len = max(len(c) for c in continuations) - 1
        rest = None
        if rest_len > 0:
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(continuations))
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            rows = [c[:-1] + [pad] * (rest_len - (len(c) - 1)) for c in continuations]
            inp = torch.tensor(rows, dtype=torch.long, device=self.device)
            mask = torch.ones((len(rows), len(context) + rest_len), dtype=torch.long, device=self.device)
            logits = self.model(inp, past_key_values=cache, attention_mask=mask, use_cache=True).logits
            rest = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)  # [B, rest_len, vocab]
        answers = []
        for j, cont in enumerate(continuations):
            total = first[cont[0]].float()
            greedy = bool(first.argmax() == cont[0])
            if len(cont) > 1:
                assert rest is not None
                steps = rest[j, : len(cont) - 1]
                targets = torch.tensor(cont[1:], dtype=torch.long, device=self.device)
                total = total + steps.gather(1, targets[:, None]).float().sum()
                greedy = greedy and bool((steps.argmax(-1) == targets).all())
            answers.append((float(total), greedy))
        return answers


if __name__ == "__main__":  # lm-eval's own CLI with ``--model clinray`` registered
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
