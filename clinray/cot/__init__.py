"""Verified chain-of-thought data (the paper's 3.2; Medprompt's self-generated CoT): ``clinray cot``.

A teacher (a local Hugging Face folder in Ray Data actors, or any OpenAI-compatible server) writes k
explanations per multiple-choice training question, each with the options in another seeded order, in
the Figure 5 format. The final answer is parsed deterministically, mapped back through the sample's
shuffle, and only chains whose answer is the gold option are kept. Questions that copy an evaluation
question are dropped first. Every question and every sample is accounted for (``report``), and the
output, ``cot.jsonl``, feeds both the SFT mixture (layout ``chat``) and ``clinray index`` (``cot``
input). Modules: :mod:`~clinray.cot.config` (no heavy imports), :mod:`~clinray.cot.verify` (the
pure judge), :mod:`~clinray.cot.teacher` (the actor), :mod:`~clinray.cot.run` (the stage),
:mod:`~clinray.cot.report` (the ledger), :mod:`~clinray.cot.output` (reading the rows back).
"""
