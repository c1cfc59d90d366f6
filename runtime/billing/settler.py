"""The settler: claims charged calls on chain in batches, idempotently and across restarts and RPC outages.

One batch is one `PaymentChannels.claim` over every channel it holds, with the revenue split by adapter. The
batch is written to the ledger before its transaction is sent and the transaction's hash before it is mined, so
after a crash the settler finds the pending batch, looks the transaction up, and either marks the batch settled
or sends it again; a claim can never be paid twice (the contract pays only the monotone delta, and a resent
claim of an already-claimed amount is recognised from the channel's on-chain state).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3.exceptions import TransactionNotFound

import rfc8785
from eth_utils import keccak

from loraledger.sdk.chain.contracts import Adapter, Claim, Contracts, Revenue, erc1271_accepts
from loraledger.sdk.vouchers import Voucher, voucher_digest

from ..attribution import AttributedCall, AttributionRecord, attribution_root, contributor_amounts, epoch_roots

from .ledger import CallRecord, Ledger, SettlementBatch
from .receipts import receipts_tree

__all__ = ["SettlementResult", "Settler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SettlementResult:
    batch_id: int
    tx_hash: str | None
    channels: int
    calls: int
    total_wei: int


def _b32(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str.removeprefix("0x")).rjust(32, b"\x00")


def _record_of(call: CallRecord) -> AttributionRecord | None:
    """The call's Proof-of-Attribution record, or None for calls attributed only by declared shares."""
    data = call.attribution
    if not data or "contributors" not in data or "version" not in data:
        return None
    return AttributionRecord.from_json(data)


def _rfc8785_hash(value) -> bytes:
    return keccak(rfc8785.dumps(value))


class Settler:
    """Claims the ledger's charged calls. `settle_once()` does one batch; `start()` runs a background loop that
    settles every `interval_s` seconds or as soon as `batch_calls` calls are waiting (`notify()` after each call)."""

    def __init__(
        self,
        ledger: Ledger,
        contracts: Contracts,
        operator: LocalAccount,
        *,
        batch_calls: int = 1,
        interval_s: float = 5.0,
        max_backoff_s: float = 60.0,
        on_settled: Callable[[SettlementResult], None] | None = None,
    ):
        self._ledger = ledger
        self._contracts = contracts
        self._operator = operator
        self.batch_calls = batch_calls
        self.interval_s = interval_s
        self.max_backoff_s = max_backoff_s
        self._on_settled = on_settled
        self._waiting = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.last_settled_at: float | None = None
        self.forfeited_wei = 0  # by this settler: calls of channels the chain will not pay (see _unpayable)
        self._adapters: dict[bytes, Adapter] = {}

    # ------------------------------------------------------------------------------------------- one batch

    def settle_once(self, max_calls: int | None = None) -> SettlementResult | None:
        """Settles the pending batch, or a new one of at most `max_calls` calls; None when nothing waits.
        Raises when the chain cannot be reached or the claim reverts (ChainError); the batch stays pending."""
        with self._lock:
            batch = self._ledger.open_settlement(max_calls)
            if batch is None:
                return None
            try:
                self.post_roots()  # a root left unposted by a crash or an outage goes first
                tx_hash = self._settle(batch)
                batch = self._ledger.open_settlement() or batch  # the same batch, less any forfeited channel
                calls = self._ledger.batch_calls(batch.id)
                self._ledger.settle(batch.id, tx_hash or "", self._contributor_deltas(calls))
                self.post_roots(calls)
            except Exception as exc:  # recorded on the batch, then raised: the caller decides when to retry
                self._ledger.settlement_failed(batch.id, f"{type(exc).__name__}: {exc}")
                raise
            result = SettlementResult(batch.id, tx_hash, len(batch.claims), len(batch.call_ids), batch.total)
            self.last_settled_at = time.time()
        logger.info("settled batch %d: %d calls over %d channels, %d wei, tx %s",
                    result.batch_id, result.calls, result.channels, result.total_wei, result.tx_hash)  # fmt: skip
        if self._on_settled is not None:
            self._on_settled(result)
        return result

    def _settle(self, batch: SettlementBatch) -> str | None:
        channels = self._contracts.channels
        if batch.tx_hash is not None:
            found = self._lookup(batch.tx_hash)
            if found is True:
                return batch.tx_hash
            if found is None and self._already_claimed(batch):
                return batch.tx_hash
            self._ledger.record_claim_tx(batch.id, None)  # failed or dropped: send again
        if self._already_claimed(batch):
            return None  # claimed through another path (e.g. by hand): nothing left to send
        claims = [
            Claim(_b32(cid), voucher_amount, amount, _b32(call_hash), bytes.fromhex(sig.removeprefix("0x")))
            for cid, (amount, voucher_amount, call_hash, sig) in sorted(batch.claims.items())
        ]
        revenues = [Revenue(_b32(aid), amount) for aid, amount in sorted(batch.revenue.items()) if amount]
        try:
            receipt = channels.claim(
                self._operator, claims, revenues, on_sent=lambda h: self._ledger.record_claim_tx(batch.id, h)
            )
        except Exception:
            # One unpayable channel reverts the whole claim: without this, every later batch would wait behind it.
            unpayable = {cid: why for cid in sorted(batch.claims) if (why := self._unpayable(cid, batch.claims[cid]))}
            if not unpayable:
                raise
            for cid, why in unpayable.items():
                amount = self._ledger.forfeit_channel(batch.id, cid, why)
                self.forfeited_wei += amount
                logger.warning("channel %s cannot be claimed (%s): %d wei of its calls forfeited", cid, why, amount)
            return self._settle(self._ledger.open_settlement() or batch)
        return receipt["transactionHash"].to_0x_hex()

    def _unpayable(self, cid: str, claim: tuple[int, int, str, str]) -> str | None:
        """Why the chain will never pay this channel's claim, or None: the channel closed, or its payer authorizer
        is a contract wallet that no longer accepts the voucher's signature (ERC-1271; an EOA's cannot change)."""
        channels = self._contracts.channels
        state = channels.get_channel(_b32(cid))
        if state.closed:
            return "the channel closed before its calls were claimed"
        _amount, voucher_amount, call_hash, sig = claim
        digest = voucher_digest(channels.domain, Voucher(_b32(cid), voucher_amount, _b32(call_hash)))
        accepted = erc1271_accepts(self._contracts.chain, state.config.payer_authorizer, digest,
                                   bytes.fromhex(sig.removeprefix("0x")))  # fmt: skip
        if accepted is False:
            return "the payer's contract wallet no longer accepts the voucher's signature"
        return None

    def _lookup(self, tx_hash: str) -> bool | None:
        """True if mined and successful, False if mined and failed, None if the node does not know it."""
        try:
            receipt = self._contracts.chain.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        return receipt["status"] == 1

    def _already_claimed(self, batch: SettlementBatch) -> bool:
        channels = self._contracts.channels
        return all(channels.get_channel(_b32(cid)).claimed >= amount for cid, (amount, *_r) in batch.claims.items())

    # ------------------------------------------------------------------------------------------- contributors

    def _contributor_deltas(self, calls: list[CallRecord]) -> dict[int, dict[str, int]]:
        """What the batch's calls owe each datanet's contributors, from their attribution records and the data
        share of their adapter's on-chain policy (the one the claim just applied)."""
        attributed = []
        for call in calls:
            record = _record_of(call)
            if record is None or not call.amount:
                continue
            onchain = self._adapter(call.adapter_id)
            if onchain is None or not onchain.policy.data_bps:
                continue
            declared = {(d.datanet, d.weight_bps) for d in record.datanets}
            if declared != set(zip(onchain.datanet_ids, onchain.datanet_weights_bps, strict=True)):
                # The contract funded the adapter's registered datanets; a record over others cannot pay them.
                logger.warning("call %s: attribution datanets %s differ from adapter %s's on chain; not apportioned",
                               call.call_id, sorted(declared), call.adapter)  # fmt: skip
                continue
            attributed.append(AttributedCall(call.amount, onchain.policy.data_bps, record))
        return contributor_amounts(attributed)

    def _adapter(self, adapter_id_hex: str) -> Adapter | None:
        aid = _b32(adapter_id_hex)
        if aid == bytes(32):
            return None
        if aid not in self._adapters:
            self._adapters[aid] = self._contracts.adapters.get_adapter(aid)
        return self._adapters[aid]

    def post_roots(self, calls: list[CallRecord] | None = None) -> int:
        """Posts the epoch root of every datanet whose contributors' cumulative amounts moved since its last
        root; returns how many were posted. Idempotent: run again after a failure, it posts what is left."""
        posted = self._ledger.posted_roots()
        receipts_root = bytes(32)
        attribution_root_ = bytes(32)
        if calls:
            receipts_root = receipts_tree(self._contracts.channels.domain, [c.receipt for c in calls]).root
            attribution_root_ = attribution_root(_rfc8785_hash(c.attribution) for c in calls if c.attribution)
        count = 0
        for datanet, root in epoch_roots(self._ledger.contributor_totals()).items():
            if datanet in posted and posted[datanet][0] == root.total:
                continue
            receipt = self._contracts.channels.post_epoch_root(
                self._operator, datanet, root.root, root.total, receipts_root, attribution_root_
            )
            epoch = self._contracts.channels.get_pool(self._operator.address, datanet).epoch
            self._ledger.record_root(datanet, root.total, epoch, "0x" + root.root.hex(),
                                     receipt["transactionHash"].to_0x_hex())  # fmt: skip
            count += 1
        return count

    # ------------------------------------------------------------------------------------------- loop

    def notify(self) -> None:
        """A call was charged: settle now if a batch is full."""
        self._waiting += 1
        if self._waiting >= self.batch_calls:
            self._wake.set()

    def start(self) -> Settler:
        self._thread = threading.Thread(target=self._run, name="loraledger-settler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        backoff_s = 0.0
        while not self._stop.is_set():
            self._wake.wait(backoff_s or self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            self._waiting = 0
            try:
                while self.settle_once() is not None and not self._stop.is_set():
                    pass
                backoff_s = 0.0
                self.last_error = None
            except Exception as exc:  # RPC outage or revert: keep serving, retry with backoff, report in metrics
                self.last_error = f"{type(exc).__name__}: {exc}"
                backoff_s = min(self.max_backoff_s, max(0.5, backoff_s * 2))
                logger.warning("settlement failed (retrying in %.1fs): %s", backoff_s, self.last_error)
