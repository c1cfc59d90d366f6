"""The demo's agent: a small local tool-calling chat model (a keyword router, no network) and the standard LangChain
tool-calling loop around it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

__all__ = ["AgentTurn", "KeywordRouter", "run_agent"]

DETAIL_PREFIX = "In detail:"
_STOP = frozenset(["a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "in", "is", "it", "of", "on", "or", "should", "the", "to", "trained", "what", "when", "why", "with"])  # fmt: skip


def _words(text: str) -> set[str]:
    """Lower-case content words, plurals folded ("bonds" -> "bond")."""
    out = set()
    for word in re.findall(r"[a-z]+", text.lower()):
        if len(word) > 2 and word not in _STOP:
            out.add(word[:-1] if word.endswith("s") and not word.endswith("ss") else word)
    return out


class KeywordRouter(BaseChatModel):
    """A deterministic local chat model that calls tools: it routes the user's question to the bound tool whose
    description shares the most words with it, and answers with the tool's result.

    It reads a tool error's advice the way an LLM would: told to use a smaller max_tokens, it retries once with
    `max_tokens`; a question starting "In detail:" first asks for `detail_max_tokens`.
    """

    tools: list[dict[str, Any]] = Field(default_factory=list)
    max_tokens: int = 48
    detail_max_tokens: int = 200

    @property
    def _llm_type(self) -> str:
        return "keyword-router"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> KeywordRouter:  # type: ignore[override]
        return self.model_copy(update={"tools": [convert_to_openai_tool(t) for t in tools]})

    def _route(self, question: str) -> tuple[str, int]:
        words = _words(question)
        scored = [(len(words & _words(t["function"]["description"])), t["function"]["name"]) for t in self.tools]
        best, name = max(scored, key=lambda s: s[0]) if scored else (0, "")
        return (name, best)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        question = next(m.text for m in reversed(messages) if isinstance(m, HumanMessage))
        last = messages[-1]
        if isinstance(last, ToolMessage):
            retried = sum(isinstance(m, ToolMessage) for m in messages) > 1
            if last.status == "error" and "smaller max_tokens" in last.text and not retried:
                previous = next(m for m in reversed(messages) if isinstance(m, AIMessage) and m.tool_calls)
                call = dict(previous.tool_calls[0])
                call["args"] = {**call["args"], "max_tokens": self.max_tokens}
                call["id"] = call["id"] + "-retry"
                reply = AIMessage(f"Too expensive at that length: retrying {call['name']} with max_tokens={self.max_tokens}.",
                                  tool_calls=[call])  # fmt: skip
            elif last.status == "error":
                reply = AIMessage(f"I could not get a paid answer: {last.text}")
            else:
                reply = AIMessage(last.text.strip())
            return ChatResult(generations=[ChatGeneration(message=reply)])

        detail = question.startswith(DETAIL_PREFIX)
        query = question.removeprefix(DETAIL_PREFIX).strip()
        name, score = self._route(query)
        if score == 0:
            return ChatResult(generations=[ChatGeneration(message=AIMessage("No specialist covers that; I don't know."))])
        max_tokens = self.detail_max_tokens if detail else self.max_tokens
        call = {"name": name, "args": {"query": query, "max_tokens": max_tokens}, "id": f"call-{len(messages)}"}
        thought = f"{score} word(s) of the question match {name}'s description: asking it."
        return ChatResult(generations=[ChatGeneration(message=AIMessage(thought, tool_calls=[call]))])


@dataclass
class AgentTurn:
    question: str
    answer: str
    messages: list[BaseMessage] = field(default_factory=list)

    @property
    def tool_messages(self) -> list[ToolMessage]:
        return [m for m in self.messages if isinstance(m, ToolMessage)]


def run_agent(
    llm: BaseChatModel, tools: Sequence[BaseTool], question: str, *, config: RunnableConfig | None = None,
    max_steps: int = 4,
) -> AgentTurn:  # fmt: skip
    """The tool-calling loop: ask the model, run the tools it calls, hand it their results, until it answers."""
    by_name = {t.name: t for t in tools}
    model = llm.bind_tools(list(tools))
    messages: list[BaseMessage] = [HumanMessage(question)]
    for _ in range(max_steps):
        ai = model.invoke(messages, config=config)
        messages.append(ai)
        if not ai.tool_calls:
            return AgentTurn(question, ai.text, messages)
        for call in ai.tool_calls:
            messages.append(by_name[call["name"]].invoke(call, config=config))
    return AgentTurn(question, "(gave up after too many steps)", messages)
