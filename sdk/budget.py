"""Spending caps and allowlists, checked before any voucher is signed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils import to_checksum_address

from ._exceptions import BudgetExceeded, PaymentNotAllowed
from .types import Quote

__all__ = ["Budget", "Reservation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reservation:
    """A call's maximum held against the caps while it is in flight."""

    amount_wei: int
    payee: str


def _addresses(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(to_checksum_address(v) for v in values)


class Budget:
    """What an agent may spend, and on what.

    Caps (in the token's smallest unit; None = no cap): `max_per_call_wei` bounds one call's maximum,
    `max_per_session_wei` everything this Budget object pays, `max_total_wei` everything including
    `spent_total_wei` carried over from earlier sessions (persist `budget.spent_total_wei` to carry it on).
    Allowlists (None = any): adapter ids, payee addresses, PaymentChannels contracts and tokens.

    A call's maximum is reserved before its voucher is signed and replaced by the charged amount once the
    receipt verifies; a call whose outcome is unknown after its voucher went out (a timeout, a missing or
    invalid receipt) stays counted at its maximum, since the payee holds a voucher for it. Thread-safe.
    """

    def __init__(
        self,
        *,
        max_per_call_wei: int | None = None,
        max_per_session_wei: int | None = None,
        max_total_wei: int | None = None,
        spent_total_wei: int = 0,
        adapters: Iterable[str] | None = None,
        payees: Iterable[str] | None = None,
        contracts: Iterable[str] | None = None,
        tokens: Iterable[str] | None = None,
    ) -> None:
        for name, cap in (
            ("max_per_call_wei", max_per_call_wei),
            ("max_per_session_wei", max_per_session_wei),
            ("max_total_wei", max_total_wei),
        ):
            if cap is not None and cap < 0:
                raise ValueError(f"{name} must be >= 0")
        self.max_per_call_wei = max_per_call_wei
        self.max_per_session_wei = max_per_session_wei
        self.max_total_wei = max_total_wei
        self.adapters = None if adapters is None else frozenset(adapters)
        self.payees = _addresses(payees)
        self.contracts = _addresses(contracts)
        self.tokens = _addresses(tokens)
        self._spent_session_wei = 0
        self._spent_before_wei = spent_total_wei
        self._reserved_wei = 0
        self._refused: dict[str, str] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ state

    @property
    def spent_session_wei(self) -> int:
        """Paid (or committed at its maximum) by this Budget object."""
        return self._spent_session_wei

    @property
    def spent_total_wei(self) -> int:
        """`spent_total_wei` given at construction plus this session's spending."""
        return self._spent_before_wei + self._spent_session_wei

    @property
    def reserved_wei(self) -> int:
        """Held by calls in flight."""
        return self._reserved_wei

    def remaining_wei(self) -> int | None:
        """What the session and total caps still allow (reservations included); None when uncapped."""
        with self._lock:
            return self._remaining_locked()

    def refused_payees(self) -> dict[str, str]:
        """Payees refused after an invalid receipt, with the reason."""
        with self._lock:
            return dict(self._refused)

    def refuse(self, payee: str, reason: str) -> None:
        """Never pay `payee` again through this Budget."""
        payee = to_checksum_address(payee)
        with self._lock:
            self._refused.setdefault(payee, reason)
        logger.warning("refusing payee %s from now on: %s", payee, reason)

    # ------------------------------------------------------------------------------------------ checks

    def check(self, amount_wei: int, *, adapter: str, payee: str, contract: str, token: str) -> None:
        """Raises PaymentNotAllowed or BudgetExceeded if a call of at most `amount_wei` may not be paid."""
        with self._lock:
            self._check_locked(amount_wei, adapter=adapter, payee=payee, contract=contract, token=token)

    def quote(self, amount_wei: int, *, adapter: str, payee: str, contract: str, token: str) -> tuple[bool, str | None]:
        """Dry run of `check`: (allowed, reason it is not)."""
        try:
            self.check(amount_wei, adapter=adapter, payee=payee, contract=contract, token=token)
        except (PaymentNotAllowed, BudgetExceeded) as exc:
            return False, str(exc)
        return True, None

    def reserve(self, amount_wei: int, *, adapter: str, payee: str, contract: str, token: str) -> Reservation:
        """Checks, then holds `amount_wei` against the caps until commit() or release()."""
        with self._lock:
            self._check_locked(amount_wei, adapter=adapter, payee=payee, contract=contract, token=token)
            self._reserved_wei += amount_wei
        return Reservation(amount_wei, to_checksum_address(payee))

    def commit(self, reservation: Reservation, charged_wei: int) -> None:
        """Replaces a reservation with what the call was charged."""
        with self._lock:
            self._reserved_wei -= reservation.amount_wei
            self._spent_session_wei += charged_wei

    def release(self, reservation: Reservation) -> None:
        """Drops a reservation whose voucher was never sent."""
        with self._lock:
            self._reserved_wei -= reservation.amount_wei

    def _remaining_locked(self) -> int | None:
        limits = []
        if self.max_per_session_wei is not None:
            limits.append(self.max_per_session_wei - self._spent_session_wei - self._reserved_wei)
        if self.max_total_wei is not None:
            limits.append(self.max_total_wei - self.spent_total_wei - self._reserved_wei)
        return max(0, min(limits)) if limits else None

    def _check_locked(self, amount_wei: int, *, adapter: str, payee: str, contract: str, token: str) -> None:
        payee, contract, token = (to_checksum_address(a) for a in (payee, contract, token))
        if payee in self._refused:
            raise PaymentNotAllowed(f"payee {payee} is refused: {self._refused[payee]}")
        if self.adapters is not None and adapter not in self.adapters:
            raise PaymentNotAllowed(f"adapter {adapter!r} is not in the budget's adapters")
        for kind, value, allowed in (
            ("payee", payee, self.payees),
            ("contract", contract, self.contracts),
            ("token", token, self.tokens),
        ):
            if allowed is not None and value not in allowed:
                raise PaymentNotAllowed(f"{kind} {value} is not in the budget's {kind}s")
        if self.max_per_call_wei is not None and amount_wei > self.max_per_call_wei:
            raise BudgetExceeded(
                f"this call may cost up to {amount_wei}, over the per-call cap of {self.max_per_call_wei}",
                cap="per_call",
                amount_wei=amount_wei,
                remaining_wei=self.max_per_call_wei,
            )
        for cap, limit, spent in (
            ("per_session", self.max_per_session_wei, self._spent_session_wei),
            ("total", self.max_total_wei, self.spent_total_wei),
        ):
            if limit is None:
                continue
            remaining = max(0, limit - spent - self._reserved_wei)
            if amount_wei > remaining:
                raise BudgetExceeded(
                    f"this call may cost up to {amount_wei}; the {cap.replace('_', '-')} cap leaves {remaining}",
                    cap=cap,
                    amount_wei=amount_wei,
                    remaining_wei=remaining,
                )

    def __repr__(self) -> str:
        return (
            f"Budget(max_per_call_wei={self.max_per_call_wei}, max_per_session_wei={self.max_per_session_wei}, "
            f"max_total_wei={self.max_total_wei}, spent_total_wei={self.spent_total_wei})"
        )


def quote_of(
    budget: Budget | None, *, model: str, amount_wei: int, payee: str, token: str, contract: str, network: str,
    price_per_input_token_wei: int, price_per_output_token_wei: int, refusal: str | None = None,
) -> Quote:
    """The Quote of a call given its payment requirements; `refusal` is a reason found before the budget."""
    allowed, reason = (False, refusal) if refusal else (True, None)
    if allowed and budget is not None:
        allowed, reason = budget.quote(amount_wei, adapter=model, payee=payee, contract=contract, token=token)
    return Quote(
        model=model,
        max_amount_wei=amount_wei,
        payee=to_checksum_address(payee),
        token=to_checksum_address(token),
        contract=to_checksum_address(contract),
        network=network,
        price_per_input_token_wei=price_per_input_token_wei,
        price_per_output_token_wei=price_per_output_token_wei,
        allowed=allowed,
        reason=reason,
    )
