"""LangChain integration: adapter tools, toolkit, chat model and a trace callback.

    from loraledger.agents import LoraLedgerToolkit, TraceCallbackHandler
    from loraledger.sdk import Budget, Client, Trace, Wallet

    trace = Trace()
    client = Client(base_url="http://127.0.0.1:8000", wallet=wallet, budget=Budget(max_per_call_wei=10**15),
                    trace=trace)
    tools = LoraLedgerToolkit(client=client).get_tools()       # one paid tool per adapter
    llm.bind_tools(tools).invoke(..., config={"callbacks": [TraceCallbackHandler(trace)]})

Needs langchain-core (`pip install 'loraledger[langchain]'`).
"""

from .callbacks import TraceCallbackHandler
from .chat_models import ChatLoraLedger
from .toolkit import LoraLedgerToolkit
from .tools import AdapterCall, AdapterInput, AdapterTool

__all__ = [
    "AdapterCall",
    "AdapterInput",
    "AdapterTool",
    "ChatLoraLedger",
    "LoraLedgerToolkit",
    "TraceCallbackHandler",
]
