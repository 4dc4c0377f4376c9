"""A key/value cache for batched generation that grows in place instead of by concatenation.

transformers' default ``DynamicCache`` appends each step's keys and values with ``torch.cat``, which
copies the whole cache at every generated token: for a batch of n prompts of length L that is
O(n * L) bytes per token per layer, and it grows with the batch. On CPU it was 39% of a decode step of
the 5-prompt Medprompt ensemble (``benchmarks/retrieval.py``). :class:`GrowingLayer` keeps each
layer's keys and values in a buffer with spare room (grown by half when full, so copies are
amortized), writes each step's entries in place and hands the attention a view of the filled part.

It holds every position, as ``DynamicLayer`` does, so it matches the default cache only where the
model attends to all of them: :func:`growing_cache` returns None for a sliding-window model whose
window is shorter than the sequence, and the engine then keeps transformers' default.
"""

from __future__ import annotations

from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["GrowingLayer", "growing_cache"]


class GrowingLayer(DynamicLayer):
    """``DynamicLayer`` with a pre-allocated buffer: same keys and values, no per-step copy of the cache."""

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer = self._value_buffer = None
        self._length = 0

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[-2] if self.keys.numel() else 0  # follows crop() and batch selection
        end = length + key_states.shape[-2]
        buffer = self._key_buffer
        if (
            buffer is None
            or end > buffer.shape[-2]
            or buffer.shape[:-2] != key_states.shape[:-2]
            or self.keys.numel()
            and self.keys.data_ptr() != buffer.data_ptr()  # keys replaced from outside (e.g. reordered)
        ):
            capacity = max(end + 64, end * 3 // 2)
            shape = (*key_states.shape[:-2], capacity, key_states.shape[-1])
            new_keys, new_values = key_states.new_empty(shape), value_states.new_empty(shape)
            if length:
                new_keys[..., :length, :] = self.keys
                new_values[..., :length, :] = self.values
            self._key_buffer, self._value_buffer = new_keys, new_values
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys = self._key_buffer[..., :end, :]
        self.values = self._value_buffer[..., :end, :]
        return self.keys, self.values


def growing_cache(config, *, total_length: int) -> Cache | None:
    """A cache of :class:`GrowingLayer` s for ``config``'s decoder, or None where it would not match the
    default (a sliding window shorter than ``total_length`` tokens)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text_config, "sliding_window", None)
    if window is not None and window < total_length:
        return None
    return Cache(layers=[GrowingLayer() for _ in range(text_config.num_hidden_layers)])
