"""Training metrics: FLOPs per token, MFU against a table of device peaks, JSONL + TensorBoard writers.

Convention (PaLM appendix B, as torchtitan and nanoGPT use it): training FLOPs per token are
``6 N + 12 L d T``, where ``N`` is the number of parameters excluding the input embedding table (the
LM head is a matmul and counts), ``L`` the layers, ``d`` the model width and ``T`` the sequence length;
the second term is the attention score and value matmuls, forward and backward, without causal
savings. Activation recomputation is not counted (MFU, not hardware FLOPs utilization). Peaks are the
vendors' dense (no 2:4 sparsity) tensor-core numbers for the compute dtype. MFU is
``tokens/s per device x FLOPs per token / peak``. The trade-off: one formula for dense and MoE models;
for Mixtral ``N`` should be the active parameters, which :func:`flops_per_token` takes as given.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["PEAK_FLOPS", "flops_per_token", "peak_flops", "MetricsWriter"]

#: Dense peak FLOP/s per device by (device name fragment, dtype); first match wins.
PEAK_FLOPS: list[tuple[str, str, float]] = [
    ("H200", "bfloat16", 989.4e12),
    ("H100 PCIe", "bfloat16", 756.0e12),
    ("H100", "bfloat16", 989.4e12),  # SXM
    ("A100", "bfloat16", 312.0e12),
    ("L40S", "bfloat16", 362.05e12),
    ("A10G", "bfloat16", 70.0e12),
    ("L4", "bfloat16", 121.0e12),
    ("H200", "float32", 494.7e12),  # TF32 tensor cores
    ("H100", "float32", 494.7e12),
    ("A100", "float32", 156.0e12),
]


def flops_per_token(*, num_params: int, num_layers: int, hidden_size: int, seq_len: int) -> float:
    """``6 N + 12 L d T`` training FLOPs per token (see module docstring for N)."""
    return 6.0 * num_params + 12.0 * num_layers * hidden_size * seq_len


def non_embedding_params(model) -> int:
    """Active parameters per token, excluding the input embedding table (FSDP2 DTensors give global sizes).

    For a mixture of experts (Mixtral), expert weights count with the routed fraction ``k / E``.
    """
    config = getattr(model, "config", None)
    experts, routed = getattr(config, "num_local_experts", 0), getattr(config, "num_experts_per_tok", 0)
    total = 0.0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        total += p.numel() * (routed / experts if experts and ".experts." in name else 1.0)
    return int(total)


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Peak FLOP/s of one device from :data:`PEAK_FLOPS`, or None when unknown (e.g. a CPU)."""
    for fragment, table_dtype, value in PEAK_FLOPS:
        if fragment in device_name and table_dtype == dtype:
            return value
    return None


class MetricsWriter:
    """Rank 0's sink: one JSON line per report in ``metrics.jsonl`` and TensorBoard scalars."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def write(self, metrics: dict) -> None:
        self._file.write(json.dumps(metrics) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = int(metrics["step"])
            for key, value in metrics.items():
                if isinstance(value, int | float) and key != "step":
                    self._tb.add_scalar(key.replace("loss_", "loss/"), value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl``; after a resume, later rows replace rows of the same step."""
    by_step: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = row
    return [by_step[k] for k in sorted(by_step)]
