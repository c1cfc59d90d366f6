"""Datanets: curated contributions stored locally (SQLite, content-hashed) and registered on chain by the curator."""

from .chain import DEFAULT_BATCH_SIZE, Registration, register_datanet
from .store import (
    MAX_TEXT_BYTES,
    ContributionRow,
    Datanet,
    DatanetError,
    DatanetStore,
    ImportRejected,
    ImportResult,
    RowError,
    StoredContribution,
    content_hash,
    read_rows,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_TEXT_BYTES",
    "ContributionRow",
    "Datanet",
    "DatanetError",
    "DatanetStore",
    "ImportRejected",
    "ImportResult",
    "Registration",
    "RowError",
    "StoredContribution",
    "content_hash",
    "read_rows",
    "register_datanet",
]
