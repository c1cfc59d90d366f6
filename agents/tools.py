"""AdapterTool: one LoRA adapter of a loraledger runtime as a LangChain tool, paid per call through the SDK."""

from __future__ import annotations

import logging
import re
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, ToolException
from loraledger.sdk import (
    APIConnectionError,
    APIStatusError,
    AsyncClient,
    BadRequestError,
    BudgetExceeded,
    ChatCompletion,
    Client,
    InvalidReceipt,
    LoraLedgerError,
    Model,
    NotFoundError,
    Payment,
    PaymentError,
    PaymentNotAllowed,
    PaymentRequired,
    RateLimitError,
    Receipt,
    WalletError,
)
from loraledger.sdk.types import CompletionUsage
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AdapterCall", "AdapterInput", "AdapterTool", "tool_name"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128
_TOOL_NAME = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(adapter_id: str) -> str:
    """A function name every chat API accepts (`^[A-Za-z0-9_-]{1,64}$`) for an adapter id."""
    return _TOOL_NAME.sub("_", adapter_id)[:64] or "adapter"


class AdapterInput(BaseModel):
    """The arguments the model fills in to call an adapter."""

    query: str = Field(
        min_length=1,
        description=(
            "The question or task for this specialist, written as a complete standalone request. The specialist "
            "sees only this text, never the conversation, so include every fact it needs."
        ),
    )
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Optional cap on the length of the answer, in tokens. The call's price grows with it: lower it to fit "
            "a tight budget. Leave it out for the tool's default."
        ),
    )


class AdapterCall(BaseModel):
    """The artifact of one adapter call: what the model saw as content, plus the verified receipt and payment.

    `receipt` and `payment` are None when the adapter is free.
    """

    model_config = ConfigDict(protected_namespaces=())

    adapter: str
    answer: str
    response_id: str
    usage: CompletionUsage | None = None
    receipt: Receipt | None = None
    payment: Payment | None = None

    @property
    def amount_wei(self) -> int:
        """What the call was charged (0 when free)."""
        return self.payment.amount_wei if self.payment is not None else 0

    @classmethod
    def from_completion(cls, adapter: str, reply: ChatCompletion) -> AdapterCall:
        answer = (reply.choices[0].message.content or "") if reply.choices else ""
        return cls(
            adapter=adapter, answer=answer, response_id=reply.id, usage=reply.usage, receipt=reply.receipt,
            payment=reply.payment,
        )  # fmt: skip


def describe(model: Model) -> str:
    """A tool description written for the model choosing tools, from the runtime's metadata of one adapter."""
    extra = model.model_extra or {}
    description = str(extra.get("description") or "").strip()
    if not description:
        description = f"A specialist model (LoRA adapter {model.id!r})."
    elif description[-1] not in ".!?":
        description += "."
    price_in, price_out = model.price_per_input_token_wei, model.price_per_output_token_wei
    if price_in == 0 and price_out == 0:
        cost = "Free to call."
    else:
        cost = f"Paid per call: {price_in} wei per input token and {price_out} wei per output token."
    return f"{description} Ask it one standalone question; it answers in plain text. {cost}"


def _advice(adapter: str, exc: LoraLedgerError) -> str:
    """What the agent should do about an error, as the ToolException's message."""
    if isinstance(exc, BudgetExceeded):
        if exc.cap == "per_call":
            return (
                f"Not called: a call to {adapter} may cost up to {exc.amount_wei} wei, above the per-call budget of "
                f"{exc.remaining_wei} wei. Retry with a smaller max_tokens or a shorter query, or use a cheaper tool."
            )
        return (
            f"Not called: a call to {adapter} may cost up to {exc.amount_wei} wei and the {exc.cap.replace('_', '-')} "
            f"budget has {exc.remaining_wei} wei left. Retry with a smaller max_tokens if that fits, otherwise stop "
            "calling paid tools and answer with what you already know."
        )
    if isinstance(exc, PaymentNotAllowed):
        return f"Not called: the payment policy forbids paying for {adapter} ({exc}). Do not retry it; use another tool."
    if isinstance(exc, InvalidReceipt):
        return (
            f"{adapter}'s runtime returned a receipt that does not verify ({exc}); it will not be paid again. "
            "Do not use tools of this runtime; answer without them."
        )
    if isinstance(exc, WalletError):
        return f"Could not open or fund a payment channel for {adapter} ({exc}). Retrying will not help; answer without it."
    if isinstance(exc, PaymentError):
        return f"Payment for {adapter} failed ({exc}). Do not retry it; answer without this tool."
    if isinstance(exc, PaymentRequired):
        return (
            f"{adapter} requires payment and it was not accepted ({exc.message}). Do not retry it; use a free tool "
            "or answer without it."
        )
    if isinstance(exc, NotFoundError):
        return f"{adapter} is no longer served by the runtime. Use another tool."
    if isinstance(exc, BadRequestError):
        return f"{adapter} rejected the request ({exc.message}). Retry with a shorter query or a smaller max_tokens."
    if isinstance(exc, RateLimitError):
        return f"{adapter} is busy (rate limited). Retry once, later, or answer without it."
    if isinstance(exc, APIStatusError):
        return f"{adapter} failed ({exc.message}). Retry once; if it fails again, answer without it."
    if isinstance(exc, APIConnectionError):
        return f"{adapter}'s runtime did not answer ({exc.message}). Retry once later, or answer without it."
    return f"{adapter} failed ({exc}). Answer without it."


class AdapterTool(BaseTool):
    """One adapter of a loraledger runtime as a tool: the model sends a query, the tool pays for the call through
    the SDK (x402, within the client's Budget) and returns the answer as content and an `AdapterCall` (answer,
    verified receipt and payment) as artifact.

        tool = AdapterTool(adapter_id="legal", client=Client(base_url=..., wallet=wallet, budget=budget))
        message = tool.invoke({"type": "tool_call", "id": "1", "name": tool.name, "args": {"query": "..."}})
        message.content, message.artifact.receipt

    Budget, payment, receipt and transport errors become ToolExceptions whose message tells the model what to do
    instead (shorter answer, another tool, no tool); with the default `handle_tool_error=True` the model sees it
    as the tool's result. Give `async_client` for native async calls; without it `ainvoke` runs `client` in a
    thread. Build tools for every adapter of a runtime with LoraLedgerToolkit or `AdapterTool.from_model`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    adapter_id: str = Field(description="the adapter's id on the runtime (the `model` of chat completions)")
    name: str = ""
    description: str = ""
    args_schema: type[BaseModel] = AdapterInput
    response_format: str = "content_and_artifact"
    handle_tool_error: bool = True
    client: Client | None = Field(default=None, exclude=True)
    async_client: AsyncClient | None = Field(default=None, exclude=True)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, description="answer length when the model gives none")
    temperature: float | None = Field(default=None, description="sampling temperature (None: the runtime's default)")
    system_prompt: str | None = Field(default=None, description="a system message sent before each query")

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("adapter_id"):
            values = dict(values)
            values.setdefault("name", tool_name(values["adapter_id"]))
            if not values.get("description"):
                values["description"] = describe(Model(id=values["adapter_id"]))
        return values

    @model_validator(mode="after")
    def _needs_a_client(self) -> AdapterTool:
        if self.client is None and self.async_client is None:
            raise ValueError("give a loraledger.sdk Client (client=) or AsyncClient (async_client=)")
        return self

    @classmethod
    def from_model(cls, model: Model, **kwargs: Any) -> AdapterTool:
        """The tool of one entry of `client.models.list()`: name from its id, description from its metadata."""
        kwargs.setdefault("description", describe(model))
        return cls(adapter_id=model.id, **kwargs)

    def _messages(self, query: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, {"role": "user", "content": query}]

    def _run(
        self, query: str, max_tokens: int | None = None, run_manager: CallbackManagerForToolRun | None = None
    ) -> tuple[str, AdapterCall]:
        if self.client is None:
            raise ToolException(f"{self.name} has only an async client: call it with ainvoke")
        try:
            reply = self.client.chat.completions.create(
                model=self.adapter_id, messages=self._messages(query), max_tokens=max_tokens or self.max_tokens,
                temperature=self.temperature,
            )  # fmt: skip
        except LoraLedgerError as exc:
            logger.info("adapter %s: %s", self.adapter_id, exc)
            raise ToolException(_advice(self.adapter_id, exc)) from exc
        call = AdapterCall.from_completion(self.adapter_id, reply)
        return call.answer, call

    async def _arun(
        self, query: str, max_tokens: int | None = None, run_manager: AsyncCallbackManagerForToolRun | None = None
    ) -> tuple[str, AdapterCall]:
        if self.async_client is None:
            return await super()._arun(query, max_tokens, run_manager=run_manager)
        try:
            reply = await self.async_client.chat.completions.create(
                model=self.adapter_id, messages=self._messages(query), max_tokens=max_tokens or self.max_tokens,
                temperature=self.temperature,
            )  # fmt: skip
        except LoraLedgerError as exc:
            logger.info("adapter %s: %s", self.adapter_id, exc)
            raise ToolException(_advice(self.adapter_id, exc)) from exc
        call = AdapterCall.from_completion(self.adapter_id, reply)
        return call.answer, call
