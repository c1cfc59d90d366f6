"""PaymentGate: every way a PAYMENT-SIGNATURE can be wrong is refused with its code, on a real chain."""

from __future__ import annotations

import base64
import json
import os

import pytest
from eth_account import Account

from loraledger.runtime.billing.ledger import Ledger
from loraledger.runtime.billing.payments import ChannelReader, PaymentGate, PaymentRefused, PaymentTerms
from loraledger.runtime.billing.pricing import Prices
from loraledger.sdk import _x402 as x402
from loraledger.sdk.chain.contracts import OPEN
from loraledger.sdk.vouchers import ChannelConfig, Domain, Voucher, sign_voucher

PRICES = Prices(input_wei=10**12, output_wei=2 * 10**12)
MAX = 100 * 10**12
DELAY_S = 600


@pytest.fixture
def world(contracts, accounts, tmp_path):
    operator, payer, session = accounts[0], accounts[1], accounts[2]
    terms = PaymentTerms(
        chain_id=contracts.chain.chain_id, contract=contracts.channels.address, token=contracts.token.address,
        payee=operator.address, min_deposit_wei=OPEN // 100, min_withdraw_delay_s=DELAY_S,
    )  # fmt: skip
    ledger = Ledger(tmp_path / "ledger.sqlite")
    gate = PaymentGate(terms, ChannelReader(contracts.channels, ttl_s=60), ledger)

    def open_channel(deposit=OPEN, delay=DELAY_S, who=payer, key=session):
        config = ChannelConfig(who.address, key.address, operator.address, contracts.token.address, delay, os.urandom(32))
        contracts.token.approve(who, contracts.channels.address, deposit)
        return config, contracts.channels.open(who, config, deposit)

    yield dict(terms=terms, gate=gate, ledger=ledger, open=open_channel, operator=operator, payer=payer,
               session=session, domain=contracts.channels.domain, contracts=contracts)  # fmt: skip
    ledger.close()


def header(config, voucher, signature, *, network=None, scheme=x402.SCHEME, key="idem-1", terms=None, **tweak):
    """A PAYMENT-SIGNATURE built from DESIGN.md's protocol reference alone (not through the SDK)."""
    body = {
        "x402Version": 2,
        "accepted": {
            "scheme": scheme, "network": network or f"eip155:{terms.chain_id}", "amount": str(MAX),
            "asset": terms.token, "payTo": terms.payee, "maxTimeoutSeconds": 300,
            "extra": {"contract": terms.contract, "name": "loraledger", "version": "1"},
        },
        "payload": {
            "channel": {
                "payer": config.payer, "payerAuthorizer": config.payer_authorizer, "payee": config.payee,
                "token": config.token, "withdrawDelay": config.withdraw_delay_s, "salt": "0x" + config.salt.hex(),
            },
            "voucher": {"channelId": "0x" + voucher.channel_id.hex(), "cumulativeAmount": str(voucher.cumulative_amount),
                        "callHash": "0x" + voucher.call_hash.hex()},
            "signature": "0x" + bytes(signature).hex(),
        },
        "extensions": {"payment-identifier": {"info": {"id": key}}},
    }  # fmt: skip
    for path, value in tweak.items():
        node = body
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return base64.b64encode(json.dumps(body).encode()).decode()


def signed(w, config, cid, amount, signer=None, domain=None):
    voucher = Voucher(cid, amount, os.urandom(32))
    return voucher, sign_voucher(signer or w["session"], domain or w["domain"], voucher)


def refused(w, value, code):
    with pytest.raises(PaymentRefused) as info:
        w["gate"].verify(value, MAX)
    assert info.value.code == code, info.value
    return info.value


def test_a_good_voucher_is_accepted_with_its_budget(world):
    w = world
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 60 * 10**12)
    ok = w["gate"].verify(header(config, voucher, sig, terms=w["terms"]), MAX)
    assert (ok.channel_id, ok.budget_wei, ok.idempotency_key) == ("0x" + cid.hex(), 60 * 10**12, "idem-1")
    # A voucher above charged + max is capped at this call's max.
    voucher, sig = signed(w, config, cid, 10 * MAX)
    assert w["gate"].verify(header(config, voucher, sig, terms=w["terms"]), MAX).budget_wei == MAX


def test_402_payment_required_follows_the_protocol_reference(world):
    w = world
    value = w["gate"].payment_required("http://x/v1/chat/completions", PRICES, MAX, error="stale_voucher",
                                       charged_cumulative=7)  # fmt: skip
    body = json.loads(base64.b64decode(value))
    assert body["x402Version"] == 2 and body["error"] == "stale_voucher"
    (req,) = body["accepts"]
    assert req["scheme"] == "loraledger-channel" and req["network"] == f"eip155:{w['terms'].chain_id}"
    assert (req["amount"], req["payTo"], req["asset"]) == (str(MAX), w["terms"].payee, w["terms"].token)
    assert req["extra"]["contract"] == w["terms"].contract
    assert req["extra"]["pricePerInputToken"] == str(10**12) and req["extra"]["pricePerOutputToken"] == str(2 * 10**12)
    assert req["extra"]["chargedCumulativeAmount"] == "7" and req["extra"]["withdrawDelay"] == DELAY_S


def test_malformed_headers_are_400s(world):
    w = world
    for junk in ("", "not base64!", base64.b64encode(b"{}").decode(), base64.b64encode(b"[1]").decode()):
        assert refused(w, junk, "invalid_payment").status == 400
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 10)
    for tweak in ({"payload__voucher__cumulativeAmount": "-5"}, {"payload__voucher__cumulativeAmount": str(2**128)},
                  {"payload__channel__salt": "0x12"}, {"payload__channel__payer": "nope"},
                  {"payload__voucher__callHash": None}):  # fmt: skip
        assert refused(w, header(config, voucher, sig, terms=w["terms"], **tweak), "invalid_payment").status == 400
    assert refused(w, header(config, voucher, sig[:64], terms=w["terms"]), "invalid_signature").status == 402


def test_wrong_scheme_network_payee_or_token(world):
    w = world
    t = w["terms"]
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 10)
    refused(w, header(config, voucher, sig, terms=t, scheme="exact"), "unsupported_scheme")
    refused(w, header(config, voucher, sig, terms=t, network="eip155:1"), "wrong_network")
    stranger = Account.create().address
    refused(w, header(config, voucher, sig, terms=t, payload__channel__payee=stranger), "wrong_payee")
    refused(w, header(config, voucher, sig, terms=t, payload__channel__token=stranger), "wrong_asset")


def test_vouchers_bound_to_another_chain_or_contract_are_refused(world):
    w = world
    t = w["terms"]
    config, cid = w["open"]()
    for domain in (Domain(t.chain_id + 1, t.contract), Domain(t.chain_id, t.token)):
        voucher, sig = signed(w, config, cid, 10, domain=domain)
        refused(w, header(config, voucher, sig, terms=t), "invalid_signature")
    # A channel id computed for another contract does not match the config here.
    voucher, sig = signed(w, config, os.urandom(32), 10)
    refused(w, header(config, voucher, sig, terms=t), "invalid_channel")


def test_forged_and_malleable_signatures_are_refused(world):
    w = world
    t = w["terms"]
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 10, signer=w["payer"])  # the payer, not its session key
    refused(w, header(config, voucher, sig, terms=t), "invalid_signature")
    voucher, sig = signed(w, config, cid, 10)
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    r, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    twin = r + (n - s).to_bytes(32, "big") + bytes([55 - v])  # the high-s twin recovers the same key
    refused(w, header(config, voucher, twin, terms=t), "invalid_signature")
    tampered = Voucher(cid, 11, voucher.call_hash)
    refused(w, header(config, tampered, sig, terms=t), "invalid_signature")


def test_a_contract_wallet_authorizer_is_accepted_through_erc1271_until_it_revokes(world, chain, accounts):
    """A channel whose payerAuthorizer is a smart-contract wallet (contracts/test/ERC1271Wallet.sol, owned by the
    session key): its vouchers pass through isValidSignature, as PaymentChannels will check them at claim time;
    a stranger's signature, an empty or oversized one, and every voucher after the wallet revokes are refused."""
    from tests.conftest import load_test_artifact

    w = world
    t, owner = w["terms"], w["session"]
    artifact = load_test_artifact("ERC1271Wallet")
    wallet_address, _ = chain.deploy(accounts[0], artifact.abi, artifact.bytecode, owner.address)
    config = ChannelConfig(w["payer"].address, wallet_address, w["operator"].address, t.token, DELAY_S, os.urandom(32))
    w["contracts"].token.approve(w["payer"], w["contracts"].channels.address, OPEN)
    cid = w["contracts"].channels.open(w["payer"], config, OPEN)
    voucher, sig = signed(w, config, cid, 10**15, signer=owner)
    assert w["gate"].verify(header(config, voucher, sig, terms=t), MAX).budget_wei == MAX
    voucher2, stranger = signed(w, config, cid, 10**15, signer=accounts[7])
    refused(w, header(config, voucher2, stranger, terms=t), "invalid_signature")
    refused(w, header(config, voucher, b"", terms=t), "invalid_signature")
    refused(w, header(config, voucher, sig * 40, terms=t), "invalid_signature")  # 2,600 bytes
    # No contract call for a channel without the minimum deposit: its payer has locked nothing worth the call.
    small = ChannelConfig(w["payer"].address, wallet_address, w["operator"].address, t.token, DELAY_S, os.urandom(32))
    w["contracts"].token.approve(w["payer"], w["contracts"].channels.address, OPEN // 1000)
    small_cid = w["contracts"].channels.open(w["payer"], small, OPEN // 1000)
    small_voucher, small_sig = signed(w, small, small_cid, 10, signer=owner)
    refused(w, header(small, small_voucher, small_sig, terms=t), "invalid_signature")
    wallet = chain.w3.eth.contract(address=wallet_address, abi=artifact.abi)
    chain.send(owner, wallet.functions.setRevoked(True))
    refused(w, header(config, voucher, sig, terms=t), "invalid_signature")


def test_a_long_signature_for_an_eoa_authorizer_is_refused(world):
    w = world
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 10)
    refused(w, header(config, voucher, sig + b"\x00", terms=w["terms"]), "invalid_signature")


def test_channel_state_on_chain_is_checked(world):
    w = world
    t, c = w["terms"], w["contracts"]
    # Never opened (valid signature over a config nobody funded).
    config = ChannelConfig(w["payer"].address, w["session"].address, t.payee, t.token, DELAY_S, os.urandom(32))
    from loraledger.sdk.vouchers import channel_id as cid_of

    voucher, sig = signed(w, config, cid_of(w["domain"], config), 10)
    refused(w, header(config, voucher, sig, terms=t), "unknown_channel")
    # Beyond the deposit, then fine after a top-up (the cache is bypassed when the deposit looks short).
    config, cid = w["open"](deposit=OPEN)
    voucher, sig = signed(w, config, cid, OPEN + 1)
    refused(w, header(config, voucher, sig, terms=t), "insufficient_deposit")
    c.token.approve(w["payer"], c.channels.address, OPEN)
    c.channels.deposit(w["payer"], cid, OPEN)
    assert w["gate"].verify(header(config, voucher, sig, terms=t), MAX).budget_wei == MAX
    # Dust deposits and short withdraw delays.
    config, cid = w["open"](deposit=1)
    voucher, sig = signed(w, config, cid, 1)
    refused(w, header(config, voucher, sig, terms=t), "insufficient_deposit")
    config, cid = w["open"](delay=5)
    voucher, sig = signed(w, config, cid, 1)
    refused(w, header(config, voucher, sig, terms=t), "withdraw_delay_too_short")
    # Withdrawing and closed channels.
    config, cid = w["open"]()
    c.channels.initiate_withdraw(w["payer"], cid)
    voucher, sig = signed(w, config, cid, 1)
    refused(w, header(config, voucher, sig, terms=t), "channel_withdrawing")
    config, cid = w["open"]()
    c.channels.close(w["operator"], cid)
    voucher, sig = signed(w, config, cid, 1)
    refused(w, header(config, voucher, sig, terms=t), "channel_closed")


def test_stale_and_replayed_vouchers_carry_the_charged_total(world):
    w = world
    t, ledger = w["terms"], w["ledger"]
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 50)
    ok = w["gate"].verify(header(config, voucher, sig, terms=t), MAX)
    ledger.reserve(call_id="c1", idempotency_key="k1", request_hash="h", channel_id=ok.channel_id, adapter="a",
                   adapter_id="0x00", voucher_amount=50, voucher_call_hash="0x", voucher_signature="0x", budget=50)  # fmt: skip
    ledger.charge("c1", amount=30, input_tokens=1, output_tokens=1, receipt={"amount": "30", "cumulativeAmount": "30"},
                  receipt_signature="0x", attribution={}, response={})  # fmt: skip
    # Replaying the same voucher, or any voucher at or below 30, is stale and tells the client where it stands.
    for amount in (30, 20):
        voucher, sig = signed(w, config, cid, amount)
        assert refused(w, header(config, voucher, sig, terms=t), "stale_voucher").charged_cumulative == 30
    voucher, sig = signed(w, config, cid, 45)
    assert w["gate"].verify(header(config, voucher, sig, terms=t), MAX).budget_wei == 15


def test_unsettled_risk_limit(world, contracts):
    w = world
    from dataclasses import replace

    gate = PaymentGate(replace(w["terms"], max_unsettled_wei=100), ChannelReader(contracts.channels), w["ledger"])
    config, cid = w["open"]()
    voucher, sig = signed(w, config, cid, 100)
    assert gate.verify(header(config, voucher, sig, terms=w["terms"]), MAX).budget_wei == 100
    voucher, sig = signed(w, config, cid, 101)
    with pytest.raises(PaymentRefused) as info:
        gate.verify(header(config, voucher, sig, terms=w["terms"]), MAX)
    assert (info.value.code, info.value.status) == ("settlement_pending", 402)
