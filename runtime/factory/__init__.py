"""ModelFactory: LoRA adapters fine-tuned with peft on datanets, with a manifest, and published to AdapterRegistry.

Importing this package does not import torch; `train_adapter` does when called.
"""

from .manifest import MANIFEST_FILE, AdapterManifest, ManifestDatanet, base_model_hash, weights_hash
from .publish import PublishError, Published, adapter_id_hash, publish_adapter
from .train import DEFAULT_TARGETS, TrainConfig, TrainResult, train_adapter

__all__ = [
    "DEFAULT_TARGETS",
    "MANIFEST_FILE",
    "AdapterManifest",
    "ManifestDatanet",
    "PublishError",
    "Published",
    "TrainConfig",
    "TrainResult",
    "adapter_id_hash",
    "base_model_hash",
    "publish_adapter",
    "train_adapter",
    "weights_hash",
]
