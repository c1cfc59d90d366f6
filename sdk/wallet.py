"""The agent's keys and payment channels: a funding key that opens and tops up channels, a session key that
signs vouchers, and several channels ("lanes") per payee so that calls can run concurrently."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from ._exceptions import WalletError
from ._x402 import network_of
from .chain.contracts import OpenToken, PaymentChannels
from .chain.errors import ChainError
from .chain.provider import Chain
from .vouchers import ChannelConfig, Domain, Voucher, channel_id, sign_voucher

__all__ = ["DEFAULT_DEPOSIT_WEI", "Lane", "Wallet"]

logger = logging.getLogger(__name__)

DEFAULT_DEPOSIT_WEI = 10**18
"""One OPEN: what a new lane, or a top-up, deposits at least."""


@dataclass(eq=False)
class Lane:
    """One payment channel to one payee, with what the SDK knows of it.

    `charged_wei` is the charged cumulative amount the SDK knows for sure (from verified receipts or the
    runtime's stale-voucher answers); `authorized_wei` the highest voucher it signed. `settled` is False
    while a voucher went out whose outcome is unknown (a timeout, a missing receipt): the runtime may have
    charged anything up to `authorized_wei`, and its next stale-voucher answer tells how much.
    On-chain state (`deposited_wei`, `withdraw_requested_at`, `closed`) is cached and re-read by
    `Wallet.refresh`.
    """

    channel_id: bytes
    config: ChannelConfig
    contract: str
    deposited_wei: int
    charged_wei: int = 0
    authorized_wei: int = 0
    settled: bool = True
    withdraw_requested_at: int = 0
    closed: bool = False
    busy: bool = field(default=False, repr=False)

    @property
    def payee(self) -> str:
        return to_checksum_address(self.config.payee)

    @property
    def token(self) -> str:
        return to_checksum_address(self.config.token)

    @property
    def usable(self) -> bool:
        """Open and not withdrawing."""
        return not self.closed and self.withdraw_requested_at == 0

    @property
    def channel_id_hex(self) -> str:
        return "0x" + self.channel_id.hex()


def _account(key: LocalAccount | str | bytes) -> LocalAccount:
    return key if isinstance(key, LocalAccount) else Account.from_key(key)


class Wallet:
    """An eth-account funding key that opens and funds channels, and a separate session key that signs vouchers.

    The session key (a fresh random one unless given) is each channel's `payerAuthorizer`: it can only sign
    vouchers, so a leaked session key risks the deposits, never the funding account. Channels are opened
    on `chain` through PaymentChannels, up to `max_lanes_per_payee` per payee; a call takes a free lane, or
    opens one, or waits up to `lane_wait_s` for one. New lanes and top-ups deposit at least `deposit_wei`.
    """

    def __init__(
        self,
        funding_key: LocalAccount | str | bytes,
        *,
        chain: Chain,
        session_key: LocalAccount | str | bytes | None = None,
        session_authorizer: str | None = None,
        deposit_wei: int = DEFAULT_DEPOSIT_WEI,
        max_lanes_per_payee: int = 4,
        lane_wait_s: float = 120.0,
    ) -> None:
        if max_lanes_per_payee < 1:
            raise ValueError("max_lanes_per_payee must be at least 1")
        if session_authorizer is not None and session_key is None:
            raise ValueError("a session_authorizer (contract wallet) needs the session_key it accepts signatures from")
        self._funder = _account(funding_key)
        self._session = _account(session_key) if session_key is not None else Account.create()
        # The channels' payerAuthorizer: a smart-contract wallet (ERC-1271) accepting the session key's signature over
        # a voucher's EIP-712 digest, or the session key itself.
        self._authorizer = to_checksum_address(session_authorizer or self._session.address)
        self.chain = chain
        self.deposit_wei = deposit_wei
        self.max_lanes_per_payee = max_lanes_per_payee
        self.lane_wait_s = lane_wait_s
        self._lanes: dict[tuple[str, str, str], list[Lane]] = {}
        self._opening: dict[tuple[str, str, str], int] = {}
        self._cond = threading.Condition()
        self._chain_lock = threading.Lock()  # one chain operation at a time: nonces, and eth-tester is single-threaded

    @classmethod
    def from_env(
        cls,
        *,
        chain: Chain,
        key_var: str = "LORALEDGER_PRIVATE_KEY",
        session_key_var: str = "LORALEDGER_SESSION_KEY",
        **kwargs,
    ) -> Wallet:
        """A wallet whose funding key (and optionally session key) come from environment variables (0x-hex)."""
        key = os.environ.get(key_var)
        if not key:
            raise WalletError(f"{key_var} is not set")
        return cls(key, chain=chain, session_key=os.environ.get(session_key_var) or None, **kwargs)

    @classmethod
    def from_keystore(cls, path: Path | str, password: str, *, chain: Chain, **kwargs) -> Wallet:
        """A wallet whose funding key is decrypted from an Ethereum keystore (V3 JSON) file."""
        try:
            key = Account.decrypt(json.loads(Path(path).read_text()), password)
        except (OSError, ValueError) as exc:
            raise WalletError(f"cannot decrypt keystore {path}: {exc}") from exc
        return cls(key, chain=chain, **kwargs)

    def __repr__(self) -> str:  # keys never reach logs
        return f"Wallet(address={self.address}, session={self.session_address}, lanes={len(self.lanes())})"

    # ------------------------------------------------------------------------------------------ identity

    @property
    def address(self) -> str:
        """The funding account: the channels' payer."""
        return self._funder.address

    @property
    def session_address(self) -> str:
        """The session key's address: it signs vouchers."""
        return self._session.address

    @property
    def authorizer_address(self) -> str:
        """The channels' payerAuthorizer: the session key's address, or the contract wallet given as
        session_authorizer (which accepts the session key's signatures through ERC-1271)."""
        return self._authorizer

    @property
    def funding_account(self) -> LocalAccount:
        """The funding key, for the chain operations it signs (e.g. `trace.anchor`)."""
        return self._funder

    @property
    def chain_id(self) -> int:
        return self.chain.chain_id

    @property
    def network(self) -> str:
        """The chain as x402 names it: `eip155:<chainId>`."""
        return network_of(self.chain_id)

    def domain(self, contract: str) -> Domain:
        """The EIP-712 domain of one PaymentChannels contract on this wallet's chain."""
        return Domain(self.chain_id, to_checksum_address(contract))

    # ------------------------------------------------------------------------------------------ lanes

    def lanes(self, payee: str | None = None) -> list[Lane]:
        """The lanes this wallet knows, to one payee or to all."""
        with self._cond:
            found = [lane for lanes in self._lanes.values() for lane in lanes]
        return [lane for lane in found if payee is None or lane.payee == to_checksum_address(payee)]

    def open_lane(
        self, contract: str, payee: str, token: str, *, amount_wei: int, withdraw_delay_s: int
    ) -> Lane:
        """Opens a channel from the funding account to `payee` with `amount_wei` (approving the token first)."""
        key = _key(contract, payee, token)
        lane = self._open(key, amount_wei, withdraw_delay_s)
        with self._cond:
            self._lanes.setdefault(key, []).append(lane)
        return lane

    def attach_lane(self, contract: str, channel: bytes | str) -> Lane:
        """Adopts an existing channel of this wallet (e.g. opened by an earlier session with the same session key).

        What it was charged is unknown until the runtime says: the lane starts unsettled, between what was
        claimed on chain and the deposit.
        """
        channel = bytes.fromhex(channel.removeprefix("0x")) if isinstance(channel, str) else channel
        state = self._read(contract, channel)
        config = state.config
        if to_checksum_address(config.payer) != self.address:
            raise WalletError(f"channel 0x{channel.hex()} is paid by {config.payer}, not by {self.address}")
        if to_checksum_address(config.payer_authorizer) != self.authorizer_address:
            raise WalletError(f"channel 0x{channel.hex()} is authorized by {config.payer_authorizer}, not this session key")
        lane = Lane(
            channel_id=channel,
            config=config,
            contract=to_checksum_address(contract),
            deposited_wei=state.deposited,
            charged_wei=state.claimed,
            authorized_wei=state.deposited,
            settled=False,
            withdraw_requested_at=state.withdraw_requested_at,
            closed=state.closed,
        )
        with self._cond:
            self._lanes.setdefault(_key(contract, config.payee, config.token), []).append(lane)
        return lane

    def acquire(
        self,
        contract: str,
        payee: str,
        token: str,
        *,
        amount_wei: int,
        withdraw_delay_s: int,
        min_deposit_wei: int = 0,
        deposit_wei: int | None = None,
    ) -> Lane:
        """Takes a free lane to `payee` for a call of at most `amount_wei`: the one with the most headroom, or
        a new one while fewer than `max_lanes_per_payee` exist, or the first freed within `lane_wait_s`.
        The lane is funded for the call (see `ensure_deposit`). Blocking; release() it after the call."""
        key = _key(contract, payee, token)
        deadline = time.monotonic() + self.lane_wait_s
        with self._cond:
            while True:
                lanes = [lane for lane in self._lanes.get(key, []) if lane.usable]
                free = [lane for lane in lanes if not lane.busy]
                if free:
                    lane = max(free, key=lambda lane: lane.deposited_wei - lane.charged_wei)
                    lane.busy = True
                    break
                if len(lanes) + self._opening.get(key, 0) < self.max_lanes_per_payee:
                    self._opening[key] = self._opening.get(key, 0) + 1
                    lane = None
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WalletError(f"all {len(lanes)} lanes to {payee} stayed busy for {self.lane_wait_s}s")
                self._cond.wait(remaining)
        if lane is None:
            deposit = max(deposit_wei if deposit_wei is not None else self.deposit_wei, min_deposit_wei, amount_wei)
            try:
                lane = self._open(key, deposit, withdraw_delay_s)
            finally:
                with self._cond:
                    self._opening[key] -= 1
                    self._cond.notify_all()
            lane.busy = True
            with self._cond:
                self._lanes.setdefault(key, []).append(lane)
            return lane
        try:
            self.ensure_deposit(lane, lane.charged_wei + amount_wei, deposit_wei=deposit_wei)
        except BaseException:
            self.release(lane)
            raise
        return lane

    def release(self, lane: Lane) -> None:
        """Hands a lane back for the next call."""
        with self._cond:
            lane.busy = False
            self._cond.notify_all()

    def ensure_deposit(self, lane: Lane, cumulative_wei: int, *, deposit_wei: int | None = None) -> None:
        """Makes the lane's deposit cover a voucher of `cumulative_wei`, re-reading the chain first and then
        topping up by at least `deposit_wei` (default: the wallet's) if it still falls short."""
        if lane.deposited_wei >= cumulative_wei:
            return
        self.refresh(lane)
        shortfall = cumulative_wei - lane.deposited_wei
        if shortfall > 0:
            self.top_up(lane, max(shortfall, deposit_wei if deposit_wei is not None else self.deposit_wei))

    def top_up(self, lane: Lane, amount_wei: int) -> None:
        """Deposits `amount_wei` more into the lane's channel."""
        channels = self._channels(lane.contract)
        with self._chain_lock:
            try:
                self._approve(lane.token, channels.address, amount_wei)
                channels.deposit(self._funder, lane.channel_id, amount_wei)
            except ChainError as exc:
                raise WalletError(f"top-up of channel {lane.channel_id_hex} failed: {exc}") from exc
        lane.deposited_wei += amount_wei
        logger.info("topped up channel %s by %d", lane.channel_id_hex, amount_wei)

    def refresh(self, lane: Lane) -> None:
        """Re-reads the lane's on-chain state (deposit, withdrawal, closure) into the cache."""
        state = self._read(lane.contract, lane.channel_id)
        lane.deposited_wei = state.deposited
        lane.withdraw_requested_at = state.withdraw_requested_at
        lane.closed = state.closed

    def initiate_withdraw(self, lane: Lane) -> None:
        """Starts the payer's exit: after the channel's withdraw delay, finalize_withdraw returns what is unclaimed.
        The lane takes no new calls from now on."""
        self._tx(lane, "initiate withdrawal of", lambda ch: ch.initiate_withdraw(self._funder, lane.channel_id))
        self.refresh(lane)

    def finalize_withdraw(self, lane: Lane) -> None:
        """Returns the unclaimed deposit to the funding account once the withdraw delay has passed."""
        self._tx(lane, "finalize withdrawal of", lambda ch: ch.finalize_withdraw(self._funder, lane.channel_id))
        self.refresh(lane)

    # ------------------------------------------------------------------------------------------ vouchers

    def sign_voucher(self, lane: Lane, cumulative_wei: int, call_hash: bytes) -> bytes:
        """Signs a voucher for `cumulative_wei` on the lane with the session key; returns the 65-byte signature."""
        signature = sign_voucher(self._session, self.domain(lane.contract), Voucher(lane.channel_id, cumulative_wei, call_hash))
        lane.authorized_wei = max(lane.authorized_wei, cumulative_wei)
        return signature

    # ------------------------------------------------------------------------------------------ chain

    def _channels(self, contract: str) -> PaymentChannels:
        return PaymentChannels(self.chain, contract)

    def _read(self, contract: str, channel: bytes):
        try:
            with self._chain_lock:
                state = self._channels(contract).get_channel(channel)
        except ChainError as exc:
            raise WalletError(f"cannot read channel 0x{channel.hex()}: {exc}") from exc
        if int(state.config.payee, 16) == 0:
            raise WalletError(f"channel 0x{channel.hex()} does not exist on {contract}")
        return state

    def _approve(self, token: str, spender: str, amount_wei: int) -> None:
        erc20 = OpenToken(self.chain, token)
        if erc20.allowance(self.address, spender) < amount_wei:
            erc20.approve(self._funder, spender, amount_wei)

    def _open(self, key: tuple[str, str, str], amount_wei: int, withdraw_delay_s: int) -> Lane:
        contract, payee, token = key
        config = ChannelConfig(self.address, self.authorizer_address, payee, token, withdraw_delay_s, os.urandom(32))
        expected = channel_id(self.domain(contract), config)
        channels = self._channels(contract)
        with self._chain_lock:
            try:
                self._approve(token, channels.address, amount_wei)
                opened = channels.open(self._funder, config, amount_wei)
            except ChainError as exc:
                raise WalletError(f"opening a channel to {payee} failed: {exc}") from exc
        if opened != expected:
            raise WalletError(f"{contract} opened channel 0x{opened.hex()}, expected 0x{expected.hex()}")
        logger.info("opened channel 0x%s to %s with %d", opened.hex(), payee, amount_wei)
        return Lane(channel_id=opened, config=config, contract=contract, deposited_wei=amount_wei)

    def _tx(self, lane: Lane, what: str, send) -> None:
        with self._chain_lock:
            try:
                send(self._channels(lane.contract))
            except ChainError as exc:
                raise WalletError(f"{what} channel {lane.channel_id_hex} failed: {exc}") from exc


def _key(contract: str, payee: str, token: str) -> tuple[str, str, str]:
    return (to_checksum_address(contract), to_checksum_address(payee), to_checksum_address(token))
