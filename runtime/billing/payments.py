"""The runtime's side of x402 `loraledger-channel`: payment requirements, voucher checks and the settle response.

DESIGN.md's protocol reference is the spec. `PaymentGate.verify` answers one question before any work starts:
may this PAYMENT-SIGNATURE pay for this call, and up to how much? Every refusal is a PaymentRefused with an error
code the client can act on; nothing is reserved or charged then.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from eth_utils import to_checksum_address

from loraledger.sdk import _x402 as x402
from loraledger.sdk.chain.contracts import ChannelState, PaymentChannels, erc1271_accepts
from loraledger.sdk.chain.errors import ContractRevert
from loraledger.sdk.vouchers import ChannelConfig, Domain, Voucher, channel_id, recover_voucher_signer, voucher_digest

from .ledger import Ledger
from .pricing import Prices

__all__ = ["MAX_SIGNATURE_BYTES", "ChannelReader", "PaymentGate", "PaymentRefused", "PaymentTerms", "VerifiedPayment"]

MAX_SIGNATURE_BYTES = 2048  # a voucher signature's size limit (ERC-1271 wallets may sign with more than 65 bytes)

logger = logging.getLogger(__name__)


class PaymentRefused(Exception):
    """A payment cannot pay for the call. `code` goes into the 402's `error` (or the 4xx body)."""

    def __init__(self, code: str, message: str, *, status: int = 402, charged_cumulative: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status
        self.charged_cumulative = charged_cumulative


@dataclass(frozen=True)
class PaymentTerms:
    """What this runtime accepts: one chain, one PaymentChannels contract, one token, one payee."""

    chain_id: int
    contract: str
    token: str
    payee: str
    min_deposit_wei: int = 0
    min_withdraw_delay_s: int = 60
    max_timeout_s: int = 300
    max_unsettled_wei: int | None = None
    """Most a channel may owe (charged but not claimed on chain) before new calls wait for settlement."""

    @property
    def network(self) -> str:
        return x402.network_of(self.chain_id)

    @property
    def domain(self) -> Domain:
        return Domain(self.chain_id, self.contract)


@dataclass(frozen=True)
class VerifiedPayment:
    channel_id: str
    config: ChannelConfig
    voucher: Voucher
    signature: bytes
    idempotency_key: str | None
    budget_wei: int
    """The most this call may be charged: the voucher's raise over the charged total, capped at the call's max
    (0 until PaymentGate.fund has checked the funds)."""


class ChannelReader:
    """On-chain channel state, cached for `ttl_s`; `fresh=True` skips the cache (e.g. after a top-up)."""

    def __init__(self, channels: PaymentChannels, ttl_s: float = 2.0):
        self._channels = channels
        self._ttl_s = ttl_s
        self._cache: dict[bytes, tuple[float, ChannelState | None]] = {}
        self._no_code: dict[str, float] = {}  # authorizers found without code (EOAs), and when
        self._lock = threading.Lock()

    def get(self, cid: bytes, *, fresh: bool = False) -> ChannelState | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(cid)
        if hit is not None and not fresh and now - hit[0] < self._ttl_s:
            return hit[1]
        try:
            state: ChannelState | None = self._channels.get_channel(cid)
        except ContractRevert as exc:
            if exc.name != "UnknownChannel":
                raise
            state = None
        with self._lock:
            self._cache[cid] = (now, state)
        return state

    def contract_accepts(self, authorizer: str, digest: bytes, signature: bytes) -> bool:
        """Whether `authorizer` is a contract that accepts `signature` over `digest` (ERC-1271), as the channel
        contract's SignatureChecker will when it is claimed. An address found without code is remembered for
        `ttl_s` (a flood of bad signatures for an EOA authorizer costs one code lookup per address, not one each)."""
        now = time.monotonic()
        with self._lock:
            seen = self._no_code.get(authorizer)
        if seen is not None and now - seen < max(self._ttl_s, 60.0):
            return False
        accepted = erc1271_accepts(self._channels.chain, authorizer, digest, signature)
        if accepted is None:
            with self._lock:
                self._no_code[authorizer] = now
        return bool(accepted)


class PaymentGate:
    """Builds PAYMENT-REQUIRED and checks PAYMENT-SIGNATURE against the chain and the ledger."""

    def __init__(self, terms: PaymentTerms, reader: ChannelReader, ledger: Ledger):
        self.terms = terms
        self._reader = reader
        self._ledger = ledger

    # ------------------------------------------------------------------------------------------- 402

    def requirements(self, prices: Prices, max_amount_wei: int, charged_cumulative: int | None = None) -> Any:
        extra: dict[str, Any] = {
            "contract": to_checksum_address(self.terms.contract),
            "name": "loraledger",
            "version": "1",
            "pricePerInputToken": str(prices.input_wei),
            "pricePerOutputToken": str(prices.output_wei),
            "minDeposit": str(self.terms.min_deposit_wei),
            "withdrawDelay": self.terms.min_withdraw_delay_s,
        }
        if charged_cumulative is not None:
            extra["chargedCumulativeAmount"] = str(charged_cumulative)
        return x402.PaymentRequirements(
            scheme=x402.SCHEME,
            network=self.terms.network,
            asset=to_checksum_address(self.terms.token),
            amount=str(max_amount_wei),
            pay_to=to_checksum_address(self.terms.payee),
            max_timeout_seconds=self.terms.max_timeout_s,
            extra=extra,
        )

    def required(
        self,
        url: str,
        prices: Prices,
        max_amount_wei: int,
        *,
        error: str | None = None,
        charged_cumulative: int | None = None,
    ) -> Any:
        """The x402 PaymentRequired of a call to `url` that may cost up to `max_amount_wei`."""
        return x402.PaymentRequired(
            x402_version=2,
            error=error,
            resource=x402.ResourceInfo(url=url, mime_type="application/json"),
            accepts=[self.requirements(prices, max_amount_wei, charged_cumulative)],
            extensions=x402.payment_identifier_extension("", required=False),
        )

    def payment_required(
        self,
        url: str,
        prices: Prices,
        max_amount_wei: int,
        *,
        error: str | None = None,
        charged_cumulative: int | None = None,
    ) -> str:
        """The PAYMENT-REQUIRED header value of `required(...)`."""
        return x402.encode_payment_required(
            self.required(url, prices, max_amount_wei, error=error, charged_cumulative=charged_cumulative)
        )

    # ------------------------------------------------------------------------------------------- verify

    def verify(self, header: str, max_amount_wei: int) -> VerifiedPayment:
        """Checks a PAYMENT-SIGNATURE for a call that may cost up to `max_amount_wei`: authenticate, then fund."""
        return self.fund(self.authenticate(header), max_amount_wei)

    def authenticate(self, header: str) -> VerifiedPayment:
        """Decodes a PAYMENT-SIGNATURE and checks that it is a voucher of a channel to this runtime, signed by
        the channel's payer authorizer (budget 0: nothing about funds is checked yet); raises PaymentRefused."""
        try:
            payload = x402.decode_payment_signature(header)
        except Exception as exc:  # the header is attacker input: any decoding failure is a 400, never a 500
            raise PaymentRefused("invalid_payment", f"PAYMENT-SIGNATURE is not an x402 v2 payload: {exc}", status=400)
        accepted = payload.accepted
        if payload.x402_version != 2 or accepted.scheme != x402.SCHEME:
            raise PaymentRefused("unsupported_scheme", f"this runtime accepts x402 v2 scheme {x402.SCHEME!r} only")
        if accepted.network != self.terms.network:
            raise PaymentRefused("wrong_network", f"payment is for {accepted.network}, this runtime settles on {self.terms.network}")
        config, voucher, signature = self._parse(payload.payload)
        cid_hex = "0x" + voucher.channel_id.hex()
        if not _same(config.payee, self.terms.payee):
            raise PaymentRefused("wrong_payee", f"the channel pays {config.payee}, this runtime is {self.terms.payee}")
        if not _same(config.token, self.terms.token):
            raise PaymentRefused("wrong_asset", f"the channel is in {config.token}, this runtime takes {self.terms.token}")
        if _channel_id(self.terms.domain, config) != voucher.channel_id:
            raise PaymentRefused(
                "invalid_channel", "the voucher's channelId is not this channel config's id on this chain and contract"
            )
        self._check_signature(config, voucher, signature)
        return VerifiedPayment(
            channel_id=cid_hex,
            config=config,
            voucher=voucher,
            signature=signature,
            idempotency_key=x402.payment_identifier(payload.extensions),
            budget_wei=0,
        )

    def _check_signature(self, config: ChannelConfig, voucher: Voucher, signature: bytes) -> None:
        """The payer authorizer's ECDSA signature, or, for a contract authorizer (a smart-contract wallet), its
        ERC-1271 approval: what PaymentChannels' SignatureChecker accepts at claim time. Raises PaymentRefused."""
        problem = f"a voucher signature is 65 bytes, got {len(signature)}"
        if len(signature) == 65:
            try:
                signer = recover_voucher_signer(self.terms.domain, voucher, signature)
            except Exception as exc:  # malformed or malleable (high-s) signatures
                problem = f"the voucher signature does not verify: {exc}"
            else:
                if _same(signer, config.payer_authorizer):
                    return
                problem = "the voucher is not signed by the channel's payerAuthorizer"
        # The contract call costs the chain a run of the wallet's code: only for an open channel with the minimum
        # deposit (its payer has locked funds), so signatures sent for nothing cost no more than a cached read.
        state = self._reader.get(voucher.channel_id)
        if (
            state is not None
            and state.deposited >= self.terms.min_deposit_wei
            and self._reader.contract_accepts(
                config.payer_authorizer, voucher_digest(self.terms.domain, voucher), signature
            )
        ):
            return
        raise PaymentRefused("invalid_signature", problem)

    def fund(self, payment: VerifiedPayment, max_amount_wei: int) -> VerifiedPayment:
        """Checks that an authentic payment can pay now (against the ledger and the channel on chain) and returns
        it with its budget: the voucher's raise over the charged total, capped at the call's maximum."""
        voucher, cid_hex = payment.voucher, payment.channel_id
        charged = self._ledger.channel(cid_hex).charged
        if voucher.cumulative_amount <= charged:
            raise PaymentRefused(
                "stale_voucher",
                f"the voucher's cumulative amount {voucher.cumulative_amount} is not above the charged {charged}",
                charged_cumulative=charged,
            )
        state = self._reader.get(voucher.channel_id)
        if state is None or state.deposited < voucher.cumulative_amount:
            state = self._reader.get(voucher.channel_id, fresh=True)  # opened or topped up since the last read
        if state is None:
            raise PaymentRefused("unknown_channel", f"channel {cid_hex} is not open on {self.terms.network}")
        if state.closed:
            raise PaymentRefused("channel_closed", f"channel {cid_hex} is closed")
        if state.withdraw_requested_at != 0:
            raise PaymentRefused("channel_withdrawing", f"channel {cid_hex} is being withdrawn; open a new one")
        if state.config.withdraw_delay_s < self.terms.min_withdraw_delay_s:
            raise PaymentRefused(
                "withdraw_delay_too_short",
                f"channels need a withdraw delay of at least {self.terms.min_withdraw_delay_s}s",
            )
        if state.deposited < self.terms.min_deposit_wei:
            raise PaymentRefused("insufficient_deposit", f"channels need a deposit of at least {self.terms.min_deposit_wei}")
        if voucher.cumulative_amount > state.deposited:
            raise PaymentRefused(
                "insufficient_deposit",
                f"the voucher's cumulative amount {voucher.cumulative_amount} is above the deposit {state.deposited}",
                charged_cumulative=charged,
            )
        budget = min(voucher.cumulative_amount - charged, max_amount_wei)
        limit = self.terms.max_unsettled_wei
        if limit is not None and charged - state.claimed + budget > limit:
            raise PaymentRefused(
                "settlement_pending",
                f"channel {cid_hex} owes {charged - state.claimed} not yet settled on chain, the most this runtime "
                f"risks per channel; retry once settlement catches up, or pay over another channel",
                charged_cumulative=charged,
            )
        return replace(payment, budget_wei=budget)

    @staticmethod
    def _parse(body: dict[str, Any]) -> tuple[ChannelConfig, Voucher, bytes]:
        try:
            ch, v = body["channel"], body["voucher"]
            config = ChannelConfig(
                payer=_checksum(ch["payer"]),
                payer_authorizer=_checksum(ch["payerAuthorizer"]),
                payee=_checksum(ch["payee"]),
                token=_checksum(ch["token"]),
                withdraw_delay_s=_uint(ch["withdrawDelay"], 40),
                salt=_bytes32(ch["salt"]),
            )
            voucher = Voucher(_bytes32(v["channelId"]), _uint(v["cumulativeAmount"], 128), _bytes32(v["callHash"]))
            signature = bytes.fromhex(str(body["signature"]).removeprefix("0x"))
        except (KeyError, TypeError, ValueError) as exc:
            raise PaymentRefused("invalid_payment", f"malformed loraledger-channel payload: {exc!r}", status=400) from None
        if not 1 <= len(signature) <= MAX_SIGNATURE_BYTES:  # 65 for an EOA; a contract wallet's may be longer
            raise PaymentRefused(
                "invalid_signature", f"a voucher signature is 1 to {MAX_SIGNATURE_BYTES} bytes, got {len(signature)}"
            )
        return config, voucher, signature

    # ------------------------------------------------------------------------------------------- 200

    def settle_response(
        self, payer: str, amount_wei: int, charged_cumulative: int, receipt: dict[str, Any], signature: str,
        transaction: str = "",
    ) -> str:  # fmt: skip
        """The PAYMENT-RESPONSE header value of a charged call."""
        response = x402.SettleResponse(
            success=True,
            transaction=transaction,
            network=self.terms.network,
            payer=to_checksum_address(payer),
            amount=str(amount_wei),
            extra={"chargedCumulativeAmount": str(charged_cumulative), "receipt": receipt, "receiptSignature": signature},
        )
        return x402.encode_payment_response(response)


@lru_cache(maxsize=65536)
def _checksum(address: Any) -> str:
    """Addresses repeat on every call of a channel; checksumming costs a keccak each time."""
    if not isinstance(address, str):
        raise TypeError(f"an address is a 0x-hex string, got {type(address).__name__}")
    return to_checksum_address(address)


@lru_cache(maxsize=65536)
def _channel_id(domain: Domain, config: ChannelConfig) -> bytes:
    """Channel ids repeat on every call of a channel; the generic EIP-712 encoder is slow."""
    return channel_id(domain, config)


def _same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def _uint(value: Any, bits: int) -> int:
    n = int(value, 0) if isinstance(value, str) else value
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**bits:
        raise ValueError(f"{value!r} is not a uint{bits}")
    return n


def _bytes32(value: Any) -> bytes:
    raw = bytes.fromhex(str(value).removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"{value!r} is not 32 bytes")
    return raw

