"""The teacher inside Ray Data: an actor class that holds one generation engine and writes chains.

Each actor builds its engine once (:class:`~clinray.engines.transformers_engine.TransformersEngine`
loads the model folder; :class:`~clinray.engines.openai_engine.OpenAICompatibleEngine` holds one HTTP
client) and turns a batch of samples into completions with one ``generate`` call. Prompts are built in
the actor from the sample's question text and shown options, so the driver ships no few-shot text per
row. A failed request to a server (unreachable, an HTTP error) marks that batch's samples
``teacher_error`` with the message, instead of failing hours of generation; a local model that fails
raises (that is a bug or a full device, not a transient).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from clinray.cot.config import TeacherConfig
from clinray.cot.verify import teacher_prompt
from clinray.prompting.templates import Example

__all__ = ["TeacherBatch", "build_teacher"]


def build_teacher(cfg: TeacherConfig, *, api_key: str = ""):
    """The generation engine of ``cfg`` (the same engines serving and evaluation use)."""
    if cfg.kind == "transformers":
        from clinray.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch_size=cfg.batch_size
        )
    from clinray.engines.openai_engine import OpenAICompatibleEngine

    # the key comes from the driver (cfg.api_key_env): a worker's environment may lack the variable
    return OpenAICompatibleEngine(cfg.base_url, model=cfg.model, api_key=api_key, timeout_s=cfg.timeout_s)


class TeacherBatch:
    """Ray Data ``map_batches`` callable: ``{key, qid, text, shown, seed}`` -> ``{key, completion, error}``.

    ``shown`` is the JSON list of the options in the sample's order; ``seed`` the chain's own sampling
    seed (honoured per row by the transformers engine; a server gets the stage seed per request).
    """

    def __init__(
        self,
        cfg: TeacherConfig,
        *,
        api_key: str,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        use_labels: bool,
        examples: Sequence[Example] = (),
        num_examples: int = 0,
    ) -> None:
        self.cfg = cfg
        self.engine = build_teacher(cfg, api_key=api_key)
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.use_labels = use_labels
        self.examples, self.num_examples = list(examples), num_examples

    def prompt(self, qid: str, text: str, shown: list[str]) -> str:
        """The sample's prompt: the first ``num_examples`` drawn examples that are not the question itself."""
        examples = [ex for ex in self.examples if ex.id != qid][: self.num_examples]
        return teacher_prompt(text, shown, examples=examples, use_labels=self.use_labels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [
            self.prompt(str(q), str(t), json.loads(str(s)))
            for q, t, s in zip(batch["qid"], batch["text"], batch["shown"], strict=True)
        ]
        errors = [""] * len(prompts)
        if self.cfg.kind == "transformers":
            texts = self.engine.generate(
                prompts,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                row_seeds=[int(s) for s in batch["seed"]],
                share_prefix=self.num_examples > 0,  # the few-shot part is shared: computed once
            )
        else:
            try:
                texts = self.engine.generate(
                    prompts, max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed
                )
            except (ConnectionError, RuntimeError, OSError, KeyError, ValueError) as exc:
                texts = [""] * len(prompts)
                errors = [f"{type(exc).__name__}: {exc}"[:500]] * len(prompts)
        return {
            "key": np.asarray(batch["key"]),
            "completion": np.asarray(texts, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }
