"""The paper's chat format: ``<|system|>: ...``, ``<|prompter|>: ...``, ``<|assistant|>: ...``.

One Python renderer and one Jinja chat template, kept equal by tests, so that training (which needs
the character offsets of each turn for response-only loss) and ``tokenizer.apply_chat_template``
(which lm-eval and serving use) produce the same text. Turns are separated by a newline; a finished
assistant turn ends with the EOS token, exactly as in the packed SFT data.
"""

from __future__ import annotations

from collections.abc import Sequence

SYSTEM_TOKEN = "<|system|>"
PROMPTER_TOKEN = "<|prompter|>"
ASSISTANT_TOKEN = "<|assistant|>"
SPECIAL_TOKENS = (SYSTEM_TOKEN, PROMPTER_TOKEN, ASSISTANT_TOKEN)

#: Text after which a completion is no longer the assistant's answer: the next turn's role token, or an
#: end token (ours, and those of common base models whose tokenizers a run may reuse).
STOP_STRINGS = ("</s>", PROMPTER_TOKEN, SYSTEM_TOKEN, ASSISTANT_TOKEN, "<|endoftext|>", "<|im_end|>")

#: Figure 4/5 system prompt (the line break in the paper is layout only).
MCQ_SYSTEM_PROMPT = "You are a biomedical expert. Select the correct option for the following question:"
ANSWER_PREFIX = "The correct answer is:"
COT_PREFIX = "Let's think step-by-step."
COT_ANSWER_PREFIX = "Therefore, the correct answer is:"

_ROLE_TOKEN = {"system": SYSTEM_TOKEN, "user": PROMPTER_TOKEN, "assistant": ASSISTANT_TOKEN}

#: Jinja template equal to :func:`render_messages` (``eos_token`` appended to finished assistant turns).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>: {{ message['content'] }}{{ '\\n' }}"
    "{%- elif message['role'] == 'user' -%}<|prompter|>: {{ message['content'] }}{{ '\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>: {{ message['content'] }}{{ eos_token }}{{ '\\n' }}"
    "{%- else -%}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>:{%- endif -%}"
)


def render_messages(
    messages: Sequence[dict], *, eos_token: str = "</s>", add_generation_prompt: bool = False
) -> str:
    """Render chat messages (``role`` in system/user/assistant) in the paper's format."""
    parts = []
    for message in messages:
        role = message["role"]
        if role not in _ROLE_TOKEN:
            raise ValueError(f"unknown role {role!r}; expected one of {sorted(_ROLE_TOKEN)}")
        suffix = eos_token if role == "assistant" else ""
        parts.append(f"{_ROLE_TOKEN[role]}: {message['content']}{suffix}\n")
    if add_generation_prompt:
        parts.append(f"{ASSISTANT_TOKEN}:")
    return "".join(parts)


def format_mcq(question: str, options: Sequence[str], *, labels: Sequence[str] | None = None) -> str:
    """The prompter turn of Figure 4: the question, then one option per line.

    Args:
        question: the question stem.
        options: the option texts, in display order.
        labels: optional letters to prefix (``"A. text"``) for letter-scoring variants.
    """
    if labels is not None:
        lines = [f"{label}. {text}" for label, text in zip(labels, options, strict=True)]
    else:
        lines = list(options)
    return "\n".join([question.strip(), *lines])


def mcq_prompt(question: str, options: Sequence[str], *, labels: Sequence[str] | None = None) -> str:
    """Figure 4 up to and including ``<|assistant|>:``; the answer follows after a space."""
    return render_messages(
        [
            {"role": "system", "content": MCQ_SYSTEM_PROMPT},
            {"role": "user", "content": format_mcq(question, options, labels=labels)},
        ],
        add_generation_prompt=True,
    )


def mcq_answer(option: str, *, reasoning: str | None = None) -> str:
    """The assistant turn of Figure 4 (no reasoning) or Figure 5 (with reasoning)."""
    if reasoning is None:
        return f"{ANSWER_PREFIX} {option}"
    return f"{COT_PREFIX} {reasoning.strip()} {COT_ANSWER_PREFIX} {option}"
