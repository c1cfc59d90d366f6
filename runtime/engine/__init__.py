"""The inference engine: Llama-family decoder, paged KV cache, continuous batching with many LoRA adapters."""

from .engine import Engine, EngineConfig, GenerationEvent, GenerationRequest, GenerationResult, Usage
from .model import PRESETS, ModelConfig
from .sampling import SamplingParams

__all__ = [
    "PRESETS",
    "Engine",
    "EngineConfig",
    "GenerationEvent",
    "GenerationRequest",
    "GenerationResult",
    "ModelConfig",
    "SamplingParams",
    "Usage",
]
