"""The LangChain integration against a real `loraledger serve` on loopback (tiny random model, a priced adapter, the
embedded chain): the standard langchain-tests integration suites for AdapterTool and ChatLoraLedger, paying for
real, and the toolkit reading the runtime's catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests, ToolsIntegrationTests
from loraledger.agents import AdapterTool, ChatLoraLedger, LoraLedgerToolkit
from loraledger.sdk import Budget, Client, Wallet
from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.provider import free_port, rpc_chain

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    # The suites' async tests need pytest-asyncio in strict mode; on sync tests the mark only warns.
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but it is not an async function"),
]

CLI = os.path.join(os.path.dirname(sys.executable), "loraledger")
ADAPTER = "legal"
RUNTIME: dict[str, Any] = {}  # filled by the module's server fixture; the suites build tools and models in properties


@pytest.fixture(scope="module", autouse=True)
def runtime(tmp_path_factory):
    from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

    root = tmp_path_factory.mktemp("agents-runtime")
    model = make_tiny_model(root / "model")
    make_peft_adapter(model, root / "adapters" / ADAPTER, r=8, targets=["q_proj", "v_proj"], seed=2)
    (root / "adapters" / ADAPTER / "loraledger.json").write_text(
        json.dumps({"pricePerInputToken": 10, "pricePerOutputToken": 30, "description": "Contract law answers"})
    )
    port = free_port()
    log = root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [CLI, "serve", "--model", str(model), "--adapters", str(root / "adapters"), "--port", str(port),
             "--data-dir", str(root / "data")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    wallet = Wallet(dev_accounts()[3], chain=rpc_chain(f"{url}/rpc"), deposit_wei=10**9)
    RUNTIME.update(url=url, wallet=wallet)
    yield RUNTIME
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _client(**kwargs) -> Client:
    return Client(base_url=RUNTIME["url"], wallet=RUNTIME["wallet"], **kwargs)


class TestAdapterToolOnARuntime(ToolsIntegrationTests):
    @property
    def tool_constructor(self) -> type[AdapterTool]:
        return AdapterTool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        from loraledger.sdk import AsyncClient

        async_client = AsyncClient(base_url=RUNTIME["url"], wallet=RUNTIME["wallet"])
        return {"adapter_id": ADAPTER, "client": _client(), "async_client": async_client, "max_tokens": 8}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": "Is a verbal agreement to sell land enforceable?", "max_tokens": 8}


class TestChatLoraLedgerOnARuntime(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatLoraLedger]:
        return ChatLoraLedger

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # greedy, so the tiny random model's answer is the same (and non-empty) every time
        return {"model": ADAPTER, "base_url": RUNTIME["url"], "wallet": RUNTIME["wallet"], "max_tokens": 12,
                "temperature": 0.0}  # fmt: skip

    @property
    def supports_model_override(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "base"  # the runtime serves its base model, free, beside the adapters


def test_the_toolkit_reads_the_runtimes_catalog_and_each_call_is_paid_within_budget():
    budget = Budget(max_per_call_wei=10_000)
    (tool,) = LoraLedgerToolkit(client=_client(budget=budget), max_tokens=8).get_tools()
    assert tool.name == ADAPTER and "Contract law answers." in tool.description and "10 wei per input token" in tool.description
    message = tool.invoke({"type": "tool_call", "id": "1", "name": tool.name, "args": {"query": "hello"}})
    assert message.status == "success" and message.artifact.amount_wei == budget.spent_session_wei > 0
    receipt = _client().receipts.get(message.artifact.receipt.call_id)
    assert receipt.receipt.amount_wei == message.artifact.amount_wei

    message = tool.invoke({"type": "tool_call", "id": "2", "name": tool.name, "args": {"query": "hello", "max_tokens": 400}})
    assert message.status == "error" and "smaller max_tokens" in message.content
