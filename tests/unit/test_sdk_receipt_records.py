"""receipts.verify_record and client.receipts.get's check of a stored receipt: signature, call, Merkle proof."""

from __future__ import annotations

import os

import httpx
import pytest
from eth_account import Account

from loraledger import sdk
from loraledger.sdk.merkle import MerkleTree
from loraledger.sdk.receipts import receipt_leaf, verify_record
from loraledger.sdk.types import Receipt, ReceiptRecord
from loraledger.sdk.vouchers import Domain, sign_receipt

OPERATOR = Account.from_key("0x" + "7" * 64)
DOMAIN = Domain(31337, "0x" + "ab" * 20)


def _receipt(call: int, amount: int = 16, signer=OPERATOR, domain: Domain = DOMAIN) -> Receipt:
    unsigned = Receipt.model_validate({
        "callId": f"0x{call:064x}", "channelId": "0x" + "22" * 32, "adapterId": "0x" + "33" * 32,
        "inputTokens": 3, "outputTokens": 2, "amount": str(amount), "cumulativeAmount": str(100 + amount),
        "callHash": "0x" + "44" * 32, "outputHash": "0x" + "55" * 32, "attributionHash": "0x" + "66" * 32,
    })  # fmt: skip
    return unsigned.model_copy(update={"signature": "0x" + sign_receipt(signer, domain, unsigned.to_eip712()).hex()})


def _batch(size: int = 5) -> tuple[list[Receipt], MerkleTree]:
    receipts = [_receipt(0x100 + i, amount=10 + i) for i in range(size)]
    return receipts, MerkleTree([receipt_leaf(DOMAIN, r) for r in receipts])


def _record(receipt: Receipt, tree: MerkleTree | None = None, index: int = 0, **overrides) -> ReceiptRecord:
    body = {"id": receipt.call_id, "receipt": receipt.model_dump(by_alias=True)}
    if tree is not None:
        body |= {"root": "0x" + tree.root.hex(), "proof": ["0x" + p.hex() for p in tree.proof(index)]}
    return ReceiptRecord.model_validate(body | overrides)


def test_a_rooted_and_an_unrooted_receipt_verify() -> None:
    receipts, tree = _batch()
    for i, receipt in enumerate(receipts):
        assert verify_record(_record(receipt, tree, i), DOMAIN, OPERATOR.address, receipt.call_id) == receipt
    assert verify_record(_record(receipts[0]), DOMAIN, OPERATOR.address) == receipts[0]  # not settled yet


@pytest.mark.parametrize(
    "case, match",
    [
        ("other signer", "not by the payee"),
        ("other contract", "not by the payee"),
        ("amount changed", "not by the payee"),
        ("other call asked", "asked for"),
        ("record id of another call", "asked for"),
        ("proof of another receipt", "does not lead to root"),
        ("root of another batch", "does not lead to root"),
        ("root without proof", "without a proof"),
        ("malformed proof", "malformed Merkle proof"),
        ("no signature", "malformed receipt"),
    ],
)
def test_a_tampered_record_is_rejected(case: str, match: str) -> None:
    receipts, tree = _batch()
    receipt, record, domain, call = receipts[2], None, DOMAIN, receipts[2].call_id
    if case == "other signer":
        record = _record(_receipt(0x102, amount=12, signer=Account.from_key("0x" + "8" * 64)))
    elif case == "other contract":
        domain = Domain(31337, "0x" + "cd" * 20)
        record = _record(receipt)
    elif case == "amount changed":
        record = _record(receipt.model_copy(update={"amount_wei": 1}))
    elif case == "other call asked":
        record, call = _record(receipt, tree, 2), receipts[3].call_id
    elif case == "record id of another call":
        record = _record(receipt, tree, 2, id=receipts[1].call_id)
    elif case == "proof of another receipt":
        record = _record(receipt, tree, 3)
    elif case == "root of another batch":
        other = MerkleTree([receipt_leaf(DOMAIN, r) for r in receipts[:4]] + [bytes(32)])
        record = _record(receipt, tree, 2, root="0x" + other.root.hex())
    elif case == "root without proof":
        record = _record(receipt, tree, 2, proof=None)
    elif case == "malformed proof":
        record = _record(receipt, tree, 2, proof=["0x1234"])
    elif case == "no signature":
        record = _record(receipt.model_copy(update={"signature": None}))
    with pytest.raises(sdk.InvalidReceipt, match=match):
        verify_record(record, domain, OPERATOR.address, call)


def test_the_client_checks_receipts_of_its_own_channels(contracts, accounts) -> None:
    """After a paid call (a real channel on a real chain, receipts signed by the operator's key), client.receipts.get
    verifies a stored receipt on the wallet's channel (record.verified, the proof checked against its root) and
    raises on a forged one; a receipt on a channel the wallet does not know comes back unverified, whatever the
    server adds to it."""
    from loraledger.sdk.testing import MockOperator

    operator = MockOperator(contracts, accounts[0], prices={"sql-expert": (2, 5)})
    wallet = sdk.Wallet(accounts[1], chain=contracts.chain, deposit_wei=1_000)
    mine = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/receipts/"):
            return httpx.Response(200, json=mine[request.url.path.rsplit("/", 1)[1]])
        return operator.transport().handle_request(request)

    client = sdk.Client(base_url="http://runtime.test", wallet=wallet, retry_backoff_s=0.0,
                        http_client=httpx.Client(transport=httpx.MockTransport(handler)))  # fmt: skip
    messages = [{"role": "user", "content": "list the active users by name"}]
    paid = [client.chat.completions.create(model="sql-expert", messages=messages, max_tokens=20).receipt
            for _ in range(3)]
    domain = wallet.domain(contracts.channels.address)
    tree = MerkleTree([receipt_leaf(domain, r) for r in paid])
    for i, r in enumerate(paid):
        mine[r.call_id] = _record(r, tree, i).model_dump(by_alias=True)
    forged = paid[1].model_copy(update={"amount_wei": paid[1].amount_wei + 1})
    mine["0x" + "f" * 64] = _record(forged, id="0x" + "f" * 64).model_dump(by_alias=True)
    stranger = _receipt(0x300)  # channel 0x22..22: not the wallet's
    mine[stranger.call_id] = _record(stranger).model_dump(by_alias=True) | {"verified": True, "_verified": True}

    record = client.receipts.get(paid[2].call_id)
    assert record.verified and record.root == "0x" + tree.root.hex() and record.receipt == paid[2]
    with pytest.raises(sdk.InvalidReceipt, match="not by the payee"):
        client.receipts.get("0x" + "f" * 64)
    mine[paid[0].call_id]["proof"] = mine[paid[1].call_id]["proof"]
    with pytest.raises(sdk.InvalidReceipt, match="does not lead to root"):
        client.receipts.get(paid[0].call_id)
    assert not client.receipts.get(stranger.call_id).verified
