"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) in plain torch over a flat batch of tokens and a paged KV cache."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loraledger.kernels.fused_ops import fused_add_rms_norm, rms_norm, silu_and_mul
from safetensors import safe_open
from torch import nn

from .attention import AttentionMetadata, fuses_decode_rotary, paged_attention
from .kv_cache import KVCache
from .lora_linear import LoRABatch, LoRALinear

logger = logging.getLogger(__name__)

__all__ = ["LORA_PROJECTIONS", "PRESETS", "ModelConfig", "Transformer", "load_model", "random_model"]

# The projections a LoRA adapter may target, in the slot pool's order; the fused layers take
# consecutive runs of it (qkv = 0:3, o = 3, gate_up = 4:6, down = 6).
LORA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_ARCHITECTURES = {"llama", "mistral", "qwen2"}
_ROPE_TYPES = {"default", "llama3", "linear"}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # rope_type plus its parameters; {} = plain RoPE
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = 1
    eos_token_ids: tuple[int, ...] = (2,)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each LoRA-targetable projection, the same in every layer."""
        h, i = self.hidden_size, self.intermediate_size
        return {
            "q_proj": (h, self.q_size),
            "k_proj": (h, self.kv_size),
            "v_proj": (h, self.kv_size),
            "o_proj": (self.q_size, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @classmethod
    def from_hf(cls, hf: dict) -> ModelConfig:
        """From a Hugging Face config.json (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
        arch = hf.get("model_type")
        if arch not in _ARCHITECTURES:
            raise ValueError(f"unsupported model_type {arch!r}; supported: {sorted(_ARCHITECTURES)}")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}")
        rope = dict(hf.get("rope_parameters") or {})
        rope.update(hf.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type not in _ROPE_TYPES:
            raise ValueError(f"unsupported RoPE scaling {rope_type!r}; supported: {sorted(_ROPE_TYPES)}")
        rope_scaling = {} if rope_type == "default" else {"rope_type": rope_type, **rope}
        heads = hf["num_attention_heads"]
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        attention_bias = bool(hf.get("attention_bias", False))
        use_window = hf.get("use_sliding_window", arch == "mistral")
        return cls(
            architecture=arch,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-5),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            qkv_bias=arch == "qwen2" or attention_bias,
            o_bias=arch != "qwen2" and attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            sliding_window=hf.get("sliding_window") if use_window else None,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


# Random weights at real dimensions, for benchmarks (no downloads).
PRESETS = {
    "llama-3.2-1b": ModelConfig(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
        head_dim=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_ids=(128001,),
    ),
    "llama-3-8b": ModelConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_layers=32,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        bos_token_id=128000,
        eos_token_ids=(128001,),
    ),
}


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies, with Llama 3 or linear scaling applied."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = config.rope_scaling
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [T, dim]
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual), both written in place into x and residual: one launch."""
        return fused_add_rms_norm(x, residual, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.config = config
        self.layer = layer
        c = config
        self.qkv_proj = LoRALinear(c.hidden_size, (c.q_size, c.kv_size, c.kv_size), bias=c.qkv_bias)
        self.o_proj = LoRALinear(c.q_size, (c.hidden_size,), bias=c.o_bias)
        self.scale = c.head_dim**-0.5

    def forward(self, x, cos, sin, kv: KVCache, attn: AttentionMetadata, lora: LoRABatch | None):
        return self.output(self.attention(x, cos, sin, kv, attn, lora), lora)

    def attention(self, x, cos, sin, kv: KVCache, attn: AttentionMetadata, lora: LoRABatch | None) -> torch.Tensor:
        """Attention's output [T, heads * D] for the normed input x, this layer's k and v written to the cache.
        A step of decode rows only, on the kernel path and where it pays, rotates q and k, writes k and v and
        attends in one launch (the kernel's `rotary`); other steps run project, then attend."""
        c = self.config
        if not fuses_decode_rotary(x, attn, c.num_kv_heads):
            return self.attend(self.project(x, cos, sin, kv, attn.slot_mapping, lora), kv, attn)
        qkv = self.qkv_proj(x, lora)
        q = qkv[:, : c.q_size].view(-1, c.num_heads, c.head_dim)
        k = qkv[:, c.q_size : c.q_size + c.kv_size].view(-1, c.num_kv_heads, c.head_dim)
        v = qkv[:, c.q_size + c.kv_size :].view(-1, c.num_kv_heads, c.head_dim)
        out = paged_attention(q, kv.k[self.layer], kv.v[self.layer], attn, self.scale, c.sliding_window,
                              rotary=(k, v, cos, sin))  # fmt: skip
        return out.reshape(-1, c.q_size)

    def project(self, x, cos, sin, kv: KVCache, slot_mapping: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        """q [T, heads, D] (rotated), after writing this layer's rotated k and v to the cache at slot_mapping."""
        c = self.config
        qkv = self.qkv_proj(x, lora)  # [T, q + 2 kv]
        # q and k rotate together, in place, as the [T, heads + kv_heads, D] view of qkv's first q + kv
        # columns, and k and v go to the cache in the same launch (an eager step pays the host for every op).
        qk = qkv[:, : c.q_size + c.kv_size].view(-1, c.num_heads + c.num_kv_heads, c.head_dim)
        v = qkv[:, c.q_size + c.kv_size :].view(-1, c.num_kv_heads, c.head_dim)
        kv.rotate_and_write(self.layer, qk, v, cos, sin, slot_mapping)
        return qk[:, : c.num_heads]

    def attend(self, q: torch.Tensor, kv: KVCache, attn: AttentionMetadata) -> torch.Tensor:
        """Attention of q [T, heads, D] over the cache: [T, heads * D]."""
        c = self.config
        out = paged_attention(q, kv.k[self.layer], kv.v[self.layer], attn, self.scale, c.sliding_window)
        return out.reshape(-1, c.q_size)

    def output(self, out: torch.Tensor, lora: LoRABatch | None) -> torch.Tensor:
        return self.o_proj(out, lora)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.gate_up_proj = LoRALinear(c.hidden_size, (c.intermediate_size, c.intermediate_size), bias=c.mlp_bias)
        self.down_proj = LoRALinear(c.intermediate_size, (c.hidden_size,), bias=c.mlp_bias)

    def forward(self, x, lora: LoRABatch | None):
        return self.down_proj(silu_and_mul(self.gate_up_proj(x, lora)), lora)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, residual, cos, sin, kv, attn, lora):
        """x [T, hidden]: the previous block's output, not yet added to the residual stream (None before
        the first block, where x is the embeddings). Returns (this block's MLP output, the stream): each
        add meets the next norm in one fused launch, as in vLLM."""
        x, residual = self.normed_input(x, residual)
        return self.after_attention(self.self_attn.attention(x, cos, sin, kv, attn, lora), residual, lora)

    def normed_input(self, x, residual) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_layernorm of the stream, the stream) for the previous block's output x (None before the first
        block, where x is the embeddings and becomes the stream)."""
        if residual is None:
            return self.input_layernorm(x), x
        return self.input_layernorm.add_forward(x, residual)

    def before_attention(self, x, residual, cos, sin, kv, slot_mapping, lora) -> tuple[torch.Tensor, torch.Tensor]:
        """The block up to attention: (q [T, heads, D], the residual stream), k and v written to the cache.
        The engine's piecewise CUDA graphs capture this and after_attention, and run attend between them."""
        x, residual = self.normed_input(x, residual)
        return self.self_attn.project(x, cos, sin, kv, slot_mapping, lora), residual

    def after_attention(self, attn_out, residual, lora) -> tuple[torch.Tensor, torch.Tensor]:
        """The block from attention's output [T, heads * D] on: (its MLP output, the residual stream)."""
        x, residual = self.post_attention_layernorm.add_forward(self.self_attn.output(attn_out, lora), residual)
        return self.mlp(x, lora), residual


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(config), persistent=False)
        self.rope_cos: torch.Tensor | None = None  # [max positions, D] from set_rope_tables, else computed per step
        self.rope_sin: torch.Tensor | None = None

    def set_rope_tables(self, max_positions: int) -> None:
        """Tabulate cos and sin of every position below max_positions (the engine's max_model_len) in the model's
        dtype, computed as embed would compute them (the same values): a step then gathers its rows, two kernels
        instead of the six that compute them. Positions at or past max_positions must not reach embed."""
        freqs = torch.arange(max_positions, device=self.inv_freq.device).float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = self.embed_tokens.weight.dtype
        self.rope_cos, self.rope_sin = emb.cos().to(dtype), emb.sin().to(dtype)

    def lora_layers(self, layer: int) -> tuple[LoRALinear, LoRALinear, LoRALinear, LoRALinear]:
        """The wrappers of one block in LORA_PROJECTIONS order: qkv (3 slices), o, gate_up (2), down."""
        block = self.layers[layer]
        return block.self_attn.qkv_proj, block.self_attn.o_proj, block.mlp.gate_up_proj, block.mlp.down_proj

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # [T] the new tokens of every scheduled sequence, back to back
        positions: torch.Tensor,  # [T] their positions in their sequences
        kv: KVCache,
        attn: AttentionMetadata,
        lora: LoRABatch | None,  # None: no adapter in this step
        logits_indices: torch.Tensor | None,  # [B] rows of T whose next token is wanted; None: every row
    ) -> torch.Tensor:  # [B, vocab] float32
        x, cos, sin = self.embed(input_ids, positions)
        residual = None
        for block in self.layers:
            x, residual = block(x, residual, cos, sin, kv, attn, lora)
        return self.logits(x, residual, logits_indices)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(embeddings [T, hidden], cos [T, D], sin [T, D]) of the tokens at their positions."""
        x = self.embed_tokens(input_ids)
        if self.rope_cos is not None:
            return x, self.rope_cos[positions], self.rope_sin[positions]
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return x, emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def logits(self, x: torch.Tensor, residual: torch.Tensor, logits_indices: torch.Tensor | None) -> torch.Tensor:
        """[B, vocab] float32 of the rows logits_indices (None: every row, no gather), from the last block's
        output and the stream."""
        if logits_indices is not None:
            x, residual = x[logits_indices], residual[logits_indices]
        x, _ = self.norm.add_forward(x, residual)
        if x.is_cuda and x.dtype != torch.float32:
            # fp32 straight from the matmul's accumulator: no [B, vocab] half-precision copy to widen after.
            return torch.mm(x, self.lm_head.weight.T, out_dtype=torch.float32)
        return self.lm_head(x).float()


def _hf_to_ours(config: ModelConfig, get) -> dict[str, torch.Tensor]:
    """Our state dict from a function returning an HF tensor by name (or None), fusing qkv and gate_up."""
    sd = {}
    for name in ("model.embed_tokens.weight", "model.norm.weight"):
        sd[name.removeprefix("model.")] = get(name)
    lm_head = get("lm_head.weight")
    sd["lm_head.weight"] = sd["embed_tokens.weight"] if lm_head is None or config.tie_word_embeddings else lm_head
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        ours = f"layers.{i}."
        sd[ours + "input_layernorm.weight"] = get(p + "input_layernorm.weight")
        sd[ours + "post_attention_layernorm.weight"] = get(p + "post_attention_layernorm.weight")
        attn, mlp = p + "self_attn.", p + "mlp."
        sd[ours + "self_attn.qkv_proj.weight"] = torch.cat([get(attn + f"{n}_proj.weight") for n in "qkv"])
        sd[ours + "self_attn.o_proj.weight"] = get(attn + "o_proj.weight")
        sd[ours + "mlp.gate_up_proj.weight"] = torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")])
        sd[ours + "mlp.down_proj.weight"] = get(mlp + "down_proj.weight")
        if config.qkv_bias:
            sd[ours + "self_attn.qkv_proj.bias"] = torch.cat([get(attn + f"{n}_proj.bias") for n in "qkv"])
        if config.o_bias:
            sd[ours + "self_attn.o_proj.bias"] = get(attn + "o_proj.bias")
        if config.mlp_bias:
            sd[ours + "mlp.gate_up_proj.bias"] = torch.cat([get(mlp + "gate_proj.bias"), get(mlp + "up_proj.bias")])
            sd[ours + "mlp.down_proj.bias"] = get(mlp + "down_proj.bias")
    missing = sorted(k for k, v in sd.items() if v is None)
    if missing:
        raise ValueError(f"checkpoint is missing tensors for {missing[:5]}")
    return sd


def load_model(model_dir: str | Path, *, device: torch.device, dtype: torch.dtype) -> Transformer:
    """Builds the model on the meta device and fills it from the folder's safetensors shards (mmap'd)."""
    model_dir = Path(model_dir)
    config = ModelConfig.from_hf(json.loads((model_dir / "config.json").read_text()))
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files (pickle checkpoints are not loaded)")
    handles = [safe_open(str(s), framework="pt", device="cpu") for s in shards]
    where = {name: h for h in handles for name in h.keys()}  # noqa: SIM118 (safe_open handles are not iterable)

    def get(name: str) -> torch.Tensor | None:
        h = where.get(name)
        return None if h is None else h.get_tensor(name).to(device=device, dtype=dtype)

    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(_hf_to_ours(config, get), strict=True, assign=True)
    model.inv_freq = rope_inv_freq(config).to(device)
    _check_materialised(model)
    return model.eval()


def random_model(config: ModelConfig, *, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Transformer:
    """Random weights at a config's dimensions (benchmarks): N(0, 0.02) matrices, unit norms."""
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(config)
    sd = {}
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            sd[name] = torch.ones(p.shape, device=device, dtype=dtype)
        else:
            sd[name] = torch.empty(p.shape, device=device, dtype=dtype).normal_(0.0, 0.02, generator=gen)
    if config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.inv_freq = rope_inv_freq(config).to(device)
    return model.eval()


def _check_materialised(model: Transformer) -> None:
    left = [n for n, p in model.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"checkpoint did not fill {left[:5]}")
