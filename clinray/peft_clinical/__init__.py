"""Two-step clinical PEFT (Gema et al., arXiv 2307.03042): a clinical LoRA adapter, then a task adapter
stacked on it, frozen, for multi-label clinical outcome prediction. See :mod:`clinray.peft_clinical.recipe`
and :mod:`clinray.peft_clinical.data`.
"""
