"""The two-step clinical PEFT recipe (Gema et al., arXiv 2307.03042), done as the paper describes it.

Step 1 trains a clinical LoRA adapter with the causal-LM objective on clinical text. Step 2 loads it
frozen into a sequence-classification model (the base's ``score`` head over the last token), adds a task
LoRA adapter, makes BOTH active (``model.base_model.set_adapter(["clinical", "task"])``: active LoRA
adapters add up, ``h = W0 x + s1 B1 A1 x + s2 B2 A2 x``) and turns the clinical adapter's gradients off
(``set_requires_grad("clinical", False)``), so the task adapter and the head train on top of the clinical
one. The reference code calls ``add_adapter`` and never activates the new adapter, so there only the
head trains (notes/sft.md 5.4); :func:`stacked_classifier` is the fix, and a test checks it.

Runs are single-process PyTorch on CPU (no Ray, no FSDP): at tiny size the whole comparison, step 1 plus
three step-2 variants (stacked on step 1, task adapter alone, head alone), takes about a minute on two
cores. The trade-off: keeping both adapters costs one extra LoRA matmul per target against merging the
clinical adapter first, in exchange for a swappable clinical adapter and an exact pair to export
(or one concatenated adapter, ``add_weighted_adapter(..., combination_type="cat")``, also exact).
AUROC is macro (mean over labels with both classes in the test set) and micro (all label decisions
pooled); "step 1 helped" is judged by a paired bootstrap over test notes of the macro-AUROC difference.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import torch

from clinray.peft_clinical.data import Notes

__all__ = [
    "StepConfig",
    "clinical_texts",
    "train_clinical_adapter",
    "stacked_classifier",
    "train_classifier",
    "predict",
    "auroc",
    "macro_micro_auroc",
    "paired_bootstrap",
    "export_stacked",
    "CONCAT_TOLERANCE",
]

#: Max |logit diff| allowed between the stacked pair and its concatenated adapter (fp32).
CONCAT_TOLERANCE = 1e-5
HEAD_FILE = "score_head.safetensors"


@dataclasses.dataclass(kw_only=True, slots=True)
class StepConfig:
    """One training step of the recipe: the adapter and its optimizer."""

    r: int = 8
    """LoRA rank (0 in step 2: no task adapter, the head alone)."""
    alpha: float = 16.0
    """``lora_alpha``."""
    dropout: float = 0.0
    """LoRA dropout."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt, or ``all-linear``."""
    lr: float = 2e-3
    """AdamW learning rate (adapter and head)."""
    steps: int = 60
    """Optimizer steps (step 1; 0: ``epochs`` passes over the text's blocks); step 2 runs ``epochs``."""
    epochs: int = 4
    """Passes over the training notes (step 2), or over the clinical text's blocks (step 1 with ``steps: 0``)."""
    batch_size: int = 8
    """Rows per step."""
    seq_len: int = 128
    """Tokens per row (step 1: blocks of clinical text; step 2: notes truncated to it)."""

    def __post_init__(self) -> None:
        if self.r < 0 or self.lr <= 0 or self.batch_size < 1 or self.seq_len < 8:
            raise ValueError(f"invalid step config {self}: r >= 0, lr > 0, batch_size >= 1, seq_len >= 8")
        if self.steps < 0 or self.epochs < 1:
            raise ValueError(f"invalid step config {self}: steps >= 0 (0: by epochs) and epochs >= 1")

    def lora(self, **extra):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules,
            **extra,
        )


def clinical_texts(world_dir: str | Path, *, max_bytes: int = 2_000_000) -> list[str]:
    """The tiny world's clinical corpus in plain text (textbook chapters and JSONL articles)."""
    from clinray.models.tiny import iter_corpus_texts

    root = Path(world_dir) / "corpus" / "clinical"
    texts: list[str] = []
    for sub in ("text", "jsonl"):
        if (root / sub).is_dir():
            texts += list(iter_corpus_texts(root / sub, max_bytes=max_bytes))
    if not texts:
        raise ValueError(f"no clinical text under {root} (corpus/clinical/text or jsonl)")
    return texts


def _blocks(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the clinical text gives fewer than {seq_len} tokens")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def train_clinical_adapter(
    model_path: str, texts: list[str], cfg: StepConfig, *, out: str | Path, seed: int = 0
) -> dict:
    """Step 1: a LoRA adapter trained on ``texts`` with the causal-LM loss; saved (peft layout) to ``out``."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.r < 1:
        raise ValueError("step 1 needs a LoRA rank >= 1")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    blocks = _blocks(tokenizer, texts, cfg.seq_len)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = get_peft_model(base, cfg.lora(task_type="CAUSAL_LM"), adapter_name="default")
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    start = time.perf_counter()
    steps = cfg.steps or -(-cfg.epochs * len(blocks) // cfg.batch_size)
    for _ in range(steps):
        rows = blocks[torch.randint(0, len(blocks), (cfg.batch_size,), generator=gen)]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.save_pretrained(out)
    k = max(1, len(losses) // 10)
    return {
        "blocks": len(blocks),
        "steps": steps,
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
        "seconds": round(time.perf_counter() - start, 1),
    }


def stacked_classifier(
    model_path: str,
    *,
    num_labels: int,
    clinical_dir: str | Path | None = None,
    task_r: int = 8,
    task_alpha: float = 16.0,
    target_modules: list[str] | str = "all-linear",
    seed: int = 0,
):
    """Step 2's model: the base with a multi-label ``score`` head, the frozen clinical adapter (if
    ``clinical_dir``) and a trainable task adapter (if ``task_r``), both active; the head always trains."""
    from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model

    torch.manual_seed(seed)
    base = _classifier_base(model_path, num_labels)
    # the head trains in full: a LoRA on it too (all-linear would put one there) adds nothing
    task_cfg = LoraConfig(
        r=max(task_r, 1), lora_alpha=task_alpha, target_modules=target_modules, exclude_modules=["score"]
    )
    if clinical_dir is not None:
        # step 1 saved a CAUSAL_LM adapter; loaded as such it would wrap the classifier in the causal-LM
        # PeftModel (which needs generation methods): the same LoRA weights, loaded without a task type
        clinical_cfg = PeftConfig.from_pretrained(str(clinical_dir))
        clinical_cfg.task_type = None
        model = PeftModel.from_pretrained(
            base, str(clinical_dir), adapter_name="clinical", is_trainable=False, config=clinical_cfg
        )
        if task_r:
            model.add_adapter("task", task_cfg)  # does not activate it: the reference code's bug
            model.base_model.set_adapter(["clinical", "task"])  # both active, and both trainable now
        model.set_requires_grad("clinical", requires_grad=False)
    elif task_r:
        model = get_peft_model(base, task_cfg, adapter_name="task")
    else:
        model = base
        model.requires_grad_(False)
    for param in _head(model).parameters():
        param.requires_grad_(True)
    return model


def _head(model) -> torch.nn.Module:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.score


def _classifier_base(model_path: str, num_labels: int):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=num_labels, problem_type="multi_label_classification", dtype=torch.float32
    )


def export_stacked(
    model,
    model_path: str,
    out: str | Path,
    *,
    num_labels: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    tolerance: float = CONCAT_TOLERANCE,
) -> dict:
    """Write step 2's stacked model both ways and check they are the same function.

    ``out/pair/``: the frozen clinical and the task adapter as peft saved them (``clinical/``, ``task/``);
    ``out/concat/``: one adapter of rank r1 + r2 (:func:`clinray.train.lora.concat_adapters`); each with
    the trained head (``score_head.safetensors``: the head trains in full, outside the adapters). The
    concatenated adapter is loaded onto a fresh base and its logits on ``input_ids`` compared with the
    stacked model's (dropout off); the report says the max |diff| and whether it is within ``tolerance``.
    """
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    from clinray.train.lora import concat_adapters

    out = Path(out)
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    model.eval()
    with torch.no_grad():
        stacked = model(input_ids=input_ids, attention_mask=mask).logits
    model.save_pretrained(out / "pair")
    head = {k: v.detach().contiguous() for k, v in _head(model).state_dict().items()}
    save_file(head, str(out / "pair" / HEAD_FILE))
    concat = concat_adapters([out / "pair" / "clinical", out / "pair" / "task"], out / "concat")
    save_file(head, str(concat / HEAD_FILE))
    base = _classifier_base(model_path, num_labels)
    base.score.load_state_dict(load_file(str(concat / HEAD_FILE)))
    single = PeftModel.from_pretrained(base, str(concat)).eval()
    with torch.no_grad():
        diff = float((single(input_ids=input_ids, attention_mask=mask).logits - stacked).abs().max())
    rank = json.loads((concat / "adapter_config.json").read_text())["r"]
    return {
        "pair": str(out / "pair"),
        "concat": str(concat),
        "concat_rank": rank,
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "dtype": "float32",
        "passed": diff <= tolerance,
    }


def _encode(tokenizer, texts: list[str], seq_len: int) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "right"
    return tokenizer(texts, truncation=True, max_length=seq_len, padding=True, return_tensors="pt")


def train_classifier(model, tokenizer, notes: Notes, cfg: StepConfig, *, seed: int = 0) -> dict:
    """Step 2: BCE over the labels, AdamW over the trainable parameters only, ``cfg.epochs`` passes."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    enc = _encode(tokenizer, notes.texts, cfg.seq_len)
    labels = torch.tensor(notes.labels, dtype=torch.float32)
    rng = random.Random(seed)
    order = list(range(len(notes)))
    model.train()
    losses = []
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        rng.shuffle(order)
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.tensor(order[i : i + cfg.batch_size])
            logits = model(input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx]).logits
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    return {
        "trainable_params": sum(p.numel() for p in params),
        "loss_last": sum(losses[-5:]) / len(losses[-5:]),
        "seconds": round(time.perf_counter() - start, 1),
    }


@torch.no_grad()
def predict(model, tokenizer, notes: Notes, *, seq_len: int, batch_size: int = 32) -> torch.Tensor:
    """Sigmoid scores, one row per note."""
    model.eval()
    enc = _encode(tokenizer, notes.texts, seq_len)
    out = [
        torch.sigmoid(
            model(
                input_ids=enc["input_ids"][i : i + batch_size],
                attention_mask=enc["attention_mask"][i : i + batch_size],
            ).logits
        )
        for i in range(0, len(notes), batch_size)
    ]
    return torch.cat(out).float()


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Exact AUROC (Mann-Whitney with ties at half); None when only one class is present."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def macro_micro_auroc(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """Macro AUROC (mean over labels with both classes) and micro AUROC (all decisions pooled)."""
    per_label = [auroc(scores[:, j], labels[:, j]) for j in range(labels.shape[1])]
    valid = [a for a in per_label if a is not None]
    return {
        "macro": sum(valid) / len(valid) if valid else None,
        "micro": auroc(scores.reshape(-1), labels.reshape(-1)),
        "per_label": per_label,
    }


def paired_bootstrap(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, *, samples: int = 500, seed: int = 0
) -> dict:
    """95% interval of macro AUROC(a) - macro AUROC(b) over test notes resampled with replacement."""
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    n = labels.shape[0]
    for _ in range(samples):
        idx = torch.randint(0, n, (n,), generator=gen)
        ma, mb = (
            macro_micro_auroc(a[idx], labels[idx])["macro"],
            macro_micro_auroc(b[idx], labels[idx])["macro"],
        )
        if ma is not None and mb is not None:
            diffs.append(ma - mb)
    diffs.sort()
    if not diffs:
        return {"low": None, "high": None, "samples": 0}
    lo, hi = diffs[int(0.025 * (len(diffs) - 1))], diffs[int(0.975 * (len(diffs) - 1))]
    return {
        "low": lo,
        "high": hi,
        "samples": len(diffs),
        "p_not_better": sum(d <= 0 for d in diffs) / len(diffs),
    }
