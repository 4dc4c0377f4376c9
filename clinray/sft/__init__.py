"""Instruction fine-tuning data: source readers (:mod:`.sources`), the Table 3 mixture (:mod:`.mixture`),
conversations to token ids with response-only labels (:mod:`.encode`), packing (:mod:`.packing`) and
the SFT data stage that writes the packed rows the training loop reads (:mod:`.prepare`).
"""
