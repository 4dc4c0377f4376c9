"""Training metrics: FLOPs per token, MFU against a table of device peaks, JSONL + TensorBoard writers.

Convention (PaLM appendix B, as torchtitan and nanoGPT use it): training FLOPs per token are
``6 N + 12 L a T``, where ``N`` is the number of parameters excluding the input embedding table (the
LM head is a matmul and counts; with tied embeddings the one shared matrix is the input table, so the
head's FLOPs are not counted, as in torchtitan), ``L`` the layers, ``a`` the attention width
(``num_attention_heads x head_dim``: the model width for Mistral and Mixtral, not for Qwen3- or
Gemma-shaped models) and ``T`` the sequence length; the second term is the attention score and value
matmuls, forward and backward, without causal or sliding-window savings. Activation recomputation is
not counted (MFU, not hardware FLOPs utilization). MFU is ``tokens/s per device x FLOPs per token /
peak``.

Peaks are the vendors' dense (no 2:4 sparsity) tensor-core figures for the compute dtype, looked up by
device *model*, not by loose substring: the name is split into tokens (``NVIDIA H100 NVL`` ->
``H100``, ``NVL``) and the first row whose tokens all occur wins, most specific rows first, so ``L40``
is not ``L4`` and ``H100 NVL`` is not the SXM part. fp32 compute has two rows per device: ``tfloat32``
(TF32 tensor cores, what fp32 matmuls use when ``torch.get_float32_matmul_precision()`` is not
``highest``; the training loop enables it on CUDA, ``fsdp.allow_tf32``) and plain ``float32``. A MIG
slice gets its share of the chip (by streaming multiprocessors when known, else ``g/7`` from the
profile name). An unknown device or dtype gives ``None`` and a warning, never a guessed figure; set
``run.peak_flops_per_device`` then. The trade-off: one formula for dense and MoE models; for Mixtral
``N`` is the active parameters (:func:`non_embedding_params`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import warnings
from pathlib import Path

from clinray import storage

__all__ = [
    "DEVICE_PEAKS",
    "DevicePeak",
    "attention_width",
    "device_peak",
    "flops_per_token",
    "non_embedding_params",
    "peak_flops",
    "MetricsWriter",
]


@dataclasses.dataclass(frozen=True, slots=True)
class DevicePeak:
    """Dense peak FLOP/s of one device model, per compute dtype (None: not published / not known)."""

    model: str
    """Canonical name, e.g. ``H100 SXM``."""
    tokens: tuple[str, ...]
    """Upper-case tokens that must all occur in the device name."""
    bfloat16: float
    """bf16 (= fp16) tensor cores, dense."""
    tfloat32: float | None = None
    """TF32 tensor cores, dense (fp32 matmuls with TF32 allowed)."""
    float32: float | None = None
    """Plain fp32 (no tensor cores: ``torch.get_float32_matmul_precision() == 'highest'``)."""
    num_sms: int | None = None
    """Streaming multiprocessors of the whole chip (to scale a MIG slice)."""


#: Device models, most specific first (NVIDIA and AMD datasheets; dense = half the sparse figure).
#: ``tokens`` must all occur in the device name; SMs are the whole chip's, for MIG slices.
_ROWS: tuple[tuple[str, str, float, float | None, float | None, int | None], ...] = (
    # model       tokens        bfloat16   tfloat32   float32   SMs
    ("H100 NVL", "H100 NVL", 835e12, 417.5e12, 60e12, 132),
    ("H100 PCIe", "H100 PCIE", 756e12, 378e12, 51.2e12, 114),
    ("H100 SXM", "H100", 989.4e12, 494.7e12, 66.9e12, 132),  # "NVIDIA H100 80GB HBM3"
    ("H200 NVL", "H200 NVL", 835e12, 417.5e12, 60e12, 132),
    ("H200 SXM", "H200", 989.4e12, 494.7e12, 66.9e12, 132),
    ("GH200", "GH200", 989.4e12, 494.7e12, 66.9e12, 132),
    ("H800 PCIe", "H800 PCIE", 756e12, 378e12, 51.2e12, 114),
    ("H800 SXM", "H800", 989.4e12, 494.7e12, 66.9e12, 132),
    ("H20", "H20", 148e12, 74e12, 44e12, 78),
    ("B200", "B200", 2.25e15, None, None, 148),
    ("A100", "A100", 312e12, 156e12, 19.5e12, 108),  # SXM4 and PCIe alike
    ("A800", "A800", 312e12, 156e12, 19.5e12, 108),
    ("L40S", "L40S", 362.05e12, 183e12, 91.6e12, 142),
    ("L40", "L40", 181.05e12, 90.5e12, 90.5e12, 142),
    ("L4", "L4", 121e12, 60e12, 30.3e12, 58),
    ("MI300X", "MI300X", 1307.4e12, None, None, 304),
    ("MI325X", "MI325X", 1307.4e12, None, None, 304),
)
DEVICE_PEAKS: tuple[DevicePeak, ...] = tuple(
    DevicePeak(model=m, tokens=tuple(t.split()), bfloat16=b, tfloat32=t32, float32=f32, num_sms=sms)
    for m, t, b, t32, f32, sms in _ROWS
)
#: MIG profile in a device name: ``MIG 3g.71gb`` (3 of 7 compute slices) or ``MIG 1c.3g.40gb`` (1 of them).
_MIG = re.compile(r"\bMIG\s+(?:(\d+)c\.)?(\d+)g\.", re.IGNORECASE)
#: Compute dtype -> column (fp16 tensor-core peaks equal bf16 ones on these devices).
_COLUMNS = {"bfloat16": "bfloat16", "float16": "bfloat16", "tfloat32": "tfloat32", "float32": "float32"}


def device_peak(device_name: str) -> DevicePeak | None:
    """The row of :data:`DEVICE_PEAKS` for a ``torch.cuda.get_device_name()`` / ``nvidia-smi`` name."""
    tokens = set(re.split(r"[\s\-_/,()]+", device_name.upper()))
    for row in DEVICE_PEAKS:
        if all(t in tokens for t in row.tokens):
            return row
    return None


def peak_flops(device_name: str, dtype: str, *, num_sms: int | None = None) -> float | None:
    """Dense peak FLOP/s of one device for a compute dtype, or None (with a warning) when unknown.

    Args:
        device_name: ``torch.cuda.get_device_name()``, e.g. ``NVIDIA H100 80GB HBM3``.
        dtype: ``bfloat16``, ``float16``, ``tfloat32`` (fp32 with TF32 matmuls) or ``float32``.
        num_sms: the device's streaming multiprocessors as visible (``multi_processor_count``): a MIG
            slice is scaled by it against the whole chip's; without it, by the profile's ``g/7``.
    """
    row = device_peak(device_name)
    if row is None:
        warnings.warn(
            f"no peak FLOP/s known for device {device_name!r}: MFU is not reported "
            "(set run.peak_flops_per_device to the device's dense peak)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    column = _COLUMNS.get(dtype)
    value = getattr(row, column) if column else None
    if value is None:
        warnings.warn(
            f"no {dtype} peak known for {row.model} ({device_name!r}): MFU is not reported "
            "(set run.peak_flops_per_device)",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    mig = _MIG.search(device_name)
    if mig:
        if num_sms and row.num_sms:
            return value * min(1.0, num_sms / row.num_sms)
        return value * int(mig.group(1) or mig.group(2)) / 7
    return value


def attention_width(config) -> int:
    """``num_attention_heads x head_dim`` of an HF config (object or ``config.json`` dict).

    ``head_dim`` when the config gives one (Qwen3, Gemma, Mistral-Nemo), else ``hidden_size / heads``.
    """
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    heads, hidden = get("num_attention_heads"), get("hidden_size")
    return int(heads * (get("head_dim") or hidden // heads))


def flops_per_token(*, num_params: int, num_layers: int, attn_width: int, seq_len: int) -> float:
    """``6 N + 12 L a T`` training FLOPs per token (``a``: :func:`attention_width`; see the module docstring)."""
    return 6.0 * num_params + 12.0 * num_layers * attn_width * seq_len


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


class MetricsWriter:
    """Rank 0's sink: one JSON line per report in ``metrics.jsonl`` and TensorBoard scalars.

    ``run_dir`` may be a URI (``s3://...``): an object store cannot append, so the writer keeps a local
    copy (started from the run's existing ``metrics.jsonl``, so a restarted rank 0 on another node
    appends to it) and uploads it with the TensorBoard files on :meth:`sync`, at most every
    ``sync_every_s`` on :meth:`write`, and on :meth:`close`. Rows after the last upload that a crash
    loses are those after the last checkpoint, which the resumed run logs again.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, sync_every_s: float = 30.0) -> None:
        self.remote = str(run_dir) if storage.is_uri(run_dir) else None
        self._tmp = None
        if self.remote:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="clinray_metrics_")
            self.run_dir = Path(self._tmp.name)
            existing = storage.join(self.remote, "metrics.jsonl")
            if storage.isfile(existing):
                (self.run_dir / "metrics.jsonl").write_bytes(storage.read_bytes(existing))
        else:
            self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        self._file = self.path.open("a")
        self.sync_every_s, self._synced_at = sync_every_s, time.monotonic()
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
        if self.remote and time.monotonic() - self._synced_at >= self.sync_every_s:
            self.sync()

    def sync(self) -> None:
        """Upload the metrics and TensorBoard files to a URI run folder (a no-op for a local one)."""
        if not self.remote:
            return
        if self._tb is not None:
            self._tb.flush()
        storage.upload_dir(self.run_dir, self.remote, last=("metrics.jsonl",))
        self._synced_at = time.monotonic()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        self.sync()
        if self._tmp is not None:
            self._tmp.cleanup()


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` (a local path or a URI); after a resume, later rows replace rows of
    the same step."""
    by_step: dict[int, dict] = {}
    for line in storage.read_text(path).splitlines():
        if line.strip():
            row = json.loads(line)
            by_step[int(row["step"])] = row
    return [by_step[k] for k in sorted(by_step)]
