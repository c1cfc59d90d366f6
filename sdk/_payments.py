"""One paid call, from the first 402 to the verified receipt; shared by Client and AsyncClient (no HTTP here).

    402 + PAYMENT-REQUIRED ──begin()───> check allowlists and caps, reserve the maximum, take a lane (open or
                                         top up a channel), sign voucher(charged + max, callHash) ──> header
        (unsettled lane)   ──resume()──> with the charged total from GET /v1/channels/{id}, checked, sign ──> header
    402 + charged total    ──restale()─> learn the charged total (a stale voucher), re-sign once ──> header
    200 + PAYMENT-RESPONSE ──settle()──> verify the receipt, commit the charge, hand the lane back
    anything else after a voucher went out ──abort()──> count the maximum as spent, mark the lane unsettled

The blocking steps (begin, resume, restale) touch the chain; AsyncClient runs them in a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from eth_utils import keccak, to_checksum_address
from pydantic import ValidationError

from . import _x402
from ._exceptions import InvalidReceipt, PaymentNotAllowed
from .budget import Budget, Reservation, quote_of
from .receipts import Expected, verify_settlement
from .trace import call_hash
from .types import Payment, Quote, Receipt
from .wallet import Lane, Wallet

logger = logging.getLogger(__name__)


class MalformedPayment(ValueError):
    """A payment header that does not parse as the protocol says (the client raises APIResponseValidationError)."""


def parse_payment_required(response: httpx.Response) -> _x402.PaymentRequired:
    """The PAYMENT-REQUIRED header of a 402 (MalformedPayment when missing or malformed)."""
    value = response.headers.get(_x402.PAYMENT_REQUIRED_HEADER)
    if not value:
        raise MalformedPayment("402 without a PAYMENT-REQUIRED header")
    try:
        return _x402.decode_payment_required(value)
    except (ValidationError, ValueError, TypeError) as exc:
        raise MalformedPayment(f"malformed PAYMENT-REQUIRED header: {exc}") from exc


def select_requirements(required: _x402.PaymentRequired, network: str | None) -> _x402.PaymentRequirements:
    """The `accepts` entry of our scheme on `network` (any network when None); PaymentNotAllowed if none."""
    ours = [r for r in required.accepts if r.scheme == _x402.SCHEME]
    if not ours:
        offered = ", ".join(sorted({r.scheme for r in required.accepts})) or "nothing"
        raise PaymentNotAllowed(f"the runtime accepts {offered}; this SDK pays with {_x402.SCHEME}")
    matching = [r for r in ours if network is None or r.network == network]
    if not matching:
        offered = ", ".join(sorted({r.network for r in ours}))
        raise PaymentNotAllowed(f"the runtime wants payment on {offered}; the wallet is on {network}")
    return matching[0]


def _int(extra: dict[str, Any], name: str, default: int | None = None) -> int:
    value = extra.get(name, default)
    if value is None:
        raise ValueError(f"payment requirements lack extra.{name}")
    return int(value)


class _Terms:
    """The parts of one PaymentRequirements the SDK acts on."""

    def __init__(self, requirements: _x402.PaymentRequirements) -> None:
        extra = requirements.extra or {}
        try:
            self.amount_wei = int(requirements.amount)
            self.contract = to_checksum_address(extra["contract"])
            self.payee = to_checksum_address(requirements.pay_to)
            self.token = to_checksum_address(requirements.asset)
            self.price_in = _int(extra, "pricePerInputToken", 0)
            self.price_out = _int(extra, "pricePerOutputToken", 0)
            self.min_deposit = _int(extra, "minDeposit", 0)
            self.withdraw_delay_s = _int(extra, "withdrawDelay")
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedPayment(f"malformed {_x402.SCHEME} requirements: {exc}") from exc
        if self.amount_wei < 0:
            raise MalformedPayment("negative payment amount")


def quote(budget: Budget | None, wallet: Wallet | None, model: str, response: httpx.Response) -> Quote:
    """A Quote from the 402 answered to an unpaid request: the call's maximum and whether it could be paid."""
    required = parse_payment_required(response)
    refusal = None
    try:
        requirements = select_requirements(required, wallet.network if wallet else None)
    except PaymentNotAllowed as exc:
        refusal = str(exc)
        ours = [r for r in required.accepts if r.scheme == _x402.SCHEME]
        if not ours:
            return Quote(model=model, max_amount_wei=0, allowed=False, reason=refusal)
        requirements = ours[0]
    terms = _Terms(requirements)
    return quote_of(
        budget,
        model=model,
        amount_wei=terms.amount_wei,
        payee=terms.payee,
        token=terms.token,
        contract=terms.contract,
        network=requirements.network,
        price_per_input_token_wei=terms.price_in,
        price_per_output_token_wei=terms.price_out,
        refusal=refusal,
    )


class PaidCall:
    """The payment state of one logical call; every retry and both 402 hops reuse its idempotency key."""

    def __init__(
        self,
        *,
        wallet: Wallet,
        budget: Budget,
        trace_head: bytes,
        model: str,
        body: dict[str, Any],
        idempotency_key: str,
    ) -> None:
        self.wallet = wallet
        self.budget = budget
        self.model = model
        self.body = body
        self.idempotency_key = idempotency_key
        self.required: _x402.PaymentRequired | None = None
        self.requirements: _x402.PaymentRequirements | None = None
        self.terms: _Terms | None = None
        self.trace_head = trace_head
        self.call_hash = call_hash(body, trace_head)
        self.lane: Lane | None = None
        self.charged_before_wei = 0
        self.voucher_amount_wei = 0
        self.sent = False  # a voucher went out: only settle() or abort() end the call now
        self.done = False
        self.restaled = False
        self._charged_low = 0
        self._charged_high = 0
        self._reservation: Reservation | None = None

    # ------------------------------------------------------------------------------------------ steps

    def begin(self, response: httpx.Response) -> str | None:
        """Turns the first 402 into a PAYMENT-SIGNATURE header. Blocking (may open or top up a channel).

        None when the lane it took is unsettled: the caller asks the runtime what the channel was charged and
        calls resume() with it."""
        self.required = parse_payment_required(response)
        self.requirements = select_requirements(self.required, self.wallet.network)
        self.terms = terms = _Terms(self.requirements)
        self._reservation = self.budget.reserve(
            terms.amount_wei, adapter=self.model, payee=terms.payee, contract=terms.contract, token=terms.token
        )
        try:
            # Lock up no more than the budget can still spend, this call included.
            remaining = self.budget.remaining_wei()
            deposit = self.wallet.deposit_wei
            if remaining is not None:
                deposit = min(deposit, remaining + terms.amount_wei)
            self.lane = self.wallet.acquire(
                terms.contract,
                terms.payee,
                terms.token,
                amount_wei=terms.amount_wei,
                withdraw_delay_s=terms.withdraw_delay_s,
                min_deposit_wei=terms.min_deposit,
                deposit_wei=deposit,
            )
        except BaseException:
            self.budget.release(self._reservation)
            self.done = True
            raise
        # What the lane may have been charged before this call: exactly the last verified receipt's total on a
        # settled lane; on an unsettled one, anything up to the highest voucher signed on it so far.
        self._charged_low = self.lane.charged_wei
        self._charged_high = self._charged_low if self.lane.settled else max(self.lane.authorized_wei, self._charged_low)
        if not self.lane.settled:
            return None
        return self._sign(self.lane.charged_wei)

    def resume(self, charged_wei: int) -> str:
        """After begin() returned None (an unsettled lane): the header signed on the charged cumulative amount the
        runtime reports (`GET /v1/channels/{id}`). Blocking (may top up)."""
        self._learn_charged(charged_wei)
        return self._sign(charged_wei)

    def restale(self, response: httpx.Response) -> str | None:
        """Handles a 402 to a paid request. When it carries the channel's charged cumulative amount and that is
        more than the voucher assumed (a stale voucher, or one that leaves too little for the call): the header
        re-signed on it, once. None otherwise (the caller raises the 402). Blocking (may top up)."""
        assert self.lane is not None
        try:
            required = parse_payment_required(response)
        except MalformedPayment:
            return None
        charged = next(
            (int(r.extra["chargedCumulativeAmount"]) for r in required.accepts if "chargedCumulativeAmount" in (r.extra or {})),
            None,
        )
        if self.restaled or charged is None:
            return None
        self.restaled = True
        self._learn_charged(charged)
        if charged == self.charged_before_wei:
            return None
        return self._sign(charged)

    def _learn_charged(self, charged_wei: int) -> None:
        """Takes the runtime's word for the lane's charged total if it lies within what the SDK knows of it (see
        begin); anything else is a false claim, and the payee is refused."""
        assert self.lane is not None and self.terms is not None
        lane, low, high = self.lane, self._charged_low, self._charged_high
        if not low <= charged_wei <= high:
            self.budget.refuse(self.terms.payee, f"claimed {charged_wei} charged on channel {lane.channel_id_hex}")
            self.abort()
            raise InvalidReceipt(
                f"{self.terms.payee} says channel {lane.channel_id_hex} is charged {charged_wei}, "
                f"but its receipts account for {low}" + (f" to {high}" if high != low else ""),
                payee=self.terms.payee,
            )
        lane.charged_wei = charged_wei
        self.wallet.ensure_deposit(lane, charged_wei + self.terms.amount_wei)

    def settle(
        self, header_value: str | None, usage: dict[str, Any] | None, output: str | None = None
    ) -> tuple[Receipt, Payment]:
        """Verifies PAYMENT-RESPONSE (and, given the output text the call returned, the receipt's outputHash =
        keccak(utf-8 output)); commits the charge and frees the lane. On failure: InvalidReceipt, the payee
        refused, the maximum counted as spent."""
        assert self.lane is not None and self.terms is not None and self.requirements is not None
        payee = self.terms.payee
        try:
            if not header_value:
                raise InvalidReceipt(f"{payee} answered a paid call without PAYMENT-RESPONSE", payee=payee)
            try:
                settle = _x402.decode_payment_response(header_value)
            except (ValidationError, ValueError, TypeError) as exc:
                raise InvalidReceipt(f"malformed PAYMENT-RESPONSE from {payee}: {exc}", payee=payee) from exc
            receipt = verify_settlement(
                settle,
                Expected(
                    requirements=self.requirements,
                    domain=self.wallet.domain(self.terms.contract),
                    model=self.model,
                    channel_id=self.lane.channel_id,
                    call_hash=self.call_hash,
                    charged_before_min_wei=self._charged_low,
                    charged_before_max_wei=self._charged_high,
                    voucher_amount_wei=self.voucher_amount_wei,
                    price_per_input_token_wei=self.terms.price_in,
                    price_per_output_token_wei=self.terms.price_out,
                ),
            )
            if usage is not None and (
                int(usage.get("prompt_tokens", receipt.input_tokens)) != receipt.input_tokens
                or int(usage.get("completion_tokens", receipt.output_tokens)) != receipt.output_tokens
            ):
                raise InvalidReceipt(
                    f"receipt from {payee} counts {receipt.input_tokens}+{receipt.output_tokens} tokens, "
                    f"the response's usage {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}",
                    payee=payee,
                )
            if output is not None and receipt.output_hash.lower() != "0x" + keccak(output.encode("utf-8")).hex():
                raise InvalidReceipt(f"receipt from {payee} commits to another output than the one returned", payee=payee)
        except InvalidReceipt as exc:
            self.budget.refuse(payee, str(exc))
            self.abort()
            raise
        lane = self.lane
        lane.charged_wei = receipt.cumulative_amount_wei
        lane.settled = True
        self.budget.commit(self._reservation, receipt.amount_wei)
        self.done = True
        self.wallet.release(lane)
        payment = Payment(
            amount_wei=receipt.amount_wei,
            max_amount_wei=self.terms.amount_wei,
            cumulative_amount_wei=receipt.cumulative_amount_wei,
            voucher_amount_wei=self.voucher_amount_wei,
            channel_id=lane.channel_id_hex,
            payee=payee,
            payer=self.wallet.address,
            token=self.terms.token,
            contract=self.terms.contract,
            network=self.requirements.network,
            transaction=settle.transaction,
            payment_id=self.idempotency_key,
        )
        return receipt, payment

    def abort(self) -> None:
        """Ends a call without a verified receipt. Once a voucher went out its maximum counts as spent and the
        lane is unsettled (the runtime may have charged up to the voucher); before that, nothing is spent."""
        if self.done:
            return
        self.done = True
        if self._reservation is None:
            return
        if not self.sent:
            self.budget.release(self._reservation)
        else:
            self.budget.commit(self._reservation, self._reservation.amount_wei)
            if self.lane is not None:
                self.lane.settled = False
                logger.warning(
                    "paid call %s ended without a verified receipt; channel %s is unsettled",
                    self.idempotency_key,
                    self.lane.channel_id_hex,
                )
        if self.lane is not None:
            self.wallet.release(self.lane)

    # ------------------------------------------------------------------------------------------ helpers

    def _sign(self, charged_wei: int) -> str:
        assert self.lane is not None and self.requirements is not None and self.terms is not None
        lane = self.lane
        self.charged_before_wei = charged_wei
        self.voucher_amount_wei = charged_wei + self.terms.amount_wei
        signature = self.wallet.sign_voucher(lane, self.voucher_amount_wei, self.call_hash)
        config = lane.config
        payload = _x402.PaymentPayload(
            x402_version=2,
            accepted=self.requirements,
            resource=self.required.resource if self.required is not None else None,
            payload={
                "channel": {
                    "payer": to_checksum_address(config.payer),
                    "payerAuthorizer": to_checksum_address(config.payer_authorizer),
                    "payee": to_checksum_address(config.payee),
                    "token": to_checksum_address(config.token),
                    "withdrawDelay": config.withdraw_delay_s,
                    "salt": "0x" + config.salt.hex(),
                },
                "voucher": {
                    "channelId": lane.channel_id_hex,
                    "cumulativeAmount": str(self.voucher_amount_wei),
                    "callHash": "0x" + self.call_hash.hex(),
                },
                "signature": "0x" + signature.hex(),
            },
            extensions=_x402.payment_identifier_extension(self.idempotency_key),
        )
        self.sent = True
        return _x402.encode_payment_signature(payload)
