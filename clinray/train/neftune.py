"""NEFTune (Jain et al. 2023; the clinical paper's section 3.3): uniform noise on the input embeddings
while training, with L each packed sample's own length.

The noise of token ``t`` in sample ``i`` is ``u * alpha / sqrt(L_i * d)``, ``u`` uniform in [-1, 1] per
entry, ``d`` the embedding width and ``L_i`` the length of the sample ``t`` belongs to inside its packed
row (``scale: paper_sqrt_alpha`` gives ``sqrt(alpha / (L_i d))``, the formula as the clinical paper
prints it). Public implementations (the transformers hook, TRL) take the row's length instead, which on
packed rows gives every sample less noise than it would get alone (transformers#34659); ``length:
row`` reproduces that for comparison. Padding (``sample_len == 0``) gets none, and eval mode none.

The noise is drawn from a generator reseeded for every micro-batch from ``(seed, rank, micro-batch
number)``, so a run resumed from a checkpoint draws exactly the noise the uninterrupted run drew, with
no generator state to save. The trade-off: one ``manual_seed`` per micro-batch (microseconds).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["NEFTune", "noise_scale"]


def noise_scale(
    sample_len: torch.Tensor, *, alpha: float, dim: int, scale: str = "reference"
) -> torch.Tensor:
    """Per-token noise bound: ``alpha / sqrt(L d)`` (or ``sqrt(alpha / (L d))``), 0 where ``L`` is 0."""
    length = sample_len.to(torch.float32)
    safe = length.clamp(min=1.0) * dim
    if scale == "reference":
        bound = alpha / torch.sqrt(safe)
    elif scale == "paper_sqrt_alpha":
        bound = torch.sqrt(alpha / safe)
    else:
        raise ValueError(f"neftune.scale {scale!r} is not reference or paper_sqrt_alpha")
    return torch.where(length > 0, bound, torch.zeros_like(bound))


class NEFTune:
    """A forward hook on the input embeddings; :meth:`batch` arms it for one micro-batch."""

    def __init__(
        self, model, *, alpha: float, scale: str = "reference", length: str = "sample", seed: int, rank: int
    ):
        self.alpha, self.scale, self.length = alpha, scale, length
        self.seed, self.rank = seed, rank
        self.embedding = model.get_input_embeddings()
        self.dim = int(self.embedding.embedding_dim)
        self._bound: torch.Tensor | None = None
        self._generator: torch.Generator | None = None
        self.handle = self.embedding.register_forward_hook(self._hook)

    @contextlib.contextmanager
    def batch(self, sample_len: torch.Tensor | None, *, micro_index: int):
        """Noise the next forward of the embeddings for this micro-batch (``sample_len``: (B, T) lengths)."""
        if sample_len is not None:
            # ``row``: what public code uses as L, the row length (padding included) for every real token
            lengths = (
                torch.where(sample_len > 0, sample_len.shape[-1], 0) if self.length == "row" else sample_len
            )
            self._bound = noise_scale(lengths, alpha=self.alpha, dim=self.dim, scale=self.scale)
            device = self._bound.device
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed((self.seed * 1_000_003 + self.rank * 7_919 + micro_index) % (2**63))
        try:
            yield
        finally:
            self._bound = self._generator = None

    def _hook(self, module, inputs, output):
        if not module.training or self._bound is None:
            return output
        bound = self._bound.to(output.device, output.dtype).reshape(*output.shape[:-1], 1)
        noise = torch.empty(output.shape, device=output.device, dtype=torch.float32)
        noise.uniform_(-1.0, 1.0, generator=self._generator)
        return output + noise.to(output.dtype) * bound

    def remove(self) -> None:
        self.handle.remove()
