"""The local datanet store (SQLite): datanets, their contributions with content hashes, and JSONL/CSV import.

A contribution is a text row with a contributor address and optional metadata. Its content hash is
keccak256 of the text's UTF-8 bytes, the value registered in DatanetRegistry; within a datanet a
content hash is unique, here as on chain.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils import is_address, keccak, to_checksum_address
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_TEXT_BYTES",
    "ContributionRow",
    "Datanet",
    "DatanetError",
    "DatanetStore",
    "ImportRejected",
    "ImportResult",
    "RowError",
    "StoredContribution",
    "content_hash",
    "read_rows",
]

MAX_TEXT_BYTES = 64 * 1024
"""Default largest contribution, in UTF-8 bytes."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datanets (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    curator TEXT,
    created_at INTEGER NOT NULL,
    network_chain_id INTEGER,
    chain_datanet_id INTEGER
);
CREATE TABLE IF NOT EXISTS contributions (
    id INTEGER PRIMARY KEY,
    datanet_id INTEGER NOT NULL REFERENCES datanets(id),
    contributor TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    added_at INTEGER NOT NULL,
    registered INTEGER NOT NULL DEFAULT 0,
    UNIQUE (datanet_id, content_hash)
);
CREATE INDEX IF NOT EXISTS contributions_by_datanet ON contributions(datanet_id, id);
"""


class DatanetError(ValueError):
    """A datanet operation was refused: the message says why and what to do."""


@dataclass(frozen=True)
class RowError:
    """What is wrong with one row of an import (line 1 is the file's first line)."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class ImportRejected(DatanetError):
    """Rows of an import are invalid; nothing was added."""

    def __init__(self, source: str, errors: Sequence[RowError]):
        self.errors = list(errors)
        shown = "\n  ".join(str(e) for e in self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(f"{source}: {len(self.errors)} invalid row(s), nothing imported:\n  {shown}{more}")


@dataclass(frozen=True)
class ContributionRow:
    """A contribution before it is stored."""

    text: str
    contributor: str
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Datanet:
    id: int
    name: str
    description: str
    curator: str | None
    created_at: int
    contributions: int
    contributors: int
    registered: int
    network_chain_id: int | None
    chain_datanet_id: int | None


@dataclass(frozen=True)
class StoredContribution:
    id: int
    datanet_id: int
    contributor: str
    content_hash: str
    text: str
    metadata: dict[str, Any]
    registered: bool


@dataclass(frozen=True)
class ImportResult:
    added: int
    skipped_duplicates: int


def content_hash(text: str) -> str:
    """0x-hex keccak256 of the text's UTF-8 bytes."""
    return "0x" + keccak(text.encode("utf-8")).hex()


def _validate(row: ContributionRow, max_text_bytes: int) -> tuple[str, str | None]:
    """(checksummed contributor, error message or None)."""
    if not isinstance(row.text, str) or not row.text.strip():
        return "", "empty text"
    size = len(row.text.encode("utf-8"))
    if size > max_text_bytes:
        return "", f"text is {size} bytes, over the {max_text_bytes}-byte limit"
    if not isinstance(row.contributor, str) or not is_address(row.contributor):
        return "", f"contributor {row.contributor!r} is not an Ethereum address"
    if not isinstance(row.metadata, dict):
        return "", "metadata must be a JSON object"
    if int(row.contributor, 16) == 0:
        return "", "contributor is the zero address"
    return to_checksum_address(row.contributor), None


def read_rows(path: Path, *, default_contributor: str | None = None) -> Iterator[ContributionRow]:
    """Rows of a JSONL file (objects with "text", "contributor", optional "metadata" object) or a CSV file
    (a header row with "text" and "contributor" columns; other columns become metadata).

    `default_contributor` fills rows without a contributor. Raises ImportRejected for a file that is not
    UTF-8, a JSONL line that is not a JSON object, or a CSV without a "text" column.
    """
    suffix = path.suffix.lower()
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImportRejected(str(path), [RowError(0, f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from exc
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_rows(str(path), raw, default_contributor)
    elif suffix == ".csv":
        yield from _csv_rows(str(path), raw, default_contributor)
    else:
        raise DatanetError(f"{path}: unknown file type {suffix!r}; use .jsonl or .csv")


def _jsonl_rows(source: str, raw: str, default_contributor: str | None) -> Iterator[ContributionRow]:
    errors = []
    rows = []
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(line_no, f"not valid JSON ({exc.msg})"))
            continue
        if not isinstance(obj, dict):
            errors.append(RowError(line_no, "not a JSON object"))
            continue
        unknown = set(obj) - {"text", "contributor", "metadata"}
        if unknown:
            expected = "expected text, contributor, metadata"
            errors.append(RowError(line_no, f"unknown field(s) {sorted(unknown)}; {expected}"))
            continue
        rows.append(
            ContributionRow(
                obj.get("text", ""),
                obj.get("contributor", default_contributor or ""),
                obj.get("metadata", {}),
                line_no,
            )
        )
    if errors:
        raise ImportRejected(source, errors)
    yield from rows


def _csv_rows(source: str, raw: str, default_contributor: str | None) -> Iterator[ContributionRow]:
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        raise ImportRejected(source, [RowError(1, f"the header {reader.fieldnames} has no 'text' column")])
    if "contributor" not in reader.fieldnames and default_contributor is None:
        raise ImportRejected(source, [RowError(1, "no 'contributor' column and no default contributor given")])
    rows, errors = [], []
    try:
        for record in reader:
            line_no = reader.line_num
            if None in record:
                errors.append(RowError(line_no, "more fields than the header has"))
                continue
            if any(v is None for v in record.values()):
                errors.append(RowError(line_no, "fewer fields than the header has"))
                continue
            metadata = {k: v for k, v in record.items() if k not in ("text", "contributor")}
            contributor = record.get("contributor") or default_contributor or ""
            rows.append(ContributionRow(record["text"], contributor, metadata, line_no))
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, f"malformed CSV ({exc})"))
    if errors:
        raise ImportRejected(source, errors)
    yield from rows


class DatanetStore:
    """Datanets and contributions in one SQLite file (WAL)."""

    def __init__(self, path: Path | str, *, max_text_bytes: int = MAX_TEXT_BYTES):
        self.path = Path(path)
        self.max_text_bytes = max_text_bytes
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DatanetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ datanets

    def create(self, name: str, *, description: str = "", curator: str | None = None) -> int:
        """Creates a datanet; returns its local id."""
        name = name.strip()
        if not name:
            raise DatanetError("a datanet needs a name")
        if curator is not None:
            if not is_address(curator):
                raise DatanetError(f"curator {curator!r} is not an Ethereum address")
            curator = to_checksum_address(curator)
        try:
            cur = self._db.execute(
                "INSERT INTO datanets (name, description, curator, created_at) VALUES (?, ?, ?, ?)",
                (name, description, curator, int(time.time())),
            )
        except sqlite3.IntegrityError as exc:
            raise DatanetError(f"a datanet named {name!r} already exists") from exc
        return int(cur.lastrowid)

    def get(self, datanet: int | str) -> Datanet:
        """A datanet by local id or name."""
        column = "id" if isinstance(datanet, int) else "name"
        row = self._db.execute(
            f"""SELECT d.id, d.name, d.description, d.curator, d.created_at,
                       COUNT(c.id), COUNT(DISTINCT c.contributor), COALESCE(SUM(c.registered), 0),
                       d.network_chain_id, d.chain_datanet_id
                FROM datanets d LEFT JOIN contributions c ON c.datanet_id = d.id
                WHERE d.{column} = ? GROUP BY d.id""",
            (datanet,),
        ).fetchone()
        if row is None:
            raise DatanetError(f"no datanet {datanet!r} in {self.path} (see `loraledger datanets list`)")
        return Datanet(*row)

    def datanets(self) -> list[Datanet]:
        ids = [r[0] for r in self._db.execute("SELECT id FROM datanets ORDER BY id")]
        return [self.get(i) for i in ids]

    def set_chain_id(self, datanet_id: int, *, network_chain_id: int, chain_datanet_id: int, curator: str) -> None:
        self._db.execute(
            "UPDATE datanets SET network_chain_id = ?, chain_datanet_id = ?, curator = ? WHERE id = ?",
            (network_chain_id, chain_datanet_id, to_checksum_address(curator), datanet_id),
        )

    # ------------------------------------------------------------------ contributions

    def add(
        self,
        datanet_id: int,
        rows: Iterable[ContributionRow],
        *,
        skip_duplicates: bool = False,
        progress: bool = False,
        total: int | None = None,
        source: str = "input",
    ) -> ImportResult:
        """Adds contributions in one transaction: all of them, or none.

        Empty, oversized or malformed rows raise ImportRejected listing every bad row. A row whose
        content hash is already in the datanet (or earlier in the same input) is a duplicate: an error,
        unless `skip_duplicates`, when it is counted and left out.
        """
        self.get(datanet_id)
        existing = {
            r[0] for r in self._db.execute("SELECT content_hash FROM contributions WHERE datanet_id = ?", (datanet_id,))
        }
        errors: list[RowError] = []
        accepted: list[tuple[Any, ...]] = []
        seen: dict[str, int] = {}
        skipped = 0
        now = int(time.time())
        for i, row in enumerate(tqdm(rows, total=total, disable=not progress, unit="row", desc="validating")):
            line = row.line or i + 1
            contributor, problem = _validate(row, self.max_text_bytes)
            if problem:
                errors.append(RowError(line, problem))
                continue
            digest = content_hash(row.text)
            if digest in existing or digest in seen:
                if skip_duplicates:
                    skipped += 1
                    continue
                where = f"line {seen[digest]} of this input" if digest in seen else "the datanet"
                errors.append(RowError(line, f"duplicate: the same text ({digest[:10]}…) is already in {where}"))
                continue
            seen[digest] = line
            accepted.append(
                (datanet_id, contributor, digest, row.text, json.dumps(row.metadata, sort_keys=True), now)
            )
        if errors:
            raise ImportRejected(source, errors)
        with self._transaction():
            self._db.executemany(
                "INSERT INTO contributions (datanet_id, contributor, content_hash, text, metadata, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                accepted,
            )
        logger.info("datanet %d: added %d contributions, skipped %d duplicates", datanet_id, len(accepted), skipped)
        return ImportResult(len(accepted), skipped)

    def import_file(
        self,
        datanet_id: int,
        path: Path | str,
        *,
        default_contributor: str | None = None,
        skip_duplicates: bool = False,
        progress: bool = False,
    ) -> ImportResult:
        """Imports a JSONL or CSV file (see `read_rows`), showing a progress bar when `progress`."""
        path = Path(path)
        if not path.is_file():
            raise DatanetError(f"{path}: no such file")
        rows = list(read_rows(path, default_contributor=default_contributor))
        return self.add(
            datanet_id, rows, skip_duplicates=skip_duplicates, progress=progress, total=len(rows), source=str(path)
        )

    def contributions(
        self, datanet_id: int, *, registered: bool | None = None, limit: int | None = None
    ) -> list[StoredContribution]:
        """The datanet's contributions in the order they were added."""
        sql = "SELECT id, datanet_id, contributor, content_hash, text, metadata, registered FROM contributions "
        sql += "WHERE datanet_id = ?"
        args: list[Any] = [datanet_id]
        if registered is not None:
            sql += " AND registered = ?"
            args.append(int(registered))
        sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [
            StoredContribution(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), bool(r[6]))
            for r in self._db.execute(sql, args)
        ]

    def mark_registered(self, contribution_ids: Sequence[int]) -> None:
        with self._transaction():
            self._db.executemany(
                "UPDATE contributions SET registered = 1 WHERE id = ?", [(i,) for i in contribution_ids]
            )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
