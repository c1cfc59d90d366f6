"""Verification of what the runtime hands back for a payment: the operator-signed receipt in PAYMENT-RESPONSE."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import to_checksum_address
from pydantic import ValidationError

from ._exceptions import InvalidReceipt
from ._x402 import PaymentRequirements, SettleResponse
from . import vouchers
from .merkle import verify as verify_proof
from .types import Receipt, ReceiptRecord, _hex32
from .vouchers import Domain, adapter_id

__all__ = ["Expected", "receipt_leaf", "verify_record", "verify_settlement"]


@dataclass(frozen=True)
class Expected:
    """What the SDK knows before the receipt comes: the call it paid for and the channel it paid on."""

    requirements: PaymentRequirements
    domain: Domain
    model: str
    channel_id: bytes
    call_hash: bytes
    charged_before_min_wei: int
    """What the channel may have been charged before this call: exactly one amount on a settled lane, a range on
    one whose last call ended without a verified receipt."""
    charged_before_max_wei: int
    voucher_amount_wei: int
    price_per_input_token_wei: int
    price_per_output_token_wei: int


def verify_settlement(settle: SettleResponse, expected: Expected) -> Receipt:
    """Checks a PAYMENT-RESPONSE against the call and returns its receipt; raises InvalidReceipt on any mismatch.

    Checked: success; same network; the receipt's signature recovers the payee under the channel contract's
    EIP-712 domain (so a receipt for another chain or contract fails); it names this channel, adapter and
    call hash; charged <= the quoted maximum and == the token counts at the quoted prices; cumulative - charged ==
    what the channel was charged before (known exactly, or a range after an unverified call), within the voucher; and the header's amount and charged cumulative agree.
    """
    payee = to_checksum_address(expected.requirements.pay_to)

    def fail(reason: str) -> InvalidReceipt:
        return InvalidReceipt(f"receipt from {payee} rejected: {reason}", payee=payee)

    if not settle.success:
        raise fail(f"settlement failed ({settle.error_reason or 'no reason given'})")
    if settle.network != expected.requirements.network:
        raise fail(f"settled on {settle.network}, the payment was for {expected.requirements.network}")
    extra = settle.extra or {}
    if "receipt" not in extra or "receiptSignature" not in extra:
        raise fail("PAYMENT-RESPONSE carries no receipt")
    try:
        receipt = Receipt.model_validate({**extra["receipt"], "signature": extra["receiptSignature"]})
        signer = receipt.recover_signer(expected.domain)
    except (ValidationError, ValueError, TypeError) as exc:
        raise fail(f"malformed receipt: {exc}") from exc
    if to_checksum_address(signer) != payee:
        raise fail(f"receipt signed by {signer}, not by the payee")
    if bytes.fromhex(receipt.channel_id.removeprefix("0x")) != expected.channel_id:
        raise fail(f"receipt is for channel {receipt.channel_id}, the voucher for 0x{expected.channel_id.hex()}")
    if bytes.fromhex(receipt.call_hash.removeprefix("0x")) != expected.call_hash:
        raise fail("receipt's call hash is not the one the voucher committed to")
    if bytes.fromhex(receipt.adapter_id.removeprefix("0x")) != adapter_id(expected.model):
        raise fail(f"receipt is for another adapter than {expected.model!r}")
    max_amount = int(expected.requirements.amount)
    if receipt.amount_wei > max_amount:
        raise fail(f"overcharge: charged {receipt.amount_wei}, the quoted maximum was {max_amount}")
    priced = (
        receipt.input_tokens * expected.price_per_input_token_wei
        + receipt.output_tokens * expected.price_per_output_token_wei
    )
    if receipt.amount_wei != priced:
        raise fail(
            f"charged {receipt.amount_wei} for {receipt.input_tokens} input and {receipt.output_tokens} output "
            f"tokens, which cost {priced} at the quoted prices"
        )
    before = receipt.cumulative_amount_wei - receipt.amount_wei
    if not expected.charged_before_min_wei <= before <= expected.charged_before_max_wei:
        known = f"{expected.charged_before_min_wei}"
        if expected.charged_before_max_wei != expected.charged_before_min_wei:
            known += f" to {expected.charged_before_max_wei}"
        raise fail(
            f"inconsistent cumulative amount {receipt.cumulative_amount_wei}: this call's {receipt.amount_wei} on top "
            f"of {before}, but the channel was charged {known} before"
        )
    if receipt.cumulative_amount_wei > expected.voucher_amount_wei:
        raise fail(f"cumulative {receipt.cumulative_amount_wei} exceeds the voucher's {expected.voucher_amount_wei}")
    if settle.amount is not None and int(settle.amount) != receipt.amount_wei:
        raise fail(f"PAYMENT-RESPONSE says {settle.amount} was charged, the receipt {receipt.amount_wei}")
    charged_cumulative = extra.get("chargedCumulativeAmount")
    if charged_cumulative is not None and int(charged_cumulative) != receipt.cumulative_amount_wei:
        raise fail(
            f"PAYMENT-RESPONSE says {charged_cumulative} is charged in total, the receipt {receipt.cumulative_amount_wei}"
        )
    return receipt


def receipt_leaf(domain: Domain, receipt: Receipt) -> bytes:
    """A receipt's leaf in its settled batch's receipts root (vouchers.receipt_leaf of its typed-data form)."""
    return vouchers.receipt_leaf(domain, receipt.to_eip712())


def verify_record(record: ReceiptRecord, domain: Domain, payee: str, call_id: str | None = None) -> Receipt:
    """Checks a stored receipt (`GET /v1/receipts/{id}`) and returns it; raises InvalidReceipt on any mismatch.

    Checked: the payee signed it under `domain` (the PaymentChannels contract the SDK paid, not the one the
    record names); it is the receipt of the call asked for (`call_id`, and the record's own id); and, once its
    batch is settled and the record carries a root, that the proof puts the receipt's leaf under that root
    (a root without a proof, or a proof without a root, fails). Whether the root itself was posted on chain is
    a separate question (it is recorded with the epoch roots of datanets that earned from the batch)."""
    payee = to_checksum_address(payee)

    def fail(reason: str) -> InvalidReceipt:
        return InvalidReceipt(f"stored receipt {record.id} from {payee} rejected: {reason}", payee=payee)

    receipt = record.receipt
    try:
        signer = receipt.recover_signer(domain)
        leaf = receipt_leaf(domain, receipt)
        ids = {_hex32(record.id), _hex32(receipt.call_id)} | ({_hex32(call_id)} if call_id is not None else set())
    except (ValueError, TypeError) as exc:
        raise fail(f"malformed receipt: {exc}") from exc
    if to_checksum_address(signer) != payee:
        raise fail(f"signed by {signer}, not by the payee")
    if len(ids) != 1:
        raise fail(f"the record is for call {receipt.call_id}, asked for {call_id or record.id}")
    if (record.root is None) != (record.proof is None):
        raise fail("a Merkle root without a proof, or a proof without a root")
    if record.root is not None:
        try:
            root = _hex32(record.root)
            proof = [_hex32(p) for p in record.proof or ()]
        except ValueError as exc:
            raise fail(f"malformed Merkle proof: {exc}") from exc
        if not verify_proof(root, leaf, proof):
            raise fail(f"its Merkle proof does not lead to root {record.root}")
    return receipt

