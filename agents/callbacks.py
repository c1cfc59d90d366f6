"""TraceCallbackHandler: an agent's LLM outputs, tool calls, tool results and payments, into an SDK Trace."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from loraledger.sdk import Trace

from .tools import AdapterCall

__all__ = ["TraceCallbackHandler"]

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000
"""Longer texts are cut in the trace (the entry says so): a log stays readable and cheap to hash."""


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + f"... [{len(text) - MAX_TEXT_CHARS} chars cut]"


def _json(value: Any) -> Any:
    """`value` as plain JSON for a trace entry: ints beyond 2**53 become strings, unknown objects their str()."""
    if isinstance(value, bool) or value is None or isinstance(value, float | str):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else str(value)
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return _text(value)


class TraceCallbackHandler(BaseCallbackHandler):
    """Appends what an agent does to a loraledger `Trace`, the hash-chained log that paid calls commit to.

        trace = Trace()
        client = Client(base_url=..., wallet=wallet, budget=budget, trace=trace)   # paid calls: adapter_call + receipt
        handler = TraceCallbackHandler(trace)                                        # the agent's side
        agent.invoke(..., config={"callbacks": [handler]})
        trace.save("trace.jsonl"); trace.anchor(contracts.anchor, wallet.funding_account)

    Entries (kinds from `loraledger.sdk.trace.KINDS`):

    - `thought`: each LLM output, its text and the tool calls it asks for;
    - `tool_call`: a tool about to run, with its input (appended before the tool pays, so the call's hash
      commits to it);
    - `tool_result`: what the tool returned, or its error;
    - `payment`: for each paid call (an AdapterTool's artifact, or a ChatLoraLedger response): adapter, amount,
      call id and channel. When the SDK Client shares the same Trace it also appends its own `adapter_call`
      and `receipt` entries, with the full operator-signed receipt.

    `record_prompts=True` also records each LLM's input messages (`observation` entries). Appends are
    thread-safe, so one handler may serve parallel tool calls.
    """

    raise_error: bool = True  # a trace that silently misses an entry would not be the agent's full reasoning

    def __init__(self, trace: Trace, *, record_prompts: bool = False) -> None:
        self.trace = trace
        self.record_prompts = record_prompts
        self._tools: dict[UUID, str] = {}

    # ------------------------------------------------------------------------------------------ LLM

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        if not self.record_prompts:
            return
        for batch in messages:
            self.trace.append(
                "observation", {"messages": [{"role": m.type, "content": _text(m.text)} for m in batch]}
            )

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        for generations in response.generations:
            for generation in generations:
                self._thought(generation)

    def _thought(self, generation: Any) -> None:
        entry: dict[str, Any] = {"text": _text(generation.text)}
        message = generation.message if isinstance(generation, ChatGeneration) else None
        if isinstance(message, AIMessage):
            if message.tool_calls:
                entry["toolCalls"] = [
                    {"name": c["name"], "args": _json(c["args"]), "id": c.get("id")} for c in message.tool_calls
                ]
            model = message.response_metadata.get("model_name")
            if model:
                entry["model"] = model
        self.trace.append("thought", entry)
        if message is not None and "payment" in message.response_metadata:
            payment = message.response_metadata["payment"]
            receipt = message.response_metadata.get("receipt") or {}
            self.trace.append(
                "payment",
                {
                    "adapter": entry.get("model"),
                    "amountWei": str(payment.get("amount_wei")),
                    "callId": receipt.get("callId"),
                    "channelId": payment.get("channel_id"),
                    "payee": payment.get("payee"),
                },
            )

    # ------------------------------------------------------------------------------------------ tools

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = str((serialized or {}).get("name") or kwargs.get("name") or "tool")
        self._tools[run_id] = name
        entry = {"tool": name, "input": _json(inputs) if inputs is not None else _text(input_str)}
        if kwargs.get("tool_call_id"):
            entry["toolCallId"] = kwargs["tool_call_id"]
        self.trace.append("tool_call", entry)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        name = self._tools.pop(run_id, None) or kwargs.get("name") or "tool"
        artifact = None
        if isinstance(output, ToolMessage):
            entry = {"tool": name, "output": _text(output.text), "status": output.status, "toolCallId": output.tool_call_id}
            artifact = output.artifact
        else:
            entry = {"tool": name, "output": _json(output)}
        self.trace.append("tool_result", entry)
        if isinstance(artifact, AdapterCall) and artifact.payment is not None:
            self.trace.append(
                "payment",
                {
                    "adapter": artifact.adapter,
                    "amountWei": str(artifact.payment.amount_wei),
                    "callId": artifact.receipt.call_id if artifact.receipt is not None else None,
                    "channelId": artifact.payment.channel_id,
                    "payee": artifact.payment.payee,
                },
            )

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        name = self._tools.pop(run_id, None) or kwargs.get("name") or "tool"
        self.trace.append("tool_result", {"tool": name, "error": _text(error), "status": "error"})

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.trace.append("error", {"source": "llm", "error": _text(error)})

