"""LoRA adapters: PEFT-format loading and validation, the device slot pool, and the tiered cache."""

from .cache import AdapterCache, AdapterLoadError, CacheStats, UnknownAdapterError
from .peft_format import (
    AdapterSpec,
    InvalidAdapterError,
    LoRAWeights,
    adapter_from_tensors,
    read_peft_adapter,
)
from .slots import PackedAdapter, SlotPool

__all__ = [
    "AdapterCache",
    "AdapterLoadError",
    "AdapterSpec",
    "CacheStats",
    "InvalidAdapterError",
    "LoRAWeights",
    "PackedAdapter",
    "SlotPool",
    "UnknownAdapterError",
    "adapter_from_tensors",
    "read_peft_adapter",
]
