"""Pure pieces of the training loop (no Ray, no process group)."""

from __future__ import annotations

from clinray.train.loop import _progress_line


def test_progress_line_is_one_compact_line_with_the_sources_present():
    metrics = {
        "step": 12,
        "loss": 3.6,
        "loss_clinical": 3.4123,
        "loss_general": 3.9012,
        "num_loss_tokens": 4096,
        "lr": 1.2e-3,
        "tokens_per_s": 6950.4,
        "grad_norm": 0.5,
    }
    line = _progress_line(metrics, total_steps=140)
    assert line == "step 12/140  loss clinical 3.412 general 3.901  lr 1.2e-03  tok/s 6,950"
    # a source without tokens since the last log is left out; "other" shows when it has tokens
    metrics.update(loss_clinical=None, loss_other=2.0)
    assert "loss general 3.901 other 2.000  lr" in _progress_line(metrics, total_steps=140)
