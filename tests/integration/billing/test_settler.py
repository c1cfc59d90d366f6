"""The settler claims what the ledger charged, exactly once, across crashes and RPC outages, on a real chain."""

from __future__ import annotations

import os

import pytest
from eth_utils import keccak
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


def charge_call(ledger, contracts, session, cid, call_id, amount, *, adapter="legal", headroom=5, attribution=None):
    """Reserve under a real voucher for charged + amount + headroom, then charge `amount` (as the server does)."""
    cid_hex = "0x" + cid.hex()
    charged = ledger.channel(cid_hex).charged
    voucher = Voucher(cid, charged + amount + headroom, os.urandom(32))
    sig = sign_voucher(session, contracts.channels.domain, voucher)
    aid = "0x" + (adapter_id(adapter) if adapter else bytes(32)).hex()
    ledger.reserve(call_id=call_id, idempotency_key=call_id, request_hash="h", channel_id=cid_hex, adapter=adapter or "base",
                   adapter_id=aid, voucher_amount=voucher.cumulative_amount, voucher_call_hash="0x" + voucher.call_hash.hex(),
                   voucher_signature="0x" + sig.hex(), budget=amount + headroom)  # fmt: skip
    receipt = {"callId": "0x" + keccak(text=call_id).hex(), "channelId": cid_hex, "adapterId": aid, "inputTokens": 1,
               "outputTokens": 1, "amount": str(amount), "cumulativeAmount": str(charged + amount),
               "callHash": "0x" + voucher.call_hash.hex(), "outputHash": "0x" + "00" * 32,
               "attributionHash": "0x" + "00" * 32}  # fmt: skip
    ledger.charge(call_id, amount=amount, input_tokens=1, output_tokens=1, receipt=receipt, receipt_signature="0x",
                  attribution=attribution or {}, response={})  # fmt: skip


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


def test_a_channel_closed_before_its_claim_is_forfeited_and_the_rest_of_the_batch_settles(setup):
    """The payer waits out the withdraw delay before the operator claims (an outage longer than the delay) and
    closes the channel: its calls are forfeited, the batch's other channels are paid, and later batches settle."""
    contracts, ledger, operator, owner, acc = setup
    channels = contracts.channels
    ch1 = open_channel(contracts, acc[1], acc[2], operator)
    ch2 = open_channel(contracts, acc[3], acc[4], operator)
    charge_call(ledger, contracts, acc[2], ch1, "a", 500)
    charge_call(ledger, contracts, acc[4], ch2, "b", 700)
    charge_call(ledger, contracts, acc[4], ch2, "c", 11)
    channels.initiate_withdraw(acc[3], ch2)
    contracts.chain.dev.increase_time(601)
    channels.finalize_withdraw(acc[3], ch2)
    assert channels.get_channel(ch2).closed
    settler = Settler(ledger, contracts, operator, batch_calls=10)
    result = settler.settle_once()
    assert (result.channels, result.calls, result.total_wei) == (1, 1, 500)
    assert channels.get_channel(ch1).claimed == 500 and channels.get_channel(ch2).claimed == 0
    assert settler.forfeited_wei == ledger.forfeited_amount() == ledger.forfeited_amount("0x" + ch2.hex()) == 711
    assert ledger.forfeit_of("b") == ledger.forfeit_of("c") == "the channel closed before its calls were claimed"
    assert ledger.forfeit_of("a") is None and ledger.settlement_of("a")[2] == "settled"
    assert ledger.settlement_of("b") is None and ledger.unsettled_amount() == 0
    charge_call(ledger, contracts, acc[2], ch1, "d", 9)  # nothing waits behind the closed channel
    assert settler.settle_once().calls == 1 and channels.get_channel(ch1).claimed == 509
    assert settler.settle_once() is None  # the forfeited calls are never batched again


def test_a_contract_wallet_that_revokes_before_the_claim_is_forfeited_and_the_rest_settles(setup, chain):
    """A channel authorized by an ERC-1271 wallet (accepted by the runtime's gate) whose wallet stops accepting the
    voucher's signature before the claim: its calls are forfeited, the EOA channel in the same batch is paid."""
    from tests.conftest import load_test_artifact

    contracts, ledger, operator, owner, acc = setup
    artifact = load_test_artifact("ERC1271Wallet")
    wallet_address, _ = chain.deploy(acc[0], artifact.abi, artifact.bytecode, acc[4].address)
    token = contracts.token.address
    config = ChannelConfig(acc[3].address, wallet_address, operator.address, token, 600, os.urandom(32))
    contracts.token.approve(acc[3], contracts.channels.address, 10 * OPEN)
    smart = contracts.channels.open(acc[3], config, 10 * OPEN)
    eoa = open_channel(contracts, acc[1], acc[2], operator)
    charge_call(ledger, contracts, acc[4], smart, "s", 400)  # signed by the wallet's owner
    charge_call(ledger, contracts, acc[2], eoa, "e", 300)
    wallet = chain.w3.eth.contract(address=wallet_address, abi=artifact.abi)
    chain.send(acc[4], wallet.functions.setRevoked(True))
    settler = Settler(ledger, contracts, operator, batch_calls=10)
    result = settler.settle_once()
    assert (result.channels, result.calls, result.total_wei) == (1, 1, 300)
    assert contracts.channels.get_channel(eoa).claimed == 300 and contracts.channels.get_channel(smart).claimed == 0
    assert ledger.forfeit_of("s") == "the payer's contract wallet no longer accepts the voucher's signature"
    assert settler.forfeited_wei == 400 and ledger.unsettled_amount() == 0


def test_a_claim_that_fails_for_another_reason_still_raises_and_stays_pending(setup):
    contracts, ledger, operator, owner, acc = setup
    ch = open_channel(contracts, acc[1], acc[2], operator)
    charge_call(ledger, contracts, acc[2], ch, "a", 500)
    batch = ledger.open_settlement()
    with ledger._tx() as db:  # a voucher signature the contract refuses (not the channel's authorizer)
        db.execute("UPDATE calls SET voucher_signature = ? WHERE call_id = 'a'",
                   ("0x" + sign_voucher(acc[7], contracts.channels.domain, Voucher(ch, 505, b"\x01" * 32)).hex(),))
    with pytest.raises(Exception, match="InvalidSignature|revert"):
        Settler(ledger, contracts, operator).settle_once()
    assert ledger.open_settlement().id == batch.id and ledger.forfeited_amount() == 0


def test_attributed_calls_fund_contributors_who_claim_with_the_posted_root(contracts, accounts, tmp_path):
    from loraledger.runtime.attribution import AttributionRecord, ContributorWeight, DatanetWeight, epoch_roots

    operator, owner, curator, alice, bob, payer, session = (accounts[i] for i in (0, 5, 6, 7, 8, 1, 2))
    dn = contracts.datanets.create_datanet(curator, "ipfs://law")
    contracts.datanets.register_contributions(curator, dn, [alice.address, bob.address], [b"\xaa" * 32, b"\xbb" * 32])
    policy = RevenuePolicy(owner_bps=1_000, data_bps=4_000, protocol_bps=0)
    contracts.adapters.register(owner, adapter_id("law"), base_model_hash=b"\x01" * 32, weights_hash=b"\x02" * 32,
                                uri="file://law", policy=policy, datanet_ids=[dn], datanet_weights_bps=[10_000])  # fmt: skip
    record = AttributionRecord(
        adapter="law", method="spans", output_tokens=12, params={"minSpan": 8}, spans=(),
        datanets=(DatanetWeight(dn, 10_000, "spans"),),
        contributors=(ContributorWeight(dn, alice.address, 7_500), ContributorWeight(dn, bob.address, 2_500)),
    )  # fmt: skip
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ch = open_channel(contracts, payer, session, operator)
    charge_call(ledger, contracts, session, ch, "c1", 1_000_001, adapter="law", attribution=record.to_json())
    charge_call(ledger, contracts, session, ch, "c2", 333, adapter="law", attribution=record.to_json())
    settler = Settler(ledger, contracts, operator)
    settler.settle_once()
    # Each call's data share, floored, split 3:1 exactly: never more than the contract funded the pool with.
    totals = ledger.contributor_totals()[dn]
    pool = contracts.channels.get_pool(operator.address, dn)
    assert sum(totals.values()) <= pool.funded and pool.funded - sum(totals.values()) <= 2
    assert totals == {alice.address: (400_000 * 3 // 4) + (133 * 3 // 4 + 1), bob.address: 100_000 + 133 // 4}
    root = epoch_roots(ledger.contributor_totals())[dn]
    assert pool.root == root.root and pool.root_total == root.total and pool.epoch == 1
    assert settler.post_roots() == 0  # nothing moved: nothing posted again
    for who in (alice, bob):
        amount, proof = root.proof(who.address)
        before = contracts.token.balance_of(who.address)
        contracts.channels.claim_contribution(who, operator.address, dn, amount, proof)
        assert contracts.token.balance_of(who.address) - before == amount == totals[who.address]
    ledger.close()
