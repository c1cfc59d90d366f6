"""The SDK against a real `loraledger serve` on loopback (tiny random model, embedded chain): it pays, verifies
receipts, streams, survives an unsettled lane, keeps a trace and anchors it on the runtime's chain."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from loraledger.sdk import AsyncClient, Budget, BudgetExceeded, Client, PaymentRequired, Trace, Wallet
from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Contracts
from loraledger.sdk.chain.provider import free_port, rpc_chain

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = Path(sys.executable).with_name("loraledger")
PRICE_IN, PRICE_OUT = 1_000, 3_000
MESSAGES = [{"role": "user", "content": "Is a verbal contract binding?"}]


@pytest.fixture(scope="module")
def runtime_url(tmp_path_factory) -> Iterator[str]:
    engine_testing = pytest.importorskip("loraledger.runtime.engine.testing")
    root = tmp_path_factory.mktemp("sdk-runtime")
    model = engine_testing.make_tiny_model(root / "model")
    engine_testing.make_peft_adapter(model, root / "adapters" / "free", r=4, targets=["q_proj", "v_proj"], seed=1)
    engine_testing.make_peft_adapter(model, root / "adapters" / "legal", r=8, targets=["q_proj", "v_proj"], seed=2)
    (root / "adapters" / "legal" / "loraledger.json").write_text(
        json.dumps({"pricePerInputToken": PRICE_IN, "pricePerOutputToken": PRICE_OUT})
    )
    port = free_port()
    log = root / "serve.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--model", str(root / "model"), "--adapters", str(root / "adapters"),
             "--port", str(port), "--data-dir", str(root / "data")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"loraledger serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"loraledger serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def contracts(runtime_url) -> Contracts:
    deployments = Client(base_url=runtime_url).deployments.get()
    return Contracts(rpc_chain(deployments.rpc_url), deployments)


def test_models_list_prices(runtime_url):
    with Client(base_url=runtime_url) as client:
        models = {m.id: m for m in client.models.list()}
    assert models["legal"].price_per_input_token_wei == PRICE_IN
    assert models["legal"].price_per_output_token_wei == PRICE_OUT
    assert models["free"].price_per_output_token_wei == 0


def test_paid_calls_streams_and_the_trace(runtime_url, contracts, tmp_path):
    payer = dev_accounts()[4]
    wallet = Wallet(payer, chain=contracts.chain, deposit_wei=10**8)
    trace = Trace()
    trace.append("thought", {"text": "a legal question: ask the legal adapter"})
    budget = Budget(max_per_call_wei=10**8, payees=[dev_accounts()[0].address], contracts=[contracts.channels.address])
    with Client(base_url=runtime_url, wallet=wallet, budget=budget, trace=trace) as client:
        free = client.chat.completions.create(model="free", messages=MESSAGES, max_tokens=4)
        assert free.payment is None

        quote = client.chat.completions.quote(model="legal", messages=MESSAGES, max_tokens=6)
        assert quote.allowed and quote.max_amount_wei > 0

        reply = client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=6)
        assert 0 < reply.payment.amount_wei <= quote.max_amount_wei
        assert reply.receipt.input_tokens == reply.usage.prompt_tokens
        record = client.receipts.get(reply.receipt.call_id)  # checked against the wallet's lane (and proof, if rooted)
        assert record.verified and record.receipt.cumulative_amount_wei == reply.payment.cumulative_amount_wei

        stream = client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=6, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert stream.payment.cumulative_amount_wei == reply.payment.cumulative_amount_wei + stream.payment.amount_wei
        assert trace[-2].data["response"]["output"] == [text]

        completion = client.completions.create(model="legal", prompt="The court held", max_tokens=4)
        assert completion.payment.channel_id == reply.payment.channel_id  # one lane, used in turn

    assert budget.spent_session_wei == sum(p.payment.amount_wei for p in (reply, stream, completion))
    assert [e.kind for e in trace][1:] == ["adapter_call"] + ["adapter_call", "receipt"] * 3
    path = tmp_path / "trace.jsonl"
    trace.save(path)
    trace.anchor(contracts.anchor, wallet.funding_account)
    assert Trace.load(path).verify_anchor(contracts.anchor, payer.address).count == len(trace)


def test_budget_and_no_wallet_refuse_before_signing(runtime_url, contracts):
    wallet = Wallet(dev_accounts()[5], chain=contracts.chain)
    with Client(base_url=runtime_url, wallet=wallet, budget=Budget(max_per_call_wei=1)) as client:
        with pytest.raises(BudgetExceeded):
            client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=4)
    assert wallet.lanes() == []
    with Client(base_url=runtime_url) as client, pytest.raises(PaymentRequired) as info:
        client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=4)
    assert info.value.payment_required.accepts[0].scheme == "loraledger-channel"


def test_concurrent_async_calls_use_several_lanes(runtime_url, contracts):
    wallet = Wallet(dev_accounts()[6], chain=contracts.chain, deposit_wei=10**8, max_lanes_per_payee=2)

    async def main():
        async with AsyncClient(base_url=runtime_url, wallet=wallet) as client:
            return await asyncio.gather(
                *[client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=4) for _ in range(4)]
            )

    replies = asyncio.run(main())
    assert all(r.payment is not None for r in replies)
    assert 1 <= len(wallet.lanes()) <= 2
    for lane in wallet.lanes():
        assert lane.settled and lane.charged_wei == max(
            r.payment.cumulative_amount_wei for r in replies if r.payment.channel_id == lane.channel_id_hex
        )


def test_the_quickstart_example_runs(runtime_url, tmp_path):
    example = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORALEDGER_PRIVATE_KEY": dev_accounts()[7].key.hex()}
    result = subprocess.run(
        [sys.executable, str(example), "--base-url", runtime_url, "--adapter", "legal", "--trace-out", str(tmp_path / "t.jsonl")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "anchored" in result.stdout and (tmp_path / "t.jsonl").is_file()


def test_a_contract_wallet_authorizes_the_channel(runtime_url, contracts):
    """A payer whose channels are authorized by a smart-contract wallet (ERC-1271; contracts/test/ERC1271Wallet.sol,
    owned by the session key): the SDK opens the channel with the wallet as payerAuthorizer and signs with the
    session key, the runtime checks the voucher through isValidSignature and charges, the receipt verifies; once the
    wallet revokes, the next call is refused (402), not charged."""
    from tests.conftest import load_test_artifact

    accounts = dev_accounts()
    owner = accounts[6]  # the session key: signs vouchers, and controls the wallet (it pays the revocation's gas)
    artifact = load_test_artifact("ERC1271Wallet")
    address, _ = contracts.chain.deploy(owner, artifact.abi, artifact.bytecode, owner.address)
    wallet = Wallet(accounts[5], chain=contracts.chain, session_key=owner, session_authorizer=address, deposit_wei=10**8)
    budget = Budget(max_per_call_wei=10**8, payees=[accounts[0].address], contracts=[contracts.channels.address])
    with Client(base_url=runtime_url, wallet=wallet, budget=budget) as client:
        reply = client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=6)
        assert reply.payment.amount_wei > 0
        [lane] = wallet.lanes()
        assert lane.config.payer_authorizer == address and wallet.authorizer_address == address
        assert client.receipts.get(reply.receipt.call_id).verified
        charged = client.channels.get(lane.channel_id).charged_cumulative_amount_wei
        contract = contracts.chain.w3.eth.contract(address=address, abi=artifact.abi)
        contracts.chain.send(owner, contract.functions.setRevoked(True))
        with pytest.raises(PaymentRequired, match="invalid_signature|payerAuthorizer|signature"):
            client.chat.completions.create(model="legal", messages=MESSAGES, max_tokens=6)
        assert client.channels.get(lane.channel_id).charged_cumulative_amount_wei == charged
