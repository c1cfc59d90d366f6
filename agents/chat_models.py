"""ChatLoraLedger: a LangChain chat model over a loraledger runtime's chat endpoint, paying per call through the SDK."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils import secret_from_env
from loraledger.sdk import DEFAULT_TIMEOUT, AsyncClient, Budget, Client, Payment, Receipt, Trace, Wallet
from loraledger.sdk.types import CompletionUsage
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr

__all__ = ["ChatLoraLedger"]

logger = logging.getLogger(__name__)


def _message_dict(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as the runtime's chat endpoint takes it (text content only)."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.text}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, AIMessage):
        return {"role": "assistant", "content": message.text}
    if isinstance(message, ToolMessage):
        return {"role": "tool", "content": message.text, "tool_call_id": message.tool_call_id}
    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": message.text}
    raise TypeError(f"ChatLoraLedger cannot send a {type(message).__name__}")


def _usage(usage: CompletionUsage | dict[str, Any] | None) -> UsageMetadata | None:
    if usage is None:
        return None
    if isinstance(usage, dict):
        usage = CompletionUsage.model_validate(usage)
    return UsageMetadata(
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def _payment_metadata(receipt: Receipt | None, payment: Payment | None) -> dict[str, Any]:
    """The verified receipt and payment as plain JSON (amounts as decimal strings), for response_metadata."""
    if receipt is None or payment is None:
        return {}
    return {
        "receipt": {**receipt.to_wire(), "signature": receipt.signature},
        "payment": {k: str(v) if isinstance(v, int) else v for k, v in payment.model_dump().items()},
    }


class ChatLoraLedger(BaseChatModel):
    """Chat with one adapter (or the base model) of a loraledger runtime, paying each call with x402.

        from loraledger.agents import ChatLoraLedger
        from loraledger.sdk import Budget, Wallet

        llm = ChatLoraLedger(model="legal", base_url="http://127.0.0.1:8000", wallet=wallet,
                             budget=Budget(max_per_call_wei=10**15), max_tokens=64)
        reply = llm.invoke("Is a verbal agreement to sell land enforceable?")
        reply.response_metadata["receipt"]     # the operator-signed receipt, verified by the SDK
        for chunk in llm.stream("..."): ...    # token by token; the last chunk carries the receipt

    A priced adapter needs a `wallet` (or LORALEDGER_PRIVATE_KEY, as the SDK Client reads it); the `budget`
    caps what is paid; a shared `trace` records each paid call and its receipt. Pass `client` /
    `async_client` to reuse SDK clients (they then carry the wallet, budget and trace). Payment and
    budget errors are the SDK's (BudgetExceeded, PaymentRequired, InvalidReceipt, ...). The runtime has no
    tool calling, so this model does not `bind_tools`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model_name: str = Field(default="base", alias="model", description="adapter id, or 'base' for the base model")
    base_url: str | None = Field(default=None, description="the runtime (default: LORALEDGER_BASE_URL, then local)")
    api_key: SecretStr | None = Field(default_factory=secret_from_env("LORALEDGER_API_KEY", default=None))
    temperature: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    seed: int | None = None
    timeout: float | None = Field(default=None, description="seconds per HTTP request (default: the SDK's)")
    max_retries: int = Field(default=2, ge=0)
    streaming: bool = False
    wallet: Wallet | None = Field(default=None, exclude=True)
    budget: Budget | None = Field(default=None, exclude=True)
    trace: Trace | None = Field(default=None, exclude=True)
    client: Client | None = Field(default=None, exclude=True)
    async_client: AsyncClient | None = Field(default=None, exclude=True)

    _sync: Client | None = PrivateAttr(default=None)
    _async: AsyncClient | None = PrivateAttr(default=None)

    # ------------------------------------------------------------------------------------------ clients

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "api_key": self.api_key.get_secret_value() if self.api_key is not None else None,
            "wallet": self.wallet,
            "budget": self.budget,
            "trace": self.trace,
            "timeout": DEFAULT_TIMEOUT if self.timeout is None else httpx.Timeout(self.timeout, connect=5.0),
            "max_retries": self.max_retries,
        }

    @property
    def sync_client(self) -> Client:
        """The SDK client calls go through (`client`, or one built from these settings on first use)."""
        if self.client is not None:
            return self.client
        if self._sync is None:
            self._sync = Client(**self._client_kwargs())
        return self._sync

    @property
    def aclient(self) -> AsyncClient:
        """The async SDK client (`async_client`, or one built from these settings on first use)."""
        if self.async_client is not None:
            return self.async_client
        if self._async is None:
            self._async = AsyncClient(**self._client_kwargs())
        return self._async

    # ------------------------------------------------------------------------------------------ LangChain

    @property
    def _llm_type(self) -> str:
        return "loraledger-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name, "base_url": self.base_url, "temperature": self.temperature,
            "max_tokens": self.max_tokens, "top_p": self.top_p, "seed": self.seed,
        }  # fmt: skip

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="loraledger", ls_model_name=kwargs.get("model", self.model_name), ls_model_type="chat"
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stop = stop or kwargs.get("stop") or self.stop
        if stop:
            params["ls_stop"] = list(stop)
        return params

    def _request(self, messages: Sequence[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The arguments of `chat.completions.create`: these settings, overridden by the call's kwargs."""
        stop = stop or kwargs.pop("stop", None) or self.stop
        request = {
            "model": kwargs.pop("model", self.model_name),
            "messages": [_message_dict(m) for m in messages],
            "max_tokens": kwargs.pop("max_tokens", self.max_tokens),
            "temperature": kwargs.pop("temperature", self.temperature),
            "top_p": kwargs.pop("top_p", self.top_p),
            "seed": kwargs.pop("seed", self.seed),
            "stop": list(stop) if stop else None,
        }
        if kwargs:
            request["extra_body"] = kwargs
        return request

    @staticmethod
    def _result(reply: Any) -> ChatResult:
        choice = reply.choices[0]
        metadata = {"model_name": reply.model, "finish_reason": choice.finish_reason, "model_provider": "loraledger"}
        metadata.update(_payment_metadata(reply.receipt, reply.payment))
        message = AIMessage(
            content=choice.message.content or "", id=reply.id, usage_metadata=_usage(reply.usage),
            response_metadata=metadata,
        )  # fmt: skip
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"model_name": reply.model})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        reply = self.sync_client.chat.completions.create(**self._request(messages, stop, kwargs))
        return self._result(reply)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        reply = await self.aclient.chat.completions.create(**self._request(messages, stop, kwargs))
        return self._result(reply)

    @staticmethod
    def _chunk(chunk: Any) -> ChatGenerationChunk | None:
        piece = "".join(c.delta.content or "" for c in chunk.choices)
        usage = _usage(chunk.usage)
        if not piece and usage is None:
            return None
        return ChatGenerationChunk(message=AIMessageChunk(content=piece, id=chunk.id, usage_metadata=usage))

    @staticmethod
    def _last(stream: Any, model: str, finish_reason: str | None) -> ChatGenerationChunk:
        metadata = {"model_name": model, "finish_reason": finish_reason, "model_provider": "loraledger"}
        metadata.update(_payment_metadata(stream.receipt, stream.payment))
        return ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata=metadata, chunk_position="last"),
            generation_info={"finish_reason": finish_reason},
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        finish_reason = None
        with self.sync_client.chat.completions.create(**request, stream=True) as stream:
            for chunk in stream:
                finish_reason = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish_reason)
                generation = self._chunk(chunk)
                if generation is None:
                    continue
                if run_manager is not None and generation.text:
                    run_manager.on_llm_new_token(generation.text, chunk=generation)
                yield generation
            yield self._last(stream, request["model"], finish_reason)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        finish_reason = None
        stream = await self.aclient.chat.completions.create(**request, stream=True)
        async with stream:
            async for chunk in stream:
                finish_reason = next((c.finish_reason for c in chunk.choices if c.finish_reason), finish_reason)
                generation = self._chunk(chunk)
                if generation is None:
                    continue
                if run_manager is not None and generation.text:
                    await run_manager.on_llm_new_token(generation.text, chunk=generation)
                yield generation
            yield self._last(stream, request["model"], finish_reason)
