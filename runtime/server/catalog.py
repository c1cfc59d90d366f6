"""The adapters a runtime sells: engine registration, terms (prices, owner, datanets) and on-chain identity."""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from loraledger.sdk.chain.contracts import Contracts
from loraledger.sdk.vouchers import adapter_id as onchain_id

from ..billing.pricing import AdapterTerms, Prices, load_terms

__all__ = ["ADAPTER_NAME", "AdapterInfo", "Catalog"]

logger = logging.getLogger(__name__)

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
"""Adapter ids are folder names: no separators, no leading dot."""
BASE = "base"


@dataclass(frozen=True)
class AdapterInfo:
    id: str
    folder: Path | None
    terms: AdapterTerms
    rank: int
    targets: tuple[str, ...]
    owner: str | None
    """The owner recorded in AdapterRegistry, else loraledger.json's, else none."""
    registered: bool
    """Whether AdapterRegistry knows it: only then does a claim split its revenue by its policy."""

    @property
    def onchain_id(self) -> bytes:
        return onchain_id(self.id)

    @property
    def revenue_id(self) -> bytes:
        """The adapter id a claim books this adapter's revenue under (zero, the operator's, when unregistered)."""
        return self.onchain_id if self.registered else bytes(32)


class Catalog:
    """Adapter id → AdapterInfo, kept in step with the engine's adapter cache."""

    def __init__(self, engine, contracts: Contracts, default_prices: Prices):
        self._engine = engine
        self._contracts = contracts
        self._default = default_prices
        self._adapters: dict[str, AdapterInfo] = {}
        self._lock = threading.Lock()
        self.base = AdapterInfo(BASE, None, AdapterTerms(prices=default_prices), 0, (), None, False)

    def load_folder(self, root: Path) -> list[str]:
        """Adds every adapter subfolder of `root`; a bad one is logged and skipped. Returns the ids added."""
        added = []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                self.add(folder.name, folder)
            except Exception as exc:  # one bad adapter must not keep the others from being served
                logger.error("adapter %s not served: %s", folder.name, exc)
                continue
            added.append(folder.name)
        return added

    def add(self, adapter_id: str, folder: Path) -> AdapterInfo:
        """Validates and registers one PEFT folder (InvalidAdapterError / TermsError name the file)."""
        if not ADAPTER_NAME.match(adapter_id) or adapter_id == BASE:
            raise ValueError(f"{adapter_id!r} is not a valid adapter id (letters, digits, '.', '_', '-')")
        terms = load_terms(folder, self._default)
        config = json.loads((folder / "adapter_config.json").read_text())
        self._engine.add_adapter(adapter_id, folder)
        owner, registered = self.registry_owner(adapter_id)
        info = AdapterInfo(
            id=adapter_id,
            folder=folder,
            terms=terms,
            rank=int(config.get("r", 0)),
            targets=tuple(sorted(config.get("target_modules") or ())),
            owner=owner or terms.owner,
            registered=registered,
        )
        with self._lock:
            self._adapters[adapter_id] = info
        return info

    def remove(self, adapter_id: str) -> None:
        with self._lock:
            self._adapters.pop(adapter_id)
        self._engine.remove_adapter(adapter_id)

    def get(self, adapter_id: str) -> AdapterInfo:
        if adapter_id == BASE:
            return self.base
        with self._lock:
            return self._adapters[adapter_id]

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id == BASE or adapter_id in self._adapters

    def all(self) -> list[AdapterInfo]:
        with self._lock:
            return [self.base, *sorted(self._adapters.values(), key=lambda a: a.id)]

    def registry_owner(self, adapter_id: str) -> tuple[str | None, bool]:
        """(owner, registered) as AdapterRegistry records them now."""
        owner = self._contracts.adapters.owner_of(onchain_id(adapter_id))
        if int(owner, 16) == 0:
            return None, False
        return owner, True
