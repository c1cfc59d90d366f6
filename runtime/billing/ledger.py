"""The durable payment ledger: SQLite in WAL mode with synchronous=FULL.

What it guarantees (the call path in DESIGN.md):
- a call's voucher is durable (a *reservation*) before any work starts;
- the receipt and the channel's new charged total are written in one transaction before the response leaves;
- one reservation in flight per channel, and one call per idempotency key: a retried call finds its record;
- after a crash, reservations without a receipt are released: nothing is charged without a receipt;
- a settlement batch is recorded before its claim transaction is sent, so the settler resumes after a restart.

Amounts are uint128 on chain and do not fit SQLite's 64-bit integers; they are stored as decimal text and added up
in Python.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "CallRecord",
    "CallState",
    "ChannelBusy",
    "ChannelRecord",
    "IdempotencyConflict",
    "Ledger",
    "LedgerError",
    "SettlementBatch",
    "StaleVoucher",
    "Totals",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    channel_id        TEXT PRIMARY KEY,
    charged           TEXT NOT NULL DEFAULT '0',
    settled           TEXT NOT NULL DEFAULT '0',
    reserved_call_id  TEXT
);
CREATE TABLE IF NOT EXISTS calls (
    call_id           TEXT PRIMARY KEY,
    idempotency_key   TEXT NOT NULL UNIQUE,
    request_hash      TEXT NOT NULL,
    channel_id        TEXT NOT NULL REFERENCES channels(channel_id),
    adapter           TEXT NOT NULL,
    adapter_id        TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('reserved', 'charged', 'released')),
    voucher_amount    TEXT NOT NULL,
    voucher_call_hash TEXT NOT NULL,
    voucher_signature TEXT NOT NULL,
    budget            TEXT NOT NULL,
    created_at        REAL NOT NULL,
    finished_at       REAL,
    release_reason    TEXT,
    amount            TEXT,
    cumulative        TEXT,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    receipt           TEXT,
    receipt_signature TEXT,
    attribution       TEXT,
    response          TEXT,
    settlement_id     INTEGER REFERENCES settlements(id)
);
CREATE INDEX IF NOT EXISTS calls_unsettled ON calls(state, settlement_id);
CREATE TABLE IF NOT EXISTS contributor_totals (
    datanet_id        INTEGER NOT NULL,
    contributor       TEXT NOT NULL,
    amount            TEXT NOT NULL,
    PRIMARY KEY (datanet_id, contributor)
);
CREATE TABLE IF NOT EXISTS datanet_roots (
    datanet_id        INTEGER PRIMARY KEY,
    posted_total      TEXT NOT NULL,
    epoch             INTEGER NOT NULL,
    root              TEXT NOT NULL,
    tx_hash           TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS forfeits (
    call_id           TEXT PRIMARY KEY REFERENCES calls(call_id),
    channel_id        TEXT NOT NULL,
    reason            TEXT NOT NULL,
    at                REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settlements (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at        REAL NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'settled')),
    tx_hash           TEXT,
    settled_at        REAL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    last_error        TEXT
);
"""


class LedgerError(Exception):
    """A ledger operation was refused; the ledger is unchanged."""


class ChannelBusy(LedgerError):
    """The channel already has a reservation in flight (one call at a time per channel)."""

    def __init__(self, channel_id: str, call_id: str):
        super().__init__(f"channel {channel_id} has a call in flight ({call_id}); open another lane")
        self.channel_id = channel_id
        self.call_id = call_id


class StaleVoucher(LedgerError):
    """The voucher does not raise the channel above what is already charged."""

    def __init__(self, channel_id: str, charged: int, voucher_amount: int):
        super().__init__(
            f"voucher for {voucher_amount} is not above channel {channel_id}'s charged cumulative amount {charged}"
        )
        self.channel_id = channel_id
        self.charged = charged
        self.voucher_amount = voucher_amount


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before for a different request."""


class CallState(StrEnum):
    RESERVED = "reserved"
    CHARGED = "charged"
    RELEASED = "released"


@dataclass(frozen=True)
class ChannelRecord:
    channel_id: str
    charged: int
    settled: int
    reserved_call_id: str | None


@dataclass(frozen=True)
class CallRecord:
    call_id: str
    idempotency_key: str
    request_hash: str
    channel_id: str
    adapter: str
    adapter_id: str
    state: CallState
    voucher_amount: int
    voucher_call_hash: str
    voucher_signature: str
    budget: int
    amount: int | None
    cumulative: int | None
    input_tokens: int | None
    output_tokens: int | None
    receipt: dict[str, Any] | None
    receipt_signature: str | None
    attribution: dict[str, Any] | None
    response: dict[str, Any] | None
    settlement_id: int | None
    release_reason: str | None


@dataclass(frozen=True)
class SettlementBatch:
    """One claim transaction's worth of charged calls.

    `claims` maps a channel to (claimed cumulative amount, the voucher that covers it: amount, call hash,
    signature); `revenue` maps an adapter id (0x-hex bytes32, zero for the base model) to the amount its calls
    earned in the batch; both add up to the same total.
    """

    id: int
    claims: dict[str, tuple[int, int, str, str]]
    revenue: dict[str, int]
    call_ids: tuple[str, ...]
    attempts: int
    tx_hash: str | None
    """The claim transaction sent for this batch, if one was (recorded before waiting for it to be mined)."""

    @property
    def total(self) -> int:
        return sum(self.revenue.values())


@dataclass(frozen=True)
class Totals:
    charged_calls: int
    charged_amount: int
    settled_amount: int
    reserved_calls: int


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


class Ledger:
    """The runtime's ledger over one SQLite file. Thread-safe; every write is one IMMEDIATE transaction."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal" and self.path != ":memory:":
            raise LedgerError(f"{self.path}: SQLite refused WAL mode (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------- calls

    def reserve(
        self,
        *,
        call_id: str,
        idempotency_key: str,
        request_hash: str,
        channel_id: str,
        adapter: str,
        adapter_id: str,
        voucher_amount: int,
        voucher_call_hash: str,
        voucher_signature: str,
        budget: int,
    ) -> CallRecord:
        """Makes a verified voucher durable before the call runs. `budget` is the most this call may be charged
        (voucher amount minus the channel's charged total). Raises ChannelBusy, StaleVoucher or
        IdempotencyConflict and changes nothing then."""
        if budget <= 0:
            raise LedgerError(f"a reservation needs a positive budget, got {budget}")
        with self._tx() as db:
            existing = db.execute(
                "SELECT call_id, state FROM calls WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if existing is not None:
                if existing["state"] != CallState.RELEASED:
                    raise IdempotencyConflict(f"idempotency key {idempotency_key!r} belongs to call {existing[0]}")
                # A released call charged nothing; its key is free for the retry, the old row keeps its history.
                db.execute(
                    "UPDATE calls SET idempotency_key = ? WHERE call_id = ?",
                    (f"{idempotency_key}#released:{existing['call_id']}", existing["call_id"]),
                )
            db.execute("INSERT OR IGNORE INTO channels(channel_id) VALUES (?)", (channel_id,))
            channel = db.execute(
                "SELECT charged, reserved_call_id FROM channels WHERE channel_id = ?", (channel_id,)
            ).fetchone()
            if channel["reserved_call_id"] is not None:
                raise ChannelBusy(channel_id, channel["reserved_call_id"])
            charged = int(channel["charged"])
            if voucher_amount <= charged or voucher_amount - charged < budget:
                raise StaleVoucher(channel_id, charged, voucher_amount)
            db.execute(
                """INSERT INTO calls(call_id, idempotency_key, request_hash, channel_id, adapter, adapter_id, state,
                                     voucher_amount, voucher_call_hash, voucher_signature, budget, created_at)
                   VALUES (?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?)""",
                (
                    call_id, idempotency_key, request_hash, channel_id, adapter, adapter_id,
                    str(voucher_amount), voucher_call_hash, voucher_signature, str(budget), time.time(),
                ),
            )  # fmt: skip
            db.execute("UPDATE channels SET reserved_call_id = ? WHERE channel_id = ?", (call_id, channel_id))
        return self.call(call_id)

    def charge(
        self,
        call_id: str,
        *,
        amount: int,
        input_tokens: int,
        output_tokens: int,
        receipt: dict[str, Any],
        receipt_signature: str,
        attribution: dict[str, Any],
        response: dict[str, Any],
    ) -> CallRecord:
        """Records the receipt and raises the channel's charged total, in one transaction. The receipt's
        cumulative amount must be the channel's charged total plus `amount`, and `amount` within the budget."""
        with self._tx() as db:
            call = db.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if call is None or call["state"] != CallState.RESERVED:
                raise LedgerError(f"call {call_id} has no open reservation")
            if not 0 <= amount <= int(call["budget"]):
                raise LedgerError(f"call {call_id}: amount {amount} outside its budget {call['budget']}")
            charged = int(
                db.execute("SELECT charged FROM channels WHERE channel_id = ?", (call["channel_id"],)).fetchone()[0]
            )
            cumulative = charged + amount
            if int(receipt["cumulativeAmount"]) != cumulative or int(receipt["amount"]) != amount:
                raise LedgerError(f"call {call_id}: receipt does not match charged {charged} + amount {amount}")
            db.execute(
                """UPDATE calls SET state = 'charged', finished_at = ?, amount = ?, cumulative = ?, input_tokens = ?,
                                    output_tokens = ?, receipt = ?, receipt_signature = ?, attribution = ?, response = ?
                   WHERE call_id = ?""",
                (
                    time.time(), str(amount), str(cumulative), input_tokens, output_tokens, json.dumps(receipt),
                    receipt_signature, json.dumps(attribution), json.dumps(response), call_id,
                ),
            )  # fmt: skip
            db.execute(
                "UPDATE channels SET charged = ?, reserved_call_id = NULL WHERE channel_id = ?",
                (str(cumulative), call["channel_id"]),
            )
        return self.call(call_id)

    def release(self, call_id: str, reason: str) -> None:
        """Drops a reservation that will not be charged (the call failed or was refused before finishing)."""
        with self._tx() as db:
            call = db.execute("SELECT state, channel_id FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if call is None or call["state"] != CallState.RESERVED:
                return
            self._release(db, call_id, call["channel_id"], reason)

    @staticmethod
    def _release(db: sqlite3.Connection, call_id: str, channel_id: str, reason: str) -> None:
        db.execute(
            "UPDATE calls SET state = 'released', finished_at = ?, release_reason = ? WHERE call_id = ?",
            (time.time(), reason, call_id),
        )
        db.execute(
            "UPDATE channels SET reserved_call_id = NULL WHERE channel_id = ? AND reserved_call_id = ?",
            (channel_id, call_id),
        )

    def recover(self) -> int:
        """At start-up: releases every reservation left without a receipt by a crash; returns how many."""
        with self._tx() as db:
            rows = db.execute("SELECT call_id, channel_id FROM calls WHERE state = 'reserved'").fetchall()
            for row in rows:
                self._release(db, row["call_id"], row["channel_id"], "released after a restart")
        return len(rows)

    def call(self, call_id: str) -> CallRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
        if row is None:
            raise KeyError(call_id)
        return self._call_record(row)

    def call_by_key(self, idempotency_key: str) -> CallRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM calls WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
        return None if row is None else self._call_record(row)

    def channel(self, channel_id: str) -> ChannelRecord:
        with self._lock:
            row = self._db.execute("SELECT * FROM channels WHERE channel_id = ?", (channel_id,)).fetchone()
        if row is None:
            return ChannelRecord(channel_id, 0, 0, None)
        return ChannelRecord(row["channel_id"], int(row["charged"]), int(row["settled"]), row["reserved_call_id"])

    @staticmethod
    def _call_record(row: sqlite3.Row) -> CallRecord:
        return CallRecord(
            call_id=row["call_id"],
            idempotency_key=row["idempotency_key"],
            request_hash=row["request_hash"],
            channel_id=row["channel_id"],
            adapter=row["adapter"],
            adapter_id=row["adapter_id"],
            state=CallState(row["state"]),
            voucher_amount=int(row["voucher_amount"]),
            voucher_call_hash=row["voucher_call_hash"],
            voucher_signature=row["voucher_signature"],
            budget=int(row["budget"]),
            amount=_int(row["amount"]),
            cumulative=_int(row["cumulative"]),
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            receipt=_json(row["receipt"]),
            receipt_signature=row["receipt_signature"],
            attribution=_json(row["attribution"]),
            response=_json(row["response"]),
            settlement_id=row["settlement_id"],
            release_reason=row["release_reason"],
        )

    # ------------------------------------------------------------------------------------------- settlement

    def open_settlement(self, max_calls: int | None = None) -> SettlementBatch | None:
        """Returns the pending batch if there is one (a restart resumes it); otherwise gathers the charged,
        unsettled calls (oldest first, at most `max_calls`, whole channels only) into a new pending batch.
        None when there is nothing to settle."""
        with self._tx() as db:
            pending = db.execute("SELECT id FROM settlements WHERE state = 'pending' ORDER BY id LIMIT 1").fetchone()
            if pending is not None:
                return self._batch(db, pending["id"])
            rows = db.execute(
                "SELECT call_id, channel_id FROM calls WHERE state = 'charged' AND settlement_id IS NULL"
                " AND call_id NOT IN (SELECT call_id FROM forfeits) ORDER BY finished_at, call_id"
            ).fetchall()
            if not rows:
                return None
            chosen: list[str] = []
            channels: set[str] = set()
            for row in rows:
                # A channel's calls go in together: a claim pays up to one cumulative amount per channel.
                if max_calls is not None and len(chosen) >= max_calls and row["channel_id"] not in channels:
                    continue
                channels.add(row["channel_id"])
                chosen.append(row["call_id"])
            cur = db.execute("INSERT INTO settlements(created_at, state) VALUES (?, 'pending')", (time.time(),))
            batch_id = cur.lastrowid
            db.executemany("UPDATE calls SET settlement_id = ? WHERE call_id = ?", [(batch_id, c) for c in chosen])
            return self._batch(db, batch_id)

    def _batch(self, db: sqlite3.Connection, batch_id: int) -> SettlementBatch:
        # Amounts are decimal text: ordered by their integer value here, not by SQLite's text order.
        rows = sorted(
            db.execute(
                "SELECT call_id, channel_id, adapter_id, amount, cumulative, voucher_amount, voucher_call_hash,"
                " voucher_signature FROM calls WHERE settlement_id = ?",
                (batch_id,),
            ).fetchall(),
            key=lambda r: int(r["cumulative"]),
        )
        claims: dict[str, tuple[int, int, str, str]] = {}
        revenue: dict[str, int] = defaultdict(int)
        settled = {
            r["channel_id"]: int(r["settled"])
            for r in db.execute(
                "SELECT channel_id, settled FROM channels WHERE channel_id IN"
                " (SELECT channel_id FROM calls WHERE settlement_id = ?)",
                (batch_id,),
            )
        }
        for row in rows:
            if int(row["cumulative"]) <= settled[row["channel_id"]]:
                continue  # calls charged nothing (0 tokens at price 0) leave their channel's total where it was
            # The highest cumulative amount of a channel in the batch is claimed under that call's voucher.
            claims[row["channel_id"]] = (
                int(row["cumulative"]), int(row["voucher_amount"]), row["voucher_call_hash"], row["voucher_signature"],
            )  # fmt: skip
            if int(row["amount"]):
                revenue[row["adapter_id"]] += int(row["amount"])
        row = db.execute("SELECT attempts, tx_hash FROM settlements WHERE id = ?", (batch_id,)).fetchone()
        return SettlementBatch(
            batch_id, claims, dict(revenue), tuple(r["call_id"] for r in rows), row["attempts"], row["tx_hash"]
        )

    def record_claim_tx(self, batch_id: int, tx_hash: str | None) -> None:
        """Remembers the claim transaction of a pending batch before it is mined (None: forget a failed one)."""
        with self._tx() as db:
            db.execute("UPDATE settlements SET tx_hash = ? WHERE id = ? AND state = 'pending'", (tx_hash, batch_id))

    def forfeit_channel(self, batch_id: int, channel_id: str, reason: str) -> int:
        """Takes one channel's calls out of a pending batch for good, because the chain will not pay them (`reason`:
        the channel closed, or its contract wallet revoked the voucher), so that the rest of the batch can settle;
        returns their amount.
        Their receipts stay; they are never batched again and count as forfeited, not unsettled."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT c.call_id, c.amount FROM calls c JOIN settlements s ON s.id = c.settlement_id"
                " WHERE c.settlement_id = ? AND c.channel_id = ? AND s.state = 'pending'",
                (batch_id, channel_id),
            ).fetchall()
            now = time.time()
            db.executemany(
                "INSERT OR IGNORE INTO forfeits(call_id, channel_id, reason, at) VALUES (?, ?, ?, ?)",
                [(r["call_id"], channel_id, reason, now) for r in rows],
            )
            db.executemany("UPDATE calls SET settlement_id = NULL WHERE call_id = ?", [(r["call_id"],) for r in rows])
            return sum(int(r["amount"] or 0) for r in rows)

    def forfeit_of(self, call_id: str) -> str | None:
        """Why a call's charge was forfeited (see forfeit_channel), or None."""
        with self._lock:
            row = self._db.execute("SELECT reason FROM forfeits WHERE call_id = ?", (call_id,)).fetchone()
        return None if row is None else row[0]

    def settlement_failed(self, batch_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE settlements SET attempts = attempts + 1, last_error = ? WHERE id = ?", (error[:2000], batch_id)
            )

    def settle(
        self, batch_id: int, tx_hash: str, contributor_deltas: Mapping[int, Mapping[str, int]] | None = None
    ) -> None:
        """Marks a batch settled by `tx_hash`, moves its channels' settled totals and adds what its calls owe
        each datanet's contributors, in one transaction."""
        with self._tx() as db:
            state = db.execute("SELECT state FROM settlements WHERE id = ?", (batch_id,)).fetchone()
            if state is None or state[0] != "pending":
                return
            batch = self._batch(db, batch_id)
            db.execute(
                "UPDATE settlements SET state = 'settled', tx_hash = ?, settled_at = ? WHERE id = ?",
                (tx_hash, time.time(), batch_id),
            )
            for channel_id, (amount, *_rest) in batch.claims.items():
                db.execute("UPDATE channels SET settled = ? WHERE channel_id = ?", (str(amount), channel_id))
            for datanet, amounts in (contributor_deltas or {}).items():
                for contributor, amount in amounts.items():
                    row = db.execute(
                        "SELECT amount FROM contributor_totals WHERE datanet_id = ? AND contributor = ?",
                        (datanet, contributor),
                    ).fetchone()
                    total = (int(row[0]) if row else 0) + amount
                    db.execute(
                        "INSERT OR REPLACE INTO contributor_totals(datanet_id, contributor, amount) VALUES (?, ?, ?)",
                        (datanet, contributor, str(total)),
                    )

    def contributor_totals(self) -> dict[int, dict[str, int]]:
        """Cumulative amounts owed to each datanet's contributors by the settled calls: {datanet: {address: wei}}."""
        with self._lock:
            rows = self._db.execute("SELECT datanet_id, contributor, amount FROM contributor_totals").fetchall()
        out: dict[int, dict[str, int]] = {}
        for datanet, contributor, amount in rows:
            out.setdefault(datanet, {})[contributor] = int(amount)
        return out

    def posted_roots(self) -> dict[int, tuple[int, int, str]]:
        """{datanet: (posted total, epoch, root)} of the last epoch root posted for each datanet."""
        with self._lock:
            rows = self._db.execute("SELECT datanet_id, posted_total, epoch, root FROM datanet_roots").fetchall()
        return {r[0]: (int(r[1]), r[2], r[3]) for r in rows}

    def record_root(self, datanet_id: int, total: int, epoch: int, root: str, tx_hash: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO datanet_roots(datanet_id, posted_total, epoch, root, tx_hash) VALUES (?,?,?,?,?)",
                (datanet_id, str(total), epoch, root, tx_hash),
            )

    def settlement_of(self, call_id: str) -> tuple[int, str | None, str] | None:
        """(batch id, tx hash, state) of the batch holding `call_id`, or None while it is in none."""
        with self._lock:
            row = self._db.execute(
                "SELECT s.id, s.tx_hash, s.state FROM calls c JOIN settlements s ON s.id = c.settlement_id"
                " WHERE c.call_id = ?",
                (call_id,),
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def batch_calls(self, batch_id: int) -> list[CallRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM calls WHERE settlement_id = ? ORDER BY call_id", (batch_id,))
            return [self._call_record(r) for r in rows.fetchall()]

    # ------------------------------------------------------------------------------------------- reports

    def unsettled_amount(self, channel_id: str | None = None) -> int:
        """Charged but not yet settled on chain (nor forfeited), over all channels or one."""
        with self._lock:
            if channel_id is None:
                rows = self._db.execute("SELECT charged, settled FROM channels").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT charged, settled FROM channels WHERE channel_id = ?", (channel_id,)
                ).fetchall()
        return sum(int(r["charged"]) - int(r["settled"]) for r in rows) - self.forfeited_amount(channel_id)

    def forfeited_amount(self, channel_id: str | None = None) -> int:
        """Charged, receipted, and never to be paid: the calls forfeit_channel took out of their batch."""
        with self._lock:
            query = "SELECT c.amount FROM forfeits f JOIN calls c ON c.call_id = f.call_id"
            args: tuple = ()
            if channel_id is not None:
                query, args = query + " WHERE f.channel_id = ?", (channel_id,)
            return sum(int(r[0] or 0) for r in self._db.execute(query, args).fetchall())

    def totals(self) -> Totals:
        with self._lock:
            charged = self._db.execute("SELECT amount FROM calls WHERE state = 'charged'").fetchall()
            reserved = self._db.execute("SELECT COUNT(*) FROM calls WHERE state = 'reserved'").fetchone()[0]
            settled = self._db.execute("SELECT settled FROM channels").fetchall()
        return Totals(
            charged_calls=len(charged),
            charged_amount=sum(int(r[0]) for r in charged),
            settled_amount=sum(int(r[0]) for r in settled),
            reserved_calls=reserved,
        )
