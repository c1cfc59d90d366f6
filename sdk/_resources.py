"""The API's resources (`client.chat.completions`, `client.completions`, `client.models`, ...), sync and async.

Each method only describes its call (RequestOptions); the client does the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from ._options import RequestOptions, Timeout
from .receipts import verify_record
from .types import (
    ChainInfo,
    ChannelInfo,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    ModelList,
    Quote,
    ReceiptRecord,
)

if TYPE_CHECKING:
    from ._client import AsyncClient, Client
    from ._streaming import AsyncStream, Stream
    from .chain.contracts import Deployments
    from .wallet import Wallet


def _body(extra_body: Mapping[str, Any] | None, **params: Any) -> dict[str, Any]:
    """The JSON body: the given parameters (None = left out) and `extra_body` on top."""
    body = {k: v for k, v in params.items() if v is not None}
    body.update(extra_body or {})
    return body


def _chat_options(
    *,
    model: str,
    messages: Iterable[Mapping[str, Any]],
    stream: bool,
    quote_only: bool,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
    extra_body: Mapping[str, Any] | None,
    extra_headers: Mapping[str, str] | None,
    timeout: Timeout,
    idempotency_key: str | None,
) -> RequestOptions:
    body = _body(
        extra_body,
        model=model,
        messages=[dict(m) for m in messages],
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        stream=True if stream else None,
        # The usage on the last chunk lets the SDK check a paid stream's receipt against it, and the trace keep it.
        stream_options={"include_usage": True} if stream else None,
    )
    return RequestOptions(
        method="POST",
        path="/v1/chat/completions",
        cast_to=ChatCompletionChunk if stream else ChatCompletion,
        body=body,
        model=model,
        stream=stream,
        quote_only=quote_only,
        timeout=timeout,
        idempotency_key=idempotency_key,
        extra_headers=dict(extra_headers or {}),
    )


def _completion_options(
    *,
    model: str,
    prompt: str,
    stream: bool,
    quote_only: bool,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    stop: str | list[str] | None,
    seed: int | None,
    extra_body: Mapping[str, Any] | None,
    extra_headers: Mapping[str, str] | None,
    timeout: Timeout,
    idempotency_key: str | None,
) -> RequestOptions:
    body = _body(
        extra_body,
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=seed,
        stream=True if stream else None,
        # The usage on the last chunk lets the SDK check a paid stream's receipt against it, and the trace keep it.
        stream_options={"include_usage": True} if stream else None,
    )
    return RequestOptions(
        method="POST",
        path="/v1/completions",
        cast_to=Completion,
        body=body,
        model=model,
        stream=stream,
        quote_only=quote_only,
        timeout=timeout,
        idempotency_key=idempotency_key,
        extra_headers=dict(extra_headers or {}),
    )


def _get(path: str, cast_to: type, timeout: Timeout = None) -> RequestOptions:
    return RequestOptions(method="GET", path=path, cast_to=cast_to, timeout=timeout)


def _checked(wallet: Wallet | None, call_id: str, record: ReceiptRecord) -> ReceiptRecord:
    """record, verified against the wallet's lane of its channel when the wallet has one (else as it came)."""
    if wallet is None:
        return record
    try:
        channel = bytes.fromhex(record.receipt.channel_id.removeprefix("0x"))
    except ValueError:
        channel = b""
    lane = next((lane for lane in wallet.lanes() if lane.channel_id == channel), None)
    if lane is not None:
        verify_record(record, wallet.domain(lane.contract), lane.payee, call_id)
        record._verified = True
    return record


def _hex_id(value: str | bytes) -> str:
    return "0x" + value.hex() if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------- sync


class ChatCompletions:
    """`client.chat.completions`."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], stream: Literal[False] = False,
        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        stop: str | list[str] | None = None, seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> ChatCompletion: ...
    @overload
    def create(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], stream: Literal[True],
        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        stop: str | list[str] | None = None, seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> Stream[ChatCompletionChunk]: ...
    def create(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], stream: bool = False,
        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        stop: str | list[str] | None = None, seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> ChatCompletion | Stream[ChatCompletionChunk]:
        """Calls adapter `model` (paying for it if it is priced); with `stream=True` returns a Stream of chunks."""
        return self._client._request(
            _chat_options(
                model=model, messages=messages, stream=stream, quote_only=False, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=idempotency_key,
            )
        )  # fmt: skip

    def quote(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None,
    ) -> Quote:
        """Dry run: what this call would cost at most (from the runtime's 402) and whether the budget allows it.
        Nothing is signed. A free adapter answers the call itself, and the Quote says 0."""
        return self._client._request(
            _chat_options(
                model=model, messages=messages, stream=False, quote_only=True, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=None,
            )
        )  # fmt: skip


class Chat:
    """`client.chat`."""

    def __init__(self, client: Client) -> None:
        self.completions = ChatCompletions(client)


class Completions:
    """`client.completions`: text completions."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @overload
    def create(
        self, *, model: str, prompt: str, stream: Literal[False] = False, max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> Completion: ...
    @overload
    def create(
        self, *, model: str, prompt: str, stream: Literal[True], max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> Stream[Completion]: ...
    def create(
        self, *, model: str, prompt: str, stream: bool = False, max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> Completion | Stream[Completion]:
        """Completes `prompt` with adapter `model` (paying for it if it is priced)."""
        return self._client._request(
            _completion_options(
                model=model, prompt=prompt, stream=stream, quote_only=False, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=idempotency_key,
            )
        )  # fmt: skip

    def quote(
        self, *, model: str, prompt: str, max_tokens: int | None = None, temperature: float | None = None,
        top_p: float | None = None, stop: str | list[str] | None = None, seed: int | None = None,
        extra_body: Mapping[str, Any] | None = None, extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> Quote:
        """Dry run of `create`, as `chat.completions.quote`."""
        return self._client._request(
            _completion_options(
                model=model, prompt=prompt, stream=False, quote_only=True, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=None,
            )
        )  # fmt: skip


class Models:
    """`client.models`: the adapters the runtime serves, with their prices."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, timeout: Timeout = None) -> ModelList:
        return self._client._request(_get("/v1/models", ModelList, timeout))


class Receipts:
    """`client.receipts`: stored receipts, with Merkle proofs once rooted."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, call_id: str | bytes, *, timeout: Timeout = None) -> ReceiptRecord:
        """The stored receipt of a call; checked (`record.verified`) when it is on one of the wallet's channels,
        raising InvalidReceipt if the check fails (see receipts.verify_record)."""
        call = _hex_id(call_id)
        record = self._client._request(_get(f"/v1/receipts/{call}", ReceiptRecord, timeout))
        return _checked(self._client.wallet, call, record)


class Channels:
    """`client.channels`: what the runtime has charged on a channel."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, channel_id: str | bytes, *, timeout: Timeout = None) -> ChannelInfo:
        return self._client._request(_get(f"/v1/channels/{_hex_id(channel_id)}", ChannelInfo, timeout))


class ChainDeployments:
    """`client.deployments`: where the runtime's contracts live."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, *, timeout: Timeout = None) -> Deployments:
        info: ChainInfo = self._client._request(_get("/v1/chain", ChainInfo, timeout))
        return info.to_deployments()


# ---------------------------------------------------------------------------------------------- async


class AsyncChatCompletions:
    """`client.chat.completions` of AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], stream: Literal[False] = False,
        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        stop: str | list[str] | None = None, seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> ChatCompletion: ...
    @overload
    async def create(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], stream: Literal[True],
        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        stop: str | list[str] | None = None, seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> AsyncStream[ChatCompletionChunk]: ...
    async def create(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], stream: bool = False,
        max_tokens: int | None = None, temperature: float | None = None, top_p: float | None = None,
        stop: str | list[str] | None = None, seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> ChatCompletion | AsyncStream[ChatCompletionChunk]:
        """Calls adapter `model` (paying for it if it is priced); with `stream=True` returns an AsyncStream."""
        return await self._client._request(
            _chat_options(
                model=model, messages=messages, stream=stream, quote_only=False, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=idempotency_key,
            )
        )  # fmt: skip

    async def quote(
        self, *, model: str, messages: Iterable[Mapping[str, Any]], max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None,
    ) -> Quote:
        """Dry run, as ChatCompletions.quote."""
        return await self._client._request(
            _chat_options(
                model=model, messages=messages, stream=False, quote_only=True, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=None,
            )
        )  # fmt: skip


class AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = AsyncChatCompletions(client)


class AsyncCompletions:
    """`client.completions` of AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    @overload
    async def create(
        self, *, model: str, prompt: str, stream: Literal[False] = False, max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> Completion: ...
    @overload
    async def create(
        self, *, model: str, prompt: str, stream: Literal[True], max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> AsyncStream[Completion]: ...
    async def create(
        self, *, model: str, prompt: str, stream: bool = False, max_tokens: int | None = None,
        temperature: float | None = None, top_p: float | None = None, stop: str | list[str] | None = None,
        seed: int | None = None, extra_body: Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None, timeout: Timeout = None, idempotency_key: str | None = None,
    ) -> Completion | AsyncStream[Completion]:
        """Completes `prompt` with adapter `model` (paying for it if it is priced)."""
        return await self._client._request(
            _completion_options(
                model=model, prompt=prompt, stream=stream, quote_only=False, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=idempotency_key,
            )
        )  # fmt: skip

    async def quote(
        self, *, model: str, prompt: str, max_tokens: int | None = None, temperature: float | None = None,
        top_p: float | None = None, stop: str | list[str] | None = None, seed: int | None = None,
        extra_body: Mapping[str, Any] | None = None, extra_headers: Mapping[str, str] | None = None,
        timeout: Timeout = None,
    ) -> Quote:
        """Dry run, as Completions.quote."""
        return await self._client._request(
            _completion_options(
                model=model, prompt=prompt, stream=False, quote_only=True, max_tokens=max_tokens,
                temperature=temperature, top_p=top_p, stop=stop, seed=seed, extra_body=extra_body,
                extra_headers=extra_headers, timeout=timeout, idempotency_key=None,
            )
        )  # fmt: skip


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, timeout: Timeout = None) -> ModelList:
        return await self._client._request(_get("/v1/models", ModelList, timeout))


class AsyncReceipts:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, call_id: str | bytes, *, timeout: Timeout = None) -> ReceiptRecord:
        call = _hex_id(call_id)
        record = await self._client._request(_get(f"/v1/receipts/{call}", ReceiptRecord, timeout))
        return _checked(self._client.wallet, call, record)


class AsyncChannels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, channel_id: str | bytes, *, timeout: Timeout = None) -> ChannelInfo:
        return await self._client._request(_get(f"/v1/channels/{_hex_id(channel_id)}", ChannelInfo, timeout))


class AsyncChainDeployments:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, *, timeout: Timeout = None) -> Deployments:
        info: ChainInfo = await self._client._request(_get("/v1/chain", ChainInfo, timeout))
        return info.to_deployments()
