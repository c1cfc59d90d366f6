"""The settler claims what the ledger charged, exactly once, across crashes and RPC outages, on a real chain."""

from __future__ import annotations

import os

import pytest
import requests

from loraledger.runtime.billing.ledger import Ledger
from loraledger.runtime.billing.settler import Settler
from loraledger.sdk.chain.contracts import OPEN, Claim, Contracts, Revenue, RevenuePolicy
from loraledger.sdk.chain.devchain import JsonRpcServer
from loraledger.sdk.chain.provider import rpc_chain
from loraledger.sdk.vouchers import ChannelConfig, Voucher, adapter_id, sign_voucher

POLICY = RevenuePolicy(owner_bps=2_000, data_bps=0, protocol_bps=500)


@pytest.fixture
def setup(contracts, accounts, tmp_path):
    operator, owner = accounts[0], accounts[5]
    contracts.channels.set_protocol_treasury(operator, accounts[6].address)  # apart from the operator, to tell shares apart
    contracts.adapters.register(owner, adapter_id("legal"), base_model_hash=b"\x01" * 32, weights_hash=b"\x02" * 32,
                                uri="file://legal", policy=POLICY)  # fmt: skip
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield contracts, ledger, operator, owner, accounts
    ledger.close()


def open_channel(contracts, payer, session, operator, deposit=10 * OPEN):
    config = ChannelConfig(payer.address, session.address, operator.address, contracts.token.address, 600, os.urandom(32))
    contracts.token.approve(payer, contracts.channels.address, deposit)
    return contracts.channels.open(payer, config, deposit)


def charge_call(ledger, contracts, session, cid, call_id, amount, *, adapter="legal", headroom=5):
    """Reserve under a real voucher for charged + amount + headroom, then charge `amount` (as the server does)."""
    cid_hex = "0x" + cid.hex()
    charged = ledger.channel(cid_hex).charged
    voucher = Voucher(cid, charged + amount + headroom, os.urandom(32))
    sig = sign_voucher(session, contracts.channels.domain, voucher)
    aid = "0x" + (adapter_id(adapter) if adapter else bytes(32)).hex()
    ledger.reserve(call_id=call_id, idempotency_key=call_id, request_hash="h", channel_id=cid_hex, adapter=adapter or "base",
                   adapter_id=aid, voucher_amount=voucher.cumulative_amount, voucher_call_hash="0x" + voucher.call_hash.hex(),
                   voucher_signature="0x" + sig.hex(), budget=amount + headroom)  # fmt: skip
    ledger.charge(call_id, amount=amount, input_tokens=1, output_tokens=1,
                  receipt={"amount": str(amount), "cumulativeAmount": str(charged + amount)}, receipt_signature="0x",
                  attribution={}, response={})  # fmt: skip


def test_a_batch_over_many_channels_settles_the_ledger_split_to_the_last_unit(setup):
    contracts, ledger, operator, owner, acc = setup
    ch1 = open_channel(contracts, acc[1], acc[2], operator)
    ch2 = open_channel(contracts, acc[3], acc[4], operator)
    charge_call(ledger, contracts, acc[2], ch1, "a", 1_000_003)
    charge_call(ledger, contracts, acc[4], ch2, "b", 777, adapter=None)
    charge_call(ledger, contracts, acc[2], ch1, "c", 999)
    treasury = contracts.channels.protocol_treasury()
    before = {a: contracts.channels.earnings(a) for a in (operator.address, owner.address, treasury)}
    result = Settler(ledger, contracts, operator, batch_calls=10).settle_once()
    assert (result.channels, result.calls, result.total_wei) == (2, 3, 1_000_003 + 777 + 999)
    assert contracts.channels.get_channel(ch1).claimed == 1_000_003 + 999
    assert contracts.channels.get_channel(ch2).claimed == 777
    legal = 1_000_003 + 999
    owner_share, protocol_share = legal * 2_000 // 10_000, legal * 500 // 10_000
    after = {a: contracts.channels.earnings(a) for a in before}
    assert after[owner.address] - before[owner.address] == owner_share
    assert after[treasury] - before[treasury] == protocol_share
    assert after[operator.address] - before[operator.address] == legal - owner_share - protocol_share + 777
    assert ledger.unsettled_amount() == 0 and ledger.settlement_of("c")[1] == result.tx_hash
    assert Settler(ledger, contracts, operator).settle_once() is None


def test_a_crash_after_sending_does_not_claim_twice(setup):
    contracts, ledger, operator, owner, acc = setup
    ch = open_channel(contracts, acc[1], acc[2], operator)
    charge_call(ledger, contracts, acc[2], ch, "a", 500)
    # The settler sent the claim and recorded its hash, then died before marking the batch settled.
    batch = ledger.open_settlement()
    (cid, (amount, v_amount, call_hash, sig)), = batch.claims.items()
    contracts.channels.claim(
        operator, [Claim(ch, v_amount, amount, bytes.fromhex(call_hash[2:]), bytes.fromhex(sig[2:]))],
        [Revenue(adapter_id("legal"), 500)], on_sent=lambda h: ledger.record_claim_tx(batch.id, h),
    )  # fmt: skip
    earned = contracts.channels.earnings(operator.address)
    result = Settler(ledger, contracts, operator).settle_once()
    assert result.batch_id == batch.id and result.tx_hash == ledger.settlement_of("a")[1] is not None
    assert contracts.channels.earnings(operator.address) == earned  # nothing sent again
    assert contracts.channels.get_channel(ch).claimed == 500
    assert ledger.unsettled_amount() == 0


def test_a_recorded_but_unknown_transaction_is_sent_again(setup):
    contracts, ledger, operator, owner, acc = setup
    ch = open_channel(contracts, acc[1], acc[2], operator)
    charge_call(ledger, contracts, acc[2], ch, "a", 500)
    batch = ledger.open_settlement()
    ledger.record_claim_tx(batch.id, "0x" + "ab" * 32)  # dropped from the mempool before it was mined
    result = Settler(ledger, contracts, operator).settle_once()
    assert result.tx_hash != "0x" + "ab" * 32
    assert contracts.channels.get_channel(ch).claimed == 500


def test_an_rpc_outage_keeps_the_batch_pending_and_a_later_attempt_settles_it(setup):
    contracts, ledger, operator, owner, acc = setup
    ch = open_channel(contracts, acc[1], acc[2], operator)
    charge_call(ledger, contracts, acc[2], ch, "a", 321)
    server = None
    url = contracts.chain.rpc_url
    if url is None:  # the embedded chain: serve it over JSON-RPC so it can go away
        server = JsonRpcServer(contracts.chain, port=0).start()
        url = server.url
    flaky = Contracts(rpc_chain(url, timeout_s=2), contracts.deployments)
    flaky.chain.w3.provider.endpoint_uri = "http://127.0.0.1:9"  # the node goes away
    with pytest.raises(requests.ConnectionError):
        Settler(ledger, flaky, operator).settle_once()
    if server is not None:
        server.stop()
    pending = ledger.open_settlement()
    assert pending.attempts == 1 and pending.tx_hash is None
    charge_call(ledger, contracts, acc[2], ch, "b", 1)  # serving goes on; the next batch waits its turn
    assert Settler(ledger, contracts, operator).settle_once().calls == 1
    assert Settler(ledger, contracts, operator).settle_once().calls == 1
    assert contracts.channels.get_channel(ch).claimed == 322
