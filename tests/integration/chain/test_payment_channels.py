"""PaymentChannels: channels, batched claims and their revenue split, payer exit, earnings, contributor pools,
ownership and views — every function, event and misuse error, on both backends.

Attacks (replays, malleable signatures, reentrancy, forged proofs, claims beyond the deposit) live in their own
suite; this one checks that honest use moves exactly the right amounts, and that each test leaves the contract
solvent: its token balance equals what channels still hold, plus earnings, plus unpaid pool funding.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from loraledger.sdk.chain.artifacts import load_artifact
from loraledger.sdk.chain.contracts import Pool, Revenue, RevenuePolicy
from loraledger.sdk.chain.errors import ContractRevert
from loraledger.sdk.merkle import MerkleTree, contributor_leaf
from loraledger.sdk.vouchers import ChannelConfig, adapter_id, channel_id, typed_data_digest

pytestmark = pytest.mark.integration

OPEN = 10**18
FUNDED_WEI = 1_000_000 * OPEN
ZERO = "0x0000000000000000000000000000000000000000"
ZERO32 = b"\x00" * 32
BASE_MODEL = ZERO32
DELAY_S = 3600


@contextmanager
def reverts(name: str, *args):
    """Expects a ContractRevert with custom error `name` (and, when given, exactly these decoded arguments)."""
    with pytest.raises(ContractRevert) as info:
        yield info
    assert info.value.name == name, info.value
    if args:  # the decoder gives addresses in lower case
        assert _lower(info.value.args_) == _lower(args), info.value


def _lower(values: tuple) -> tuple:
    return tuple(v.lower() if isinstance(v, str) else v for v in values)


def _key(label: str):
    """A session key that is not a dev account (it holds nothing and never sends a transaction)."""
    return Account.from_key(keccak(text=label))


def _now(chain) -> int:
    return chain.w3.eth.get_block("latest")["timestamp"]


def _block_time(chain, receipt) -> int:
    return chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]


def _call(binding, fn: str, *args):
    return binding.chain.call(binding.contract.functions[fn](*args))


def _send(binding, account, fn: str, *args):
    return binding.chain.send(account, binding.contract.functions[fn](*args))


def assert_solvent(contracts, *extra_holders: str) -> None:
    """The contract holds exactly what it owes: every channel's deposited - claimed (zero once closed), every
    withdrawable balance and every pool's funded - paidOut. Channels, pools and holders come from the logs."""
    channels = contracts.channels
    events = channels.contract.events
    held = sum(
        state.deposited - state.claimed
        for state in (
            channels.get_channel(log["args"]["channelId"]) for log in events.ChannelOpened.get_logs(from_block=0)
        )
    )
    holders = {log["args"]["operator"] for log in events.RevenueSplit.get_logs(from_block=0)}
    holders |= {log["args"]["treasury"] for log in events.ProtocolTreasuryUpdated.get_logs(from_block=0)}
    adapter_events = contracts.adapters.contract.events
    holders |= {log["args"]["owner"] for log in adapter_events.AdapterRegistered.get_logs(from_block=0)}
    holders |= {log["args"]["newOwner"] for log in adapter_events.AdapterTransferred.get_logs(from_block=0)}
    holders |= set(extra_holders)
    earned = sum(channels.earnings(h) for h in holders)
    pool_keys = {
        (log["args"]["operator"], log["args"]["datanetId"]) for log in events.PoolFunded.get_logs(from_block=0)
    }
    pooled = sum(p.funded - p.paid_out for p in (channels.get_pool(op, dn) for op, dn in pool_keys))
    assert contracts.token.balance_of(channels.address) == held + earned + pooled


def _permit(contracts, owner, spender: str, value: int, deadline: int):
    token = contracts.token
    signable = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "Permit": [
                    {"name": "owner", "type": "address"},
                    {"name": "spender", "type": "address"},
                    {"name": "value", "type": "uint256"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "Permit",
            "domain": {
                "name": "Open",
                "version": "1",
                "chainId": token.chain.chain_id,
                "verifyingContract": token.address,
            },
            "message": {
                "owner": owner.address,
                "spender": spender,
                "value": value,
                "nonce": _call(token, "nonces", owner.address),
                "deadline": deadline,
            },
        }
    )
    signed = Account.sign_message(signable, owner.key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@pytest.fixture
def actors(accounts):
    """Named roles: account 0 operates (payee) and deploys; payers 1-2 sign with fresh session keys."""

    class Actors:
        operator = accounts[0]
        payer, payer2 = accounts[1], accounts[2]
        session, session2 = _key("session 1"), _key("session 2")
        owner_a, owner_b = accounts[3], accounts[4]
        curator = accounts[5]
        contributors = (accounts[6], accounts[7], accounts[8])
        treasury = accounts[9]
        stranger = accounts[8]

    return Actors


# ---------------------------------------------------------------------------------------------- views


def test_constants_views_and_domain(chain, accounts, contracts, payments, actors):
    channels = contracts.channels
    assert _call(channels, "token") == contracts.token.address
    assert _call(channels, "adapters") == contracts.adapters.address
    assert _call(channels, "datanets") == contracts.datanets.address
    assert _call(channels, "BPS") == 10_000
    assert bytes(_call(channels, "CHANNEL_CONFIG_TYPEHASH")) == keccak(
        text="ChannelConfig(address payer,address payerAuthorizer,address payee,address token,"
        "uint40 withdrawDelay,bytes32 salt)"
    )
    assert bytes(_call(channels, "VOUCHER_TYPEHASH")) == keccak(
        text="Voucher(bytes32 channelId,uint128 cumulativeAmount,bytes32 callHash)"
    )
    assert channels.protocol_treasury() == accounts[0].address
    assert _call(channels, "owner") == accounts[0].address
    assert _call(channels, "pendingOwner") == ZERO
    # The constructor announced the treasury.
    assert [
        log["args"]["treasury"] for log in channels.contract.events.ProtocolTreasuryUpdated.get_logs(from_block=0)
    ] == [accounts[0].address]

    fields, name, version, chain_id, verifying, salt, extensions = _call(channels, "eip712Domain")
    assert (fields, name, version, chain_id, verifying, salt, extensions) == (
        b"\x0f",
        "loraledger",
        "1",
        chain.chain_id,
        channels.address,
        ZERO32,
        [],
    )
    domain_typehash = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    assert channels.domain_separator() == keccak(
        domain_typehash
        + keccak(text="loraledger")
        + keccak(text="1")
        + chain.chain_id.to_bytes(32, "big")
        + bytes.fromhex(channels.address[2:]).rjust(32, b"\x00")
    )
    call_hash = keccak(text="call")
    some_channel = keccak(text="channel")
    assert channels.voucher_digest(some_channel, 12_345, call_hash) == typed_data_digest(
        channels.domain, "Voucher", {"channelId": some_channel, "cumulativeAmount": 12_345, "callHash": call_hash}
    )

    assert channels.get_pool(actors.operator.address, 1) == Pool(0, 0, ZERO32, 0, 0)
    assert channels.earnings(actors.operator.address) == 0
    assert channels.contributor_claimed(actors.operator.address, 1, actors.contributors[0].address) == 0
    with reverts("UnknownChannel", some_channel):
        channels.get_channel(some_channel)


def test_constructor_rejects_zero_token_or_treasury(chain, accounts, contracts):
    artifact = load_artifact("PaymentChannels")
    c = contracts
    for token, treasury in ((ZERO, accounts[0].address), (c.token.address, ZERO)):
        with reverts("ZeroAddress"):
            chain.deploy(
                accounts[0],
                artifact.abi,
                artifact.bytecode,
                token,
                c.adapters.address,
                c.datanets.address,
                treasury,
                accounts[0].address,
            )


# ---------------------------------------------------------------------------------------------- opening and deposits


def test_open_a_channel(chain, contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    config = ChannelConfig(
        actors.payer.address,
        actors.session.address,
        actors.operator.address,
        token.address,
        DELAY_S,
        keccak(text="lane 0"),
    )
    expected_id = channel_id(channels.domain, config)
    assert channels.channel_id_of(config) == expected_id

    token.approve(actors.payer, channels.address, 5 * OPEN)
    receipt = _send(channels, actors.payer, "open", config.as_tuple(), 5 * OPEN)
    assert channels.events(receipt, "ChannelOpened") == [
        {
            "channelId": expected_id,
            "payer": actors.payer.address,
            "payee": actors.operator.address,
            "payerAuthorizer": actors.session.address,
            "withdrawDelay": DELAY_S,
            "salt": keccak(text="lane 0"),
            "amount": 5 * OPEN,
        }
    ]
    assert token.events(receipt, "Transfer") == [
        {"from": actors.payer.address, "to": channels.address, "value": 5 * OPEN}
    ]
    assert token.balance_of(actors.payer.address) == FUNDED_WEI - 5 * OPEN
    assert token.balance_of(channels.address) == 5 * OPEN
    state = channels.get_channel(expected_id)
    assert state.config == config
    assert (state.deposited, state.claimed, state.withdraw_requested_at, state.closed) == (5 * OPEN, 0, 0, False)

    # Another lane between the same parties is another channel.
    lane_id, lane_config = payments.open(
        actors.payer, actors.session, actors.operator, OPEN, salt=keccak(text="lane 1")
    )
    assert lane_id == channel_id(channels.domain, lane_config) == channels.channel_id_of(lane_config) != expected_id
    assert token.balance_of(channels.address) == 6 * OPEN
    assert_solvent(contracts)


def test_open_rejects_misuse(contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    token.approve(actors.payer, channels.address, 10 * OPEN)

    def config(**overrides):
        fields = dict(
            payer=actors.payer.address,
            payer_authorizer=actors.session.address,
            payee=actors.operator.address,
            token=token.address,
            withdraw_delay_s=DELAY_S,
            salt=keccak(text="salt"),
        )
        return ChannelConfig(**(fields | overrides))

    with reverts("NotPayer"):
        channels.open(actors.payer, config(payer=actors.payer2.address), OPEN)
    with reverts("UnsupportedToken", contracts.adapters.address):
        channels.open(actors.payer, config(token=contracts.adapters.address), OPEN)
    with reverts("ZeroAddress"):
        channels.open(actors.payer, config(payer_authorizer=ZERO), OPEN)
    with reverts("ZeroAddress"):
        channels.open(actors.payer, config(payee=ZERO), OPEN)
    with reverts("ZeroAmount"):
        channels.open(actors.payer, config(), 0)
    with reverts("ERC20InsufficientAllowance"):
        channels.open(actors.payer, config(), 11 * OPEN)
    cid = channels.open(actors.payer, config(), OPEN)
    with reverts("ChannelExists", cid):
        channels.open(actors.payer, config(), OPEN)
    assert contracts.token.balance_of(channels.address) == OPEN
    assert_solvent(contracts)


def test_open_with_permit_needs_no_prior_approval(chain, contracts, actors):
    channels, token = contracts.channels, contracts.token
    config = ChannelConfig(
        actors.payer.address,
        actors.session.address,
        actors.operator.address,
        token.address,
        DELAY_S,
        keccak(text="permit"),
    )
    deadline = _now(chain) + 600
    v, r, s = _permit(contracts, actors.payer, channels.address, 3 * OPEN, deadline)
    assert token.allowance(actors.payer.address, channels.address) == 0

    cid = channels.open_with_permit(actors.payer, config, 3 * OPEN, deadline, v, r, s)
    assert cid == channel_id(channels.domain, config)
    assert channels.get_channel(cid).deposited == 3 * OPEN
    assert token.balance_of(actors.payer.address) == FUNDED_WEI - 3 * OPEN
    assert token.allowance(actors.payer.address, channels.address) == 0
    assert _call(token, "nonces", actors.payer.address) == 1

    # A permit for too little (and no allowance to fall back on) fails the transfer, not silently.
    other = ChannelConfig(*config.as_tuple()[:5], keccak(text="permit 2"))
    v, r, s = _permit(contracts, actors.payer, channels.address, OPEN, deadline)
    with reverts("ERC20InsufficientAllowance"):
        channels.open_with_permit(actors.payer, other, 2 * OPEN, deadline, v, r, s)
    assert_solvent(contracts)


def test_anyone_may_deposit_into_an_open_channel(contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    cid, _ = payments.open(actors.payer, actors.session, actors.operator, 2 * OPEN)
    sponsor = actors.payer2
    token.approve(sponsor, channels.address, 10 * OPEN)

    receipt = channels.deposit(sponsor, cid, 3 * OPEN)
    assert channels.events(receipt, "Deposited") == [
        {"channelId": cid, "from": sponsor.address, "amount": 3 * OPEN, "deposited": 5 * OPEN}
    ]
    assert token.balance_of(sponsor.address) == FUNDED_WEI - 3 * OPEN
    assert channels.get_channel(cid).deposited == 5 * OPEN

    with reverts("ZeroAmount"):
        channels.deposit(sponsor, cid, 0)
    unknown = keccak(text="no such channel")
    with reverts("UnknownChannel", unknown):
        channels.deposit(sponsor, unknown, OPEN)

    channels.initiate_withdraw(actors.payer, cid)
    with reverts("ChannelWithdrawing", cid):
        channels.deposit(sponsor, cid, OPEN)

    other, _ = payments.open(actors.payer, actors.session, actors.operator, OPEN)
    channels.close(actors.operator, other)
    with reverts("ChannelIsClosed", other):
        channels.deposit(sponsor, other, OPEN)
    assert channels.get_channel(cid).deposited == 5 * OPEN
    assert_solvent(contracts)


# ---------------------------------------------------------------------------------------------- claims and splits


def _split_event(adapter, operator: str, amount: int, owner: int, data: int, protocol: int, rest: int) -> dict:
    """RevenueSplit's arguments: `amount` of `adapter` split into owner, data, protocol and operator shares."""
    return {
        "adapterId": adapter,
        "operator": operator,
        "amount": amount,
        "ownerShare": owner,
        "dataShare": data,
        "protocolShare": protocol,
        "operatorShare": rest,
    }


def _setup_adapters(contracts, actors):
    """Three datanets; adapter A feeds all three (3,333/3,333/3,334), adapter B feeds the second only."""
    datanets, adapters = contracts.datanets, contracts.adapters
    dns = [datanets.create_datanet(actors.curator, f"ipfs://dn{i}") for i in range(3)]
    a, b = adapter_id("adapter-a"), adapter_id("adapter-b")
    adapters.register(
        actors.owner_a,
        a,
        base_model_hash=keccak(text="base"),
        weights_hash=keccak(text="a"),
        uri="ipfs://a",
        policy=RevenuePolicy(3_000, 2_500, 500),
        datanet_ids=dns,
        datanet_weights_bps=[3_333, 3_333, 3_334],
    )
    adapters.register(
        actors.owner_b,
        b,
        base_model_hash=keccak(text="base"),
        weights_hash=keccak(text="b"),
        uri="ipfs://b",
        policy=RevenuePolicy(4_000, 1_000, 300),
        datanet_ids=[dns[1]],
        datanet_weights_bps=[10_000],
    )
    return dns, a, b


def test_claim_splits_revenue_across_adapters_base_model_and_datanets(contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    op = actors.operator
    channels.set_protocol_treasury(op, actors.treasury.address)
    (dn1, dn2, dn3), a, b = _setup_adapters(contracts, actors)
    ch1, _ = payments.open(actors.payer, actors.session, op, 2_000_000)
    ch2, _ = payments.open(actors.payer2, actors.session2, op, 1_000_000)
    v1 = payments.voucher(actors.session, ch1, 1_000_003)
    v2 = payments.voucher(actors.session2, ch2, 777_777)
    balance_before = token.balance_of(channels.address)

    # 1,777,780 claimed in all: 1,000,001 earned by A, 555,557 by B, 222,222 by the base model.
    receipt = channels.claim(op, [v1, v2], [Revenue(a, 1_000_001), Revenue(b, 555_557), Revenue(BASE_MODEL, 222_222)])

    assert channels.events(receipt, "Claimed") == [
        {"channelId": ch1, "payee": op.address, "amount": 1_000_003, "claimed": 1_000_003, "callHash": v1.call_hash},
        {"channelId": ch2, "payee": op.address, "amount": 777_777, "claimed": 777_777, "callHash": v2.call_hash},
    ]
    # A: owner 30% = 300,000 (.3 floored), data 25% = 250,000, protocol 5% = 50,000, operator the rest 400,001.
    # B: owner 40% = 222,222 (.8 floored), data 10% = 55,555, protocol 3% = 16,666, operator the rest 261,114.
    assert channels.events(receipt, "RevenueSplit") == [
        _split_event(a, op.address, 1_000_001, 300_000, 250_000, 50_000, 400_001),
        _split_event(b, op.address, 555_557, 222_222, 55_555, 16_666, 261_114),
        _split_event(BASE_MODEL, op.address, 222_222, 0, 0, 0, 222_222),
    ]
    # A's data share: 250,000 * 3,333 / 10,000 = 83,325 twice, the last datanet gets the remainder 83,350.
    assert channels.events(receipt, "PoolFunded") == [
        {"operator": op.address, "datanetId": dn1, "amount": 83_325},
        {"operator": op.address, "datanetId": dn2, "amount": 83_325},
        {"operator": op.address, "datanetId": dn3, "amount": 83_350},
        {"operator": op.address, "datanetId": dn2, "amount": 55_555},
    ]
    assert channels.earnings(op.address) == 400_001 + 261_114 + 222_222
    assert channels.earnings(actors.treasury.address) == 50_000 + 16_666
    assert channels.earnings(actors.owner_a.address) == 300_000
    assert channels.earnings(actors.owner_b.address) == 222_222
    assert [channels.get_pool(op.address, dn).funded for dn in (dn1, dn2, dn3)] == [83_325, 138_880, 83_350]
    assert channels.get_pool(op.address, dn2) == Pool(138_880, 0, ZERO32, 0, 0)
    assert (channels.get_channel(ch1).claimed, channels.get_channel(ch2).claimed) == (1_000_003, 777_777)
    # Claiming moves no tokens; it only re-labels what the contract already holds.
    assert token.balance_of(channels.address) == balance_before
    assert_solvent(contracts)

    # Dust: 7 to A gives owner 2, data 1 (0 and 0 to the first datanets, so only the last is funded),
    # protocol 0, operator 4.
    dust = payments.voucher(actors.session, ch1, 1_000_010)
    receipt = channels.claim(op, [dust], [Revenue(a, 7)])
    assert channels.events(receipt, "RevenueSplit") == [_split_event(a, op.address, 7, 2, 1, 0, 4)]
    assert channels.events(receipt, "PoolFunded") == [{"operator": op.address, "datanetId": dn3, "amount": 1}]
    assert channels.earnings(actors.treasury.address) == 66_666
    assert channels.earnings(op.address) == 883_337 + 4
    assert_solvent(contracts)


def test_partial_claims_pay_only_the_delta(contracts, payments, actors):
    channels = contracts.channels
    op = actors.operator
    cid, _ = payments.open(actors.payer, actors.session, op, 10_000)
    voucher = payments.voucher(actors.session, cid, 1_000, claim=400)

    receipt = channels.claim(op, [voucher], [Revenue(BASE_MODEL, 400)])
    assert [(e["amount"], e["claimed"]) for e in channels.events(receipt, "Claimed")] == [(400, 400)]
    # The same voucher again, claiming more of it.
    more = payments.voucher(actors.session, cid, 1_000, claim=700, call_hash=voucher.call_hash)
    receipt = channels.claim(op, [more], [Revenue(BASE_MODEL, 300)])
    assert [(e["amount"], e["claimed"]) for e in channels.events(receipt, "Claimed")] == [(300, 700)]
    # A later, higher voucher claimed in full pays 1,500 - 700.
    later = payments.voucher(actors.session, cid, 1_500)
    receipt = channels.claim(op, [later], [Revenue(BASE_MODEL, 800)])
    assert [(e["amount"], e["claimed"]) for e in channels.events(receipt, "Claimed")] == [(800, 1_500)]
    assert channels.get_channel(cid).claimed == 1_500
    assert channels.earnings(op.address) == 1_500

    with reverts("ClaimExceedsVoucher", cid):
        channels.claim(op, [payments.voucher(actors.session, cid, 2_000, claim=2_001)], [Revenue(BASE_MODEL, 501)])
    assert channels.get_channel(cid).claimed == 1_500
    assert_solvent(contracts)


def test_claim_rejects_misuse(contracts, payments, actors):
    channels = contracts.channels
    op = actors.operator
    _, a, _ = _setup_adapters(contracts, actors)
    cid, _ = payments.open(actors.payer, actors.session, op, 10_000)
    voucher = payments.voucher(actors.session, cid, 1_000)

    with reverts("EmptyClaim"):
        channels.claim(op, [], [])
    with reverts("RevenueMismatch", 1_000, 999):
        channels.claim(op, [voucher], [Revenue(a, 600), Revenue(BASE_MODEL, 399)])
    with reverts("RevenueMismatch", 1_000, 1_001):
        channels.claim(op, [voucher], [Revenue(a, 1_001)])
    with reverts("RevenueMismatch", 1_000, 0):
        channels.claim(op, [voucher], [])
    with reverts("ZeroAmount"):
        channels.claim(op, [voucher], [Revenue(a, 1_000), Revenue(BASE_MODEL, 0)])
    unregistered = adapter_id("never registered")
    with reverts("UnknownAdapter", unregistered):
        channels.claim(op, [voucher], [Revenue(unregistered, 1_000)])
    unknown = keccak(text="no such channel")
    with reverts("UnknownChannel", unknown):
        channels.claim(op, [voucher, payments.voucher(actors.session, unknown, 5)], [Revenue(a, 1_005)])
    with reverts("NotPayee", cid, actors.payer2.address):
        channels.claim(actors.payer2, [voucher], [Revenue(BASE_MODEL, 1_000)])

    # Nothing of the rejected claims stuck.
    assert channels.get_channel(cid).claimed == 0
    assert channels.earnings(op.address) == 0
    channels.claim(op, [voucher], [Revenue(a, 1_000)])
    assert channels.get_channel(cid).claimed == 1_000
    assert_solvent(contracts)


# ---------------------------------------------------------------------------------------------- exits


def test_payer_withdraws_after_the_delay_while_the_payee_may_still_claim(chain, contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    op, payer = actors.operator, actors.payer
    cid, _ = payments.open(payer, actors.session, op, 10_000, withdraw_delay_s=DELAY_S)
    channels.claim(op, [payments.voucher(actors.session, cid, 1_000)], [Revenue(BASE_MODEL, 1_000)])

    with reverts("WithdrawState", cid):
        channels.finalize_withdraw(payer, cid)
    with reverts("NotChannelPayer", cid, op.address):
        channels.initiate_withdraw(op, cid)
    receipt = channels.initiate_withdraw(payer, cid)
    requested_at = _block_time(chain, receipt)
    finalize_after = requested_at + DELAY_S
    assert channels.events(receipt, "WithdrawInitiated") == [{"channelId": cid, "finalizeAfter": finalize_after}]
    assert channels.get_channel(cid).withdraw_requested_at == requested_at
    with reverts("WithdrawState", cid):
        channels.initiate_withdraw(payer, cid)
    with reverts("WithdrawDelayNotElapsed", cid, finalize_after):
        channels.finalize_withdraw(payer, cid)

    # During the delay the payee still claims what it served.
    chain.dev.increase_time(DELAY_S // 2)
    channels.claim(op, [payments.voucher(actors.session, cid, 2_500)], [Revenue(BASE_MODEL, 1_500)])
    with reverts("WithdrawDelayNotElapsed", cid, finalize_after):
        channels.finalize_withdraw(payer, cid)

    chain.dev.increase_time(DELAY_S)
    with reverts("NotChannelPayer", cid, op.address):
        channels.finalize_withdraw(op, cid)
    before = token.balance_of(payer.address)
    receipt = channels.finalize_withdraw(payer, cid)
    assert channels.events(receipt, "ChannelClosed") == [{"channelId": cid, "by": payer.address, "refund": 7_500}]
    assert token.events(receipt, "Transfer") == [{"from": channels.address, "to": payer.address, "value": 7_500}]
    assert token.balance_of(payer.address) == before + 7_500
    state = channels.get_channel(cid)
    assert (state.closed, state.claimed, state.withdraw_requested_at) == (True, 2_500, requested_at)
    # Closing sets deposited to what was claimed, so the channel holds nothing more.
    assert state.deposited == 2_500

    with reverts("ChannelIsClosed", cid):
        channels.claim(op, [payments.voucher(actors.session, cid, 3_000)], [Revenue(BASE_MODEL, 500)])
    with reverts("ChannelIsClosed", cid):
        channels.finalize_withdraw(payer, cid)
    with reverts("ChannelIsClosed", cid):
        channels.initiate_withdraw(payer, cid)
    assert channels.earnings(op.address) == 2_500
    assert_solvent(contracts)


def test_payee_closes_at_once(contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    op, payer = actors.operator, actors.payer
    cid, _ = payments.open(payer, actors.session, op, 10_000)
    channels.claim(op, [payments.voucher(actors.session, cid, 4_000)], [Revenue(BASE_MODEL, 4_000)])

    with reverts("NotPayee", cid, payer.address):
        channels.close(payer, cid)
    unknown = keccak(text="no such channel")
    with reverts("UnknownChannel", unknown):
        channels.close(op, unknown)
    before = token.balance_of(payer.address)
    receipt = channels.close(op, cid)
    assert channels.events(receipt, "ChannelClosed") == [{"channelId": cid, "by": op.address, "refund": 6_000}]
    assert token.balance_of(payer.address) == before + 6_000
    assert channels.get_channel(cid).closed
    with reverts("ChannelIsClosed", cid):
        channels.claim(op, [payments.voucher(actors.session, cid, 5_000)], [Revenue(BASE_MODEL, 1_000)])
    with reverts("ChannelIsClosed", cid):
        channels.close(op, cid)
    with reverts("ChannelIsClosed", cid):
        channels.initiate_withdraw(payer, cid)

    # A fully claimed channel closes with no refund and no transfer.
    full, _ = payments.open(payer, actors.session, op, 3_000)
    channels.claim(op, [payments.voucher(actors.session, full, 3_000)], [Revenue(BASE_MODEL, 3_000)])
    receipt = channels.close(op, full)
    assert channels.events(receipt, "ChannelClosed") == [{"channelId": full, "by": op.address, "refund": 0}]
    assert token.events(receipt, "Transfer") == []
    assert_solvent(contracts)


# ---------------------------------------------------------------------------------------------- earnings


def test_withdraw_earnings(contracts, payments, actors):
    channels, token = contracts.channels, contracts.token
    op = actors.operator
    channels.set_protocol_treasury(op, actors.treasury.address)
    _, a, _ = _setup_adapters(contracts, actors)
    cid, _ = payments.open(actors.payer, actors.session, op, 100_000)
    channels.claim(op, [payments.voucher(actors.session, cid, 10_000)], [Revenue(a, 10_000)])
    # A: owner 3,000, data 2,500, protocol 500, operator 4,000.
    cold_wallet = _key("owner's cold wallet").address

    with reverts("ZeroAddress"):
        _send(channels, actors.owner_a, "withdrawEarnings", ZERO)
    receipt = channels.withdraw_earnings(actors.owner_a, cold_wallet)
    assert channels.events(receipt, "EarningsWithdrawn") == [
        {"account": actors.owner_a.address, "to": cold_wallet, "amount": 3_000}
    ]
    assert token.balance_of(cold_wallet) == 3_000
    assert token.balance_of(actors.owner_a.address) == FUNDED_WEI
    assert channels.earnings(actors.owner_a.address) == 0
    with reverts("NothingToWithdraw"):
        channels.withdraw_earnings(actors.owner_a)
    with reverts("NothingToWithdraw"):
        channels.withdraw_earnings(actors.payer)

    before = token.balance_of(op.address)
    receipt = channels.withdraw_earnings(op)
    assert channels.events(receipt, "EarningsWithdrawn") == [{"account": op.address, "to": op.address, "amount": 4_000}]
    assert token.balance_of(op.address) == before + 4_000
    channels.withdraw_earnings(actors.treasury)
    assert token.balance_of(actors.treasury.address) == FUNDED_WEI + 500
    assert token.balance_of(channels.address) == 90_000 + 2_500
    assert_solvent(contracts, cold_wallet)


# ---------------------------------------------------------------------------------------------- contributor pools


def test_contributors_claim_through_growing_epoch_roots(contracts, payments, actors):
    channels, token, datanets = contracts.channels, contracts.token, contracts.datanets
    op = actors.operator
    (dn1, dn2, dn3), a, b = _setup_adapters(contracts, actors)
    ann, ben, cat = actors.contributors
    datanets.register_contributions(
        actors.curator, dn2, [ann.address, ben.address, cat.address], [keccak(text=t) for t in "abc"]
    )
    cid, _ = payments.open(actors.payer, actors.session, op, 1_000_000)
    channels.claim(op, [payments.voucher(actors.session, cid, 100_000)], [Revenue(b, 100_000)])
    assert channels.get_pool(op.address, dn2).funded == 10_000  # B's 10% data share, all to dn2

    with reverts("InvalidRootTotal", 10_001, 10_000, 0):
        channels.post_epoch_root(op, dn2, keccak(text="root"), 10_001)

    epoch1 = {ann.address: 5_000, ben.address: 3_000, cat.address: 1_000}
    tree = MerkleTree([contributor_leaf(dn2, who, amount) for who, amount in epoch1.items()])
    receipts_root, attribution_root = keccak(text="receipts 1"), keccak(text="attribution 1")
    receipt = channels.post_epoch_root(op, dn2, tree.root, 9_000, receipts_root, attribution_root)
    assert channels.events(receipt, "EpochRootPosted") == [
        {
            "operator": op.address,
            "datanetId": dn2,
            "epoch": 1,
            "root": tree.root,
            "total": 9_000,
            "receiptsRoot": receipts_root,
            "attributionRoot": attribution_root,
        }
    ]
    assert channels.get_pool(op.address, dn2) == Pool(10_000, 0, tree.root, 9_000, 1)

    for i, (who, amount) in enumerate(zip((ann, ben), (5_000, 3_000), strict=True)):
        receipt = channels.claim_contribution(who, op.address, dn2, amount, tree.proof(i))
        assert channels.events(receipt, "ContributorPaid") == [
            {
                "operator": op.address,
                "datanetId": dn2,
                "contributor": who.address,
                "amount": amount,
                "cumulativeAmount": amount,
            }
        ]
        assert token.balance_of(who.address) == FUNDED_WEI + amount
        assert channels.contributor_claimed(op.address, dn2, who.address) == amount
    with reverts("AlreadyClaimed", 5_000, 5_000):
        channels.claim_contribution(ann, op.address, dn2, 5_000, tree.proof(0))
    assert channels.get_pool(op.address, dn2).paid_out == 8_000
    assert_solvent(contracts)

    # More revenue, a second epoch: cumulative amounts grow, and each contributor is paid the difference.
    channels.claim(op, [payments.voucher(actors.session, cid, 300_000)], [Revenue(b, 200_000)])
    assert channels.get_pool(op.address, dn2).funded == 30_000
    with reverts("InvalidRootTotal", 8_999, 30_000, 9_000):
        channels.post_epoch_root(op, dn2, keccak(text="shrinking root"), 8_999)
    epoch2 = {ann.address: 18_000, ben.address: 3_000, cat.address: 9_000}
    tree2 = MerkleTree([contributor_leaf(dn2, who, amount) for who, amount in epoch2.items()])
    receipt = channels.post_epoch_root(op, dn2, tree2.root, 30_000)
    assert channels.events(receipt, "EpochRootPosted")[0]["epoch"] == 2
    assert channels.get_pool(op.address, dn2) == Pool(30_000, 8_000, tree2.root, 30_000, 2)

    receipt = channels.claim_contribution(ann, op.address, dn2, 18_000, tree2.proof(0))
    assert channels.events(receipt, "ContributorPaid")[0]["amount"] == 13_000
    with reverts("AlreadyClaimed", 3_000, 3_000):
        channels.claim_contribution(ben, op.address, dn2, 3_000, tree2.proof(1))
    # Cat never claimed epoch 1, so epoch 2 pays the whole cumulative amount.
    channels.claim_contribution(cat, op.address, dn2, 9_000, tree2.proof(2))
    assert token.balance_of(ann.address) == FUNDED_WEI + 18_000
    assert token.balance_of(cat.address) == FUNDED_WEI + 9_000
    assert channels.get_pool(op.address, dn2) == Pool(30_000, 30_000, tree2.root, 30_000, 2)
    assert [channels.contributor_claimed(op.address, dn2, w.address) for w in (ann, ben, cat)] == [18_000, 3_000, 9_000]

    # Pools are per operator: another operator's empty pool accepts only a zero total.
    other_op = actors.owner_b
    with reverts("InvalidRootTotal", 1, 0, 0):
        channels.post_epoch_root(other_op, dn2, tree2.root, 1)
    channels.post_epoch_root(other_op, dn2, ZERO32, 0)
    assert channels.get_pool(other_op.address, dn2) == Pool(0, 0, ZERO32, 0, 1)
    assert_solvent(contracts)


# ---------------------------------------------------------------------------------------------- ownership


def test_owner_sets_the_treasury(contracts, payments, actors):
    channels = contracts.channels
    op = actors.operator
    with reverts("OwnableUnauthorizedAccount", actors.stranger.address):
        channels.set_protocol_treasury(actors.stranger, actors.stranger.address)
    with reverts("ZeroAddress"):
        channels.set_protocol_treasury(op, ZERO)
    receipt = channels.set_protocol_treasury(op, actors.treasury.address)
    assert channels.events(receipt, "ProtocolTreasuryUpdated") == [{"treasury": actors.treasury.address}]
    assert channels.protocol_treasury() == actors.treasury.address

    # The protocol share of later claims goes to the new treasury; the old one keeps what it earned.
    _, a, _ = _setup_adapters(contracts, actors)
    cid, _ = payments.open(actors.payer, actors.session, op, 100_000)
    channels.claim(op, [payments.voucher(actors.session, cid, 20_000)], [Revenue(a, 20_000)])
    channels.set_protocol_treasury(op, actors.payer2.address)
    channels.claim(op, [payments.voucher(actors.session, cid, 30_000)], [Revenue(a, 10_000)])
    assert channels.earnings(actors.treasury.address) == 1_000
    assert channels.earnings(actors.payer2.address) == 500
    assert_solvent(contracts)


def test_ownership_moves_in_two_steps(contracts, actors):
    channels = contracts.channels
    owner, successor, stranger = actors.operator, actors.owner_a, actors.stranger

    with reverts("OwnableUnauthorizedAccount", stranger.address):
        _send(channels, stranger, "transferOwnership", stranger.address)
    receipt = _send(channels, owner, "transferOwnership", successor.address)
    assert channels.events(receipt, "OwnershipTransferStarted") == [
        {"previousOwner": owner.address, "newOwner": successor.address}
    ]
    assert (_call(channels, "owner"), _call(channels, "pendingOwner")) == (owner.address, successor.address)
    channels.set_protocol_treasury(owner, stranger.address)  # still the owner until accepted

    with reverts("OwnableUnauthorizedAccount", stranger.address):
        _send(channels, stranger, "acceptOwnership")
    receipt = _send(channels, successor, "acceptOwnership")
    assert channels.events(receipt, "OwnershipTransferred") == [
        {"previousOwner": owner.address, "newOwner": successor.address}
    ]
    assert (_call(channels, "owner"), _call(channels, "pendingOwner")) == (successor.address, ZERO)
    with reverts("OwnableUnauthorizedAccount", owner.address):
        channels.set_protocol_treasury(owner, owner.address)
    channels.set_protocol_treasury(successor, successor.address)
    assert channels.protocol_treasury() == successor.address

    receipt = _send(channels, successor, "renounceOwnership")
    assert channels.events(receipt, "OwnershipTransferred") == [{"previousOwner": successor.address, "newOwner": ZERO}]
    assert _call(channels, "owner") == ZERO
    with reverts("OwnableUnauthorizedAccount", successor.address):
        channels.set_protocol_treasury(successor, owner.address)
