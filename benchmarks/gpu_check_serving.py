"""The serving half of the GPU check kit (``benchmarks/gpu_check.py``): Medprompt ensemble and scorer.

Both run on a random model folder with a BPE tokenizer trained on a synthetic clinical corpus
(:func:`corpus`), so nothing is downloaded: the 5-run choice-shuffle ensemble against one run with
:class:`clinray.engines.transformers_engine.TransformersEngine`, and the prompt-once scorer
(:func:`clinray.models.scoring.score_continuations`) against one full sequence per option, on the same
tokens. Only torch, transformers and clinray's own modules are imported.
"""

from __future__ import annotations

import gc
import random
import statistics
import time


def free(device) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device) -> float | None:
    import torch

    return (
        round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.device(device).type == "cuda" else None
    )


def corpus(num_lines: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    findings = ["fever", "chest pain", "dyspnea", "jaundice", "rash", "syncope", "hematuria", "cough"]
    tests = ["troponin", "lactate", "ferritin", "creatinine", "lipase", "bilirubin", "D-dimer"]
    drugs = ["aspirin", "heparin", "metformin", "amoxicillin", "furosemide", "prednisone", "insulin"]
    return [
        f"A {rng.randint(18, 90)}-year-old patient presents with {rng.choice(findings)} and a raised "
        f"{rng.choice(tests)}; {rng.choice(drugs)} is started because the {rng.choice(tests)} level "
        f"suggests that {rng.choice(findings)} is caused by a disorder treated with {rng.choice(drugs)}."
        for _ in range(num_lines)
    ]


def _mcq(num: int, seed: int):
    """Examples (few-shot pool) and questions in clinray.prompting's shapes, from the synthetic corpus."""
    from clinray.prompting.templates import Example

    lines, rng = corpus(num * 3, seed), random.Random(seed)
    drugs = ["Aspirin", "Heparin", "Metformin", "Amoxicillin", "Furosemide", "Prednisone", "Insulin"]
    pool, items = [], []
    for i in range(num):
        options = tuple(rng.sample(drugs, 5))
        pool.append(
            Example(
                id=f"ex{i}",
                question=lines[3 * i] + " Which drug?",
                options=options,
                answer_index=i % 5,
                explanation=lines[3 * i + 1] + " " + lines[3 * i + 2],
            )
        )
        items.append({"id": f"q{i}", "question": lines[3 * i + 1] + " Which drug?", "options": list(options)})
    return pool, items


def engine_ratio(model_dir, device, *, questions: int, new_tokens: int) -> tuple[dict, object]:
    """Medprompt ensemble (5 runs, one batched generate) over one static few-shot CoT run, per question."""
    from clinray.engines.transformers_engine import TransformersEngine
    from clinray.prompting.medprompt import MedpromptConfig, answer_batch

    engine = TransformersEngine(model_dir, device=str(device), max_batch_size=16, ignore_eos=True)
    pool, items = _mcq(12, seed=1)
    items = items[:questions]
    single = MedpromptConfig(strategy="static_fewshot_cot", max_new_tokens=new_tokens, temperature=0.2)
    ensemble = MedpromptConfig(strategy="cot_ensemble", ensemble_examples="static", max_new_tokens=new_tokens)

    def timed(cfg) -> tuple[float, list]:
        start, answers = time.perf_counter(), []
        for item in items:
            answers += answer_batch([item], engine=engine, config=cfg, pool=pool)
        sync(device)
        return time.perf_counter() - start, answers

    engine.generate([items[0]["question"]], max_new_tokens=8, temperature=0.2, seed=0)  # warm-up
    t1, _ = timed(single)
    t5, answers = timed(ensemble)
    prompts = [run.prompt for run in answers[0].runs]
    start = time.perf_counter()
    engine.generate(prompts[:1], max_new_tokens=new_tokens, temperature=0.2, seed=0)
    g1 = time.perf_counter() - start
    start = time.perf_counter()
    engine.generate(prompts, max_new_tokens=new_tokens, temperature=0.2, seed=0)
    g5 = time.perf_counter() - start
    return {
        "num_questions": len(items),
        "max_new_tokens": new_tokens,
        "prompt_tokens": len(engine.tokenizer(prompts[0])["input_ids"]),
        "single_run_s": round(t1, 3),
        "ensemble_5_s": round(t5, 3),
        "ratio": round(t5 / t1, 3),
        "target_ratio": 2.0,
        "generate_ratio": round(g5 / g1, 3),
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "peak_memory_gib": peak_gib(device),
    }, engine


def scorer_speed(engine, device, *, num_questions: int) -> dict:
    """Questions/s of ``score_continuations`` (prompt once) against one full sequence per option."""
    import torch

    from clinray.models.scoring import score_continuations
    from clinray.prompting.templates import build_prompt

    tok, model = engine.tokenizer, engine.model
    pool, items = _mcq(num_questions + 5, seed=2)
    contexts, conts = [], []
    for item in items[:num_questions]:
        text = build_prompt(item["question"], item["options"], examples=pool[-5:], cot=False)
        ctx = tok(text, verbose=False)["input_ids"][-(engine.max_length - 16) :]
        contexts.append(ctx)
        conts.append([tok(" " + o, add_special_tokens=False)["input_ids"] for o in item["options"]])
    pad = tok.pad_token_id

    def ours() -> list[float]:
        out = []
        for i in range(0, len(contexts), 8):
            answers = score_continuations(
                model, contexts[i : i + 8], conts[i : i + 8], pad_id=pad, device=device
            )
            out += [lp for group in answers for lp, _ in group]
        return out

    @torch.no_grad()
    def per_option() -> list[float]:
        out = []
        for ctx, options in zip(contexts, conts):
            rows = [ctx + c for c in options]
            width = max(map(len, rows))
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
            mask = (
                torch.arange(width, device=device)[None]
                < torch.tensor([len(r) for r in rows], device=device)[:, None]
            )
            logp = torch.log_softmax(model(ids, attention_mask=mask.long()).logits.float(), dim=-1)
            for j, c in enumerate(options):
                pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(c), device=device)
                out.append(float(logp[j, pos, torch.tensor(c, device=device)].sum()))
        return out

    ours(), per_option()  # warm-up
    times = {}
    for name, fn in (("prompt_once", ours), ("per_option", per_option)):
        start = time.perf_counter()
        values = fn()
        sync(device)
        times[name] = (time.perf_counter() - start, values)
    (t_ours, a), (t_peer, b) = times["prompt_once"], times["per_option"]
    n = len(contexts)
    return {
        "num_questions": n,
        "options_per_question": 5,
        "context_tokens_median": int(statistics.median(map(len, contexts))),
        "questions_per_s": round(n / t_ours, 2),
        "per_option_questions_per_s": round(n / t_peer, 2),
        "ratio": round(t_peer / t_ours, 3),
        "max_abs_loglikelihood_diff": round(max(abs(x - y) for x, y in zip(a, b)), 5),
        "dtype": str(model.dtype).removeprefix("torch."),
    }
