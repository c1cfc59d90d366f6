"""Our one door to the `x402` package: the v2 header codecs and types, and the loraledger-channel scheme's payload.

Everything else in the SDK (and the runtime) goes through this module, so an x402 version bump touches
one file. x402's `extensions` package needs jsonschema at import, so the payment-identifier extension's
wire shape is written out here instead of imported.
"""

from __future__ import annotations

import secrets
from typing import Any

from x402.http.constants import PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, PAYMENT_SIGNATURE_HEADER
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    decode_payment_signature_header,
    encode_payment_required_header,
    encode_payment_response_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, ResourceInfo, SettleResponse

__all__ = [
    "IDEMPOTENCY_HEADER",
    "PAYMENT_IDENTIFIER",
    "PAYMENT_REQUIRED_HEADER",
    "PAYMENT_RESPONSE_HEADER",
    "PAYMENT_SIGNATURE_HEADER",
    "SCHEME",
    "STREAM_PAYMENT_EVENT",
    "PaymentPayload",
    "PaymentRequired",
    "PaymentRequirements",
    "ResourceInfo",
    "SettleResponse",
    "decode_payment_required",
    "decode_payment_response",
    "decode_payment_signature",
    "encode_payment_required",
    "encode_payment_response",
    "encode_payment_signature",
    "network_of",
    "new_idempotency_key",
    "payment_identifier",
    "payment_identifier_extension",
]

SCHEME = "loraledger-channel"
"""Our x402 scheme: a voucher on a PaymentChannels channel, modelled on x402's batch settlement."""

PAYMENT_IDENTIFIER = "payment-identifier"
"""The x402 extension carrying the client's idempotency key (`extensions[...]["info"]["id"]`)."""

IDEMPOTENCY_HEADER = "Idempotency-Key"

STREAM_PAYMENT_EVENT = "payment-response"
"""The SSE event that carries PAYMENT-RESPONSE (base64 SettleResponse) at the end of a paid stream, since the
charge is only known once the last token is out; it comes right before `data: [DONE]`."""


def network_of(chain_id: int) -> str:
    """The CAIP-2 name of an EVM chain: `eip155:<chainId>`."""
    return f"eip155:{chain_id}"


def new_idempotency_key() -> str:
    """A fresh key for one logical call: 35 characters of [A-Za-z0-9_], valid as an x402 payment identifier."""
    return "ll_" + secrets.token_hex(16)


def payment_identifier_extension(key: str, *, required: bool = False) -> dict[str, Any]:
    """The `extensions` entry of a PaymentPayload (with `key`) or of a PaymentRequired (a declaration)."""
    info: dict[str, Any] = {"required": required}
    if key:
        info["id"] = key
    return {PAYMENT_IDENTIFIER: {"info": info}}


def payment_identifier(extensions: dict[str, Any] | None) -> str | None:
    """The idempotency key in a PaymentPayload's extensions, if any."""
    entry = (extensions or {}).get(PAYMENT_IDENTIFIER)
    info = entry.get("info") if isinstance(entry, dict) else None
    key = info.get("id") if isinstance(info, dict) else None
    return key if isinstance(key, str) else None


def decode_payment_required(value: str) -> PaymentRequired:
    """Parses a PAYMENT-REQUIRED header (x402 v2 only)."""
    decoded = decode_payment_required_header(value)
    if not isinstance(decoded, PaymentRequired):
        raise ValueError("PAYMENT-REQUIRED is x402 v1; loraledger speaks v2")
    return decoded


def encode_payment_required(value: PaymentRequired) -> str:
    return encode_payment_required_header(value)


def decode_payment_signature(value: str) -> PaymentPayload:
    """Parses a PAYMENT-SIGNATURE header (x402 v2 only)."""
    decoded = decode_payment_signature_header(value)
    if not isinstance(decoded, PaymentPayload):
        raise ValueError("PAYMENT-SIGNATURE is x402 v1; loraledger speaks v2")
    return decoded


def encode_payment_signature(value: PaymentPayload) -> str:
    return encode_payment_signature_header(value)


def decode_payment_response(value: str) -> SettleResponse:
    """Parses a PAYMENT-RESPONSE header (or the payload of the stream's payment-response event)."""
    return decode_payment_response_header(value)


def encode_payment_response(value: SettleResponse) -> str:
    return encode_payment_response_header(value)
