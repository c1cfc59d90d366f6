"""Receipts as Merkle leaves: the receipts root of a settled batch and a receipt's proof against it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loraledger.sdk import vouchers
from loraledger.sdk.merkle import MerkleTree
from loraledger.sdk.vouchers import Domain, Receipt

__all__ = ["receipt_from_json", "receipt_leaf", "receipts_tree"]

_HASHES = ("callId", "channelId", "adapterId", "callHash", "outputHash", "attributionHash")


def receipt_from_json(receipt: Mapping[str, Any]) -> Receipt:
    """The EIP-712 Receipt of the JSON the runtime sends (hashes 0x-hex, amounts decimal strings)."""
    b = {k: bytes.fromhex(str(receipt[k]).removeprefix("0x")) for k in _HASHES}
    return Receipt(
        call_id=b["callId"], channel_id=b["channelId"], adapter_id=b["adapterId"],
        input_tokens=int(receipt["inputTokens"]), output_tokens=int(receipt["outputTokens"]),
        amount=int(receipt["amount"]), cumulative_amount=int(receipt["cumulativeAmount"]),
        call_hash=b["callHash"], output_hash=b["outputHash"], attribution_hash=b["attributionHash"],
    )  # fmt: skip


def receipt_leaf(domain: Domain, receipt: Mapping[str, Any]) -> bytes:
    """A receipt's leaf (vouchers.receipt_leaf) from the JSON the runtime sends."""
    return vouchers.receipt_leaf(domain, receipt_from_json(receipt))


def receipts_tree(domain: Domain, receipts: Sequence[Mapping[str, Any]]) -> MerkleTree:
    return MerkleTree([receipt_leaf(domain, r) for r in receipts])
