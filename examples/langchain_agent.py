"""A LangChain agent that pays for specialist adapters: the runtime's adapters as tools, a budget, a reasoning trace
anchored on chain, and the chat model over an adapter with streaming.

Start a runtime first (`loraledger demo --keep-running`, or serve what examples/train_and_publish.py made), then:

    LORALEDGER_PRIVATE_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d \\
        python examples/langchain_agent.py --base-url http://127.0.0.1:8000 --question "What makes a will valid?"

The tool-calling model here is a small local router (no network, no API key); any LangChain chat model that
supports `bind_tools` drives the same loop, e.g. `ChatOpenAI(model="gpt-4o-mini")`.
"""

from __future__ import annotations

import argparse
import os

from langchain_core.messages import HumanMessage
from loraledger.agents import ChatLoraLedger, LoraLedgerToolkit, TraceCallbackHandler
from loraledger.runtime.demo.agent import KeywordRouter
from loraledger.sdk import Budget, Client, Trace, Wallet
from loraledger.sdk.chain.contracts import Contracts
from loraledger.sdk.chain.provider import rpc_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("LORALEDGER_BASE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--question", default="What makes a will valid?")
    parser.add_argument("--trace-out", default="agent-trace.jsonl")
    args = parser.parse_args()

    # The runtime's chain and contracts; the agent's wallet (LORALEDGER_PRIVATE_KEY funds the channels).
    deployments = Client(base_url=args.base_url).deployments.get()
    chain = rpc_chain(deployments.rpc_url)
    wallet = Wallet.from_env(chain=chain, deposit_wei=10**7)
    budget = Budget(max_per_call_wei=10**6, max_per_session_wei=10**7,
                    contracts=[deployments.contracts["PaymentChannels"]], tokens=[deployments.contracts["OpenToken"]])  # fmt: skip
    trace = Trace()  # shared by the client (paid calls, receipts) and the callback (thoughts, tool calls)
    client = Client(base_url=args.base_url, wallet=wallet, budget=budget, trace=trace)

    # One tool per paid adapter, named and described from GET /v1/models; greedy answers.
    tools = LoraLedgerToolkit(client=client, include_free=False, tool_kwargs={"temperature": 0.0}).get_tools()
    for tool in tools:
        print(f"tool {tool.name}: {tool.description}")
    by_name = {t.name: t for t in tools}

    # The standard tool-calling loop.
    llm = KeywordRouter().bind_tools(tools)
    config = {"callbacks": [TraceCallbackHandler(trace)]}
    messages = [HumanMessage(args.question)]
    while True:
        ai = llm.invoke(messages, config=config)
        messages.append(ai)
        if not ai.tool_calls:
            break
        for call in ai.tool_calls:
            result = by_name[call["name"]].invoke(call, config=config)
            messages.append(result)
            if result.status == "success":
                paid = result.artifact
                print(f"{call['name']} answered for {paid.amount_wei} wei (receipt {paid.receipt.call_id[:18]}…)")
            else:
                print(f"{call['name']} refused: {result.content}")
    print(f"Q: {args.question}\nA: {messages[-1].content}")

    # The chat model over one adapter, streamed; the last chunk carries the verified receipt.
    adapter = tools[0].adapter_id
    chat = ChatLoraLedger(model=adapter, client=client, max_tokens=32, temperature=0.0)
    print(f"{adapter} streamed: ", end="", flush=True)
    full = None
    for chunk in chat.stream(args.question):
        print(chunk.text, end="", flush=True)
        full = chunk if full is None else full + chunk
    print(f"\n  paid {full.response_metadata['payment']['amount_wei']} wei")

    # The trace: saved, anchored on chain by the agent's key, and checked against the anchor.
    print(f"spent {budget.spent_session_wei} wei in {len(trace)} trace entries: {', '.join(e.kind for e in trace)}")
    trace.save(args.trace_out)
    contracts = Contracts(chain, deployments)
    anchored = trace.anchor(contracts.anchor, wallet.funding_account)
    Trace.load(args.trace_out).verify_anchor(contracts.anchor, wallet.address)
    print(f"trace saved to {args.trace_out}, root 0x{anchored.root.hex()} anchored and verified")


if __name__ == "__main__":
    main()
