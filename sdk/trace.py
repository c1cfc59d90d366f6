"""An append-only, hash-chained reasoning log (RFC 8785 canonical JSON, keccak), anchorable on chain.

Entry `i` is `{"index": i, "kind": ..., "data": {...}, "prev": <hash of entry i-1, or 32 zero bytes>,
"hash": keccak(JCS({"index", "kind", "data", "prev"}))}`, one JSON object a line in a saved log. Editing,
reordering, inserting or deleting an entry breaks the chain at the first changed position; cutting entries
off the end is caught against a known head or the on-chain anchor, whose root is the Merkle tree (as
OpenZeppelin's StandardMerkleTree) of the leaves `(uint256 index, bytes32 hash)`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from ._exceptions import TraceVerificationError
from .chain.contracts import Anchor, TraceAnchor
from .chain.errors import ChainError
from .merkle import MerkleTree, leaf_hash

__all__ = ["ZERO_HASH", "AnchoredTrace", "Trace", "TraceEntry", "call_hash"]

logger = logging.getLogger(__name__)

ZERO_HASH = b"\x00" * 32
KINDS = ("thought", "tool_call", "tool_result", "adapter_call", "receipt", "observation", "answer", "error")
"""The kinds the SDK and the LangChain callback write; any other non-empty string is allowed too."""
LEAF_TYPES = ("uint256", "bytes32")


def canonical(value: Any) -> bytes:
    """RFC 8785 canonical JSON of `value` (integers beyond 2**53 must be written as strings)."""
    return rfc8785.dumps(value)


def call_hash(request: Mapping[str, Any], trace_head: bytes = ZERO_HASH) -> bytes:
    """The agent's commitment for one paid call: keccak(JCS({"request": <the JSON body>, "traceHead": 0x..})).

    The runtime copies it into the receipt; it binds the call to the reasoning that led to it.
    """
    return keccak(canonical({"request": dict(request), "traceHead": "0x" + trace_head.hex()}))


@dataclass(frozen=True)
class TraceEntry:
    """One log entry; `hash` covers index, kind, data and prev."""

    index: int
    kind: str
    data: dict[str, Any]
    prev: bytes
    hash: bytes

    @staticmethod
    def digest(index: int, kind: str, data: Mapping[str, Any], prev: bytes) -> bytes:
        return keccak(canonical({"index": index, "kind": kind, "data": dict(data), "prev": "0x" + prev.hex()}))

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "data": self.data,
            "prev": "0x" + self.prev.hex(),
            "hash": "0x" + self.hash.hex(),
        }

    def leaf(self) -> bytes:
        """This entry's Merkle leaf."""
        return leaf_hash(LEAF_TYPES, (self.index, self.hash))


@dataclass(frozen=True)
class AnchoredTrace:
    """A root written to TraceAnchor."""

    agent: str
    root: bytes
    count: int
    index: int
    """The agent's anchor index on the contract."""


class Trace:
    """An agent's reasoning log: `append` entries, read `head`, `save`/`load` JSONL, `verify`, `anchor`.

    Thread-safe for appends. Paid calls made by a Client with `trace=` append an `adapter_call` and a
    `receipt` entry, and each call's hash commits to the head it was made at.
    """

    def __init__(self, entries: list[TraceEntry] | None = None) -> None:
        self._entries: list[TraceEntry] = list(entries or [])
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ log

    @property
    def head(self) -> bytes:
        """The hash of the last entry (32 zero bytes while empty)."""
        with self._lock:
            return self._entries[-1].hash if self._entries else ZERO_HASH

    @property
    def entries(self) -> list[TraceEntry]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[TraceEntry]:
        return iter(self.entries)

    def __getitem__(self, index: int) -> TraceEntry:
        return self._entries[index]

    def append(self, kind: str, data: Mapping[str, Any] | None = None) -> TraceEntry:
        """Appends one entry and returns it. `data` must be JSON (integers beyond 2**53 as strings)."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty string")
        payload = json.loads(json.dumps(dict(data or {})))  # a private copy, in plain JSON types
        with self._lock:
            index = len(self._entries)
            prev = self._entries[-1].hash if self._entries else ZERO_HASH
            entry = TraceEntry(index, kind, payload, prev, TraceEntry.digest(index, kind, payload, prev))
            self._entries.append(entry)
        return entry

    # ------------------------------------------------------------------------------------------ files

    def save(self, path: Path | str) -> None:
        """Writes the log as JSONL (one entry a line), atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for entry in self.entries:
                f.write(json.dumps(entry.to_json(), separators=(",", ":"), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | str, *, verify: bool = True) -> Trace:
        """Reads a JSONL log; with `verify` (the default) the chain is checked and a bad log raises."""
        entries = []
        with Path(path).open(encoding="utf-8") as f:
            for line_no, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    entries.append(
                        TraceEntry(
                            index=int(raw["index"]),
                            kind=str(raw["kind"]),
                            data=dict(raw["data"]),
                            prev=bytes.fromhex(str(raw["prev"]).removeprefix("0x")),
                            hash=bytes.fromhex(str(raw["hash"]).removeprefix("0x")),
                        )
                    )
                except (ValueError, KeyError, TypeError) as exc:
                    raise TraceVerificationError(f"line {line_no + 1} is not a trace entry: {exc}", index=len(entries)) from exc
        trace = cls(entries)
        if verify:
            trace.verify()
        return trace

    # ------------------------------------------------------------------------------------------ checks

    def verify(self, *, head: bytes | None = None, count: int | None = None) -> None:
        """Re-checks the hash chain; raises TraceVerificationError naming the first bad entry.

        An edit, reorder, insertion or deletion breaks the chain at the first changed position. Cutting
        entries off the end leaves a valid shorter chain: pass the expected `head` or `count` (or use
        `verify_anchor`) to catch it.
        """
        prev = ZERO_HASH
        entries = self.entries
        for position, entry in enumerate(entries):
            if entry.index != position:
                raise TraceVerificationError(
                    f"entry {position} carries index {entry.index}: an entry was inserted, deleted or moved",
                    index=position,
                )
            if entry.prev != prev:
                raise TraceVerificationError(
                    f"entry {position} does not follow entry {position - 1}: an entry was inserted, deleted or moved",
                    index=position,
                )
            if TraceEntry.digest(entry.index, entry.kind, entry.data, entry.prev) != entry.hash:
                raise TraceVerificationError(f"entry {position} ({entry.kind}) was edited", index=position)
            prev = entry.hash
        if count is not None and len(entries) != count:
            raise TraceVerificationError(
                f"the log holds {len(entries)} entries, expected {count}", index=min(len(entries), count)
            )
        if head is not None and prev != head:
            raise TraceVerificationError(
                f"the log's head is 0x{prev.hex()}, expected 0x{head.hex()}: entries were cut or added at the end",
                index=len(entries),
            )

    def root(self, count: int | None = None) -> bytes:
        """The Merkle root over the first `count` entries (all by default)."""
        entries = self.entries[: len(self) if count is None else count]
        if not entries:
            raise ValueError("an empty trace has no root")
        return MerkleTree([e.leaf() for e in entries]).root

    def proof(self, index: int, count: int | None = None) -> list[bytes]:
        """The Merkle proof of entry `index` under `root(count)`."""
        entries = self.entries[: len(self) if count is None else count]
        return MerkleTree([e.leaf() for e in entries]).proof(index)

    # ------------------------------------------------------------------------------------------ chain

    def anchor(self, contract: TraceAnchor, account: LocalAccount) -> AnchoredTrace:
        """Writes the log's Merkle root and entry count to TraceAnchor as `account` (the agent)."""
        self.verify()
        root, count = self.root(), len(self)
        index = contract.anchor(account, root, count)
        logger.info("anchored trace root 0x%s (%d entries) as %s", root.hex(), count, account.address)
        return AnchoredTrace(to_checksum_address(account.address), root, count, index)

    def verify_anchor(self, contract: TraceAnchor, agent: str, *, count: int | None = None) -> Anchor:
        """Checks the chain, then that `agent` anchored the root of the first `count` entries (all by default)
        over exactly that many entries; returns the on-chain anchor (count, timestamp, block) or raises
        TraceVerificationError."""
        self.verify()
        count = len(self) if count is None else count
        if not 0 < count <= len(self):
            raise TraceVerificationError(f"cannot check {count} entries of a log of {len(self)}", index=len(self))
        root = self.root(count)
        try:
            anchored = contract.get_anchor(agent, root)
        except ChainError as exc:
            raise TraceVerificationError(f"could not read the anchor: {exc}") from exc
        if anchored.timestamp == 0:
            raise TraceVerificationError(
                f"{agent} never anchored root 0x{root.hex()} of these {count} entries: the log differs from "
                "what was anchored"
            )
        if anchored.count != count:
            raise TraceVerificationError(
                f"the anchor covers {anchored.count} entries, the log has {count}", index=min(count, anchored.count)
            )
        return anchored
