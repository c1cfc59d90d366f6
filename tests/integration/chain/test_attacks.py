"""The attacks PaymentChannels must resist (DESIGN.md, "Contracts"), on both backends.

Each attack asserts the exact custom error and that nothing moved: token balances, withdrawable
earnings, the channels and the contributor pools it touches read the same before and after.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys import keys
from eth_utils import keccak
from web3 import Web3

from loraledger.sdk.chain.artifacts import Artifact, artifact_from_json, load_artifact
from loraledger.sdk.chain.contracts import Claim, PaymentChannels, Revenue, RevenuePolicy
from loraledger.sdk.chain.errors import ContractRevert, decode_revert
from loraledger.sdk.merkle import MerkleTree, contributor_leaf
from loraledger.sdk.vouchers import ChannelConfig, Domain, Voucher, adapter_id, channel_id, sign_voucher

TEST_ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
BASE_MODEL = b"\x00" * 32
REENTRANT_CALL = keccak(text="ReentrancyGuardReentrantCall()")[:4]
DELAY_S = 3600


# -------------------------------------------------------------------------------------------------------------- helpers


def _lower(values: Sequence[Any]) -> tuple:
    return tuple(v.lower() if isinstance(v, str) else v for v in values)


@contextmanager
def rejected(books: Books | JointBooks, name: str, *args: Any) -> Iterator[pytest.ExceptionInfo]:
    """Expects custom error `name` (with exactly `args` when given) and that `books()` reads the same after."""
    before = books.last if books.fresh() else books()
    with pytest.raises(ContractRevert) as info:
        yield info
    assert info.value.name == name, info.value
    if args:  # the decoder gives addresses in lower case
        assert _lower(info.value.args_) == _lower(args), info.value
    assert books() == before, f"{name} was raised but something moved"


class Books:
    """What an attack could move: token balances, earnings, channels and contributor pools.

    Calling it reads everything afresh; `last` keeps the latest reading, still `fresh()` while the chain's head
    is the same block (state moves only with blocks), so back-to-back rejections need not read twice.
    """

    def __init__(self, channels: PaymentChannels, token: Any, accounts: Sequence[str], earners: Sequence[str] = ()):
        self.channels = channels
        self.token = token
        self.accounts = [Web3.to_checksum_address(a) for a in accounts]
        self.earners = [Web3.to_checksum_address(a) for a in earners]
        self.channel_ids: list[bytes] = []
        self.pools: list[tuple[str, int]] = []
        self.last: tuple | None = None
        self._read_at: tuple | None = None

    def track(self, *channel_ids: bytes) -> Books:
        self.channel_ids.extend(channel_ids)
        return self

    def track_pools(self, *pools: tuple[str, int]) -> Books:
        self.pools.extend(pools)
        return self

    def _key(self) -> tuple:
        head = self.channels.chain.w3.eth.get_block("latest")["hash"]  # not the number: tests roll the chain back
        return (bytes(head), len(self.channel_ids), len(self.pools))

    def fresh(self) -> bool:
        return self.last is not None and self._read_at == self._key()

    def __call__(self) -> tuple:
        c = self.channels
        self._read_at = self._key()
        self.last = (
            tuple(self.token.balance_of(a) for a in [*self.accounts, c.address]),
            tuple(c.earnings(a) for a in self.earners),
            tuple(c.get_channel(i) for i in self.channel_ids),
            tuple(c.get_pool(o, d) for o, d in self.pools),
        )
        return self.last


class JointBooks:
    """Several Books read as one (e.g. two PaymentChannels instances)."""

    def __init__(self, *books: Books):
        self.books = books

    @property
    def last(self) -> tuple:
        return tuple(b.last for b in self.books)

    def fresh(self) -> bool:
        return all(b.fresh() for b in self.books)

    def __call__(self) -> tuple:
        return tuple(b() for b in self.books)


def signed_claim(session, domain: Domain, cid: bytes, cumulative: int, *, claim: int | None = None) -> Claim:
    """A Claim of `claim` (default: all) under a voucher for `cumulative` signed by `session` under `domain`."""
    call_hash = keccak(cid + cumulative.to_bytes(16, "big"))
    signature = sign_voucher(session, domain, Voucher(cid, cumulative, call_hash))
    return Claim(cid, cumulative, cumulative if claim is None else claim, call_hash, signature)


def base_revenue(amount: int) -> list[Revenue]:
    return [Revenue(BASE_MODEL, amount)]


def _test_artifact(name: str) -> Artifact:
    return artifact_from_json(json.loads((TEST_ARTIFACTS / f"{name}.json").read_text()))


def deploy_channels(chain, deployer, token: str, contracts) -> PaymentChannels:
    """A second PaymentChannels instance over `token` and the deployed registries."""
    artifact = load_artifact("PaymentChannels")
    address, _ = chain.deploy(
        deployer,
        artifact.abi,
        artifact.bytecode,
        token,
        contracts.adapters.address,
        contracts.datanets.address,
        deployer.address,
        deployer.address,
    )
    return PaymentChannels(chain, address)


def with_signature(claim: Claim, signature: bytes) -> Claim:
    return replace(claim, signature=signature)


@dataclass
class Roles:
    """Who plays what: `op` deploys, operates and is the protocol treasury."""

    op: Any
    alice: Any  # payer
    session: Any  # alice's session key (payer authorizer)
    mallory: Any  # attacker
    op2: Any  # a second operator
    c1: Any  # contributor of datanets 1 and 2
    c2: Any  # contributor of datanet 1 only
    c3: Any  # contributor of datanet 2 only
    stranger: Any  # registered nowhere
    curator: Any  # curates the datanets and owns the adapter


@pytest.fixture(scope="module")
def roles(accounts) -> Roles:
    return Roles(*accounts[:10])


@pytest.fixture
def books(contracts, roles) -> Books:
    r = roles
    payees = [r.op.address, r.op2.address]
    return Books(contracts.channels, contracts.token, [*payees, r.alice.address, r.mallory.address], payees)


# ------------------------------------------------------------------------------------------------------------ 1. replay


def test_voucher_for_another_chain_id_is_rejected(chain, contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    cid, config = payments.open(r.alice, r.session, r.op, 1_000)
    other_chain = Domain(chain_id=chain.chain_id + 1, verifying_contract=channels.address)
    assert channel_id(channels.domain, config) == cid == channels.channel_id_of(config)
    assert channel_id(other_chain, config) != cid  # the same config is another channel on another chain
    books.track(cid)

    replayed = signed_claim(r.session, other_chain, cid, 500)
    with rejected(books, "InvalidSignature", cid):
        channels.claim(r.op, [replayed], base_revenue(500))


def test_vouchers_and_channel_ids_are_bound_to_one_contract(chain, contracts, payments, roles, books):
    r, a = roles, contracts.channels
    b = deploy_channels(chain, r.op, contracts.token.address, contracts)
    id_a, config = payments.open(r.alice, r.session, r.op, 1_000)
    contracts.token.approve(r.alice, b.address, 1_000)
    id_b = b.open(r.alice, config, 1_000)  # the very same config on instance B
    assert id_a != id_b
    assert id_a == a.channel_id_of(config) == channel_id(a.domain, config)
    assert id_b == b.channel_id_of(config) == channel_id(b.domain, config)
    books.track(id_a)
    both = JointBooks(books, Books(b, contracts.token, books.accounts, books.earners).track(id_b))

    for_a = signed_claim(r.session, a.domain, id_a, 400)
    with rejected(both, "UnknownChannel", id_a):  # A's channel does not exist on B
        b.claim(r.op, [for_a], base_revenue(400))
    with rejected(both, "InvalidSignature", id_b):  # signed under A's domain for B's channel
        b.claim(r.op, [signed_claim(r.session, a.domain, id_b, 400)], base_revenue(400))
    with rejected(both, "InvalidSignature", id_a):  # signed under B's domain for A's channel
        a.claim(r.op, [signed_claim(r.session, b.domain, id_a, 400)], base_revenue(400))
    with rejected(both, "UnknownChannel", id_b):
        a.claim(r.op, [signed_claim(r.session, b.domain, id_b, 400)], base_revenue(400))

    b.claim(r.op, [signed_claim(r.session, b.domain, id_b, 400)], base_revenue(400))  # the honest claim
    assert b.get_channel(id_b).claimed == 400 and a.get_channel(id_a).claimed == 0


# ------------------------------------------------------------------------------------------- 2. stale and double claims


def test_stale_and_double_claims_are_rejected(contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    v100 = payments.voucher(r.session, cid, 100)
    channels.claim(r.op, [v100], base_revenue(100))

    with rejected(books, "StaleClaim", cid, 100, 100):  # the same voucher again
        channels.claim(r.op, [v100], base_revenue(100))
    with rejected(books, "StaleClaim", cid, 100, 60):  # an older, lower voucher
        channels.claim(r.op, [payments.voucher(r.session, cid, 60)], base_revenue(60))
    with rejected(books, "StaleClaim", cid, 100, 100):  # a fresh voucher, claimed at the old amount
        channels.claim(r.op, [payments.voucher(r.session, cid, 300, claim=100)], base_revenue(100))
    assert channels.get_channel(cid).claimed == 100 and channels.earnings(r.op.address) == 100


@pytest.mark.parametrize(("first", "second"), [(300, 300), (300, 200)], ids=["same-voucher", "lower-after-higher"])
def test_a_channel_twice_in_one_batch_is_rejected(contracts, payments, roles, books, first, second):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    batch = [payments.voucher(r.session, cid, first), payments.voucher(r.session, cid, second)]
    with rejected(books, "StaleClaim", cid, first, second):
        channels.claim(r.op, batch, base_revenue(first + second))
    channels.claim(r.op, batch[:1], base_revenue(first))
    assert channels.get_channel(cid).claimed == first


def test_increasing_vouchers_in_one_batch_pay_the_delta_once(contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    batch = [payments.voucher(r.session, cid, 200), payments.voucher(r.session, cid, 300)]
    with rejected(books, "RevenueMismatch", 300, 500):  # the batch pays 300, not 200 + 300
        channels.claim(r.op, batch, base_revenue(500))
    channels.claim(r.op, batch, base_revenue(300))
    assert channels.get_channel(cid).claimed == 300 and channels.earnings(r.op.address) == 300


# ------------------------------------------------------------------------------------------------ 3. beyond the deposit


def test_claims_beyond_the_deposit_or_the_voucher_are_rejected(contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    with rejected(books, "ClaimExceedsDeposit", cid, 1_000, 1_500):
        channels.claim(r.op, [payments.voucher(r.session, cid, 1_500)], base_revenue(1_500))
    with rejected(books, "ClaimExceedsVoucher", cid):
        channels.claim(r.op, [payments.voucher(r.session, cid, 500, claim=501)], base_revenue(501))

    # A voucher above the deposit pays at most the deposit, and the rest only once topped up.
    over = payments.voucher(r.session, cid, 1_500, claim=1_000)
    channels.claim(r.op, [over], base_revenue(1_000))
    with rejected(books, "ClaimExceedsDeposit", cid, 1_000, 1_500):
        channels.claim(r.op, [replace(over, amount=1_500)], base_revenue(500))
    assert channels.get_channel(cid).claimed == 1_000


# -------------------------------------------------------------------------------------------------------- 4. signatures


def test_high_s_twin_of_a_valid_signature_is_rejected(contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    good = payments.voucher(r.session, cid, 400)
    sig = good.signature
    rr, s, v = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    assert v in (27, 28) and s <= SECP256K1_N // 2
    s_twin, v_twin = SECP256K1_N - s, 55 - v  # the other point's signature: (r, n - s) with the parity flipped
    twin = sig[:32] + s_twin.to_bytes(32, "big") + bytes([v_twin])

    digest = channels.voucher_digest(cid, 400, good.call_hash)
    signer = keys.Signature(vrs=(v_twin - 27, rr, s_twin)).recover_public_key_from_msg_hash(digest)
    assert signer.to_checksum_address() == r.session.address  # mathematically the same signer

    with rejected(books, "InvalidSignature", cid):
        channels.claim(r.op, [with_signature(good, twin)], base_revenue(400))
    channels.claim(r.op, [good], base_revenue(400))
    assert channels.get_channel(cid).claimed == 400


def _compact(sig: bytes) -> bytes:  # EIP-2098: r || (yParity << 255 | s)
    vs = int.from_bytes(sig[32:64], "big") | ((sig[64] - 27) << 255)
    return sig[:32] + vs.to_bytes(32, "big")


def _garbage(sig: bytes) -> bytes:
    return keccak(b"r") + (int.from_bytes(keccak(b"s"), "big") >> 2).to_bytes(32, "big") + b"\x1b"


BAD_SIGNATURES: dict[str, Callable[[bytes, Any, Any, Any], bytes]] = {
    "compact-eip2098": lambda sig, *_: _compact(sig),
    "garbage": lambda sig, *_: _garbage(sig),
    "empty": lambda *_: b"",
    "truncated": lambda sig, *_: sig[:64],
    "v-0-or-1": lambda sig, *_: sig[:64] + bytes([sig[64] - 27]),
    "wrong-key": lambda sig, roles, domain, voucher: sign_voucher(roles.mallory, domain, voucher),
    "payers-key": lambda sig, roles, domain, voucher: sign_voucher(roles.alice, domain, voucher),
}


@pytest.mark.parametrize("kind", list(BAD_SIGNATURES))
def test_malformed_or_foreign_signatures_are_rejected(contracts, payments, roles, books, kind):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    good = payments.voucher(r.session, cid, 400)
    voucher = Voucher(cid, 400, good.call_hash)
    bad = BAD_SIGNATURES[kind](good.signature, r, channels.domain, voucher)
    with rejected(books, "InvalidSignature", cid):
        channels.claim(r.op, [with_signature(good, bad)], base_revenue(400))


# ---------------------------------------------------------------------------------------------------- 5. only the payee


@pytest.mark.parametrize("caller", ["alice", "session", "mallory", "op2"])
def test_only_the_payee_claims(contracts, payments, roles, books, caller):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    who = getattr(r, caller)
    with rejected(books, "NotPayee", cid, who.address):
        channels.claim(who, [payments.voucher(r.session, cid, 400)], base_revenue(400))


def test_a_batch_mixing_two_payees_channels_is_rejected(contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    mine, _ = payments.open(r.alice, r.session, r.op, 1_000)
    theirs, _ = payments.open(r.alice, r.session, r.op2, 1_000)
    books.track(mine, theirs)
    batch = [payments.voucher(r.session, mine, 300), payments.voucher(r.session, theirs, 300)]
    with rejected(books, "NotPayee", theirs, r.op.address):
        channels.claim(r.op, batch, base_revenue(600))
    with rejected(books, "NotPayee", mine, r.op2.address):
        channels.claim(r.op2, batch, base_revenue(600))
    with rejected(books, "UnknownChannel", b"\x42" * 32):
        channels.claim(r.op, [batch[0], replace(batch[1], channel_id=b"\x42" * 32)], base_revenue(600))


# ------------------------------------------------------------------------------------ 6. open and deposit front-running


def test_front_running_an_open_cannot_take_the_channel(contracts, payments, roles, books):
    r, channels, token = roles, contracts.channels, contracts.token
    config = ChannelConfig(r.alice.address, r.session.address, r.op.address, token.address, DELAY_S, b"\x07" * 32)
    cid = channels.channel_id_of(config)
    token.approve(r.alice, channels.address, 1_000)
    token.approve(r.mallory, channels.address, 1_000)
    with rejected(books, "NotPayer"):  # mallory replays alice's pending open from her own address
        channels.open(r.mallory, config, 1_000)

    squat = replace(config, payer=r.mallory.address)  # her own config with alice's key, payee and salt
    squat_id = channels.open(r.mallory, squat, 1_000)
    assert squat_id != cid
    assert channels.open(r.alice, config, 1_000) == cid
    books.track(cid, squat_id)
    with rejected(books, "ChannelExists", cid):  # re-opening resets nothing
        channels.open(r.alice, config, 1_000)
    with rejected(books, "InvalidSignature", squat_id):  # alice's vouchers bind alice's channel only
        channels.claim(r.op, [replace(payments.voucher(r.session, cid, 400), channel_id=squat_id)], base_revenue(400))


def _sign_permit(token, owner, spender: str, value: int, deadline: int) -> tuple[int, bytes, bytes]:
    nonce = token.chain.call(token.contract.functions.nonces(owner.address))
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
                "nonce": nonce,
                "deadline": deadline,
            },
        }
    )
    signed = Account.sign_message(signable, owner.key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def test_front_run_permit_does_not_block_open_with_permit(chain, contracts, roles):
    r, channels, token = roles, contracts.channels, contracts.token
    config = ChannelConfig(r.alice.address, r.session.address, r.op.address, token.address, DELAY_S, b"\x08" * 32)
    deadline = chain.w3.eth.get_block("latest")["timestamp"] + 3600
    v, rr, s = _sign_permit(token, r.alice, channels.address, 1_000, deadline)
    # mallory lifts the permit from alice's pending transaction and spends it first
    chain.send(r.mallory, token.contract.functions.permit(r.alice.address, channels.address, 1_000, deadline, v, rr, s))
    before = token.balance_of(r.alice.address)
    cid = channels.open_with_permit(r.alice, config, 1_000, deadline, v, rr, s)
    assert channels.get_channel(cid).deposited == 1_000
    assert token.balance_of(r.alice.address) == before - 1_000


def test_a_strangers_deposit_only_helps_the_payer(contracts, payments, roles):
    r, channels, token = roles, contracts.channels, contracts.token
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    alice0, mallory0, pc0 = (token.balance_of(a) for a in (r.alice.address, r.mallory.address, channels.address))
    token.approve(r.mallory, channels.address, 250)
    channels.deposit(r.mallory, cid, 250)
    state = channels.get_channel(cid)
    assert (state.deposited, state.claimed, state.config.payer) == (1_250, 0, r.alice.address)
    assert token.balance_of(r.mallory.address) == mallory0 - 250
    assert token.balance_of(channels.address) == pc0 + 250

    channels.claim(r.op, [payments.voucher(r.session, cid, 1_100)], base_revenue(1_100))  # now claimable
    channels.close(r.op, cid)
    assert token.balance_of(r.alice.address) == alice0 + 150  # the refund goes to the payer, never the depositor
    assert token.balance_of(r.mallory.address) == mallory0 - 250
    assert token.balance_of(channels.address) == pc0 + 250 - 150


def test_no_deposit_while_withdrawing_or_closed(contracts, payments, roles, books):
    r, channels, token = roles, contracts.channels, contracts.token
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    closed, _ = payments.open(r.alice, r.session, r.op, 1_000)
    channels.close(r.op, closed)
    token.approve(r.alice, channels.address, 10_000)
    token.approve(r.mallory, channels.address, 10_000)
    books.track(cid, closed)
    channels.initiate_withdraw(r.alice, cid)
    for depositor in (r.alice, r.mallory):
        with rejected(books, "ChannelWithdrawing", cid):
            channels.deposit(depositor, cid, 100)
        with rejected(books, "ChannelIsClosed", closed):
            channels.deposit(depositor, closed, 100)
    with rejected(books, "UnknownChannel", b"\x09" * 32):
        channels.deposit(r.mallory, b"\x09" * 32, 100)


# ---------------------------------------------------------------------------------------------------- 7. withdraw delay


def test_the_withdraw_delay_cannot_be_bypassed(chain, contracts, payments, roles, books):
    r, channels, token = roles, contracts.channels, contracts.token
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000, withdraw_delay_s=DELAY_S)
    books.track(cid)
    with rejected(books, "WithdrawState", cid):  # finalize without initiate
        channels.finalize_withdraw(r.alice, cid)
    for who in (r.op, r.session, r.mallory):
        with rejected(books, "NotChannelPayer", cid, who.address):
            channels.initiate_withdraw(who, cid)

    channels.initiate_withdraw(r.alice, cid)
    requested_at = channels.get_channel(cid).withdraw_requested_at
    with rejected(books, "WithdrawState", cid):  # re-initiating does not reset the clock
        channels.initiate_withdraw(r.alice, cid)
    with rejected(books, "WithdrawDelayNotElapsed", cid, requested_at + DELAY_S):
        channels.finalize_withdraw(r.alice, cid)
    chain.dev.increase_time(DELAY_S // 2)
    with rejected(books, "WithdrawDelayNotElapsed", cid, requested_at + DELAY_S):
        channels.finalize_withdraw(r.alice, cid)

    channels.claim(r.op, [payments.voucher(r.session, cid, 300)], base_revenue(300))  # the payee claims meanwhile
    chain.dev.increase_time(DELAY_S)
    for who in (r.op, r.session, r.mallory):
        with rejected(books, "NotChannelPayer", cid, who.address):
            channels.finalize_withdraw(who, cid)

    alice0 = token.balance_of(r.alice.address)
    channels.finalize_withdraw(r.alice, cid)
    assert token.balance_of(r.alice.address) == alice0 + 700
    state = channels.get_channel(cid)
    assert state.closed and (state.deposited, state.claimed) == (300, 300)

    with rejected(books, "ChannelIsClosed", cid):
        channels.claim(r.op, [payments.voucher(r.session, cid, 600)], base_revenue(600))
    with rejected(books, "ChannelIsClosed", cid):
        channels.finalize_withdraw(r.alice, cid)
    with rejected(books, "ChannelIsClosed", cid):
        channels.close(r.op, cid)
    with rejected(books, "ChannelIsClosed", cid):
        channels.initiate_withdraw(r.alice, cid)


def test_only_the_payee_closes_at_once(contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    for who in (r.alice, r.session, r.mallory):
        with rejected(books, "NotPayee", cid, who.address):
            channels.close(who, cid)


# -------------------------------------------------------------------------------------------------------- 8. reentrancy


class ReentrantToken:
    """Binding of contracts/test/ReentrantToken.sol."""

    def __init__(self, chain, deployer):
        artifact = _test_artifact("ReentrantToken")
        self.chain = chain
        self.address, _ = chain.deploy(deployer, artifact.abi, artifact.bytecode)
        self.contract = chain.w3.eth.contract(address=self.address, abi=artifact.abi)
        self.f = self.contract.functions

    def balance_of(self, account: str) -> int:
        return self.chain.call(self.f.balanceOf(Web3.to_checksum_address(account)))

    def arm(self, account, target: str, data: bytes) -> None:
        self.chain.send(account, self.f.arm(target, data))

    def last_reentry(self) -> tuple[int, bool, bytes]:
        return (
            self.chain.call(self.f.reentryCount()),
            self.chain.call(self.f.lastReentrySucceeded()),
            bytes(self.chain.call(self.f.lastReentryData())),
        )

    def act(self, account, target: str, data: bytes) -> None:
        """Makes the token itself call `target` with `data`, outside any guarded call (a 0-value self-transfer fires
        the hook), and insists that the call succeeded."""
        self.arm(account, target, data)
        self.chain.send(account, self.f.transfer(account.address, 0))
        _, ok, out = self.last_reentry()
        assert ok, decode_revert(out) if len(out) >= 4 else out


def _encode(channels: PaymentChannels, fn: str, *args: Any) -> bytes:
    return bytes.fromhex(channels.contract.encode_abi(fn, args=list(args)).removeprefix("0x"))


@pytest.fixture(scope="module")
def module_base(chain, deployed) -> Iterator[None]:
    """Rolls the chain back, once this module is done, to before the worlds the module's tests share."""
    snapshot = chain.dev.snapshot()
    yield
    chain.dev.revert(snapshot)


@pytest.fixture(scope="module")
def reentrant_world(chain, deployed, roles, module_base):
    """A PaymentChannels over ReentrantToken in which the token itself is a payer, a payee, an earner and a
    contributor, so that every re-entrant call below would succeed if it were not re-entrant."""
    r = roles
    rt = ReentrantToken(chain, r.op)
    pc = deploy_channels(chain, r.op, rt.address, deployed)
    me = rt.address
    chain.send(r.op, rt.f.mint(r.alice.address, 100_000))
    chain.send(r.op, rt.f.mint(me, 5_000))
    chain.send(r.alice, rt.f.approve(pc.address, 100_000))
    rt.act(r.mallory, me, bytes.fromhex(rt.contract.encode_abi("approve", args=[pc.address, 5_000])[2:]))

    def config(payer: str, payee: str, salt: int) -> ChannelConfig:
        return ChannelConfig(payer, r.session.address, payee, me, DELAY_S, salt.to_bytes(32, "big"))

    def open_(payee: str, amount: int, salt: int) -> bytes:
        return pc.open(r.alice, config(r.alice.address, payee, salt), amount)

    a = open_(r.op.address, 1_000, 1)  # alice withdraws from it
    te = open_(me, 1_000, 2)  # the token earns from it
    cl = open_(r.op.address, 500, 3)  # op closes it
    tcl = open_(me, 500, 4)  # the token closes it
    tc = open_(me, 800, 5)  # the token claims it
    dc = open_(r.op.address, 2_000, 6)  # funds the contributor pool
    tp_config = config(me, r.op.address, 7)  # the token pays into it and withdraws
    tp = pc.channel_id_of(tp_config)
    rt.act(r.mallory, pc.address, _encode(pc, "open", tp_config.as_tuple(), 1_000))
    rt.act(r.mallory, pc.address, _encode(pc, "initiateWithdraw", tp))
    earn = signed_claim(r.session, pc.domain, te, 300)
    rt.act(r.mallory, pc.address, _encode(pc, "claim", [earn.as_tuple()], [(BASE_MODEL, 300)]))

    datanet = deployed.datanets.create_datanet(r.curator, "ipfs://reentrancy")
    deployed.datanets.register_contributions(r.curator, datanet, [r.c1.address, me], [keccak(b"c1"), keccak(b"me")])
    aid = adapter_id("reentrancy-adapter")
    deployed.adapters.register(
        r.curator, aid, base_model_hash=keccak(b"base"), weights_hash=keccak(b"w"), uri="ipfs://a",
        policy=RevenuePolicy(0, 5_000, 0), datanet_ids=[datanet], datanet_weights_bps=[10_000],
    )  # fmt: skip
    pc.claim(
        r.op,
        [signed_claim(r.session, pc.domain, a, 400), signed_claim(r.session, pc.domain, dc, 2_000)],
        [Revenue(BASE_MODEL, 400), Revenue(aid, 2_000)],
    )
    pc.initiate_withdraw(r.alice, a)
    tree = MerkleTree([contributor_leaf(datanet, r.c1.address, 300), contributor_leaf(datanet, me, 200)])
    pc.post_epoch_root(r.op, datanet, tree.root, 500)
    chain.dev.increase_time(DELAY_S)

    world = SimpleNamespace(rt=rt, pc=pc, datanet=datanet, tree=tree, a=a, cl=cl, tcl=tcl, tc=tc, tp=tp)
    world.books = Books(pc, rt, [r.alice.address, r.op.address, r.c1.address, me], [r.op.address, me])
    world.books.track(a, cl, tcl, tc, tp)
    world.books.track_pools((r.op.address, datanet))
    assert pc.earnings(r.op.address) == 1_400 and pc.earnings(me) == 300
    assert pc.get_pool(r.op.address, datanet).funded == 1_000
    return world


def _reentrancy_cases(w, r) -> dict[str, tuple[Callable[[], Any], bytes]]:
    """(the honest outer call that moves tokens, the token's re-entrant call during that transfer)."""
    pc, me = w.pc, w.rt.address
    return {
        "finalizeWithdraw": (lambda: pc.finalize_withdraw(r.alice, w.a), _encode(pc, "finalizeWithdraw", w.tp)),
        "withdrawEarnings": (lambda: pc.withdraw_earnings(r.op), _encode(pc, "withdrawEarnings", me)),
        "claimContribution": (
            lambda: pc.claim_contribution(r.c1, r.op.address, w.datanet, 300, w.tree.proof(0)),
            _encode(pc, "claimContribution", r.op.address, w.datanet, 200, w.tree.proof(1)),
        ),
        "close": (lambda: pc.close(r.op, w.cl), _encode(pc, "close", w.tcl)),
        "claim": (
            lambda: pc.deposit(r.alice, w.cl, 100),
            _encode(pc, "claim", [signed_claim(r.session, pc.domain, w.tc, 200).as_tuple()], [(BASE_MODEL, 200)]),
        ),
    }


@pytest.mark.parametrize("inner", ["finalizeWithdraw", "withdrawEarnings", "claimContribution", "close", "claim"])
def test_reentrancy_through_a_token_hook_is_blocked(chain, reentrant_world, roles, inner):
    w, r = reentrant_world, roles
    snapshot = chain.dev.snapshot()
    try:
        outer, data = _reentrancy_cases(w, r)[inner]
        probe = chain.dev.snapshot()
        outer()
        expected = w.books()
        chain.dev.revert(probe)

        count, _, _ = w.rt.last_reentry()
        w.rt.arm(r.mallory, w.pc.address, data)
        outer()
        assert w.rt.last_reentry() == (count + 1, False, REENTRANT_CALL)
        assert w.books() == expected  # exactly what the outer call does without the attack

        w.rt.act(r.mallory, w.pc.address, data)  # the same call made unguarded succeeds: the guard blocked it
    finally:
        chain.dev.revert(snapshot)


# ---------------------------------------------------------------------------------------------- 9-11. contributor pools


@pytest.fixture(scope="module")
def pool_world(deployed, roles, module_base):
    """Datanets 1 (c1, c2) and 2 (c1, c3), an adapter giving half to data (split evenly), and the pools op and
    op2 funded by claiming 10,000 and 2,000 of its revenue."""
    r, c = roles, deployed
    d1 = c.datanets.create_datanet(r.curator, "ipfs://d1")
    d2 = c.datanets.create_datanet(r.curator, "ipfs://d2")
    c.datanets.register_contributions(r.curator, d1, [r.c1.address, r.c2.address], [keccak(b"1"), keccak(b"2")])
    c.datanets.register_contributions(r.curator, d2, [r.c1.address, r.c3.address], [keccak(b"3"), keccak(b"4")])
    aid = adapter_id("attack-adapter")
    c.adapters.register(
        r.curator, aid, base_model_hash=keccak(b"base"), weights_hash=keccak(b"w"), uri="ipfs://a",
        policy=RevenuePolicy(1_000, 5_000, 1_000), datanet_ids=[d1, d2], datanet_weights_bps=[5_000, 5_000],
    )  # fmt: skip
    c.token.approve(r.alice, c.channels.address, 12_000)
    for operator, amount in ((r.op, 10_000), (r.op2, 2_000)):
        salt = keccak(b"pool" + amount.to_bytes(4, "big"))
        config = ChannelConfig(r.alice.address, r.session.address, operator.address, c.token.address, DELAY_S, salt)
        cid = c.channels.open(r.alice, config, amount)
        claim = signed_claim(r.session, c.channels.domain, cid, amount)
        c.channels.claim(operator, [claim], [Revenue(aid, amount)])
    assert c.channels.get_pool(r.op.address, d1).funded == 2_500
    assert c.channels.get_pool(r.op2.address, d1).funded == 500
    members = [r.c1.address, r.c2.address, r.c3.address, r.stranger.address]
    books = Books(c.channels, c.token, members)
    books.track_pools(*((o.address, d) for o in (r.op, r.op2, r.mallory) for d in (d1, d2)))
    return SimpleNamespace(d1=d1, d2=d2, books=books)


@pytest.fixture
def pools(pool_world, contracts):
    """The pool world, rolled back after each test (by `contracts`)."""
    return pool_world


def post_root(channels, operator, datanet: int, amounts: dict[str, int], total: int | None = None):
    """Posts `operator`'s root of cumulative `amounts` for `datanet`; returns (root, {contributor: proof})."""
    tree = MerkleTree([contributor_leaf(datanet, a, v) for a, v in amounts.items()])
    channels.post_epoch_root(operator, datanet, tree.root, sum(amounts.values()) if total is None else total)
    return tree.root, {a: tree.proof(i) for i, a in enumerate(amounts)}


def test_forged_merkle_claims_are_rejected(contracts, roles, pools):
    r, pc, p = roles, contracts.channels, pools
    c1, c2 = r.c1.address, r.c2.address
    root, proofs = post_root(pc, r.op, p.d1, {c1: 1_000, c2: 800})
    with rejected(p.books, "InvalidProof"):  # wrong amount
        pc.claim_contribution(r.c1, r.op.address, p.d1, 1_001, proofs[c1])
    with rejected(p.books, "InvalidProof"):  # someone else's leaf
        pc.claim_contribution(r.c2, r.op.address, p.d1, 1_000, proofs[c1])
    # The leaf names its datanet: even the same root posted for datanet 2 pays nothing for datanet 1's leaves.
    pc.post_epoch_root(r.op, p.d2, root, 1_800)
    with rejected(p.books, "InvalidProof"):
        pc.claim_contribution(r.c1, r.op.address, p.d2, 1_000, proofs[c1])
    _, d2_proofs = post_root(pc, r.op, p.d2, {c1: 1_900, r.c3.address: 100})
    with rejected(p.books, "InvalidProof"):  # a proof from another datanet's tree
        pc.claim_contribution(r.c1, r.op.address, p.d1, 1_900, d2_proofs[c1])

    before = contracts.token.balance_of(c1)
    pc.claim_contribution(r.c1, r.op.address, p.d1, 1_000, proofs[c1])
    assert contracts.token.balance_of(c1) == before + 1_000


def test_an_old_epochs_proof_is_rejected_after_a_new_root(contracts, roles, pools):
    r, pc, p = roles, contracts.channels, pools
    c1, c2 = r.c1.address, r.c2.address
    _, old = post_root(pc, r.op, p.d1, {c1: 400, c2: 300})
    pc.claim_contribution(r.c1, r.op.address, p.d1, 400, old[c1])
    _, new = post_root(pc, r.op, p.d1, {c1: 900, c2: 700})
    assert pc.get_pool(r.op.address, p.d1).epoch == 2
    with rejected(p.books, "InvalidProof"):
        pc.claim_contribution(r.c2, r.op.address, p.d1, 300, old[c2])
    with rejected(p.books, "InvalidProof"):
        pc.claim_contribution(r.c1, r.op.address, p.d1, 400, old[c1])

    before = contracts.token.balance_of(c1)
    pc.claim_contribution(r.c1, r.op.address, p.d1, 900, new[c1])  # pays the delta over what was paid
    assert contracts.token.balance_of(c1) == before + 500
    assert pc.contributor_claimed(r.op.address, p.d1, c1) == 900
    assert pc.get_pool(r.op.address, p.d1).paid_out == 900


def test_root_totals_are_bounded_by_funding_and_never_fall(contracts, roles, pools):
    r, pc, p = roles, contracts.channels, pools
    root = keccak(b"any root")
    with rejected(p.books, "InvalidRootTotal", 2_501, 2_500, 0):
        pc.post_epoch_root(r.op, p.d1, root, 2_501)
    with rejected(p.books, "InvalidRootTotal", 501, 500, 0):  # op2's pool is op2's funding only
        pc.post_epoch_root(r.op2, p.d1, root, 501)
    with rejected(p.books, "InvalidRootTotal", 1, 0, 0):  # no funding, no pool
        pc.post_epoch_root(r.mallory, p.d1, root, 1)
    pc.post_epoch_root(r.op, p.d1, root, 1_000)
    with rejected(p.books, "InvalidRootTotal", 999, 2_500, 1_000):
        pc.post_epoch_root(r.op, p.d1, root, 999)


def test_an_operators_root_cannot_pay_out_of_another_operators_pool(contracts, roles, pools):
    r, pc, p = roles, contracts.channels, pools
    c1 = r.c1.address
    _, honest = post_root(pc, r.op, p.d1, {c1: 1_000})
    _, greedy = post_root(pc, r.op2, p.d1, {c1: 2_500}, total=500)  # promises op's funding, holds 500
    _, squat = post_root(pc, r.mallory, p.d1, {c1: 2_500}, total=0)  # an unfunded pool
    with rejected(p.books, "InvalidProof"):  # op2's proof against op's pool
        pc.claim_contribution(r.c1, r.op.address, p.d1, 2_500, greedy[c1])
    with rejected(p.books, "PoolExhausted"):
        pc.claim_contribution(r.c1, r.op2.address, p.d1, 2_500, greedy[c1])
    with rejected(p.books, "PoolExhausted"):
        pc.claim_contribution(r.c1, r.mallory.address, p.d1, 2_500, squat[c1])

    pc.claim_contribution(r.c1, r.op.address, p.d1, 1_000, honest[c1])
    assert pc.get_pool(r.op.address, p.d1).paid_out == 1_000
    assert pc.get_pool(r.op2.address, p.d1).paid_out == 0
    assert pc.contributor_claimed(r.op2.address, p.d1, c1) == 0


def test_double_contributor_claims_and_over_promising_roots(contracts, roles, pools):
    r, pc, p, token = roles, contracts.channels, pools, contracts.token
    c1, c2 = r.c1.address, r.c2.address
    pc_before = token.balance_of(pc.address)
    _, proofs = post_root(pc, r.op, p.d1, {c1: 2_000, c2: 2_000}, total=2_500)  # leaves promise 4,000
    pc.claim_contribution(r.c1, r.op.address, p.d1, 2_000, proofs[c1])
    with rejected(p.books, "AlreadyClaimed", 2_000, 2_000):
        pc.claim_contribution(r.c1, r.op.address, p.d1, 2_000, proofs[c1])
    with rejected(p.books, "PoolExhausted"):
        pc.claim_contribution(r.c2, r.op.address, p.d1, 2_000, proofs[c2])

    _, fixed = post_root(pc, r.op, p.d1, {c1: 1_500, c2: 500}, total=2_500)
    with rejected(p.books, "AlreadyClaimed", 2_000, 1_500):  # a lower cumulative pays nothing back
        pc.claim_contribution(r.c1, r.op.address, p.d1, 1_500, fixed[c1])
    pc.claim_contribution(r.c2, r.op.address, p.d1, 500, fixed[c2])
    pool = pc.get_pool(r.op.address, p.d1)
    assert pool.paid_out == pool.funded == 2_500
    assert token.balance_of(pc.address) == pc_before - 2_500


def test_unregistered_contributors_are_not_paid(contracts, roles, pools):
    r, pc, p = roles, contracts.channels, pools
    _, d1 = post_root(pc, r.op, p.d1, {r.stranger.address: 100, r.c1.address: 100})
    with rejected(p.books, "NotContributor", p.d1, r.stranger.address):
        pc.claim_contribution(r.stranger, r.op.address, p.d1, 100, d1[r.stranger.address])
    _, d2 = post_root(pc, r.op, p.d2, {r.c2.address: 100, r.c3.address: 100})
    with rejected(p.books, "NotContributor", p.d2, r.c2.address):  # registered in datanet 1 only
        pc.claim_contribution(r.c2, r.op.address, p.d2, 100, d2[r.c2.address])
    pc.claim_contribution(r.c3, r.op.address, p.d2, 100, d2[r.c3.address])


# --------------------------------------------------------------------------------------------------------- 12. ERC-1271


def test_erc1271_payer_authorizer_and_revocation(chain, contracts, payments, roles, books):
    r, channels = roles, contracts.channels
    artifact = _test_artifact("ERC1271Wallet")
    address, _ = chain.deploy(r.op, artifact.abi, artifact.bytecode, r.session.address)
    wallet = chain.w3.eth.contract(address=address, abi=artifact.abi)
    cid, _ = payments.open(r.alice, SimpleNamespace(address=address), r.op, 1_000)
    honest, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid, honest)

    channels.claim(r.op, [payments.voucher(r.session, cid, 200)], base_revenue(200))  # the owner's signature
    assert channels.get_channel(cid).claimed == 200
    with rejected(books, "InvalidSignature", cid):
        channels.claim(r.op, [payments.voucher(r.mallory, cid, 300)], base_revenue(300))

    chain.send(r.session, wallet.functions.setRevoked(True))
    pending = payments.voucher(r.session, cid, 400)
    with rejected(books, "InvalidSignature", cid):
        channels.claim(r.op, [pending], base_revenue(400))
    # One revoked channel fails the whole batch: the payee's honest channel is not paid either.
    with rejected(books, "InvalidSignature", cid):
        channels.claim(r.op, [payments.voucher(r.session, honest, 300), pending], base_revenue(500))

    chain.send(r.session, wallet.functions.setRevoked(False))
    channels.claim(r.op, [pending], base_revenue(200))
    assert channels.get_channel(cid).claimed == 400


# ----------------------------------------------------------------------------------------- 13. dust and malformed opens


def test_dust_and_malformed_channels_are_rejected(contracts, payments, roles, books):
    r, channels, token = roles, contracts.channels, contracts.token
    token.approve(r.alice, channels.address, 1_000)

    def config(**changes: Any) -> ChannelConfig:
        base = ChannelConfig(r.alice.address, r.session.address, r.op.address, token.address, DELAY_S, b"\x05" * 32)
        return replace(base, **changes)

    zero = "0x0000000000000000000000000000000000000000"
    with rejected(books, "ZeroAmount"):
        channels.open(r.alice, config(), 0)
    with rejected(books, "ZeroAddress"):
        channels.open(r.alice, config(payee=zero), 1_000)
    with rejected(books, "ZeroAddress"):
        channels.open(r.alice, config(payer_authorizer=zero), 1_000)
    with rejected(books, "UnsupportedToken", channels.address):
        channels.open(r.alice, config(token=channels.address), 1_000)

    cid, _ = payments.open(r.alice, r.session, r.op, 1_000)
    books.track(cid)
    with rejected(books, "ZeroAmount"):
        channels.deposit(r.alice, cid, 0)
    with rejected(books, "EmptyClaim"):
        channels.claim(r.op, [], [])
    voucher = payments.voucher(r.session, cid, 100)
    with rejected(books, "ZeroAmount"):
        channels.claim(r.op, [voucher], [*base_revenue(100), Revenue(BASE_MODEL, 0)])
    with rejected(books, "RevenueMismatch", 100, 99):
        channels.claim(r.op, [voucher], base_revenue(99))
    with rejected(books, "RevenueMismatch", 100, 101):
        channels.claim(r.op, [voucher], base_revenue(101))
