"""Paying from an agent: call a priced adapter within a budget, check the receipt, keep and anchor a trace.

Run a runtime with its embedded chain first (it serves the chain at /rpc and its contracts at /v1/chain):

    loraledger serve --model ./tiny-llama --adapters ./adapters

then, with a funded key (dev account 1 of the `test test ... junk` mnemonic holds 1,000,000 OPEN on dev chains):

    LORALEDGER_PRIVATE_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d \\
        python examples/quickstart.py --adapter legal
"""

from __future__ import annotations

import argparse
import os

from loraledger.sdk import Budget, Client, Trace, Wallet
from loraledger.sdk.chain.contracts import Contracts
from loraledger.sdk.chain.provider import rpc_chain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default=os.environ.get("LORALEDGER_BASE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--adapter", help="adapter id (default: the first priced one)")
    parser.add_argument("--trace-out", default="trace.jsonl", help="where to save the reasoning log")
    args = parser.parse_args()

    # Where the runtime's contracts live, and its chain.
    deployments = Client(base_url=args.base_url).deployments.get()
    chain = rpc_chain(deployments.rpc_url)
    contracts = Contracts(chain, deployments)

    # The funding key (LORALEDGER_PRIVATE_KEY) opens channels; a fresh session key signs the vouchers.
    wallet = Wallet.from_env(chain=chain, deposit_wei=10**16)
    budget = Budget(
        max_per_call_wei=10**15,
        max_per_session_wei=10**16,
        contracts=[deployments.contracts["PaymentChannels"]],
        tokens=[deployments.contracts["OpenToken"]],
    )
    trace = Trace()

    with Client(base_url=args.base_url, wallet=wallet, budget=budget, trace=trace) as client:
        models = client.models.list()
        priced = [m for m in models if m.price_per_output_token_wei > 0]
        adapter = args.adapter or priced[0].id
        print("adapters:", ", ".join(f"{m.id} ({m.price_per_output_token_wei}/output token)" for m in models))

        question = [{"role": "user", "content": "Is a verbal agreement to sell land enforceable?"}]
        trace.append("thought", {"text": f"A legal question: ask the {adapter} adapter."})
        quote = client.chat.completions.quote(model=adapter, messages=question, max_tokens=32)
        print(f"quote: at most {quote.max_amount_wei} wei to {quote.payee}; allowed: {quote.allowed}")

        reply = client.chat.completions.create(model=adapter, messages=question, max_tokens=32)
        print("answer:", reply.choices[0].message.content)
        print(f"paid {reply.payment.amount_wei} wei (channel total {reply.payment.cumulative_amount_wei}); "
              f"receipt {reply.receipt.call_id} signed by the operator")  # fmt: skip

        print("streamed: ", end="", flush=True)
        stream = client.chat.completions.create(model=adapter, messages=question, max_tokens=32, stream=True)
        for chunk in stream:
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
        print(f"\npaid {stream.payment.amount_wei} wei for the stream")

    print(f"spent this session: {budget.spent_session_wei} wei over {len(wallet.lanes())} channel(s)")
    trace.save(args.trace_out)
    anchored = trace.anchor(contracts.anchor, wallet.funding_account)
    Trace.load(args.trace_out).verify_anchor(contracts.anchor, wallet.address)
    print(f"trace of {anchored.count} entries saved to {args.trace_out}, root 0x{anchored.root.hex()} anchored")


if __name__ == "__main__":
    main()
