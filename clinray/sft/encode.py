"""Conversations to token ids with response-only labels, in the paper's chat format.

A conversation (``system`` / ``user`` / ``assistant`` messages) is rendered with
:func:`clinray.models.chat_template.render_messages`, the text ``tokenizer.apply_chat_template`` gives
with the project's template, and tokenized once, whole, with character offsets. A token carries a label
when it starts inside an assistant turn's answer: from the space after ``<|assistant|>:`` through the
EOS token that ends the turn (so the model learns to stop). Everything else (system prompt, question,
role tokens, newlines) is ``-100``. Tokenizing the whole text, rather than each turn on its own, keeps
the ids exactly those the model sees at evaluation, where the prompt and the answer are one string; the
trade-off is a dependency on a fast tokenizer's offsets, which every tokenizer we load has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from clinray.models.chat_template import ASSISTANT_TOKEN, render_messages
from clinray.train.data import IGNORE_INDEX

__all__ = ["EncodedSample", "encode_messages", "answer_spans"]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class EncodedSample:
    """One conversation as token ids and labels (``-100`` where no loss is taken)."""

    id: str
    source: str
    input_ids: np.ndarray
    """int32 token ids."""
    labels: np.ndarray
    """int32: the token id where the loss is taken, ``-100`` elsewhere."""

    @property
    def num_trainable(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def __len__(self) -> int:
        return len(self.input_ids)


def answer_spans(messages: Sequence[dict], *, eos_token: str) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans ``[start, end)`` of each assistant answer (+ EOS)."""
    text, spans = "", []
    for message in messages:
        piece = render_messages([message], eos_token=eos_token)
        if message["role"] == "assistant":
            start = len(text) + len(ASSISTANT_TOKEN) + 1  # the space after "<|assistant|>:"
            spans.append((start, len(text) + len(piece) - 1))  # up to the newline after EOS
        text += piece
    return text, spans


def encode_messages(
    messages: Sequence[dict], tokenizer, *, sample_id: str = "", source: str = ""
) -> EncodedSample:
    """Token ids and response-only labels of one conversation (no BOS added: as evaluation encodes)."""
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"conversation {sample_id!r} has no assistant turn to learn from")
    text, spans = answer_spans(messages, eos_token=tokenizer.eos_token)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(encoding["input_ids"], dtype=np.int32)
    starts = np.asarray([start for start, _ in encoding["offset_mapping"]], dtype=np.int64)
    trainable = np.zeros(len(ids), dtype=bool)
    for lo, hi in spans:
        trainable |= (starts >= lo) & (starts < hi)
    labels = np.where(trainable, ids, IGNORE_INDEX).astype(np.int32)
    return EncodedSample(id=sample_id, source=source, input_ids=ids, labels=labels)
