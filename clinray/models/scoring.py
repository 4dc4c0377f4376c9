"""Prompt-once scoring of continuations with a Hugging Face causal LM (pure torch).

Multiple-choice scoring asks for the log-likelihood of several short continuations after one long
context. Scoring each (context, continuation) as its own sequence recomputes the context once per
option; :func:`score_continuations` runs every context once and scores all of its continuations on
top of its key/value cache:

1. The contexts run right-padded (positions ``0..len-1``) with ``use_cache=True``; only each context's
   last position goes through the LM head (``logits_to_keep``), which predicts every option's first
   token.
2. Each context's cache is selected once per option, and every continuation minus its last token runs
   as one batch on top of it, with explicit positions and a mask hiding the context's padding.

The numbers equal those of full-sequence scoring to float rounding. The cache is copied once per
option (memory grows with options x context length), so callers bound the options per call. Used by
the lm-eval scorer (:class:`clinray.eval.scorer.PrefixCachedLM`) and by
:meth:`clinray.engines.transformers_engine.TransformersEngine.score_batch`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

__all__ = ["cache_argument", "score_continuations"]


def cache_argument(model) -> str:
    """Name of the key/value cache in ``model``'s forward, ``generate`` and outputs.

    ``cache`` in current transformers, where ``past_key_values`` is a deprecated alias (a
    FutureWarning); ``past_key_values`` in the releases before the rename, which the
    dependency range still admits and which would silently ignore a ``cache`` argument.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def score_continuations(
    model,
    contexts: list[list[int]],
    continuations: list[list[list[int]]],
    *,
    pad_id: int,
    device: str | torch.device,
    keeps_logits: bool = True,
    softmax_dtype: torch.dtype | None = torch.float32,
) -> list[list[tuple[float, bool]]]:
    """Per context, the ``(log-likelihood, is-greedy)`` of each of its continuations.

    Args:
        model: a causal LM whose forward takes ``attention_mask``, ``position_ids``, ``use_cache`` and
            a cache (:func:`cache_argument`) and returns one with ``batch_select_indices`` (HF
            ``DynamicCache``).
        contexts: token ids of each context (at least one token each).
        continuations: ``continuations[q]`` are the continuations (at least one token each) to score
            after ``contexts[q]``.
        pad_id: token id used for padding (masked out; its value does not matter).
        device: where the token tensors are built (the model's device).
        keeps_logits: the model's forward accepts ``logits_to_keep`` (else full logits are computed
            and the same rows picked).
        softmax_dtype: dtype of the log-softmax (``None``: the logits' own dtype).

    Every context runs once and its cache must cover ``len(context) + len(continuation) - 1`` tokens:
    callers truncate (or take another path) for sequences beyond the model's window or sliding window.
    """
    answers: list[list[tuple[float, bool]]] = [[] for _ in contexts]
    owner = [q for q, conts in enumerate(continuations) for _ in conts]
    flat = [c for conts in continuations for c in conts]
    if not flat:
        return answers
    if len(continuations) != len(contexts):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuation lists")
    if any(not c for c in contexts) or any(not c for c in flat):
        raise ValueError("every context and every continuation needs at least one token")
    lens = [len(c) for c in contexts]
    width = max(lens)
    ctx = torch.tensor([c + [pad_id] * (width - len(c)) for c in contexts], dtype=torch.long, device=device)
    ctx_mask = torch.arange(width, device=device)[None, :] < torch.tensor(lens, device=device)[:, None]
    last = torch.tensor(lens, device=device) - 1
    keep = torch.unique(last)  # only the contexts' last positions need the LM head (sorted)
    if not keeps_logits:  # a model without logits_to_keep: full logits, same rows picked
        keep = torch.arange(width, device=device)
    extra = {"logits_to_keep": keep} if keeps_logits else {}
    out = model(ctx, attention_mask=ctx_mask.long(), use_cache=True, **extra)
    rows = torch.arange(len(contexts), device=device)
    first = F.log_softmax(out.logits[rows, torch.searchsorted(keep, last)], dim=-1, dtype=softmax_dtype)
    rest_len = max(len(c) for c in flat) - 1
    rest = None
    if rest_len > 0:
        cache_arg = cache_argument(model)
        cache = getattr(out, cache_arg)
        cache.batch_select_indices(torch.tensor(owner, device=device))
        inp = torch.tensor([c[:-1] + [pad_id] * (rest_len - len(c) + 1) for c in flat], device=device)
        own_lens = torch.tensor([lens[q] for q in owner], device=device)
        steps = torch.arange(rest_len, device=device)
        mask = torch.cat(
            [ctx_mask[owner], torch.ones((len(flat), rest_len), dtype=torch.bool, device=device)], dim=1
        )
        logits = model(
            inp,
            attention_mask=mask.long(),
            position_ids=own_lens[:, None] + steps[None, :],
            use_cache=True,
            **{cache_arg: cache},
        ).logits
        rest = F.log_softmax(logits, dim=-1, dtype=softmax_dtype)  # [N, rest_len, vocab]
    for j, (q, cont) in enumerate(zip(owner, flat, strict=True)):
        total = first[q, cont[0]].float()
        greedy = bool(first[q].argmax() == cont[0])
        if len(cont) > 1:
            assert rest is not None
            scores = rest[j, : len(cont) - 1]
            targets = torch.tensor(cont[1:], dtype=torch.long, device=device)
            total = total + scores.gather(1, targets[:, None]).float().sum()
            greedy = greedy and bool((scores.argmax(-1) == targets).all())
        answers[q].append((float(total), greedy))
    return answers


def chunk_requests(
    items: Iterable[tuple[object, Sequence]], *, max_prompts: int, max_options: int
) -> Iterator[list[tuple[object, Sequence]]]:
    """Group ``(prompt, options)`` items into batches of at most ``max_prompts`` prompts and
    ``max_options`` options in all (an item with more options than that still forms its own batch)."""
    chunk: list = []
    num_options = 0
    for item in items:
        if chunk and (len(chunk) >= max_prompts or num_options + len(item[1]) > max_options):
            yield chunk
            chunk, num_options = [], 0
        chunk.append(item)
        num_options += len(item[1])
    if chunk:
        yield chunk
