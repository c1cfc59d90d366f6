"""The SDK's errors: one root, one class per HTTP status, and the payment and trace errors.

LoraLedgerError
├── APIError                         something went wrong talking to the runtime
│   ├── APIConnectionError           no response (connection refused, reset, DNS, ...)
│   │   └── APITimeoutError          the request timed out
│   ├── APIResponseValidationError   the response (body or payment header) is not what the protocol says
│   └── APIStatusError               the runtime answered 4xx or 5xx; `.status_code`, `.response`, `.body`
│       ├── BadRequestError          400
│       ├── AuthenticationError      401
│       ├── PaymentRequired          402 (no wallet to pay with, or the runtime rejected the payment)
│       ├── PermissionDeniedError    403
│       ├── NotFoundError            404
│       ├── ConflictError            409
│       ├── UnprocessableEntityError 422
│       ├── RateLimitError           429
│       └── InternalServerError      5xx
├── PaymentError                     the SDK refused to pay, or refused what it was paid back
│   ├── BudgetExceeded               a per-call, per-session or total cap would be exceeded (nothing was signed)
│   ├── PaymentNotAllowed            adapter, payee, contract, token or chain outside the allowlists,
│   │                                or a payee refused after an invalid receipt (nothing was signed)
│   ├── InvalidReceipt               PAYMENT-RESPONSE failed verification; the payee is refused from then on
│   └── WalletError                  opening, funding or reading a channel failed
└── TraceVerificationError           a saved reasoning log was edited, reordered, cut or does not match its anchor
"""

from __future__ import annotations

from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetExceeded",
    "ConflictError",
    "InternalServerError",
    "InvalidReceipt",
    "LoraLedgerError",
    "NotFoundError",
    "PaymentError",
    "PaymentNotAllowed",
    "PaymentRequired",
    "PermissionDeniedError",
    "RateLimitError",
    "TraceVerificationError",
    "UnprocessableEntityError",
    "WalletError",
]


class LoraLedgerError(Exception):
    """Root of every error the SDK raises."""


class APIError(LoraLedgerError):
    """An error talking to the runtime; `request` is the request that failed."""

    def __init__(self, message: str, request: httpx.Request | None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """No response came back (after every retry)."""

    def __init__(self, request: httpx.Request | None, message: str = "Connection error.") -> None:
        super().__init__(message, request)


class APITimeoutError(APIConnectionError):
    """The request timed out (after every retry)."""

    def __init__(self, request: httpx.Request | None) -> None:
        super().__init__(request, "Request timed out.")


class APIResponseValidationError(APIError):
    """The runtime answered, but the body or a payment header does not parse as the protocol says."""

    def __init__(self, message: str, response: httpx.Response) -> None:
        super().__init__(message, response.request)
        self.response = response
        self.status_code = response.status_code


class APIStatusError(APIError):
    """The runtime answered with a 4xx or 5xx status."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message, response.request)
        self.response = response
        self.status_code = response.status_code
        self.body = body


class BadRequestError(APIStatusError):
    """400."""


class AuthenticationError(APIStatusError):
    """401."""


class PaymentRequired(APIStatusError):
    """402: the client has no wallet to pay with, or the runtime rejected the payment it was sent.

    `payment_required` is the parsed PAYMENT-REQUIRED header (an x402 PaymentRequired) when there was one;
    `error` its error code (e.g. "stale_voucher", "insufficient_deposit").
    """

    def __init__(self, message: str, *, response: httpx.Response, body: Any, payment_required: Any = None) -> None:
        super().__init__(message, response=response, body=body)
        self.payment_required = payment_required
        self.error = getattr(payment_required, "error", None)


class PermissionDeniedError(APIStatusError):
    """403."""


class NotFoundError(APIStatusError):
    """404."""


class ConflictError(APIStatusError):
    """409."""


class UnprocessableEntityError(APIStatusError):
    """422."""


class RateLimitError(APIStatusError):
    """429."""


class InternalServerError(APIStatusError):
    """5xx."""


class PaymentError(LoraLedgerError):
    """The SDK refused to pay, or refused what came back for a payment."""


class BudgetExceeded(PaymentError):
    """Paying would exceed a cap of the Budget; raised before anything is signed.

    `cap` names the cap ("per_call", "per_session" or "total"), `amount_wei` is this call's maximum
    and `remaining_wei` what the cap still allows.
    """

    def __init__(self, message: str, *, cap: str, amount_wei: int, remaining_wei: int) -> None:
        super().__init__(message)
        self.cap = cap
        self.amount_wei = amount_wei
        self.remaining_wei = remaining_wei


class PaymentNotAllowed(PaymentError):
    """The payment asked for is outside the Budget's allowlists, on another chain or scheme, or goes to a payee
    refused after an invalid receipt; raised before anything is signed."""


class InvalidReceipt(PaymentError):
    """The runtime's PAYMENT-RESPONSE does not verify: bad operator signature, overcharge, inconsistent
    cumulative amount, or no receipt at all. The payee is refused by the Budget from then on.

    `payee` is the refused address.
    """

    def __init__(self, message: str, *, payee: str | None = None) -> None:
        super().__init__(message)
        self.payee = payee


class WalletError(PaymentError):
    """A channel could not be opened, funded, read or withdrawn (the chain's error is the __cause__)."""


class TraceVerificationError(LoraLedgerError):
    """A reasoning log does not verify. `index` is the first bad entry (None when the log as a whole fails,
    e.g. a root that was never anchored)."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: PaymentRequired,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The error class of one HTTP status."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_ERRORS.get(status_code, APIStatusError)
