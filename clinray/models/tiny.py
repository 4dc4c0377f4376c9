"""Tiny Mistral / Mixtral models and a byte-level BPE tokenizer for the demo and the tests.

The models are built from a config with random weights and saved as ordinary Hugging Face folders,
so every later stage loads them by path exactly as it would load Mistral-7B. The tokenizer is trained
on the given corpus (byte-level BPE, so any byte sequence is encodable) and carries the paper's role
tokens ``<|system|>``, ``<|prompter|>`` and ``<|assistant|>`` as special tokens plus the chat template.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from clinray.models.chat_template import CHAT_TEMPLATE, SPECIAL_TOKENS

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
TEXT_SUFFIXES = {".txt", ".md", ".html", ".htm", ".xml", ".nxml", ".jsonl", ".json"}


@dataclasses.dataclass(kw_only=True, slots=True)
class TinyModelConfig:
    """Shape of the tiny model and its tokenizer."""

    arch: Literal["mistral", "mixtral"] = "mistral"
    """Architecture: dense Mistral or Mixtral mixture-of-experts."""
    vocab_size: int = 4096
    """Target BPE vocabulary size (the trained vocabulary may come out smaller)."""
    hidden_size: int = 128
    """Model width d."""
    num_layers: int = 4
    """Decoder layers L."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in Mistral)."""
    intermediate_size: int = 384
    """MLP width."""
    max_position_embeddings: int = 1024
    """Longest sequence the model accepts."""
    num_experts: int = 4
    """Mixtral only: experts per layer."""
    num_experts_per_tok: int = 2
    """Mixtral only: experts routed per token."""
    seed: int = 0
    """Seed of the random initialization."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}"
            )
        if self.vocab_size < 300:
            raise ValueError("vocab_size must be at least 300 (256 bytes plus special tokens and merges)")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("num_experts_per_tok cannot exceed num_experts")


def iter_corpus_texts(corpus: str | Path, *, max_bytes: int = 50_000_000) -> Iterator[str]:
    """Yield texts from a file or a folder of text-like files (recursively), up to ``max_bytes``."""
    root = Path(corpus)
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    seen = 0
    for path in paths:
        if path.suffix.lower() not in TEXT_SUFFIXES:
            continue
        raw = path.read_bytes()
        text = raw.decode("utf-8", errors="ignore")
        if path.suffix == ".jsonl":
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield from (str(v) for v in record.values() if isinstance(v, str))
        else:
            yield text
        seen += len(raw)
        if seen >= max_bytes:
            return


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 4096, model_max_length: int = 1024):
    """Train a byte-level BPE tokenizer and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, UNK, PAD, *SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=list(SPECIAL_TOKENS),
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(
    cfg: TinyModelConfig, *, vocab_size: int, bos_token_id: int, eos_token_id: int, pad_token_id: int
):
    """A randomly initialized tiny ``MistralForCausalLM`` or ``MixtralForCausalLM``."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        sliding_window=None,
    )
    torch.manual_seed(cfg.seed)
    if cfg.arch == "mixtral":
        config = MixtralConfig(
            num_local_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok, **common
        )
        return MixtralForCausalLM(config)
    return MistralForCausalLM(MistralConfig(**common))


def build_tiny_model(corpus: str | Path, out: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Train the tokenizer on ``corpus``, build the model, save both to ``out``; return ``out``."""
    cfg = cfg or TinyModelConfig()
    out = Path(out)
    texts = list(iter_corpus_texts(corpus))
    if not texts:
        raise ValueError(f"no text files found under {str(corpus)!r} to train the tokenizer on")
    tokenizer = train_tokenizer(
        texts, vocab_size=cfg.vocab_size, model_max_length=cfg.max_position_embeddings
    )
    model = build_model(
        cfg,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    (out / "clinray_tiny.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return out
