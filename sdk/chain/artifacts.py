"""Loads the compiled contract artifacts (ABI + bytecode) that ship inside the package."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

CONTRACT_NAMES = ("OpenToken", "DatanetRegistry", "AdapterRegistry", "PaymentChannels", "TraceAnchor")


@dataclass(frozen=True)
class Artifact:
    """One compiled contract."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str


def artifact_from_json(data: dict[str, Any]) -> Artifact:
    """Builds an Artifact from the JSON written by contracts/script/build.py."""
    return Artifact(
        name=data["contractName"],
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
    )


@cache
def load_artifact(name: str) -> Artifact:
    """Returns the committed artifact of contract `name` (one of CONTRACT_NAMES)."""
    if name not in CONTRACT_NAMES:
        raise ValueError(f"unknown contract {name!r}; expected one of {', '.join(CONTRACT_NAMES)}")
    text = resources.files(__package__).joinpath("artifacts", f"{name}.json").read_text()
    return artifact_from_json(json.loads(text))
