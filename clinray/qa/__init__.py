"""The one owner of the question benchmarks' native layouts (not to be confused with the speed ``benchmarks/``).

MedQA (4 and 5 options), USMLE, MMLU, MedMCQA and PubMedQA are read into one :class:`Question` record
with a stable id ``{benchmark}/{split}/{native}``, and written back in the same layouts. Evaluation
(``clinray/eval/tasks/utils.py``), decontamination (``load_questions``), the Medprompt index, the
``medprompt`` tool and evaluation, and the tiny world all go through here, so their ids join and their
parsing cannot disagree. See docs/evaluation.md "Question files (clinray.qa)".

Trade-off: one record for every layout means layout-specific fields ride in ``Question.meta`` (MMLU
``subject``, PubMedQA ``contexts``, the native fields writers put back) instead of typed attributes.
"""

from clinray.qa.readers import (
    EVAL_FILES,
    LAYOUTS,
    detect_cop_base,
    detect_layout,
    eval_files,
    from_records,
    normalize_cop_base,
    pubmedqa_from_mapping,
    read_benchmark,
    read_medmcqa,
    read_medqa,
    read_mmlu,
    read_pubmedqa,
    read_questions,
)
from clinray.qa.record import (
    BENCHMARKS,
    LETTERS,
    BadRow,
    Question,
    QuestionSet,
    Skipped,
    question_id,
    split_of,
)
from clinray.qa.rows import PUBMEDQA_CHOICES
from clinray.qa.writers import (
    format_medmcqa,
    format_medqa,
    format_mmlu,
    format_pubmedqa,
    write_questions,
)

__all__ = [
    "BENCHMARKS",
    "EVAL_FILES",
    "LAYOUTS",
    "LETTERS",
    "PUBMEDQA_CHOICES",
    "BadRow",
    "Question",
    "QuestionSet",
    "Skipped",
    "detect_cop_base",
    "detect_layout",
    "eval_files",
    "format_medmcqa",
    "format_medqa",
    "format_mmlu",
    "format_pubmedqa",
    "from_records",
    "normalize_cop_base",
    "pubmedqa_from_mapping",
    "question_id",
    "read_benchmark",
    "read_medmcqa",
    "read_medqa",
    "read_mmlu",
    "read_pubmedqa",
    "read_questions",
    "split_of",
    "write_questions",
]
