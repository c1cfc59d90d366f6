"""Reading and validating PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors; never pickle).

Every failure raises InvalidAdapterError naming the file and the problem:

    InvalidAdapterError(ValueError)
      missing or unreadable files, pickle-only checkpoints, oversize files, unsupported PEFT options,
      target modules the base cannot serve, rank above the maximum, tensor names, shapes against the
      base model, dtypes, non-finite values
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

__all__ = ["AdapterSpec", "InvalidAdapterError", "LoRAWeights", "adapter_from_tensors", "read_peft_adapter"]

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_PICKLE_FILES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TENSOR_NAME = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[\w-]+)?\.weight$"
)


class InvalidAdapterError(ValueError):
    def __init__(self, source: str | Path, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class AdapterSpec:
    """What the base model and the slot pool accept."""

    num_layers: int
    projection_shapes: dict[str, tuple[int, int]]  # name → (in_features, out_features) the pool serves
    max_rank: int
    max_bytes: int  # adapter_model.safetensors size limit

    @property
    def targets(self) -> tuple[str, ...]:
        return tuple(self.projection_shapes)


@dataclass(frozen=True)
class LoRAWeights:
    """A validated adapter: per (layer, projection) A [r, K], B [N, r] and the scale applied to B·A·x."""

    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, float]]
    source: str

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b, _ in self.modules.values())

    @property
    def max_rank(self) -> int:
        return max(a.shape[0] for a, _, _ in self.modules.values())

    def to(self, *, dtype: torch.dtype, pin_memory: bool = False) -> LoRAWeights:
        def conv(t: torch.Tensor) -> torch.Tensor:
            t = t.to(dtype).contiguous()
            return t.pin_memory() if pin_memory else t

        return LoRAWeights({k: (conv(a), conv(b), s) for k, (a, b, s) in self.modules.items()}, self.source)


def read_peft_adapter(path: str | Path, spec: AdapterSpec) -> LoRAWeights:
    """Reads and validates a PEFT adapter folder."""
    path = Path(path)
    if not path.is_dir():
        raise InvalidAdapterError(path, "not a directory")
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file():
        raise InvalidAdapterError(config_path, "missing")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapterError(config_path, f"not valid JSON ({e})") from None
    if not weights_path.is_file():
        pickled = [p for p in _PICKLE_FILES if (path / p).exists()]
        if pickled:
            raise InvalidAdapterError(path / pickled[0], f"pickle checkpoints are never loaded; save {WEIGHTS_FILE}")
        raise InvalidAdapterError(weights_path, "missing")
    size = weights_path.stat().st_size
    if size > spec.max_bytes:
        raise InvalidAdapterError(weights_path, f"{size} bytes is over the limit of {spec.max_bytes}")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise InvalidAdapterError(weights_path, f"not a readable safetensors file ({e})") from None
    _check_config(config, spec, config_path)
    return _validate(config, tensors, spec, config_source=config_path, weights_source=weights_path)


def adapter_from_tensors(
    config: dict, tensors: dict[str, torch.Tensor], spec: AdapterSpec, *, source: str = "<memory>"
) -> LoRAWeights:
    """Validates an adapter given in memory: a PEFT adapter_config dict and its state dict."""
    size = sum(t.nbytes for t in tensors.values())
    if size > spec.max_bytes:
        raise InvalidAdapterError(source, f"{size} bytes is over the limit of {spec.max_bytes}")
    _check_config(config, spec, source)
    return _validate(config, tensors, spec, config_source=source, weights_source=source)


def _check_config(config: dict, spec: AdapterSpec, source) -> None:
    if not isinstance(config, dict):
        raise InvalidAdapterError(source, "the config must be a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise InvalidAdapterError(source, f"peft_type {config.get('peft_type')!r} is not supported (LORA only)")
    unsupported = {
        "use_dora": "DoRA",
        "modules_to_save": "modules_to_save",
        "layer_replication": "layer_replication",
        "lora_bias": "LoRA bias",
        "trainable_token_indices": "trainable tokens",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise InvalidAdapterError(source, f"{what} ({key}) is not supported")
    if config.get("bias", "none") != "none":
        raise InvalidAdapterError(source, f"bias={config['bias']!r} is not supported (only 'none')")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise InvalidAdapterError(source, f"r must be a positive integer, got {r!r}")
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise InvalidAdapterError(source, f"lora_alpha must be a number, got {alpha!r}")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        bad = sorted(set(targets) - set(spec.targets))
        if bad:
            raise InvalidAdapterError(
                source, f"target modules {bad} are not served (this engine serves {list(spec.targets)})"
            )


def _pattern_value(patterns: dict, module_name: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key matching a suffix of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return default


def _validate(config: dict, tensors: dict[str, torch.Tensor], spec: AdapterSpec, *, config_source, weights_source):
    src = weights_source
    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        m = _TENSOR_NAME.match(name)
        if m is None:
            raise InvalidAdapterError(src, f"unexpected tensor {name!r} (only LoRA A/B weights of decoder layers)")
        layer, proj, half = int(m.group(1)), m.group(2), m.group(3)
        if proj not in spec.projection_shapes:
            raise InvalidAdapterError(src, f"tensor {name!r} targets {proj!r}, not served ({list(spec.targets)})")
        if layer >= spec.num_layers:
            raise InvalidAdapterError(src, f"tensor {name!r}: layer {layer} >= the base model's {spec.num_layers}")
        if t.dtype not in _DTYPES:
            raise InvalidAdapterError(src, f"tensor {name!r} has dtype {t.dtype}; expected float16/bfloat16/float32")
        if t.dim() != 2:
            raise InvalidAdapterError(src, f"tensor {name!r} has shape {list(t.shape)}; expected 2 dimensions")
        halves.setdefault((layer, proj), {})[half] = t
    if not halves:
        raise InvalidAdapterError(src, "no LoRA tensors")

    r_default, alpha_default = config["r"], config.get("lora_alpha", config["r"])
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    modules = {}
    for (layer, proj), ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise InvalidAdapterError(src, f"layer {layer} {proj}: lora_{missing} is missing")
        a, b = ab["A"], ab["B"]
        module = _module_name(layer, proj)
        r = _pattern_value(rank_pattern, module, r_default)
        alpha = _pattern_value(alpha_pattern, module, alpha_default)
        if r > spec.max_rank:
            raise InvalidAdapterError(config_source, f"{module}: rank {r} is over the maximum rank {spec.max_rank}")
        k, n = spec.projection_shapes[proj]
        if tuple(a.shape) != (r, k) or tuple(b.shape) != (n, r):
            raise InvalidAdapterError(
                src,
                f"{module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not match the base model "
                f"(expected [{r}, {k}] / [{n}, {r}])",
            )
        scale = alpha / math.sqrt(r) if rslora else alpha / r
        modules[(layer, proj)] = (a, b, float(scale))
    _check_finite(modules, src)
    return LoRAWeights(modules, str(weights_source))


def _check_finite(modules: dict, src) -> None:
    """Rejects NaN and inf. One fp32 sum per tensor, then one check: a finite sum means every element is finite
    (NaN and inf propagate through it), and it costs a fifth of isfinite over bf16 tensors, the largest part of
    reading an adapter. Only a non-finite sum (or finite values whose sum overflows) pays the exact check,
    which names the module."""
    sums = torch.stack([t.sum(dtype=torch.float32) for a, b, _ in modules.values() for t in (a, b)])
    if bool(torch.isfinite(sums).all()):
        return
    for (layer, proj), (a, b, _) in modules.items():
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise InvalidAdapterError(src, f"{_module_name(layer, proj)}: non-finite values (nan or inf)")


def _module_name(layer: int, proj: str) -> str:
    """The base model's module that a (layer, projection) adapter weight targets, as PEFT's configs name it."""
    return f"model.layers.{layer}.{'mlp' if proj in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{proj}"
