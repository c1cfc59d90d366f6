"""Client and AsyncClient: the same request building, retry policy, payment flow and parsing; only the I/O differs."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from . import _x402
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    PaymentRequired,
    status_error_class,
)
from ._payments import MalformedPayment, PaidCall, quote
from ._options import RequestOptions
from ._resources import (
    AsyncChainDeployments,
    AsyncChannels,
    AsyncChat,
    AsyncCompletions,
    AsyncModels,
    AsyncReceipts,
    ChainDeployments,
    Channels,
    Chat,
    Completions,
    Models,
    Receipts,
)
from ._streaming import AsyncStream, Stream, _StreamState
from .budget import Budget
from .trace import ZERO_HASH, Trace
from .types import Quote
from .wallet import Wallet

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "AsyncClient", "Client"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_BACKOFF_S = 0.5
MAX_RETRY_DELAY_S = 8.0


class _BaseClient:
    """What Client and AsyncClient share: configuration, request building, retry policy, errors, parsing."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        wallet: Wallet | None,
        budget: Budget | None,
        trace: Trace | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
        retry_backoff_s: float,
        default_headers: dict[str, str] | None,
    ) -> None:
        # The constructor is the one place the SDK reads the environment.
        self.base_url = (base_url or os.environ.get("LORALEDGER_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._api_key = api_key if api_key is not None else os.environ.get("LORALEDGER_API_KEY")
        self.wallet = wallet if wallet is not None else _wallet_from_env(self.base_url)
        self.budget = budget if budget is not None else Budget()
        self.trace = trace
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.default_headers = dict(default_headers or {})

    def __repr__(self) -> str:  # the API key never reaches logs
        return f"{type(self).__name__}(base_url={self.base_url!r}, wallet={self.wallet!r}, budget={self.budget!r})"

    # ------------------------------------------------------------------------------------------ building

    def _build_request(
        self, http: httpx.Client | httpx.AsyncClient, options: RequestOptions, key: str, payment: str | None
    ) -> httpx.Request:
        headers = {"Accept": "text/event-stream" if options.stream else "application/json", **self.default_headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if options.method != "GET":
            headers[_x402.IDEMPOTENCY_HEADER] = key
        if payment is not None:
            headers[_x402.PAYMENT_SIGNATURE_HEADER] = payment
        headers.update(options.extra_headers or {})
        timeout = options.timeout if options.timeout is not None else self.timeout
        return http.build_request(
            options.method, self.base_url + options.path, json=options.body, headers=headers, timeout=timeout
        )

    def _retries(self, options: RequestOptions) -> int:
        return self.max_retries if options.max_retries is None else options.max_retries

    @staticmethod
    def _should_retry(response: httpx.Response) -> bool:
        return response.status_code in (408, 429) or response.status_code >= 500

    def _retry_delay_s(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            after = _retry_after_s(response.headers.get("retry-after"))
            if after is not None and 0 <= after <= 60:
                return after
        return min(self.retry_backoff_s * 2**attempt, MAX_RETRY_DELAY_S) * random.uniform(0.75, 1.0)

    # ------------------------------------------------------------------------------------------ payment

    def _paid_call(self, options: RequestOptions, key: str, trace_head: bytes) -> PaidCall:
        assert self.wallet is not None and options.model is not None
        return PaidCall(
            wallet=self.wallet,
            budget=self.budget,
            trace_head=trace_head,
            model=options.model,
            body=options.body or {},
            idempotency_key=key,
        )

    def _quote(self, options: RequestOptions, response: httpx.Response) -> Quote:
        assert options.model is not None
        if response.status_code != 402:
            return Quote(model=options.model, max_amount_wei=0, allowed=True)
        try:
            return quote(self.budget, self.wallet, options.model, response)
        except MalformedPayment as exc:
            raise APIResponseValidationError(str(exc), response) from exc

    # ------------------------------------------------------------------------------------------ parsing

    def _status_error(self, response: httpx.Response) -> APIStatusError:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text or None
        message = f"HTTP {response.status_code}"
        if isinstance(body, dict):
            error = body.get("error")
            detail = error.get("message") if isinstance(error, dict) else error or body.get("detail")
            if detail:
                message = f"{message}: {detail}"
        elif body:
            message = f"{message}: {str(body)[:500]}"
        cls = status_error_class(response.status_code)
        if cls is PaymentRequired:
            required = None
            if response.headers.get(_x402.PAYMENT_REQUIRED_HEADER):
                try:
                    required = _x402.decode_payment_required(response.headers[_x402.PAYMENT_REQUIRED_HEADER])
                except (ValueError, ValidationError):
                    required = None
            if required is not None and required.error:
                message = f"{message} ({required.error})"
            return PaymentRequired(message, response=response, body=body, payment_required=required)
        return cls(message, response=response, body=body)

    def _parse(self, options: RequestOptions, response: httpx.Response, paid: PaidCall | None, head: bytes) -> BaseModel:
        try:
            data = response.json()
        except ValueError as exc:
            raise APIResponseValidationError(f"response is not JSON: {exc}", response) from exc
        receipt = payment = None
        if paid is not None:
            usage = data.get("usage") if isinstance(data, dict) else None
            receipt, payment = paid.settle(response.headers.get(_x402.PAYMENT_RESPONSE_HEADER), usage, _output_of(data))
        try:
            parsed = options.cast_to.model_validate(data)
        except ValidationError as exc:
            raise APIResponseValidationError(f"unexpected response shape: {exc}", response) from exc
        if options.model is not None:  # only what the SDK verified: never a receipt the body merely claims
            parsed.receipt = receipt
            parsed.payment = payment
        if options.model is not None and self.trace is not None:
            outputs = [
                c.get("message", {}).get("content") if "message" in c else c.get("text")
                for c in data.get("choices") or []
            ]
            self._record(options, head, paid, data.get("id"), outputs, data.get("usage"), receipt)
        return parsed

    def _stream_state(self, options: RequestOptions, response: httpx.Response, paid: PaidCall | None, head: bytes) -> _StreamState:
        def on_finish(state: _StreamState) -> None:
            if self.trace is not None:
                self._record(options, head, paid, state.id, state.output_texts(), state.usage, state.receipt)

        return _StreamState(response, options.cast_to, paid, on_finish)

    def _record(
        self,
        options: RequestOptions,
        head: bytes,
        paid: PaidCall | None,
        response_id: str | None,
        outputs: list[Any],
        usage: dict[str, Any] | None,
        receipt: Any,
    ) -> None:
        """Appends the call (and its receipt, when paid) to the trace."""
        assert self.trace is not None
        call = {
            "model": options.model,
            "request": options.body,
            "traceHead": "0x" + head.hex(),
            "response": {"id": response_id, "output": outputs, "usage": usage},
        }
        if paid is not None:
            call["callHash"] = "0x" + paid.call_hash.hex()
            call["paymentId"] = paid.idempotency_key
        self.trace.append("adapter_call", call)
        if paid is not None and receipt is not None:
            self.trace.append(
                "receipt",
                {
                    "receipt": receipt.to_wire(),
                    "signature": receipt.signature,
                    "payee": paid.terms.payee,
                    "contract": paid.terms.contract,
                    "network": paid.requirements.network,
                    "maxAmount": str(paid.terms.amount_wei),
                    "paymentId": paid.idempotency_key,
                },
            )


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (a number, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    except (TypeError, ValueError):
        return None


def _wallet_from_env(base_url: str) -> Wallet | None:
    """A wallet from LORALEDGER_PRIVATE_KEY (or LORALEDGER_KEYSTORE + LORALEDGER_KEYSTORE_PASSWORD), on the chain
    at LORALEDGER_RPC_URL (default: the runtime's own `/rpc`); None when no key is configured."""
    key = os.environ.get("LORALEDGER_PRIVATE_KEY")
    keystore = os.environ.get("LORALEDGER_KEYSTORE")
    if not key and not keystore:
        return None
    from .chain.provider import rpc_chain

    chain = rpc_chain(os.environ.get("LORALEDGER_RPC_URL") or f"{base_url}/rpc")
    session = os.environ.get("LORALEDGER_SESSION_KEY") or None
    if key:
        return Wallet(key, chain=chain, session_key=session)
    return Wallet.from_keystore(keystore, os.environ.get("LORALEDGER_KEYSTORE_PASSWORD", ""), chain=chain, session_key=session)


class Client(_BaseClient):
    """The synchronous client.

    `Client(base_url=..., api_key=..., wallet=..., budget=..., trace=...)`; unset arguments fall back to the
    environment: LORALEDGER_BASE_URL, LORALEDGER_API_KEY, and for the wallet LORALEDGER_PRIVATE_KEY (or
    LORALEDGER_KEYSTORE and LORALEDGER_KEYSTORE_PASSWORD), LORALEDGER_SESSION_KEY and LORALEDGER_RPC_URL.
    Without a wallet a paid adapter raises PaymentRequired; without a budget nothing caps spending but the
    runtime's quoted maximum per call.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        wallet: Wallet | None = None,
        budget: Budget | None = None,
        trace: Trace | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            wallet=wallet,
            budget=budget,
            trace=trace,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff_s,
            default_headers=default_headers,
        )
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        self.chat = Chat(self)
        self.completions = Completions(self)
        self.models = Models(self)
        self.receipts = Receipts(self)
        self.channels = Channels(self)
        self.deployments = ChainDeployments(self)

    def with_options(self, **overrides: Any) -> Client:
        """A client like this one with some constructor arguments changed; it shares the HTTP connection pool."""
        kwargs = dict(
            base_url=self.base_url,
            api_key=self._api_key,
            wallet=self.wallet,
            budget=self.budget,
            trace=self.trace,
            timeout=self.timeout,
            max_retries=self.max_retries,
            retry_backoff_s=self.retry_backoff_s,
            default_headers=self.default_headers,
            http_client=self._http,
        )
        kwargs.update(overrides)
        return Client(**kwargs)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, options: RequestOptions) -> Any:
        key = options.idempotency_key or _x402.new_idempotency_key()
        head = self.trace.head if self.trace is not None else ZERO_HASH
        paid: PaidCall | None = None
        payment: str | None = None
        try:
            while True:
                response = self._send(options, key, payment)
                if response.status_code == 402 and options.model is not None:
                    if options.quote_only:
                        return self._quote(options, response)
                    if self.wallet is not None and paid is None:
                        paid = self._paid_call(options, key, head)
                        payment = self._begin(paid, response)
                        continue
                    if paid is not None:
                        payment = paid.restale(response)
                        if payment is not None:
                            response.close()
                            continue
                if response.is_error:
                    response.read()
                    raise self._status_error(response)
                if options.quote_only:
                    return self._quote(options, response)
                if options.stream:
                    return Stream(self._stream_state(options, response, paid, head))
                return self._parse(options, response, paid, head)
        except BaseException:
            if paid is not None:
                paid.abort()
            raise

    def _begin(self, paid: PaidCall, response: httpx.Response) -> str:
        response.close()
        try:
            payment = paid.begin(response)
        except MalformedPayment as exc:
            raise APIResponseValidationError(str(exc), response) from exc
        if payment is None:  # an unsettled lane: ask what the runtime charged on it
            assert paid.lane is not None
            payment = paid.resume(self.channels.get(paid.lane.channel_id).charged_cumulative_amount_wei)
        return payment

    def _send(self, options: RequestOptions, key: str, payment: str | None) -> httpx.Response:
        retries = self._retries(options)
        attempt = 0
        while True:
            request = self._build_request(self._http, options, key, payment)
            try:
                response = self._http.send(request, stream=options.stream)
            except httpx.TransportError as exc:
                if attempt < retries:
                    delay = self._retry_delay_s(attempt, None)
                    logger.info("%s %s failed (%s); retrying in %.2fs", request.method, request.url, type(exc).__name__, delay)
                    time.sleep(delay)
                    attempt += 1
                    continue
                if isinstance(exc, httpx.TimeoutException):
                    raise APITimeoutError(request) from exc
                raise APIConnectionError(request) from exc
            if self._should_retry(response) and attempt < retries:
                delay = self._retry_delay_s(attempt, response)
                logger.info("%s %s answered %d; retrying in %.2fs", request.method, request.url, response.status_code, delay)
                response.close()
                time.sleep(delay)
                attempt += 1
                continue
            return response


class AsyncClient(_BaseClient):
    """The asynchronous client: the same arguments and environment fallbacks as Client.

    Chain operations (opening and topping up channels) run in a worker thread, so they never block the loop.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        wallet: Wallet | None = None,
        budget: Budget | None = None,
        trace: Trace | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_backoff_s: float = DEFAULT_RETRY_BACKOFF_S,
        default_headers: dict[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            wallet=wallet,
            budget=budget,
            trace=trace,
            timeout=timeout,
            max_retries=max_retries,
            retry_backoff_s=retry_backoff_s,
            default_headers=default_headers,
        )
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None
        self.chat = AsyncChat(self)
        self.completions = AsyncCompletions(self)
        self.models = AsyncModels(self)
        self.receipts = AsyncReceipts(self)
        self.channels = AsyncChannels(self)
        self.deployments = AsyncChainDeployments(self)

    def with_options(self, **overrides: Any) -> AsyncClient:
        """An async client like this one with some constructor arguments changed; it shares the connection pool."""
        kwargs = dict(
            base_url=self.base_url,
            api_key=self._api_key,
            wallet=self.wallet,
            budget=self.budget,
            trace=self.trace,
            timeout=self.timeout,
            max_retries=self.max_retries,
            retry_backoff_s=self.retry_backoff_s,
            default_headers=self.default_headers,
            http_client=self._http,
        )
        kwargs.update(overrides)
        return AsyncClient(**kwargs)

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _request(self, options: RequestOptions) -> Any:
        key = options.idempotency_key or _x402.new_idempotency_key()
        head = self.trace.head if self.trace is not None else ZERO_HASH
        paid: PaidCall | None = None
        payment: str | None = None
        try:
            while True:
                response = await self._send(options, key, payment)
                if response.status_code == 402 and options.model is not None:
                    if options.quote_only:
                        return self._quote(options, response)
                    if self.wallet is not None and paid is None:
                        paid = self._paid_call(options, key, head)
                        payment = await self._begin(paid, response)
                        continue
                    if paid is not None:
                        payment = await asyncio.to_thread(paid.restale, response)
                        if payment is not None:
                            await response.aclose()
                            continue
                if response.is_error:
                    await response.aread()
                    raise self._status_error(response)
                if options.quote_only:
                    return self._quote(options, response)
                if options.stream:
                    return AsyncStream(self._stream_state(options, response, paid, head))
                return self._parse(options, response, paid, head)
        except BaseException:
            if paid is not None:
                paid.abort()
            raise

    async def _begin(self, paid: PaidCall, response: httpx.Response) -> str:
        await response.aclose()
        try:
            payment = await asyncio.to_thread(paid.begin, response)
        except MalformedPayment as exc:
            raise APIResponseValidationError(str(exc), response) from exc
        if payment is None:  # an unsettled lane: ask what the runtime charged on it
            assert paid.lane is not None
            info = await self.channels.get(paid.lane.channel_id)
            payment = await asyncio.to_thread(paid.resume, info.charged_cumulative_amount_wei)
        return payment

    async def _send(self, options: RequestOptions, key: str, payment: str | None) -> httpx.Response:
        retries = self._retries(options)
        attempt = 0
        while True:
            request = self._build_request(self._http, options, key, payment)
            try:
                response = await self._http.send(request, stream=options.stream)
            except httpx.TransportError as exc:
                if attempt < retries:
                    delay = self._retry_delay_s(attempt, None)
                    logger.info("%s %s failed (%s); retrying in %.2fs", request.method, request.url, type(exc).__name__, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                if isinstance(exc, httpx.TimeoutException):
                    raise APITimeoutError(request) from exc
                raise APIConnectionError(request) from exc
            if self._should_retry(response) and attempt < retries:
                delay = self._retry_delay_s(attempt, response)
                logger.info("%s %s answered %d; retrying in %.2fs", request.method, request.url, response.status_code, delay)
                await response.aclose()
                await asyncio.sleep(delay)
                attempt += 1
                continue
            return response


def _output_of(data: Any) -> str | None:
    """The generated text of a one-choice completion body (what the receipt's outputHash commits to)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], dict):
        return None
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
    return text if isinstance(text, str) else None
