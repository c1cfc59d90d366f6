"""The LangChain integration against an operator that plays the payment protocol for real (sdk.testing.MockOperator
over the embedded chain): the standard langchain-tests suites, payment through tools and the chat model, actionable
errors, the toolkit, and the trace callback in an agent loop."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import ToolException
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests, ToolsUnitTests
from loraledger.agents import (
    AdapterCall,
    AdapterInput,
    AdapterTool,
    ChatLoraLedger,
    LoraLedgerToolkit,
    TraceCallbackHandler,
)
from loraledger.agents.tools import tool_name
from loraledger.sdk import AsyncClient, Budget, Client, Trace, Wallet
from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import deploy_contracts
from loraledger.sdk.chain.provider import embedded_chain
from loraledger.sdk.testing import MockOperator
from loraledger.sdk.vouchers import Domain

ADAPTER = "sql-expert"
PRICE_IN, PRICE_OUT = 2, 5
QUERY = "list the active users by name"  # 6 words: the mock operator counts words as tokens
REPLY = "SELECT name FROM users WHERE active = 1 ORDER BY name LIMIT 10 ;"
COST = 6 * PRICE_IN + len(REPLY.split()) * PRICE_OUT


@functools.cache
def _deployment():
    """One embedded chain with the contracts for the whole module (the standard suites build tools in properties,
    where fixtures cannot reach)."""
    accounts = dev_accounts()
    chain = embedded_chain(len(accounts))
    contracts = deploy_contracts(chain, accounts[0], fund=[a.address for a in accounts[:3]])
    return contracts, accounts


def _operator(**kwargs) -> MockOperator:
    contracts, accounts = _deployment()
    prices = {ADAPTER: (PRICE_IN, PRICE_OUT), "free": (0, 0), "base": (0, 0), "v1.legal": (1, 1)}
    return MockOperator(contracts, accounts[0], prices=prices, reply=REPLY, **kwargs)


def _wallet() -> Wallet:
    contracts, accounts = _deployment()
    return Wallet(accounts[1], chain=contracts.chain, deposit_wei=10_000)


def _client(operator: MockOperator, **kwargs) -> Client:
    kwargs.setdefault("wallet", _wallet())
    return Client(base_url="http://runtime.test", http_client=httpx.Client(transport=operator.transport()),
                  retry_backoff_s=0.0, **kwargs)  # fmt: skip


def _aclient(operator: MockOperator, **kwargs) -> AsyncClient:
    kwargs.setdefault("wallet", _wallet())
    return AsyncClient(base_url="http://runtime.test", http_client=httpx.AsyncClient(transport=operator.transport()),
                       retry_backoff_s=0.0, **kwargs)  # fmt: skip


def _call(tool: AdapterTool, **args: Any) -> ToolMessage:
    return tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": {"query": QUERY, **args}})


# ---------------------------------------------------------------------------------------------- standard suites

# The suites' async tests need pytest-asyncio (which langchain-tests installs) in strict mode; the mark on a class
# also reaches its sync tests, where it does nothing but warn.
asyncio_suite = [
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but it is not an async function"),
]


class TestAdapterToolStandard(ToolsUnitTests):
    @property
    def tool_constructor(self) -> type[AdapterTool]:
        return AdapterTool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {"adapter_id": ADAPTER, "client": _client(_operator()), "max_tokens": 20}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": QUERY, "max_tokens": 20}


@asyncio_suite[0]
@asyncio_suite[1]
class TestAdapterToolInvocation(ToolsIntegrationTests):
    """The invocation half of the standard suites, over the mock operator (a real runtime: tests/integration)."""

    @property
    def tool_constructor(self) -> type[AdapterTool]:
        return AdapterTool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        operator = _operator()
        return {"adapter_id": ADAPTER, "client": _client(operator), "async_client": _aclient(operator)}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": QUERY}


class TestChatLoraLedgerStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatLoraLedger]:
        return ChatLoraLedger

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": ADAPTER, "base_url": "http://runtime.test"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"LORALEDGER_API_KEY": "secret-key"}, {"model": ADAPTER}, {"api_key": "secret-key"}


# ---------------------------------------------------------------------------------------------- AdapterTool


def test_a_tool_call_pays_and_returns_the_answer_with_its_verified_receipt():
    operator = _operator()
    budget = Budget(max_per_call_wei=1_000)
    tool = AdapterTool(adapter_id=ADAPTER, client=_client(operator, budget=budget), max_tokens=20)
    message = _call(tool)

    assert isinstance(message, ToolMessage) and message.status == "success"
    assert message.content == REPLY and message.tool_call_id == "call-1"
    call = message.artifact
    assert isinstance(call, AdapterCall) and call.answer == REPLY and call.adapter == ADAPTER
    assert call.amount_wei == call.receipt.amount_wei == COST == budget.spent_session_wei
    contracts, accounts = _deployment()
    assert call.receipt.recover_signer(Domain(contracts.chain.chain_id, contracts.channels.address)) == accounts[0].address
    assert call.usage.completion_tokens == len(REPLY.split())

    # invoked with plain arguments (no tool call), the tool returns the content alone
    assert tool.invoke({"query": QUERY}) == REPLY


def test_the_args_schema_is_written_for_the_model():
    schema = AdapterTool(adapter_id=ADAPTER, client=_client(_operator())).tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"query", "max_tokens"} and schema["required"] == ["query"]
    assert "standalone" in schema["properties"]["query"]["description"]
    assert "price" in schema["properties"]["max_tokens"]["description"]
    with pytest.raises(ValueError):
        AdapterInput(query="")


def test_names_follow_the_function_name_rules_and_a_client_is_required():
    assert tool_name("v1.legal") == "v1_legal" and tool_name("a" * 80) == "a" * 64
    assert AdapterTool(adapter_id="v1.legal", client=_client(_operator())).name == "v1_legal"
    with pytest.raises(ValueError, match="Client"):
        AdapterTool(adapter_id=ADAPTER)


@pytest.mark.parametrize(
    ("budget", "advice"),
    [
        (Budget(max_per_call_wei=50), "smaller max_tokens"),
        (Budget(max_per_session_wei=50), "answer with what you already know"),
        (Budget(adapters=["other"]), "Do not retry it; use another tool"),
    ],
    ids=["per-call", "session", "not-allowed"],
)
def test_budget_refusals_become_actionable_tool_errors_and_nothing_is_signed(budget, advice):
    operator = _operator()
    tool = AdapterTool(adapter_id=ADAPTER, client=_client(operator, budget=budget), max_tokens=20)
    message = _call(tool)
    assert message.status == "error" and advice in message.content and ADAPTER in message.content
    assert not any("payment-signature" in r.headers for r in operator.requests)
    assert budget.spent_session_wei == 0

    strict = AdapterTool(adapter_id=ADAPTER, client=_client(operator, budget=budget), handle_tool_error=False)
    with pytest.raises(ToolException, match=advice):
        _call(strict)


def test_a_bad_receipt_and_a_missing_wallet_are_tool_errors_too():
    operator = _operator()
    operator.faults.add("bad_signature")
    message = _call(AdapterTool(adapter_id=ADAPTER, client=_client(operator)))
    assert message.status == "error" and "does not verify" in message.content

    unpaid = Client(base_url="http://runtime.test", http_client=httpx.Client(transport=_operator().transport()))
    message = _call(AdapterTool(adapter_id=ADAPTER, client=unpaid))
    assert message.status == "error" and "requires payment" in message.content

    message = _call(AdapterTool(adapter_id="gone", client=_client(_operator())))
    assert message.status == "error" and "no longer served" in message.content


def test_async_tools_pay_through_the_async_client_or_fall_back_to_the_sync_one():
    operator = _operator()
    budget = Budget()
    tool = AdapterTool(adapter_id=ADAPTER, async_client=_aclient(operator, budget=budget), max_tokens=20)
    call = {"type": "tool_call", "id": "c", "name": tool.name, "args": {"query": QUERY}}
    message = asyncio.run(tool.ainvoke(call))
    assert message.content == REPLY and message.artifact.payment.amount_wei == COST == budget.spent_session_wei
    assert "ainvoke" in tool.invoke(call).content  # an async-only tool says how to call it

    sync_only = AdapterTool(adapter_id=ADAPTER, client=_client(operator), max_tokens=20)
    assert asyncio.run(sync_only.ainvoke(call)).artifact.receipt is not None


# ---------------------------------------------------------------------------------------------- toolkit


def test_the_toolkit_makes_one_described_tool_per_adapter():
    toolkit = LoraLedgerToolkit(client=_client(_operator()), max_tokens=20)
    tools = toolkit.get_tools()
    assert [t.name for t in tools] == [ADAPTER, "free", "v1_legal"]  # the base model is not an adapter
    sql = tools[0]
    assert sql.adapter_id == ADAPTER and sql.max_tokens == 20
    assert "2 wei per input token and 5 wei per output token" in sql.description
    assert "Free to call" in tools[1].description
    assert _call(sql).artifact.amount_wei == COST

    assert [t.name for t in LoraLedgerToolkit(client=_client(_operator()), include_free=False).get_tools()] == [
        ADAPTER, "v1_legal"
    ]  # fmt: skip
    assert [t.adapter_id for t in LoraLedgerToolkit(client=_client(_operator()), adapters=["v1.legal"]).get_tools()] == [
        "v1.legal"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="does not serve nope"):
        LoraLedgerToolkit(client=_client(_operator()), adapters=["nope"]).get_tools()
    assert len(asyncio.run(LoraLedgerToolkit(async_client=_aclient(_operator())).aget_tools())) == 3


def test_tool_descriptions_come_from_the_runtimes_metadata():
    from loraledger.sdk import Model

    model = Model.model_validate(
        {"id": "legal", "price_per_input_token_wei": "1000", "price_per_output_token_wei": "3000",
         "description": "Contract and property law, trained on the legal datanet"}
    )  # fmt: skip
    tool = AdapterTool.from_model(model, client=_client(_operator()))
    assert tool.description.startswith("Contract and property law, trained on the legal datanet. Ask it one")
    assert "1000 wei per input token and 3000 wei per output token" in tool.description


# ---------------------------------------------------------------------------------------------- ChatLoraLedger


def test_the_chat_model_pays_and_carries_the_receipt():
    operator = _operator()
    budget = Budget()
    llm = ChatLoraLedger(model=ADAPTER, client=_client(operator, budget=budget), max_tokens=20)
    reply = llm.invoke([HumanMessage(QUERY)])
    assert reply.content == REPLY and reply.usage_metadata["output_tokens"] == len(REPLY.split())
    assert reply.response_metadata["payment"]["amount_wei"] == str(COST) == str(budget.spent_session_wei)
    assert reply.response_metadata["receipt"]["signature"].startswith("0x")

    chunks = list(llm.stream(QUERY))
    text = "".join(c.text for c in chunks)
    assert text == REPLY and len(chunks) > 2 and chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["payment"]["amount_wei"] == str(COST)
    assert budget.spent_session_wei == 2 * COST

    streaming = ChatLoraLedger(model=ADAPTER, client=_client(operator), max_tokens=20, streaming=True)
    assert streaming.invoke(QUERY).content == REPLY


def test_the_chat_model_async_and_overrides():
    operator = _operator()
    llm = ChatLoraLedger(model="free", async_client=_aclient(operator), max_tokens=3)

    async def main():
        reply = await llm.ainvoke(QUERY, model=ADAPTER)
        chunks = [c async for c in llm.astream(QUERY)]
        return reply, chunks

    reply, chunks = asyncio.run(main())
    assert reply.content == "SELECT name FROM" and reply.response_metadata["model_name"] == ADAPTER
    assert "payment" in reply.response_metadata
    assert "".join(c.text for c in chunks) == "SELECT name FROM" and "payment" not in chunks[-1].response_metadata
    assert llm._get_ls_params(model="x")["ls_model_name"] == "x"


# ---------------------------------------------------------------------------------------------- the trace


def test_an_agent_loop_is_traced_and_the_trace_verifies():
    operator = _operator()
    trace = Trace()
    client = _client(operator, budget=Budget(max_per_call_wei=1_000), trace=trace)
    (tool,) = LoraLedgerToolkit(client=client, adapters=[ADAPTER], max_tokens=20).get_tools()
    handler = TraceCallbackHandler(trace, record_prompts=True)
    llm = FakeMessagesListChatModel(
        responses=[
            AIMessage("", tool_calls=[{"name": tool.name, "args": {"query": QUERY}, "id": "t1"}]),
            AIMessage("Here is the query: " + REPLY),
        ]
    )
    config = {"callbacks": [handler]}
    messages = [HumanMessage("Which users are active?")]
    while True:
        ai = llm.invoke(messages, config=config)
        messages.append(ai)
        if not ai.tool_calls:
            break
        messages.extend(tool.invoke(call, config=config) for call in ai.tool_calls)

    kinds = [e.kind for e in trace]
    assert kinds == [
        "observation", "thought", "tool_call", "adapter_call", "receipt", "tool_result", "payment",
        "observation", "thought",
    ]  # fmt: skip
    thought, tool_call, adapter_call, receipt = trace[1], trace[2], trace[3], trace[4]
    assert thought.data["toolCalls"] == [{"name": ADAPTER, "args": {"query": QUERY}, "id": "t1"}]
    assert tool_call.data == {"tool": ADAPTER, "input": {"query": QUERY}, "toolCallId": "t1"}
    # the paid call commits to the trace as it stood after the tool call was recorded
    assert adapter_call.data["traceHead"] == "0x" + tool_call.hash.hex()
    assert trace[6].data["amountWei"] == str(COST) and trace[6].data["callId"] == receipt.data["receipt"]["callId"]
    assert trace[5].data["output"] == REPLY and trace[5].data["status"] == "success"
    trace.verify()

    # a refused call is recorded as an error result, and nothing is paid
    refused = TraceCallbackHandler(trace)
    poor = AdapterTool(adapter_id=ADAPTER, client=_client(operator, budget=Budget(max_per_call_wei=1)), max_tokens=20)
    _ = poor.invoke({"type": "tool_call", "id": "t2", "name": poor.name, "args": {"query": QUERY}},
                    config={"callbacks": [refused]})  # fmt: skip
    assert trace[-1].kind == "tool_result" and trace[-1].data["status"] == "error"
    assert "per-call budget" in trace[-1].data["output"]


def test_a_paid_chat_model_call_is_traced_as_a_payment():
    trace = Trace()
    llm = ChatLoraLedger(model=ADAPTER, client=_client(_operator()), max_tokens=20)
    llm.invoke(QUERY, config={"callbacks": [TraceCallbackHandler(trace)]})
    assert [e.kind for e in trace] == ["thought", "payment"]
    assert trace[0].data == {"text": REPLY, "model": ADAPTER} and trace[1].data["amountWei"] == str(COST)
