"""Server-sent-event streams of completions, sync and async; a paid stream's receipt comes as its last event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from ._exceptions import APIError, APIResponseValidationError
from ._payments import PaidCall
from ._x402 import STREAM_PAYMENT_EVENT
from .types import Payment, Receipt

__all__ = ["AsyncStream", "ServerSentEvent", "SSEDecoder", "Stream"]

T = TypeVar("T", bound=BaseModel)


@dataclass
class ServerSentEvent:
    event: str | None = None
    data: str = ""
    id: str | None = None


class SSEDecoder:
    """Turns lines of a text/event-stream into events (the WHATWG rules we need: event, data, id, comments)."""

    def __init__(self) -> None:
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        """One line (without its newline); returns the event a blank line completes."""
        if not line:
            if not self._data and self._event is None:
                return None
            sse = ServerSentEvent(self._event, "\n".join(self._data), self._id)
            self._event, self._data = None, []
            return sse
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None

    def flush(self) -> ServerSentEvent | None:
        """The last event of a stream that ended without a blank line."""
        return self.feed("")


_DONE = object()


@dataclass
class _StreamState:
    """Everything about a stream that is not I/O: parsing, the receipt, what the trace records."""

    response: httpx.Response
    chunk_type: type[BaseModel]
    paid: PaidCall | None
    on_finish: Callable[[_StreamState], None]
    receipt: Receipt | None = None
    payment: Payment | None = None
    id: str | None = None
    usage: dict[str, Any] | None = None
    outputs: dict[int, list[str]] = field(default_factory=dict)
    finished: bool = False

    def handle(self, sse: ServerSentEvent) -> Any:
        if sse.event == STREAM_PAYMENT_EVENT:
            if self.paid is not None:
                output = "".join(self.outputs.get(0, [])) if len(self.outputs) <= 1 else None
                self.receipt, self.payment = self.paid.settle(sse.data, self.usage, output)
            return None
        if sse.data == "[DONE]":
            return _DONE
        if sse.event == "error":
            raise APIError(f"the runtime reported an error mid-stream: {sse.data}", self.response.request)
        if sse.event not in (None, "message"):
            return None
        try:
            data = json.loads(sse.data)
            chunk = self.chunk_type.model_validate(data)
        except (ValueError, ValidationError) as exc:
            raise APIResponseValidationError(f"malformed stream event: {exc}", self.response) from exc
        self.id = data.get("id", self.id)
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
            if piece:
                self.outputs.setdefault(int(choice.get("index", 0)), []).append(piece)
        return chunk

    def finish(self) -> None:
        """The stream ended: a paid stream must have carried its receipt."""
        if self.paid is not None and self.receipt is None:
            self.paid.settle(None, self.usage)  # raises InvalidReceipt, refuses the payee
        self.finished = True
        self.on_finish(self)

    def abort(self) -> None:
        if self.paid is not None and not self.finished:
            self.paid.abort()

    def output_texts(self) -> list[str]:
        return ["".join(self.outputs[i]) for i in sorted(self.outputs)]


class Stream(Generic[T]):
    """Iterates the chunks of a streamed completion; `receipt` and `payment` are set once it is consumed.

    Use it in a `with` block or iterate to the end: a paid stream left unfinished counts its maximum as spent.
    """

    def __init__(self, state: _StreamState) -> None:
        self._state = state
        self.response = state.response
        self._iterator = self._stream()

    @property
    def receipt(self) -> Receipt | None:
        return self._state.receipt

    @property
    def payment(self) -> Payment | None:
        return self._state.payment

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._iterator)

    def _stream(self) -> Iterator[T]:
        decoder = SSEDecoder()
        try:
            for line in self.response.iter_lines():
                sse = decoder.feed(line)
                if sse is not None:
                    item = self._state.handle(sse)
                    if item is _DONE:
                        break
                    if item is not None:
                        yield item
            else:
                sse = decoder.flush()
                if sse is not None and self._state.handle(sse) not in (None, _DONE):
                    raise APIResponseValidationError("the stream ended mid-event", self.response)
            self._state.finish()
        finally:
            self._state.abort()
            self.response.close()

    def close(self) -> None:
        """Stops reading; a paid stream closed before its receipt counts its maximum as spent."""
        self._iterator.close()
        self._state.abort()
        self.response.close()

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(Generic[T]):
    """The async counterpart of Stream."""

    def __init__(self, state: _StreamState) -> None:
        self._state = state
        self.response = state.response
        self._iterator = self._stream()

    @property
    def receipt(self) -> Receipt | None:
        return self._state.receipt

    @property
    def payment(self) -> Payment | None:
        return self._state.payment

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await self._iterator.__anext__()

    async def _stream(self) -> AsyncIterator[T]:
        decoder = SSEDecoder()
        try:
            async for line in self.response.aiter_lines():
                sse = decoder.feed(line)
                if sse is not None:
                    item = self._state.handle(sse)
                    if item is _DONE:
                        break
                    if item is not None:
                        yield item
            else:
                sse = decoder.flush()
                if sse is not None and self._state.handle(sse) not in (None, _DONE):
                    raise APIResponseValidationError("the stream ended mid-event", self.response)
            self._state.finish()
        finally:
            self._state.abort()
            await self.response.aclose()

    async def close(self) -> None:
        """Stops reading; a paid stream closed before its receipt counts its maximum as spent."""
        await self._iterator.aclose()
        self._state.abort()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
