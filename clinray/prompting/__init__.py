"""Medprompt prompting strategies (pure Python, no Ray): see :mod:`clinray.prompting.medprompt`."""

from clinray.prompting.medprompt import (
    STRATEGIES,
    MedpromptAnswer,
    MedpromptConfig,
    RunRecord,
    answer_batch,
    answer_question,
)
from clinray.prompting.templates import Example

__all__ = [
    "STRATEGIES",
    "Example",
    "MedpromptAnswer",
    "MedpromptConfig",
    "RunRecord",
    "answer_batch",
    "answer_question",
]
