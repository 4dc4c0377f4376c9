"""Generation engines behind one interface (:class:`~clinray.engines.base.GenerationEngine`)."""

from __future__ import annotations

from clinray.engines.base import EngineConfig, EngineUnavailableError, GenerationEngine

__all__ = ["EngineConfig", "EngineUnavailableError", "GenerationEngine", "build_engine"]


def build_engine(cfg: EngineConfig) -> GenerationEngine:
    """The engine ``cfg.kind`` names, loaded and ready."""
    if cfg.kind == "transformers":
        from clinray.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch_size=cfg.max_batch_size
        )
    if cfg.kind == "openai":
        from clinray.engines.openai_engine import OpenAICompatibleEngine

        return OpenAICompatibleEngine(
            cfg.base_url, model=cfg.model, api_key=cfg.api_key, timeout_s=cfg.timeout_s
        )
    if cfg.kind == "vllm":
        from clinray.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg.model, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization)
    raise ValueError(f"engine.kind {cfg.kind!r} is unknown; choose transformers, openai or vllm")
