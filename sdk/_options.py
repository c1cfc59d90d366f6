"""The description of one API call that the resources hand to the client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel

Timeout = float | httpx.Timeout | None


@dataclass(frozen=True)
class RequestOptions:
    """One logical API call: every retry and payment hop of it is built from this."""

    method: str
    path: str
    cast_to: type[BaseModel]
    body: dict[str, Any] | None = None
    model: str | None = None
    """The adapter the call pays for (payable calls only)."""
    stream: bool = False
    quote_only: bool = False
    timeout: Timeout = None
    max_retries: int | None = None
    idempotency_key: str | None = None
    extra_headers: dict[str, str] | None = None
