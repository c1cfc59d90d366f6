"""The agent SDK: HTTP client, wallet, vouchers, receipts, reasoning trace and contract bindings.

    from loraledger.sdk import Budget, Client, Trace, Wallet

    client = Client(base_url="http://127.0.0.1:8000", wallet=wallet, budget=Budget(max_per_call_wei=10**17),
                    trace=Trace())
    reply = client.chat.completions.create(model="sql-expert", messages=[{"role": "user", "content": "..."}])
    reply.receipt, reply.payment   # the operator-signed receipt and what was paid, both verified
"""

from . import types
from ._client import DEFAULT_BASE_URL, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, AsyncClient, Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceeded,
    ConflictError,
    InternalServerError,
    InvalidReceipt,
    LoraLedgerError,
    NotFoundError,
    PaymentError,
    PaymentNotAllowed,
    PaymentRequired,
    PermissionDeniedError,
    RateLimitError,
    TraceVerificationError,
    UnprocessableEntityError,
    WalletError,
)
from ._streaming import AsyncStream, Stream
from .budget import Budget
from .trace import AnchoredTrace, Trace, TraceEntry, call_hash
from .types import ChatCompletion, ChatCompletionChunk, Completion, Model, Payment, Quote, Receipt
from .wallet import Lane, Wallet

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AnchoredTrace",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "Budget",
    "BudgetExceeded",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Client",
    "Completion",
    "ConflictError",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "InternalServerError",
    "InvalidReceipt",
    "Lane",
    "LoraLedgerError",
    "Model",
    "NotFoundError",
    "Payment",
    "PaymentError",
    "PaymentNotAllowed",
    "PaymentRequired",
    "PermissionDeniedError",
    "Quote",
    "RateLimitError",
    "Receipt",
    "Stream",
    "Trace",
    "TraceEntry",
    "TraceVerificationError",
    "UnprocessableEntityError",
    "Wallet",
    "WalletError",
    "call_hash",
    "types",
]
