"""The GPU path, checked on CPU: peak table and FLOPs, sliding window, expert placement, lazy imports,
and the GPU check kit at toy size (``benchmarks/gpu_check.py --cpu-smoke``) without Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from clinray.train.metrics import attention_width, flops_per_token, peak_flops

REPO = Path(__file__).resolve().parents[2]

#: ``torch.cuda.get_device_name()`` / ``nvidia-smi --query-gpu=name`` strings -> dense bf16 peak.
REAL_NAMES = [
    ("NVIDIA H100 80GB HBM3", 989.4e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989.4e12),
    ("NVIDIA H200 NVL", 835e12),
    ("NVIDIA H800", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100-PCIE-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L40S", 362e12),
    ("NVIDIA L40", 181e12),
    ("NVIDIA L4", 121e12),
    ("NVIDIA B200", 2.25e15),
    ("NVIDIA H200 MIG 3g.71gb", 989.4e12 * 3 / 7),
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 312e12 / 7),
    ("NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb", 989.4e12 / 7),
]


@pytest.mark.parametrize(("name", "expected"), REAL_NAMES)
def test_peak_table_matches_real_device_names(name, expected):
    assert peak_flops(name, "bfloat16") == pytest.approx(expected, rel=2e-3)
    assert peak_flops(name, "float16") == peak_flops(name, "bfloat16")


@pytest.mark.parametrize("name", ["NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB", "NVIDIA GB200", "cpu"])
def test_unknown_device_gives_none_and_a_warning(name):
    with pytest.warns(RuntimeWarning, match="no peak FLOP/s known"):
        assert peak_flops(name, "bfloat16") is None


def test_fp32_peaks_follow_tf32_and_mig_scales_by_multiprocessors():
    assert peak_flops("NVIDIA H100 80GB HBM3", "tfloat32") == pytest.approx(494.7e12)
    assert peak_flops("NVIDIA H100 80GB HBM3", "float32") == pytest.approx(66.9e12)
    assert peak_flops("NVIDIA A100-SXM4-80GB", "tfloat32") == pytest.approx(156e12)
    with pytest.warns(RuntimeWarning, match="no tfloat32 peak known for B200"):
        assert peak_flops("NVIDIA B200", "tfloat32") is None
    # with the slice's SM count (torch's multi_processor_count) the share is exact: 60 of 132 SMs
    assert peak_flops("NVIDIA H100 80GB HBM3 MIG 3g.40gb", "bfloat16", num_sms=60) == pytest.approx(
        989.4e12 * 60 / 132
    )


def test_attention_term_uses_heads_times_head_dim():
    mistral = {"num_attention_heads": 32, "hidden_size": 4096, "num_hidden_layers": 32}
    qwen3 = {"num_attention_heads": 32, "hidden_size": 2560, "head_dim": 128}
    assert attention_width(mistral) == 4096
    assert attention_width(qwen3) == 4096  # not hidden_size (2560)
    assert attention_width(types.SimpleNamespace(**qwen3)) == 4096
    assert flops_per_token(num_params=10, num_layers=2, attn_width=4, seq_len=8) == 6 * 10 + 12 * 2 * 4 * 8


def test_compute_dtype_label_on_cpu():
    from clinray.train.config import FSDPSection
    from clinray.train.step import compute_dtype

    assert compute_dtype(FSDPSection(), torch.device("cpu")) == "float32"
    assert compute_dtype(FSDPSection(param_dtype="bfloat16"), torch.device("cpu")) == "bfloat16"


@pytest.mark.parametrize(
    ("seq_len", "window_after"), [(4096, None), (2048, None), (8192, 4096), (None, 4096)]
)
def test_sliding_window_dropped_when_blocks_fit_in_it(seq_len, window_after):
    from transformers import MistralConfig

    from clinray.train.fsdp import fit_sliding_window

    config = MistralConfig(sliding_window=4096)
    fit_sliding_window(config, seq_len)
    assert config.sliding_window == window_after
    per_layer = types.SimpleNamespace(
        sliding_window=4096, layer_types=["sliding_attention", "full_attention"]
    )
    assert not fit_sliding_window(per_layer, 4096) and per_layer.sliding_window == 4096


def test_expert_weights_shard_on_dim_1_only_when_dim_0_cannot_split():
    from torch.distributed.tensor import Shard

    from clinray.train.fsdp import expert_placement_fn

    experts = torch.nn.Parameter(torch.empty(8, 6, 4))
    assert expert_placement_fn(80)(experts) == Shard(1)  # Mixtral's 8 experts over 80 ranks
    assert expert_placement_fn(16)(experts) == Shard(1)
    assert expert_placement_fn(8)(experts) is None  # one expert a rank: FSDP2's Shard(0)
    assert expert_placement_fn(80)(torch.nn.Parameter(torch.empty(8, 6))) is None


def _modules_after(code: str) -> set[str]:
    heavy = ("ray", "lm_eval", "pymilvus", "milvus_lite", "pyarrow")
    probe = f"{code}\nimport sys\nprint(sorted({{m.split('.')[0] for m in sys.modules}} & {set(heavy)!r}))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')))


def test_gpu_only_paths_import_no_ray_lm_eval_or_milvus():
    assert not _modules_after(
        "import clinray.eval.scorer, clinray.train.loop, clinray.train.step, clinray.train.checkpoint\n"
        "import clinray.engines.transformers_engine, clinray.models.scoring\n"
        "import benchmarks.retrieval, benchmarks.gpu_check"
    )


@pytest.mark.slow  # ~10 s: in `make test`, kept out of `make test-fast`
def test_gpu_check_cpu_smoke_runs_without_ray(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert wall < 60, f"--cpu-smoke took {wall:.0f} s"
    assert all(result["modules_absent"].values()), result["modules_absent"]  # no Ray, lm-eval, Milvus
    assert result["nccl"]["all_reduce_ok"] and "errors" not in result
    rows = result["train"]
    assert [(r["micro_batch"], r["root"].startswith("FSDP2")) for r in rows] == [
        (1, True), (1, False), (2, True), (2, False)
    ]  # fmt: skip
    for row in rows:
        assert row["recompiles_stable"] and all(
            row["load_checks"][k] for k in ("inv_freq_rebuilt", "weights_as_stored", "shards_fp32")
        )
        assert row["tokens_per_s_per_device"] > 0 and 5.0 < row["loss"] < 7.5 and row["mfu"] is None
    assert result["export"]["tensors_equal"] and result["export"]["num_files"] > 1
    assert result["engine"]["ratio"] > 0 and result["engine"]["num_questions"] == 1
    assert result["scorer"]["max_abs_loglikelihood_diff"] < 1e-3  # fp32: prompt-once == per option
    assert (
        not (REPO / "benchmarks" / "results" / "gpu_check.json").exists()
        or "cpu-smoke" not in (REPO / "benchmarks" / "results" / "gpu_check.json").read_text()
    )


def test_checkpoints_go_straight_to_shared_storage_only(tmp_path, monkeypatch):
    """DCP writes into the run folder when Ray's storage is a path all workers see, else Ray uploads."""
    pafs = pytest.importorskip("pyarrow.fs")
    ray_train = pytest.importorskip("ray.train")
    from clinray.train.loop import _direct_checkpoint_dir

    def storage(fs, experiment: Path):
        return types.SimpleNamespace(
            storage_filesystem=fs,
            experiment_fs_path=str(experiment),
            build_checkpoint_path_from_name=lambda name: str(experiment / name),
        )

    run = tmp_path / "run"
    run.mkdir()
    for fs, marker, expected in [
        (pafs.LocalFileSystem(), True, run / "checkpoint_0000005"),
        (pafs.LocalFileSystem(), False, None),  # a node-local path that is not the shared one
        (pafs._MockFileSystem(), True, None),  # a URI (s3://...): Ray uploads a local folder
    ]:
        (run / ".validate_storage_marker").unlink(missing_ok=True)
        if marker:
            (run / ".validate_storage_marker").touch()
        ctx = types.SimpleNamespace(get_storage=lambda fs=fs: storage(fs, run))
        monkeypatch.setattr(ray_train, "get_context", lambda ctx=ctx: ctx)
        got = _direct_checkpoint_dir("checkpoint_0000005")
        assert (got[0] if got else None) == expected
