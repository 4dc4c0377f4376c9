"""Tiny model round trip: save, load offline, forward, generate; the chat template renders Figure 4."""

from __future__ import annotations

import pytest
import torch

from clinray.models.chat_template import (
    MCQ_SYSTEM_PROMPT,
    mcq_answer,
    mcq_prompt,
    render_messages,
)
from clinray.models.tiny import TinyModelConfig, build_tiny_model

FIGURE_4 = (
    "<|system|>: You are a biomedical expert. Select the correct option for the following question:\n"
    "<|prompter|>: A 45-year-old man presents with chest pain. Which drug?\n"
    "Aspirin\nHeparin\nMorphine\nNitroglycerin\nOxygen\n"
    "<|assistant|>: The correct answer is: Aspirin"
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    lines = [f"Drug number {i} treats condition {i % 7} by inhibiting receptor {i % 5}." for i in range(400)]
    (root / "a.txt").write_text("\n".join(lines))
    return root


@pytest.mark.parametrize("arch", ["mistral", "mixtral"])
def test_round_trip_offline(corpus, tmp_path, monkeypatch, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TinyModelConfig(arch=arch, vocab_size=512, hidden_size=64, num_layers=2, intermediate_size=128)
    out = build_tiny_model(corpus, tmp_path / arch, cfg)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == ("MixtralForCausalLM" if arch == "mixtral" else "MistralForCausalLM")
    for special in ("<|system|>", "<|prompter|>", "<|assistant|>"):
        ids = tok(special, add_special_tokens=False).input_ids
        assert len(ids) == 1, f"{special} must be a single token"
    batch = tok(["Drug number 3 treats", "héllo"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch.input_ids.shape and logits.shape[-1] == len(tok)
    assert torch.isfinite(logits).all()
    generated = model.generate(**tok("Drug number", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > 2
    assert tok.decode(tok("héllo wörld <|assistant|>: x").input_ids) == "héllo wörld <|assistant|>: x"


def test_chat_template_renders_figure_4(corpus, tmp_path):
    from transformers import AutoTokenizer

    out = build_tiny_model(
        corpus,
        tmp_path / "m",
        TinyModelConfig(
            vocab_size=512, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
        ),
    )
    tok = AutoTokenizer.from_pretrained(out)
    question = "A 45-year-old man presents with chest pain. Which drug?"
    options = ["Aspirin", "Heparin", "Morphine", "Nitroglycerin", "Oxygen"]
    rendered = mcq_prompt(question, options) + " " + mcq_answer("Aspirin")
    assert rendered == FIGURE_4
    messages = [
        {"role": "system", "content": MCQ_SYSTEM_PROMPT},
        {"role": "user", "content": question + "\n" + "\n".join(options)},
        {"role": "assistant", "content": mcq_answer("Aspirin")},
    ]
    via_template = tok.apply_chat_template(messages, tokenize=False)
    assert via_template == render_messages(messages, eos_token=tok.eos_token)
    assert via_template == FIGURE_4 + tok.eos_token + "\n"
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == mcq_prompt(question, options)


def test_figure_5_cot_answer():
    assert mcq_answer("Aspirin", reasoning="It inhibits platelets.") == (
        "Let's think step-by-step. It inhibits platelets. Therefore, the correct answer is: Aspirin"
    )


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        TinyModelConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        TinyModelConfig(arch="mixtral", num_experts=2, num_experts_per_tok=3)


def test_empty_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no text files"):
        build_tiny_model(tmp_path, tmp_path / "out")
