"""Property tests of PaymentChannels: random sequences of channel, claim, exit, earnings and contributor-pool
operations, each checked against a pure-Python ledger after every step, on both backends.

A Hypothesis state machine drives the chain. Every example starts from one snapshot (taken after a fixed world
of datanets, contributors and adapters is registered) and is rolled back when it ends, so the session-scoped
chain is shared without function-scoped fixtures inside the examples. Valid operations go through the typed
bindings; invalid ones are sent with an explicit gas limit, so they are mined and revert on chain, and the
ledger (left unchanged) must still match the chain afterwards: an invalid operation changed nothing.

Invariants after every step:
  (a) solvency — PaymentChannels holds exactly (tokens deposited into it) - (tokens paid out of it), never less
      than zero, and that equals the open channels' deposited - claimed, plus all earnings, plus every pool's
      funded - paidOut;
  (b) accounting — every channel, every party's earnings and token balance and every pool read what the
      ledger's policy arithmetic gives (owner share = amount * ownerBps // 10000, likewise data and protocol,
      the operator the remainder; the data share split by datanet weights, the last datanet the remainder);
  (c) contributors — no pool pays its contributors more than it was funded with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from loraledger.sdk.chain.contracts import Claim, Contracts, Revenue, RevenuePolicy
from loraledger.sdk.chain.errors import ContractRevert
from loraledger.sdk.chain.provider import Chain
from loraledger.sdk.merkle import MerkleTree, contributor_leaf
from loraledger.sdk.vouchers import ChannelConfig, Voucher, adapter_id, sign_voucher

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BPS = 10_000
MAX_UINT256 = 2**256 - 1
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
ZERO32 = b"\x00" * 32
BASE_MODEL = ZERO32  # revenue of calls to the base model (no adapter): all to the operator
REVERT_GAS = 3_000_000  # an explicit limit skips estimation, so an invalid transaction is mined and reverts
MAX_CHANNELS = 6
WITHDRAW_DELAYS_S = (0, 120, 3600)
TIME_STEPS_S = (30, 130, 3700)
# Block times follow the wall clock (plus travel): a finalize this far before its deadline surely fails, and
# nearer than that the test first travels past the deadline rather than guess.
CLOCK_MARGIN_S = 60

# Each account holds 1,000,000 OPEN (1e24 units); six channels and a few top-ups of at most 1e22 stay well
# inside it, while small amounts exercise the rounding of the split.
AMOUNTS = st.one_of(st.integers(1, 1_000), st.integers(1, 10**22))
VALID = st.sampled_from([True, True, True, False])  # whether a step tries a valid operation or a refused one

SETTINGS = settings(
    max_examples=20,
    stateful_step_count=10,
    deadline=None,  # a step is a few transactions: tens of milliseconds on py-evm
    derandomize=bool(os.environ.get("CI")),  # CI replays one fixed set of examples; locally they vary
    print_blob=True,
    # Drawing is cheap; the chain work inside the steps is what is slow, and that is the point.
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------------------------- the fixed world


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    owner: str
    policy: RevenuePolicy
    datanet_ids: tuple[int, ...] = ()
    weights_bps: tuple[int, ...] = ()

    @property
    def id(self) -> bytes:
        return adapter_id(self.name)


@dataclass(frozen=True)
class World:
    """Who plays what. Operators are the payees; payers fund channels signed for by fresh session keys."""

    accounts: tuple[LocalAccount, ...]
    operators: tuple[LocalAccount, ...]
    payers: tuple[LocalAccount, ...]
    sessions: dict[str, tuple[LocalAccount, ...]]  # payer address -> its session keys
    treasury: str
    adapters: tuple[AdapterSpec, ...]
    contributors: dict[int, tuple[str, ...]]  # datanet id -> registered contributor addresses
    start_tokens: dict[str, int]

    @property
    def earners(self) -> tuple[str, ...]:
        holders = {op.address for op in self.operators} | {a.owner for a in self.adapters} | {self.treasury}
        return tuple(sorted(holders))

    def account(self, address: str) -> LocalAccount:
        return next(a for a in self.accounts if a.address == address)


def _build_world(chain: Chain, contracts: Contracts, accounts) -> World:
    """Registers datanets, contributions and three adapters with different policies; payers approve once."""
    operator, operator2 = accounts[0], accounts[1]
    payers = (accounts[2], accounts[3], accounts[4])
    owner_a, owner_b, curator, treasury = accounts[5], accounts[6], accounts[7], accounts[9]
    contracts.channels.set_protocol_treasury(operator, treasury.address)

    # Roles overlap on purpose: a payer and an adapter owner are also contributors, and the operator owns an
    # adapter, so one address collects from several sources.
    members = {
        1: (accounts[7].address, accounts[8].address),
        2: (accounts[8].address, payers[0].address),
        3: (owner_a.address, accounts[7].address),
    }
    contributors: dict[int, tuple[str, ...]] = {}
    for label, addresses in members.items():
        datanet_id = contracts.datanets.create_datanet(curator, f"ipfs://datanet-{label}")
        hashes = [keccak(text=f"datanet {label} contribution {i}") for i in range(len(addresses))]
        contracts.datanets.register_contributions(curator, datanet_id, list(addresses), hashes)
        contributors[datanet_id] = addresses
    d1, d2, d3 = sorted(contributors)
    adapters = (
        AdapterSpec("legal-summarizer", owner_a.address, RevenuePolicy(2_000, 3_000, 500), (d1, d2), (7_000, 3_000)),
        AdapterSpec(
            "sql-writer", owner_b.address, RevenuePolicy(1_234, 4_321, 777), (d1, d2, d3), (3_333, 3_333, 3_334)
        ),
        AdapterSpec("operator-house", operator.address, RevenuePolicy(5_000, 0, 0)),
    )
    owners = {a.address: a for a in accounts}
    for spec in adapters:
        contracts.adapters.register(
            owners[spec.owner],
            spec.id,
            base_model_hash=keccak(text="base model"),
            weights_hash=keccak(text=spec.name),
            uri=f"ipfs://{spec.name}",
            policy=spec.policy,
            datanet_ids=spec.datanet_ids,
            datanet_weights_bps=spec.weights_bps,
        )
    for payer in payers:
        contracts.token.approve(payer, contracts.channels.address, MAX_UINT256)
    sessions = {
        payer.address: tuple(Account.from_key(keccak(text=f"payer {i} session {j}")) for j in range(2))
        for i, payer in enumerate(payers)
    }
    return World(
        accounts=tuple(accounts),
        operators=(operator, operator2),
        payers=payers,
        sessions=sessions,
        treasury=treasury.address,
        adapters=adapters,
        contributors=contributors,
        start_tokens={a.address: contracts.token.balance_of(a.address) for a in accounts},
    )


# ---------------------------------------------------------------------------------------------- the ledger


@dataclass
class ChannelModel:
    id: bytes
    config: ChannelConfig = field(repr=False)
    payer: LocalAccount = field(repr=False)
    session: LocalAccount = field(repr=False)
    payee: LocalAccount = field(repr=False)
    deposited: int
    claimed: int = 0
    requested_at: int = 0
    closed: bool = False

    @property
    def claimable(self) -> int:
        return 0 if self.closed else self.deposited - self.claimed


@dataclass
class PoolModel:
    funded: int = 0
    paid_out: int = 0
    root: bytes = ZERO32
    root_total: int = 0
    epoch: int = 0
    leaves: dict[str, int] = field(default_factory=dict)  # contributor -> cumulative amount under `root`
    tree: MerkleTree | None = None
    claimed: dict[str, int] = field(default_factory=dict)  # contributor -> cumulative amount paid


def split(amount: int, spec: AdapterSpec | None) -> tuple[int, list[tuple[int, int]], int, int]:
    """(owner share, [(datanet, part)], protocol share, operator share) of `amount` earned by `spec`."""
    if spec is None:
        return 0, [], 0, amount
    owner = amount * spec.policy.owner_bps // BPS
    data = amount * spec.policy.data_bps // BPS
    protocol = amount * spec.policy.protocol_bps // BPS
    parts, remaining = [], data
    for j, (datanet_id, weight) in enumerate(zip(spec.datanet_ids, spec.weights_bps, strict=True)):
        part = remaining if j == len(spec.datanet_ids) - 1 else data * weight // BPS
        remaining -= part
        parts.append((datanet_id, part))
    return owner, parts, protocol, amount - owner - data - protocol


def _high_s(signature: bytes) -> bytes:
    """The other valid-looking (r, n - s) form of an ECDSA signature, which OpenZeppelin's ECDSA rejects."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


def _partition(data: st.DataObject, total: int, parts: int) -> list[int]:
    """`total` cut into `parts` positive amounts."""
    if parts == 1:
        return [total]
    cuts = data.draw(
        st.lists(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1, unique=True), label="cuts"
    )
    return [b - a for a, b in pairwise([0, *sorted(cuts), total])]


# ---------------------------------------------------------------------------------------------- the machine


def _ledger_machine(chain: Chain, contracts: Contracts, world: World) -> type[RuleBasedStateMachine]:
    channels = contracts.channels
    token = contracts.token
    domain = channels.domain
    revenue_sources: tuple[AdapterSpec | None, ...] = (*world.adapters, None)
    outsider = world.accounts[9]  # the treasury: a contributor of no datanet
    reader = world.accounts[0].address

    def view(binding, fn: str, *args):
        """A view call from a funded account: without a sender web3 asks the node for its accounts on every
        call, which makes the invariant's dozens of reads per step half again as slow on the embedded chain."""
        return chain.call(binding.contract.functions[fn](*args), sender=reader)

    assert all(outsider.address not in members for members in world.contributors.values())

    class Ledger(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = chain.dev.snapshot()
            self.tokens = dict(world.start_tokens)
            self.earnings = dict.fromkeys(world.earners, 0)
            self.channels: dict[bytes, ChannelModel] = {}
            self.pools = {(op.address, d): PoolModel() for op in world.operators for d in world.contributors}
            self.paid_in = 0  # tokens transferred into PaymentChannels
            self.paid_out = 0  # tokens transferred out of it
            self.salt = 0

        def teardown(self) -> None:
            chain.dev.revert(self.snapshot)

        # ------------------------------------------------------------------ helpers

        def reverts(self, name: str, account: LocalAccount, fn: str, *args) -> None:
            with pytest.raises(ContractRevert) as info:
                chain.send(account, channels.contract.functions[fn](*args), gas=REVERT_GAS)
            assert info.value.name == name, info.value
            event(f"{fn} reverts {name}")

        def claimable(self, operator: LocalAccount | None = None) -> list[ChannelModel]:
            return [
                c
                for c in self.channels.values()
                if c.claimable > 0 and (operator is None or c.payee.address == operator.address)
            ]

        def signed(
            self, ch: ChannelModel, voucher_amount: int, amount: int, *, signer: LocalAccount | None = None
        ) -> Claim:
            call_hash = keccak(ch.id + voucher_amount.to_bytes(32, "big"))
            signature = sign_voucher(signer or ch.session, domain, Voucher(ch.id, voucher_amount, call_hash))
            return Claim(ch.id, voucher_amount, amount, call_hash, signature)

        def draw_claims(self, data: st.DataObject, chosen: list[ChannelModel]) -> tuple[list[Claim], int]:
            """Valid claims of `chosen`: each a partial or whole amount at or below its voucher."""
            claims, total = [], 0
            for ch in chosen:
                delta = data.draw(st.one_of(st.just(ch.claimable), st.integers(1, ch.claimable)), label="delta")
                amount = ch.claimed + delta
                headroom = data.draw(st.one_of(st.just(0), st.integers(0, 10**20)), label="voucher above claim")
                claims.append(self.signed(ch, amount + headroom, amount))
                total += delta
            return claims, total

        def draw_revenues(self, data: st.DataObject, total: int) -> list[tuple[AdapterSpec | None, int]]:
            n = data.draw(st.integers(1, min(4, total)), label="revenue entries")
            sources = data.draw(st.lists(st.sampled_from(revenue_sources), min_size=n, max_size=n), label="adapters")
            return list(zip(sources, _partition(data, total, n), strict=True))

        def apply_claims(self, operator: LocalAccount, claims: list[Claim], revenues) -> None:
            for c in claims:
                self.channels[c.channel_id].claimed = c.amount
            for spec, amount in revenues:
                owner_share, parts, protocol_share, operator_share = split(amount, spec)
                if spec is not None:
                    self.earnings[spec.owner] += owner_share
                for datanet_id, part in parts:
                    self.pools[(operator.address, datanet_id)].funded += part
                self.earnings[world.treasury] += protocol_share
                self.earnings[operator.address] += operator_share

        def pick_channel(self, data: st.DataObject, fits=lambda ch: True) -> ChannelModel:
            """Mostly a channel the operation `fits`, sometimes any (so it may be refused)."""
            fitting = [ch for ch in self.channels.values() if fits(ch)]
            if fitting and data.draw(st.sampled_from([True, True, True, False]), label="fitting channel"):
                return data.draw(st.sampled_from(fitting), label="channel")
            return data.draw(st.sampled_from(list(self.channels.values())), label="channel")

        def open(self, data: st.DataObject) -> None:
            payer = data.draw(st.sampled_from(world.payers), label="payer")
            session = data.draw(st.sampled_from(world.sessions[payer.address]), label="session")
            payee = data.draw(st.sampled_from(world.operators), label="payee")
            delay_s = data.draw(st.sampled_from(WITHDRAW_DELAYS_S), label="delay")
            amount = data.draw(AMOUNTS, label="amount")
            self.salt += 1
            config = ChannelConfig(
                payer.address, session.address, payee.address, token.address, delay_s, self.salt.to_bytes(32, "big")
            )
            channel_id = channels.open(payer, config, amount)
            self.channels[channel_id] = ChannelModel(channel_id, config, payer, session, payee, amount)
            self.tokens[payer.address] -= amount
            self.paid_in += amount
            event("open")

        def refund(self, ch: ChannelModel) -> None:
            refund = ch.deposited - ch.claimed
            self.tokens[ch.payer.address] += refund
            self.paid_out += refund
            ch.deposited = ch.claimed
            ch.closed = True

        # ------------------------------------------------------------------ rules

        @initialize(data=st.data())
        def start(self, data: st.DataObject) -> None:
            """Two or three channels, and one claim to an adapter with a data share so pools hold something."""
            for _ in range(data.draw(st.integers(2, 3), label="initial channels")):
                self.open(data)
            ch = data.draw(st.sampled_from(self.claimable()), label="first claim")
            claims, total = self.draw_claims(data, [ch])
            revenues = [(world.adapters[0], total)]
            channels.claim(ch.payee, claims, [Revenue(world.adapters[0].id, total)])
            self.apply_claims(ch.payee, claims, revenues)
            event("claim of 1 channel(s), 1 revenue entries")
            funded = [k for k, p in self.pools.items() if p.funded]
            if funded:
                self.post_root(data, data.draw(st.sampled_from(funded), label="first root"), "honest")

        # Each rule mostly does something valid and sometimes tries what the contract must refuse; `start` leaves
        # channels open, so every rule has something to work on.

        @rule(data=st.data())
        def open_channel(self, data: st.DataObject) -> None:
            if len(self.channels) < MAX_CHANNELS and data.draw(VALID, label="valid"):
                self.open(data)
                return
            ch = self.pick_channel(data)
            case = data.draw(st.sampled_from(["exists", "not payer", "zero amount"]), label="case")
            if case == "exists":
                self.reverts("ChannelExists", ch.payer, "open", ch.config.as_tuple(), 1)
            elif case == "not payer":
                other = next(p for p in world.payers if p.address != ch.payer.address)
                self.reverts("NotPayer", other, "open", ch.config.as_tuple(), 1)
            else:
                fresh = ChannelConfig(
                    ch.payer.address, ch.session.address, ch.payee.address, token.address, 0, keccak(text="fresh")
                )
                self.reverts("ZeroAmount", ch.payer, "open", fresh.as_tuple(), 0)

        @rule(data=st.data())
        def deposit(self, data: st.DataObject) -> None:
            ch = self.pick_channel(data, lambda ch: not ch.closed and not ch.requested_at)
            # Anyone may top a channel up; the refund still goes to its payer.
            depositor = data.draw(st.sampled_from([ch.payer, *world.payers]), label="depositor")
            amount = data.draw(st.one_of(AMOUNTS, st.just(0)), label="amount")
            if amount == 0:
                self.reverts("ZeroAmount", depositor, "deposit", ch.id, amount)
            elif ch.closed:
                self.reverts("ChannelIsClosed", depositor, "deposit", ch.id, amount)
            elif ch.requested_at:
                self.reverts("ChannelWithdrawing", depositor, "deposit", ch.id, amount)
            else:
                channels.deposit(depositor, ch.id, amount)
                ch.deposited += amount
                self.tokens[depositor.address] -= amount
                self.paid_in += amount
                event("deposit")

        @rule(data=st.data(), batch=st.booleans())
        def claim(self, data: st.DataObject, batch: bool) -> None:
            if not self.claimable() or not data.draw(VALID, label="valid"):
                self.claim_invalid(data)
                return
            operator = data.draw(
                st.sampled_from([op for op in world.operators if self.claimable(op)]), label="operator"
            )
            pool = self.claimable(operator)
            count = data.draw(st.integers(1, min(3, len(pool))), label="channels") if batch else 1
            chosen = data.draw(st.permutations(pool), label="order")[:count]
            claims, total = self.draw_claims(data, chosen)
            revenues = self.draw_revenues(data, total)
            channels.claim(operator, claims, [Revenue(s.id if s else BASE_MODEL, a) for s, a in revenues])
            self.apply_claims(operator, claims, revenues)
            event(f"claim of {count} channel(s), {len(revenues)} revenue entries")

        def claim_invalid(self, data: st.DataObject) -> None:
            """One bad claim, possibly inside a batch of valid ones; the whole transaction must revert."""
            ch = self.pick_channel(data, lambda ch: ch.claimable > 0)
            # _claimOne checks, in order: known, payee, open, above claimed, within voucher, within deposit, signed.
            cases = ["not payee", "unknown channel", "empty"]
            if ch.closed:
                cases.append("closed")
            else:
                cases += ["stale", "over voucher", "over deposit"]
            if ch.claimable:
                signed_cases = ["wrong signer", "tampered", "high s", "duplicate"]
                cases = [*signed_cases, "mismatch", "unknown adapter", "zero", *cases]
            case = data.draw(st.sampled_from(cases), label="case")
            caller = ch.payee
            if case == "not payee":
                caller = next(op for op in world.operators if op.address != ch.payee.address)
            companions = [c for c in self.claimable(caller) if c.id != ch.id]
            extra = data.draw(st.integers(0, min(2, len(companions))), label="valid companions")
            good, good_total = self.draw_claims(data, companions[:extra])
            revenues = [Revenue(BASE_MODEL, good_total)] if good_total else []

            if case == "empty":
                self.reverts("EmptyClaim", caller, "claim", [], [])
                return
            if case in ("mismatch", "unknown adapter", "zero"):
                bad, bad_total = self.draw_claims(data, [ch])
                claims, total = [*good, *bad], good_total + bad_total
                entries = [Revenue(world.adapters[1].id, total)]
                if case == "mismatch":
                    name, entries = "RevenueMismatch", [Revenue(world.adapters[1].id, total + 1)]
                elif case == "unknown adapter":
                    name, entries = "UnknownAdapter", [Revenue(adapter_id("never-registered"), total)]
                else:
                    name, entries = "ZeroAmount", [*entries, Revenue(world.adapters[0].id, 0)]
                self.reverts(name, caller, "claim", [c.as_tuple() for c in claims], [r.as_tuple() for r in entries])
                return

            if case == "unknown channel":
                name, bad = "UnknownChannel", Claim(keccak(text="no such channel"), 1, 1, ZERO32, b"\x00" * 65)
            elif case == "not payee":
                name, bad = "NotPayee", self.signed(ch, ch.claimed + 1, ch.claimed + 1)
            elif case == "closed":
                name, bad = "ChannelIsClosed", self.signed(ch, ch.claimed + 1, ch.claimed + 1)
            elif case == "stale":
                name, bad = "StaleClaim", self.signed(ch, ch.claimed, ch.claimed)
            elif case == "over voucher":
                name, bad = "ClaimExceedsVoucher", self.signed(ch, ch.claimed, ch.claimed + 1)
            elif case == "over deposit":
                name, bad = "ClaimExceedsDeposit", self.signed(ch, ch.deposited + 1, ch.deposited + 1)
            else:
                amount = ch.claimed + data.draw(st.integers(1, ch.claimable), label="delta")
                name, bad = "InvalidSignature", self.signed(ch, amount, amount)
                if case == "wrong signer":
                    keys = (*world.sessions[ch.payer.address], ch.payer)
                    other = next(k for k in keys if k.address != ch.session.address)
                    bad = self.signed(ch, amount, amount, signer=other)
                elif case == "tampered":  # signed for `amount`, presented as a voucher for more
                    bad = Claim(ch.id, amount + 1, amount, bad.call_hash, bad.signature)
                elif case == "high s":
                    bad = Claim(ch.id, amount, amount, bad.call_hash, _high_s(bad.signature))
                else:  # the same voucher twice in one batch: the second pays nothing new
                    name, good = "StaleClaim", [*good, bad]
                    revenues = [Revenue(BASE_MODEL, good_total + amount - ch.claimed)]
            position = data.draw(st.integers(0, len(good)), label="position")
            claims = [*good[:position], bad, *good[position:]]
            self.reverts(name, caller, "claim", [c.as_tuple() for c in claims], [r.as_tuple() for r in revenues])

        @rule(data=st.data())
        def initiate_withdraw(self, data: st.DataObject) -> None:
            ch = self.pick_channel(data, lambda ch: not ch.closed and not ch.requested_at)
            caller = data.draw(st.sampled_from([ch.payer, ch.payer, ch.payee]), label="caller")
            if caller.address != ch.payer.address:
                self.reverts("NotChannelPayer", caller, "initiateWithdraw", ch.id)
            elif ch.closed:
                self.reverts("ChannelIsClosed", caller, "initiateWithdraw", ch.id)
            elif ch.requested_at:
                self.reverts("WithdrawState", caller, "initiateWithdraw", ch.id)
            else:
                self.initiate(ch)

        def initiate(self, ch: ChannelModel) -> None:
            receipt = channels.initiate_withdraw(ch.payer, ch.id)
            ch.requested_at = chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
            event("initiate withdraw")

        @rule(data=st.data())
        def finalize_withdraw(self, data: st.DataObject) -> None:
            ch = self.pick_channel(data, lambda ch: not ch.closed and ch.requested_at)
            caller = data.draw(st.sampled_from([ch.payer, ch.payer, ch.payee]), label="caller")
            wait = data.draw(st.booleans(), label="wait out the delay first")
            if caller.address != ch.payer.address:
                self.reverts("NotChannelPayer", caller, "finalizeWithdraw", ch.id)
                return
            if not ch.requested_at and not ch.closed and data.draw(st.booleans(), label="initiate first"):
                self.initiate(ch)
            if not ch.requested_at:
                self.reverts("WithdrawState", caller, "finalizeWithdraw", ch.id)
                return
            finalize_after = ch.requested_at + ch.config.withdraw_delay_s
            latest = chain.w3.eth.get_block("latest")["timestamp"]
            if latest < finalize_after:
                if not wait and latest + CLOCK_MARGIN_S < finalize_after:
                    self.reverts("WithdrawDelayNotElapsed", caller, "finalizeWithdraw", ch.id)
                    return
                chain.dev.increase_time(finalize_after - latest)
            if ch.closed:  # the payee closed it while the withdrawal was pending
                self.reverts("ChannelIsClosed", caller, "finalizeWithdraw", ch.id)
                return
            channels.finalize_withdraw(caller, ch.id)
            self.refund(ch)
            event("finalize withdraw")

        @rule(data=st.data())
        def close(self, data: st.DataObject) -> None:
            ch = self.pick_channel(data, lambda ch: not ch.closed)
            caller = data.draw(st.sampled_from([ch.payee, ch.payee, ch.payer, *world.operators]), label="caller")
            if caller.address != ch.payee.address:
                self.reverts("NotPayee", caller, "close", ch.id)
            elif ch.closed:
                self.reverts("ChannelIsClosed", caller, "close", ch.id)
            else:
                channels.close(caller, ch.id)
                self.refund(ch)
                event("payee close")

        @rule(seconds=st.sampled_from(TIME_STEPS_S))
        def travel(self, seconds: int) -> None:
            chain.dev.increase_time(seconds)

        @rule(data=st.data())
        def withdraw_earnings(self, data: st.DataObject) -> None:
            earning = [a for a in world.accounts if self.earnings.get(a.address)]
            account = data.draw(st.sampled_from([*earning, *earning, *world.accounts]), label="account")
            to = data.draw(st.sampled_from(world.accounts), label="to")
            amount = self.earnings.get(account.address, 0)
            if amount == 0:
                self.reverts("NothingToWithdraw", account, "withdrawEarnings", to.address)
                return
            channels.withdraw_earnings(account, to.address)
            self.earnings[account.address] = 0
            self.tokens[to.address] += amount
            self.paid_out += amount
            event("withdraw earnings")

        @precondition(lambda self: any(p.funded for p in self.pools.values()))
        @rule(data=st.data())
        def post_epoch_root(self, data: st.DataObject) -> None:
            """A root of cumulative per-contributor amounts over the datanet's registered contributors.

            Honest roots only raise amounts within the funding; an inflated one promises every contributor the
            whole pool (the contract cannot see the leaves, so the pool itself must refuse to overpay); two
            more post totals the contract must refuse."""
            key = data.draw(st.sampled_from([k for k, p in self.pools.items() if p.funded]), label="pool")
            case = data.draw(
                st.sampled_from(["honest", "honest", "inflated", "above funding", "below last"]), label="case"
            )
            self.post_root(data, key, case)

        def post_root(self, data: st.DataObject, key: tuple[str, int], case: str) -> None:
            pool = self.pools[key]
            operator, datanet_id = world.account(key[0]), key[1]
            members = world.contributors[datanet_id]
            if case == "inflated":
                leaves = dict.fromkeys(members, pool.funded)
                total = pool.funded
            else:
                leaves, headroom = {}, max(0, pool.funded - sum(pool.leaves.values()))
                for member in members:
                    raise_by = data.draw(st.integers(0, headroom), label="raise")
                    headroom -= raise_by
                    leaves[member] = pool.leaves.get(member, 0) + raise_by
                total = sum(leaves.values())
                if case == "above funding":
                    total = pool.funded + 1
                elif case == "below last" and pool.root_total:
                    total = pool.root_total - 1
            tree = MerkleTree([contributor_leaf(datanet_id, m, leaves[m]) for m in members])
            args = (datanet_id, tree.root, total, keccak(text="receipts"), keccak(text="attribution"))
            if total > pool.funded or total < pool.root_total:
                self.reverts("InvalidRootTotal", operator, "postEpochRoot", *args)
                return
            channels.post_epoch_root(operator, *args)
            pool.root, pool.root_total, pool.epoch = tree.root, total, pool.epoch + 1
            pool.leaves, pool.tree = leaves, tree
            event(f"post {case} root")

        @precondition(lambda self: any(p.funded for p in self.pools.values()))
        @rule(data=st.data())
        def claim_contribution(self, data: st.DataObject) -> None:
            rooted = [k for k, p in self.pools.items() if p.epoch]
            unrooted = [k for k, p in self.pools.items() if p.funded and not p.epoch]
            key = data.draw(st.sampled_from([*rooted, *rooted, *rooted, *unrooted]), label="pool")
            pool = self.pools[key]
            operator, datanet_id = key
            members = world.contributors[datanet_id]
            owed = [m for m in members if pool.leaves.get(m, 0) > pool.claimed.get(m, 0)]
            claimant = data.draw(st.sampled_from([*owed, *owed, *members, outsider.address]), label="claimant")
            forged = data.draw(st.sampled_from([False, False, True]), label="forged")
            sender = world.account(claimant)
            if claimant not in members:
                self.reverts("NotContributor", sender, "claimContribution", operator, datanet_id, 1, [])
                return
            if pool.tree is None:
                self.reverts("InvalidProof", sender, "claimContribution", operator, datanet_id, 1, [])
                return
            cumulative = pool.leaves[claimant] + (1 if forged else 0)
            proof = pool.tree.proof(members.index(claimant))
            args = (operator, datanet_id, cumulative, proof)
            already = pool.claimed.get(claimant, 0)
            if forged:
                self.reverts("InvalidProof", sender, "claimContribution", *args)
            elif cumulative <= already:
                self.reverts("AlreadyClaimed", sender, "claimContribution", *args)
            elif pool.paid_out + cumulative - already > pool.funded:
                self.reverts("PoolExhausted", sender, "claimContribution", *args)
            else:
                channels.claim_contribution(sender, *args)
                pool.claimed[claimant] = cumulative
                pool.paid_out += cumulative - already
                self.tokens[claimant] += cumulative - already
                self.paid_out += cumulative - already
                event("claim contribution")

        # ------------------------------------------------------------------ invariants

        @invariant()
        def chain_matches_ledger(self) -> None:
            held = 0
            for ch in self.channels.values():
                _, deposited, claimed, requested_at, closed = view(channels, "getChannel", ch.id)
                assert (deposited, claimed, requested_at, closed) == (
                    ch.deposited,
                    ch.claimed,
                    ch.requested_at,
                    ch.closed,
                ), ch
                held += deposited - claimed
            earnings = {a: view(channels, "earnings", a) for a in self.earnings}
            assert earnings == self.earnings  # (b)
            pooled = 0
            for (operator, datanet_id), pool in self.pools.items():
                funded, paid_out, root, root_total, epoch = view(channels, "getPool", operator, datanet_id)
                assert (funded, paid_out, bytes(root), root_total, epoch) == (
                    pool.funded,
                    pool.paid_out,
                    pool.root,
                    pool.root_total,
                    pool.epoch,
                ), f"pool of {operator} for datanet {datanet_id}"
                pooled += funded - paid_out
                # (c): what contributors were paid is what the pool paid out, never above its funding.
                if pool.epoch:
                    paid = {m: view(channels, "contributorClaimed", operator, datanet_id, m) for m in pool.leaves}
                    assert paid == {m: pool.claimed.get(m, 0) for m in pool.leaves}
                    assert sum(paid.values()) == paid_out <= funded
            # (a)
            balance = view(token, "balanceOf", channels.address)
            assert 0 <= self.paid_out <= self.paid_in
            assert balance == self.paid_in - self.paid_out == held + sum(earnings.values()) + pooled
            # (b): every party's tokens
            assert {a: view(token, "balanceOf", a) for a in self.tokens} == self.tokens

    return Ledger


def test_random_operations_keep_the_books(chain: Chain, accounts, contracts: Contracts) -> None:
    """Random operation sequences keep PaymentChannels solvent and every balance equal to the policy arithmetic."""
    world = _build_world(chain, contracts, accounts)
    assert contracts.token.balance_of(contracts.channels.address) == 0
    run_state_machine_as_test(_ledger_machine(chain, contracts, world), settings=SETTINGS)
