"""SFT samples, packing and the packed forward: labels on answers only, no attention across samples,
NEFTune's per-sample noise, the global token mean (no Ray; the tiny model for the logits)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clinray.models.chat_template import MCQ_SYSTEM_PROMPT
from clinray.sft.encode import encode_messages
from clinray.sft.packing import filter_samples, pack_epoch, plan_rows
from clinray.train.data import IGNORE_INDEX, packed_fields

MESSAGES = [
    {"role": "system", "content": MCQ_SYSTEM_PROMPT},
    {"role": "user", "content": "Which drug treats Broskrouitis?\nNarmycin\nKinmycin"},
    {"role": "assistant", "content": "The correct answer is: Narmycin"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _samples(tokenizer, n: int = 12):
    out = []
    for i in range(n):
        messages = [dict(m) for m in MESSAGES]
        messages[1]["content"] += "\n" + " ".join(["filler"] * (i % 5))  # varied lengths
        if i % 3 == 0:  # a two-turn conversation: both answers are trained on
            messages += [
                {"role": "user", "content": "Why?"},
                {"role": "assistant", "content": "It opens the channel."},
            ]
        out.append(
            encode_messages(messages, tokenizer, sample_id=f"s{i}", source="medqa" if i % 2 else "medmcqa")
        )
    return out


def test_labels_are_exactly_the_answers_and_eos(tokenizer):
    sample = encode_messages(MESSAGES, tokenizer, sample_id="a", source="medqa")
    labelled = sample.input_ids[sample.labels != IGNORE_INDEX]
    assert sample.labels[sample.labels != IGNORE_INDEX].tolist() == labelled.tolist()
    text = tokenizer.decode(labelled.tolist(), skip_special_tokens=False)
    assert text.strip() == "The correct answer is: Narmycin</s>"
    prompt = tokenizer.decode(sample.input_ids[sample.labels == IGNORE_INDEX].tolist())
    assert "Broskrouitis" in prompt and "Narmycin" in prompt.split("\n", 2)[-1]  # the option, not the answer


def test_packed_rows_keep_labels_and_boundaries(tokenizer):
    samples = _samples(tokenizer)
    columns, report = pack_epoch(samples, 160, strategy="bfd", seed=0, epoch=0, pad_id=tokenizer.pad_token_id)
    assert report.samples == len(samples) and sum(len(x) for x in columns["seq_lens"]) == len(samples)
    by_id = {s.id: s for s in samples}
    for ids, labels, lens, names in zip(
        columns["input_ids"], columns["labels"], columns["seq_lens"], columns["sample_ids"], strict=True
    ):
        at = 0
        for n, name in zip(lens.tolist(), names, strict=True):
            sample = by_id[name]
            assert ids[at : at + n].tolist() == sample.input_ids.tolist()
            expected = sample.labels.copy()
            expected[0] = IGNORE_INDEX  # a sample's first token is never a target
            assert labels[at : at + n].tolist() == expected.tolist()
            at += n
        assert (labels[at:] == IGNORE_INDEX).all() and (ids[at:] == tokenizer.pad_token_id).all()
    fields = packed_fields(list(columns["seq_lens"]), 160)
    starts = fields["position_ids"] == 0
    assert starts.sum() == len(samples) + sum(int(sum(x) < 160) for x in columns["seq_lens"])
    assert (fields["sample_len"][fields["segment"] < 0] == 0).all()


def test_bfd_fills_rows_and_is_deterministic():
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.0, 0.9, 5000).astype(int), 8, 1024)
    rows = plan_rows(lengths, 1024, strategy="bfd", seed=1)
    assert sorted(p.index for r in rows for p in r) == list(range(len(lengths)))  # each sample once, whole
    assert all(sum(len(p) for p in r) <= 1024 for r in rows)
    assert lengths.sum() / (len(rows) * 1024) > 0.99
    assert rows == plan_rows(lengths, 1024, strategy="bfd", seed=1)
    assert rows != plan_rows(lengths, 1024, strategy="bfd", seed=2)  # each epoch repacks
    wrapped = plan_rows(lengths, 1024, strategy="wrapped", seed=1)
    assert sum(sum(len(p) for p in r) < 1024 for r in wrapped) == 1  # only the last cut is short
    with pytest.raises(ValueError, match="exceeds seq_len"):
        plan_rows([2000], 1024, strategy="bfd", seed=0)


def test_too_long_and_untrainable_samples_are_counted(tokenizer):
    samples = _samples(tokenizer, 4)
    kept, dropped = filter_samples(samples, 40, overlong="drop")
    assert not kept and dropped["too_long"] == 4
    kept, dropped = filter_samples(samples, 40, overlong="truncate")
    assert dropped["truncated (kept)"] == 4 and dropped["no_trainable_tokens"] == 4  # cut before the answer


def _tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, attn_implementation="sdpa", dtype=torch.float32
    )
    return model.eval()


def test_packed_logits_equal_unpacked(tiny_model_dir, tokenizer):
    from clinray.train.step import forward_logits

    model = _tiny_model(tiny_model_dir)
    samples = _samples(tokenizer, 6)
    columns, _ = pack_epoch(samples, 256, strategy="bfd", seed=0, epoch=0, pad_id=tokenizer.pad_token_id)
    ids = torch.as_tensor(np.stack(columns["input_ids"]).astype(np.int64))
    fields = packed_fields(list(columns["seq_lens"]), 256)
    batch = {"input_ids": ids, "position_ids": torch.as_tensor(fields["position_ids"])}
    with torch.no_grad():
        packed = forward_logits(model, batch)
        by_id = {s.id: s for s in samples}
        worst = 0.0
        for r, (lens, names) in enumerate(zip(columns["seq_lens"], columns["sample_ids"], strict=True)):
            at = 0
            for n, name in zip(lens.tolist(), names, strict=True):
                alone = model(input_ids=torch.as_tensor(by_id[name].input_ids[None].astype(np.int64))).logits[
                    0
                ]
                worst = max(worst, (packed[r, at : at + n] - alone).abs().max().item())
                at += n
        assert worst < 1e-4, worst
        # the trap the loop avoids: a 2D all-ones mask (or the default cache) lets samples attend across
        mixed = model(
            input_ids=ids, position_ids=batch["position_ids"], attention_mask=torch.ones_like(ids)
        ).logits
        assert (mixed - packed).abs().max().item() > 1e-3


def test_a_config_that_would_mix_samples_is_refused():
    from clinray.config import ConfigError, load
    from clinray.train.config import TrainConfig

    with pytest.raises((ValueError, ConfigError), match="eager"):
        load(TrainConfig, "tiny/sft", ["model.attn_implementation=eager"])


def test_neftune_bound_is_per_sample_and_off_on_padding_and_in_eval(tiny_model_dir):
    from clinray.train.neftune import NEFTune

    model = _tiny_model(tiny_model_dir).train()
    d = model.config.hidden_size
    hook = NEFTune(model, alpha=5.0, seed=0, rank=0)
    lengths = [10, 40, 14]  # two samples and 14 tokens of padding in a row of 64
    sample_len = torch.as_tensor(packed_fields([np.asarray(lengths[:2])], 64)["sample_len"])
    ids = torch.randint(5, 100, (1, 64))
    clean = model.get_input_embeddings()(ids).detach()
    draws = []
    for k in range(30):
        with hook.batch(sample_len, micro_index=k):
            draws.append(model.get_input_embeddings()(ids).detach() - clean)
    noise = torch.stack(draws)
    for lo, hi, n in ((0, 10, 10), (10, 50, 40)):
        bound = 5.0 / math.sqrt(n * d)
        seg = noise[:, 0, lo:hi]
        assert seg.abs().max().item() <= bound * (1 + 1e-5)
        assert seg.abs().max().item() > 0.9 * bound  # uniform over the whole [-bound, bound]
    assert noise[:, 0, 50:].abs().max().item() == 0.0  # no noise on padding
    with hook.batch(sample_len, micro_index=0):  # the same micro-batch draws the same noise (resume)
        again = model.get_input_embeddings()(ids).detach() - clean
    assert torch.equal(again, noise[0])
    model.eval()
    with hook.batch(sample_len, micro_index=1):
        assert torch.equal(model.get_input_embeddings()(ids), clean)  # absent in eval mode
    row = NEFTune(model.train(), alpha=5.0, seed=0, rank=0, length="row")
    hook.remove()
    with row.batch(sample_len, micro_index=0):
        row_noise = model.get_input_embeddings()(ids).detach() - clean
    assert row_noise[0, :10].abs().max().item() <= 5.0 / math.sqrt(64 * d) * (
        1 + 1e-5
    )  # what public code does
    row.remove()


def test_global_token_mean_does_not_reweight_micro_batches():
    from clinray.train.step import global_loss_tokens

    a = {"labels": torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX]])}
    b = {"labels": torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 4, IGNORE_INDEX]])}
    assert global_loss_tokens([a, b], torch.device("cpu")).item() == 4  # 3 + 1 targets, not a mean of means
