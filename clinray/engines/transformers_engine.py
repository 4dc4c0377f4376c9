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


def _prefix_groups(rows: Sequence[Sequence[int]], *, min_prefix: int) -> tuple[list[list[int]], list[int]]:
    """Rows grouped by a common token prefix of at least ``min_prefix`` tokens, and each group's prefix
    length (at most its shortest row less one token, so every row keeps a token after its prefix)."""
    groups: list[list[int]] = []
    plens: list[int] = []
    for i, row in enumerate(rows):
        best, best_len = -1, 0
        for g, members in enumerate(groups):
            rep = rows[members[0]]
            n, limit = 0, min(len(rep), len(row), plens[g])
            while n < limit and rep[n] == row[n]:
                n += 1
            if n > best_len:
                best, best_len = g, n
        if best >= 0 and best_len >= min_prefix:
            groups[best].append(i)
            plens[best] = best_len
        else:
            groups.append([i])
            plens.append(len(row))
    plens = [min(p, *(len(rows[i]) - 1 for i in members)) for p, members in zip(plens, groups, strict=True)]
    return groups, plens


def _left_padded(seqs: Sequence[Sequence[int]], pad: int):
    """``(ids, mask)`` tensors of token lists left-padded to the longest."""
    import torch

    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, x in enumerate(seqs):
        if x:
            ids[r, width - len(x) :] = torch.tensor(list(x))
            mask[r, width - len(x) :] = 1
    return ids, mask


class _RowSampler:
    """A logits processor that samples each row from its own seeded generator (Gumbel-max).

    ``argmax(logits / T + Gumbel noise)`` is a draw from ``softmax(logits / T)``; with the noise drawn
    from a generator per row, a row's tokens depend only on its seed and its own logits, not on which
    other rows share the batch. Used with greedy decoding (``do_sample=False``).
    """

    def __init__(self, seeds: Sequence[int], temperature: float) -> None:
        import torch

        self.generators = [torch.Generator().manual_seed(int(s) % (2**63)) for s in seeds]
        self.temperature = temperature

    def __call__(self, input_ids, scores):
        import torch

        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-20, 1.0 - 1e-7)))
        return scores.float() / self.temperature + gumbel.to(scores.device)


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
        row_seeds: Sequence[int] | None = None,
        share_prefix: bool = False,
    ) -> list[str]:
        """One completion per prompt, in batches of ``max_batch_size``, cut at the first stop string.

        Args:
            row_seeds: one seed per prompt: each row samples from its own generator (Gumbel-max on the
                tempered logits, equal in distribution to multinomial sampling), so a row's completion
                does not depend on the other rows of its batch (served requests batched together stay
                reproducible). Without it, ``seed`` seeds torch's global generator once.
            share_prefix: compute the key/value cache of a prefix shared by several prompts once
                (a choice-shuffle ensemble with its examples in one order shares its few-shot part);
                the prompts then continue from a copy of it. Costs one extra forward of the prefixes;
                pays off when prefixes are long against the suffixes and the generated tokens.
        """
        import torch

        from clinray.engines.kv_cache import growing_cache

        if not prompts:
            return []
        if row_seeds is not None and len(row_seeds) != len(prompts):
            raise ValueError(f"{len(row_seeds)} row seeds for {len(prompts)} prompts")
        if seed is not None:
            torch.manual_seed(seed)
        out: list[str] = []
        for start in range(0, len(prompts), self.max_batch_size):
            batch = prompts[start : start + self.max_batch_size]
            seeds = None if row_seeds is None else list(row_seeds[start : start + self.max_batch_size])
            sample = temperature > 0
            kwargs: dict = (
                {"do_sample": sample, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                if sample
                else {"do_sample": False}
            )
            if sample and seeds is not None:
                from transformers import LogitsProcessorList

                kwargs = {
                    "do_sample": False,
                    "logits_processor": LogitsProcessorList([_RowSampler(seeds, temperature)]),
                }
            enc, cache = None, None
            if share_prefix and len(batch) > 1:
                enc, cache = self._shared_prefix(batch, max_new_tokens=max_new_tokens)
            if enc is None:
                enc = self._encode_prompts(batch, max_new_tokens=max_new_tokens)
                cache = growing_cache(
                    self.model.config, total_length=enc["input_ids"].shape[1] + max_new_tokens
                )
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

    def _shared_prefix(self, batch: Sequence[str], *, max_new_tokens: int, min_prefix: int = 16):
        """``(inputs, cache)`` with the cache holding each distinct shared prefix, computed once.

        Prompts are grouped by their longest common token prefix (at least ``min_prefix`` tokens, else a
        prompt is its own group). Each group's prefix runs once, left-padded with the others in one
        forward; its cache rows are then copied to every prompt of the group, and each prompt's own
        suffix follows after padding (``[pad, prefix, pad, suffix]``: the attention mask hides both pads
        and positions count only real tokens). Returns ``(None, None)`` when no prompt shares a prefix
        or a prompt is too long for the window (the plain path then cuts it).
        """
        import torch
        from transformers import DynamicCache

        from clinray.engines.kv_cache import growing_cache

        rows = self.tokenizer(list(batch), verbose=False)["input_ids"]
        if max(len(r) for r in rows) > self.max_length - max_new_tokens:
            return None, None
        groups, plens = _prefix_groups(rows, min_prefix=min_prefix)
        if all(len(members) == 1 for members in groups):
            return None, None
        pad = self.tokenizer.pad_token_id
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        prefix_ids, prefix_mask = _left_padded([rows[m[0]][:p] for m, p in zip(groups, plens)], pad)
        width = prefix_ids.shape[1]
        suffixes = [rows[i][plens[group_of[i]] :] for i in range(len(rows))]
        swidth = max(len(x) for x in suffixes)
        suffix_ids = torch.full((len(rows), swidth), pad, dtype=torch.long)
        suffix_mask = torch.zeros((len(rows), swidth), dtype=torch.long)
        for i, suffix in enumerate(suffixes):
            suffix_ids[i, swidth - len(suffix) :] = torch.tensor(suffix)
            suffix_mask[i, swidth - len(suffix) :] = 1
        total = width + swidth + max_new_tokens
        cache = growing_cache(self.model.config, total_length=total) or DynamicCache()
        positions = (prefix_mask.cumsum(-1) - 1).clamp_min(0)
        with torch.inference_mode():
            self.model(
                input_ids=prefix_ids.to(self.device),
                attention_mask=prefix_mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                **{self._cache_arg: cache},
                **({"logits_to_keep": 1} if self._keeps_logits else {}),
            )
        index = torch.tensor([group_of[i] for i in range(len(rows))], device=self.device)
        cache.batch_select_indices(index)
        take = index.cpu()
        inputs = {
            "input_ids": torch.cat([prefix_ids[take], suffix_ids], dim=1).to(self.device),
            "attention_mask": torch.cat([prefix_mask[take], suffix_mask], dim=1).to(self.device),
        }
        self.num_shared_prefix_tokens = getattr(self, "num_shared_prefix_tokens", 0) + sum(
            p * (len(m) - 1) for p, m in zip(plens, groups)
        )
        return inputs, cache

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

    def score_batch(
        self, requests: Sequence[tuple[str, Sequence[str]]], *, share_prefix: bool = False
    ) -> list[list[float]]:
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
        if share_prefix and len(groups) > 1:
            items = list(groups.items())
            for start in range(0, len(items), self.max_batch_size):
                self._score_shared(items[start : start + self.max_batch_size], out)
            return out
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

    def _score_shared(self, items: list, out: list[list[float]], *, min_prefix: int = 16) -> None:
        """Score ``(context tokens, [(request, option, continuation tokens)])`` items into ``out`` with each
        shared context prefix computed once (the ensemble's runs share their few-shot part).

        Three passes, each on top of the cache of the one before: the distinct prefixes (left-padded),
        each context's own remainder (right-padded, after a copy of its prefix's cache rows), then
        every continuation (after a copy of its context's rows). Pads sit between the parts, hidden by
        the attention mask; positions count real tokens only. Same log-likelihoods as the plain path.
        """
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        pad = self.tokenizer.pad_token_id
        dev = self.device
        contexts = [list(ctx) for ctx, _ in items]
        groups, plens = _prefix_groups(contexts, min_prefix=min_prefix)
        group_of = {c: g for g, members in enumerate(groups) for c in members}
        prefix_ids, prefix_mask = _left_padded([contexts[m[0]][:p] for m, p in zip(groups, plens)], pad)
        cache = DynamicCache()
        with torch.inference_mode():
            self.model(
                input_ids=prefix_ids.to(dev),
                attention_mask=prefix_mask.to(dev),
                position_ids=(prefix_mask.cumsum(-1) - 1).clamp_min(0).to(dev),
                use_cache=True,
                **({"logits_to_keep": 1} if self._keeps_logits else {}),
                **{self._cache_arg: cache},
            )
            owner_g = torch.tensor([group_of[c] for c in range(len(contexts))], device=dev)
            cache.batch_select_indices(owner_g)
            suffixes = [ctx[plens[group_of[c]] :] for c, ctx in enumerate(contexts)]
            s_lens = torch.tensor([len(x) for x in suffixes], device=dev)
            s_width = int(s_lens.max())
            s_ids = torch.tensor([x + [pad] * (s_width - len(x)) for x in suffixes], device=dev)
            s_mask = torch.arange(s_width, device=dev)[None, :] < s_lens[:, None]
            p_lens = torch.tensor([plens[group_of[c]] for c in range(len(contexts))], device=dev)
            p_mask = prefix_mask.to(dev)[owner_g].bool()
            last = s_lens - 1
            keep = torch.unique(last) if self._keeps_logits else torch.arange(s_width, device=dev)
            logits = self.model(
                input_ids=s_ids,
                attention_mask=torch.cat([p_mask, s_mask], dim=1).long(),
                position_ids=p_lens[:, None] + torch.arange(s_width, device=dev)[None, :],
                use_cache=True,
                **({"logits_to_keep": keep} if self._keeps_logits else {}),
                **{self._cache_arg: cache},
            ).logits
            rows = torch.arange(len(contexts), device=dev)
            first = F.log_softmax(logits[rows, torch.searchsorted(keep, last)].float(), dim=-1)
            flat = [(c, member) for c, (_, members) in enumerate(items) for member in members]
            rest_len = max(len(member[2]) for _, member in flat) - 1
            rest = None
            if rest_len > 0:
                owner = torch.tensor([c for c, _ in flat], device=dev)
                cache.batch_select_indices(owner)
                inp = torch.tensor(
                    [m[2][:-1] + [pad] * (rest_len - len(m[2]) + 1) for _, m in flat], device=dev
                )
                mask = torch.cat(
                    [
                        p_mask[owner],
                        s_mask[owner],
                        torch.ones((len(flat), rest_len), dtype=torch.bool, device=dev),
                    ],
                    dim=1,
                )
                steps = torch.arange(rest_len, device=dev)
                logits = self.model(
                    input_ids=inp,
                    attention_mask=mask.long(),
                    position_ids=(p_lens + s_lens)[owner][:, None] + steps[None, :],
                    use_cache=True,
                    **{self._cache_arg: cache},
                ).logits
                rest = F.log_softmax(logits.float(), dim=-1)
        for j, (c, (i, k, cont)) in enumerate(flat):
            total = first[c, cont[0]]
            if len(cont) > 1:
                targets = torch.tensor(cont[1:], dtype=torch.long, device=dev)
                total = total + rest[j, : len(cont) - 1].gather(1, targets[:, None]).sum()
            out[i][k] = float(total)

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
