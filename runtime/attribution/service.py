"""Per-adapter attribution for the runtime's finish path: loads each adapter's index once and attributes outputs."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from .index import AttributionIndex, Backend, SpanParams
from .record import AttributionRecord

logger = logging.getLogger(__name__)

__all__ = ["ATTRIBUTION_DIR", "AttributionService", "NoAttributionIndex"]

ATTRIBUTION_DIR = "attribution"
"""The folder inside an adapter's folder that holds its attribution index."""


class NoAttributionIndex(LookupError):
    """The adapter has no attribution index (it was not trained by ModelFactory, or its index was removed)."""


class AttributionService:
    """Attributes outputs of the adapters in `adapters_dir` (one subfolder per adapter id).

    Thread-safe; an index is loaded on first use and kept. Call `forget(adapter_id)` when an adapter's
    files change.
    """

    def __init__(self, adapters_dir: Path | str, *, backend: Backend = "numpy", params: SpanParams | None = None):
        """`params`: override every index's saved span settings (default: each index's own)."""
        self.adapters_dir = Path(adapters_dir)
        self.backend: Backend = backend
        self.params = params
        self._indexes: dict[str, AttributionIndex] = {}
        self._lock = threading.Lock()

    def index_dir(self, adapter_id: str) -> Path:
        if not adapter_id or "/" in adapter_id or adapter_id in (".", ".."):
            raise ValueError(f"bad adapter id {adapter_id!r}")
        return self.adapters_dir / adapter_id / ATTRIBUTION_DIR

    def has_index(self, adapter_id: str) -> bool:
        return (self.index_dir(adapter_id) / "index.json").is_file()

    def index(self, adapter_id: str) -> AttributionIndex:
        with self._lock:
            index = self._indexes.get(adapter_id)
            if index is None:
                if not self.has_index(adapter_id):
                    raise NoAttributionIndex(f"adapter {adapter_id!r} has no attribution index")
                index = AttributionIndex.load(self.index_dir(adapter_id), backend=self.backend, params=self.params)
                self._indexes[adapter_id] = index
            return index

    def forget(self, adapter_id: str) -> None:
        with self._lock:
            self._indexes.pop(adapter_id, None)

    def attribute(self, adapter_id: str, token_ids: list[int]) -> AttributionRecord:
        """The record of one finished call: its hash (`record.hash`) is the receipt's attributionHash."""
        return self.index(adapter_id).attribute(token_ids, adapter=adapter_id)
