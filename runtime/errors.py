"""API errors and the one table that maps them to HTTP statuses and OpenAI-shaped error bodies."""

from __future__ import annotations

from typing import Any

__all__ = ["APIError", "error_body"]


class APIError(Exception):
    """An error answered to the client: `code` is stable and machine-readable, the message says what to do.

    APIError(status, code, message) covers every refusal of the API; the status comes from the table below
    when not given.
    """

    STATUS_OF_CODE: dict[str, int] = {
        "invalid_request": 400,
        "invalid_json": 400,
        "context_length_exceeded": 400,
        "invalid_payment": 400,
        "unauthorized": 401,
        "payment_required": 402,
        "forbidden": 403,
        "model_not_found": 404,
        "not_found": 404,
        "idempotency_conflict": 409,
        "call_in_progress": 409,
        "channel_busy": 409,
        "adapter_exists": 409,
        "payload_too_large": 413,
        "invalid_adapter": 422,
        "overloaded": 503,
        "internal_error": 500,
    }

    def __init__(self, code: str, message: str, *, status: int | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None):  # fmt: skip
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else self.STATUS_OF_CODE.get(code, 400)
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}


def error_body(exc: APIError) -> dict[str, Any]:
    """The OpenAI error shape: {"error": {"message", "type", "param", "code"}} (plus x402 fields on a 402)."""
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    if exc.status == 402:
        kind = "payment_required"
    return {"error": {"message": exc.message, "type": kind, "param": exc.param, "code": exc.code}, **exc.extra}
