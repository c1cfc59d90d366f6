"""The adapter manifest ModelFactory writes next to the PEFT files, and the hashes it records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
from eth_utils import keccak

__all__ = ["MANIFEST_FILE", "AdapterManifest", "ManifestDatanet", "base_model_hash", "weights_hash"]

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
WEIGHTS_FILE = "adapter_model.safetensors"
_BASE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_model_hash(base_dir: Path | str) -> bytes:
    """Identifies a base model folder: keccak256 of the RFC 8785 JSON list of {path, sha256} of its config,
    tokenizer and weight files (*.safetensors), sorted by path. Streams the files: no size limit."""
    base_dir = Path(base_dir)
    files = sorted(
        {p for p in base_dir.glob("*.safetensors")} | {base_dir / n for n in _BASE_FILES if (base_dir / n).is_file()}
    )
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{base_dir} holds no *.safetensors weights")
    listing = [{"path": p.name, "sha256": _sha256_file(p)} for p in files]
    return keccak(rfc8785.dumps(listing))


def weights_hash(adapter_dir: Path | str) -> bytes:
    """keccak256 of the adapter's adapter_model.safetensors bytes (AdapterRegistry's weightsHash)."""
    return keccak((Path(adapter_dir) / WEIGHTS_FILE).read_bytes())


@dataclass
class ManifestDatanet:
    id: int  # local store id
    name: str
    weight_bps: int
    contributions: int
    tokens: int
    chain_id: int | None = None
    network_chain_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "weightBps": self.weight_bps,
            "contributions": self.contributions,
            "tokens": self.tokens,
            "chainId": self.chain_id,
            "network": self.network_chain_id,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ManifestDatanet:
        return cls(d["id"], d["name"], d["weightBps"], d["contributions"], d["tokens"], d["chainId"], d["network"])


@dataclass
class AdapterManifest:
    """What an adapter was trained from and how: enough to register it and to audit its attribution."""

    base_model_path: str
    base_model_hash: str  # 0x-hex
    weights_hash: str  # 0x-hex
    datanets: list[ManifestDatanet]
    contribution_hashes: list[str]  # content hashes of the contributions trained on, in index order
    training: dict[str, Any]
    attribution: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "kind": "loraledger-adapter",
            "baseModel": {"path": self.base_model_path, "hash": self.base_model_hash},
            "weightsHash": self.weights_hash,
            "datanets": [d.to_json() for d in self.datanets],
            "contributionHashes": self.contribution_hashes,
            "training": self.training,
            "attribution": self.attribution,
            "createdAt": self.created_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterManifest:
        if data.get("version") != MANIFEST_VERSION or data.get("kind") != "loraledger-adapter":
            raise ValueError("not a loraledger adapter manifest (version 1)")
        return cls(
            base_model_path=data["baseModel"]["path"],
            base_model_hash=data["baseModel"]["hash"],
            weights_hash=data["weightsHash"],
            datanets=[ManifestDatanet.from_json(d) for d in data["datanets"]],
            contribution_hashes=list(data["contributionHashes"]),
            training=dict(data["training"]),
            attribution=dict(data.get("attribution", {})),
            created_at=int(data.get("createdAt", 0)),
        )

    def save(self, adapter_dir: Path | str) -> None:
        (Path(adapter_dir) / MANIFEST_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, adapter_dir: Path | str) -> AdapterManifest:
        path = Path(adapter_dir) / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{adapter_dir} has no {MANIFEST_FILE}: was it trained with `loraledger train`?")
        return cls.from_json(json.loads(path.read_text()))
