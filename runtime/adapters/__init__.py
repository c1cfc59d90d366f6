"""LoRA adapters: PEFT-format loading and validation, the device slot pool, the host arena and the tiered cache."""

from .cache import AdapterCache, AdapterLoadError, CacheStats, HostBudgetFullError, UnknownAdapterError
from .host_arena import HostArena, HostBlock, ReleasedBlockError
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
    "HostArena",
    "HostBlock",
    "HostBudgetFullError",
    "InvalidAdapterError",
    "LoRAWeights",
    "PackedAdapter",
    "ReleasedBlockError",
    "SlotPool",
    "UnknownAdapterError",
    "adapter_from_tensors",
    "read_peft_adapter",
]
