"""The learning rate at step 0, at the end of warm-up and at the end matches the paper's formula."""

from __future__ import annotations

import math

import pytest

from clinray.train.config import OptimSection
from clinray.train.schedule import build_scheduler, lr_at, num_warmup_steps


def test_warmup_is_one_percent_of_steps():
    assert num_warmup_steps(79_259, warmup_fraction=0.01) == 793
    assert num_warmup_steps(50, warmup_fraction=0.01) == 1
    assert num_warmup_steps(50, warmup_fraction=0.0) == 0


@pytest.mark.parametrize("total", [20, 1000, 79_259])
def test_key_points_match_formula(total):
    max_lr, floor = 7e-6, 0.1
    kw = dict(
        total_steps=total, max_lr=max_lr, warmup_fraction=0.01, warmup_start_factor=0.1, min_lr_ratio=floor
    )
    warm = num_warmup_steps(total, warmup_fraction=0.01)
    assert lr_at(0, **kw) == pytest.approx(0.1 * max_lr, rel=1e-12)
    assert lr_at(warm, **kw) == pytest.approx(max_lr, rel=1e-12)
    assert lr_at(total, **kw) == pytest.approx(floor * max_lr, rel=1e-12)
    mid = warm + (total - warm) // 2
    expected = floor * max_lr + (1 - floor) * max_lr * 0.5 * (
        1 + math.cos(math.pi * (mid - warm) / (total - warm))
    )
    assert lr_at(mid, **kw) == pytest.approx(expected, rel=1e-12)
    # warm-up is linear and increasing, decay is monotone
    lrs = [lr_at(s, **kw) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(lrs[: warm + 1], lrs[1 : warm + 1]))
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))


def test_lambda_scheduler_follows_formula():
    import torch

    cfg = OptimSection(max_lr=1e-3, warmup_fraction=0.1, min_lr_ratio=0.0)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=cfg.max_lr)
    sched = build_scheduler(opt, total_steps=30, optim_cfg=cfg)
    seen = []
    for _ in range(30):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(1e-4)
    assert seen[3] == pytest.approx(1e-3)
    assert seen[30] == pytest.approx(0.0, abs=1e-15)


def test_bad_optim_config_is_actionable():
    with pytest.raises(ValueError, match="warmup_fraction"):
        OptimSection(warmup_fraction=1.5)
    with pytest.raises(ValueError, match="total_steps"):
        num_warmup_steps(0, warmup_fraction=0.01)
