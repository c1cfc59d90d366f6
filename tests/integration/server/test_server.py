"""The runtime server end to end on loopback: OpenAI shapes, x402 payment per call, receipts, settlement."""

from __future__ import annotations

import json
import time

import openai
from eth_account import Account
import pytest
from eth_utils import keccak

from loraledger.sdk.merkle import leaf_hash, verify

from .conftest import PRICE_IN, PRICE_OUT
from .design_agent import DEV_KEYS, Agent, unb64

pytestmark = [pytest.mark.integration, pytest.mark.slow]
OPERATOR = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
CHAT = {"model": "legal", "messages": [{"role": "user", "content": "What is consideration?"}], "max_tokens": 6}


def test_health_models_and_chain(server):
    with server.client() as c:
        assert c.get("/healthz").json()["status"] == "ok"
        models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
        assert set(models) == {"base", "free", "legal"}
        assert (models["legal"]["rank"], models["legal"]["price_per_output_token_wei"]) == (8, str(PRICE_OUT))
        assert models["free"]["price_per_input_token_wei"] == "0"
        chain = c.get("/v1/chain").json()
        assert set(chain["contracts"]) == {"OpenToken", "DatanetRegistry", "AdapterRegistry", "PaymentChannels",
                                           "TraceAnchor"}  # fmt: skip
        assert chain["rpcUrl"] == server.url + "/rpc"
        rpc = c.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).json()
        assert int(rpc["result"], 16) == chain["chainId"]
        # Dev-chain controls would let anyone rewrite settled history: not served.
        for method in ("evm_snapshot", "evm_revert", "evm_increaseTime", "evm_mine"):
            r = c.post("/rpc", json={"jsonrpc": "2.0", "id": 2, "method": method, "params": []}).json()
            assert r["error"]["code"] == -32601, method


def test_the_official_openai_client_works_for_free_adapters(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    chat = client.chat.completions.create(model="free", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert chat.choices[0].finish_reason in ("length", "stop") and chat.usage.completion_tokens <= 5
    text = client.completions.create(model="base", prompt="Once upon", max_tokens=4, temperature=0)
    assert text.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model="free", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=5, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chunks[-1].usage is not None and 1 <= chunks[-1].usage.completion_tokens <= 5
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert [m.id for m in client.models.list()] == ["base", "free", "legal"]
    # A paid adapter is a 402 for a client that cannot pay.
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="legal", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert err.value.status_code == 402


def test_an_agent_written_from_the_design_page_pays_and_gets_a_signed_receipt(server):
    agent = Agent(server.url)
    agent.open(OPERATOR, 10**18)
    first = agent.http.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 402
    (req,) = unb64(first.headers["PAYMENT-REQUIRED"])["accepts"]
    prompt_cost = int(req["amount"]) - CHAT["max_tokens"] * PRICE_OUT  # the max: whole prompt, every token asked for
    assert prompt_cost > 0 and prompt_cost % PRICE_IN == 0 and req["payTo"] == OPERATOR
    response = agent.call("/v1/chat/completions", CHAT)
    assert response.status_code == 200, response.text
    body = response.json()
    settle = unb64(response.headers["PAYMENT-RESPONSE"])
    receipt = settle["extra"]["receipt"]
    usage = body["usage"]
    cost = usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT
    assert settle["success"] and settle["amount"] == str(cost) == receipt["amount"]
    assert cost <= int(req["amount"]) and receipt["cumulativeAmount"] == str(cost)
    assert agent.receipt_signer(receipt, settle["extra"]["receiptSignature"]) == OPERATOR
    assert receipt["adapterId"] == "0x" + keccak(text="legal").hex()
    assert receipt["outputHash"] == "0x" + keccak(body["choices"][0]["message"]["content"].encode()).hex()
    assert body["receipt"]["signature"] == settle["extra"]["receiptSignature"]
    with server.client() as c:
        channel = c.get(f"/v1/channels/0x{agent.channel_id.hex()}").json()
        assert channel["chargedCumulativeAmount"] == str(cost) and channel["reservation"] is None
        # Settled per call on the embedded chain: the claim lands shortly after the response.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = c.get(f"/v1/receipts/{receipt['callId']}").json()
            if record["proof"] is not None:
                break
            time.sleep(0.2)
        assert record["settlement"]["state"] == "settled" and record["settlement"]["transaction"]
        leaf = leaf_hash(("bytes32",), (bytes.fromhex(_receipt_digest(agent, receipt)[2:]),))
        assert verify(bytes.fromhex(record["root"][2:]), leaf, [bytes.fromhex(p[2:]) for p in record["proof"]])
    assert agent.channels.functions.getChannel(agent.channel_id).call()[2] == cost  # claimed on chain


def _receipt_digest(agent: Agent, receipt: dict) -> str:
    from eth_account.messages import encode_typed_data

    from .design_agent import RECEIPT_TYPES

    message = {k: (bytes.fromhex(v[2:]) if isinstance(v, str) and v.startswith("0x") else int(v)) for k, v in receipt.items()}
    s = encode_typed_data(agent.domain, RECEIPT_TYPES, message)
    return "0x" + keccak(b"\x19" + s.version + s.header + s.body).hex()


def test_retries_replay_stale_vouchers_and_busy_channels(server):
    agent = Agent(server.url, payer_key=DEV_KEYS[3], session_key=DEV_KEYS[4])
    agent.open(OPERATOR, 10**18)
    key = "retry-key-1"
    first = agent.call("/v1/chat/completions", CHAT, key=key)
    assert first.status_code == 200
    charged = agent.charged
    # The same idempotency key is answered again, byte for byte, and not charged again.
    again = agent.call("/v1/chat/completions", CHAT, key=key, cumulative=charged + 10**9)
    assert again.status_code == 200 and again.json() == first.json()
    with server.client() as c:
        assert c.get(f"/v1/channels/0x{agent.channel_id.hex()}").json()["chargedCumulativeAmount"] == str(charged)
        # The same key for another request is a conflict.
        other = agent.call("/v1/chat/completions", {**CHAT, "max_tokens": 3}, key=key, cumulative=charged + 10**9)
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    # A replayed (stale) voucher gets 402 stale_voucher with where the channel stands.
    stale = agent.call("/v1/chat/completions", CHAT, cumulative=charged)
    assert stale.status_code == 402 and stale.json()["error"]["code"] == "stale_voucher"
    extra = unb64(stale.headers["PAYMENT-REQUIRED"])["accepts"][0]["extra"]
    assert extra["chargedCumulativeAmount"] == str(charged)
    # Beyond the deposit.
    broke = agent.call("/v1/chat/completions", CHAT, cumulative=10**18 + 1)
    assert broke.status_code == 402 and broke.json()["error"]["code"] == "insufficient_deposit"


def test_a_paid_stream_ends_with_usage_and_the_receipt(server):
    agent = Agent(server.url, payer_key=DEV_KEYS[5], session_key=DEV_KEYS[2])
    agent.open(OPERATOR, 10**18)
    body = {**CHAT, "stream": True}
    first = agent.http.post("/v1/chat/completions", json=body)
    accepted = unb64(first.headers["PAYMENT-REQUIRED"])["accepts"][0]
    header = agent.payment(accepted, int(accepted["amount"]), "stream-1")
    with agent.http.stream("POST", "/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": header}) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert lines[-3] == "event: payment-response"
    settle = unb64(lines[-2].removeprefix("data: "))
    last = json.loads(lines[-4].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("length", "stop")
    assert last["receipt"]["amount"] == settle["amount"]
    assert int(settle["amount"]) == last["usage"]["prompt_tokens"] * PRICE_IN + last["usage"]["completion_tokens"] * PRICE_OUT
    content = "".join(json.loads(x.removeprefix("data: "))["choices"][0]["delta"].get("content", "")
                      for x in lines[:-4] if x.startswith("data: "))  # fmt: skip
    assert last["receipt"]["outputHash"] == "0x" + keccak(content.encode()).hex()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "model_not_found"),
        (json.dumps({"model": "free", "messages": []}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "free", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}).encode(),
         400, "invalid_request"),
        (json.dumps({"model": "free", "messages": [{"role": "user", "content": "x" * 3000}]}).encode(), 400,
         "context_length_exceeded"),
        (json.dumps({"model": "free", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "invalid_request"),
        (json.dumps({"model": "free", "messages": [{"role": "user", "content": "x"}], "n": 3}).encode(), 400,
         "invalid_request"),
        (json.dumps({"model": "legal", "messages": [{"role": "user", "content": "x"}]}).encode(), 402, "payment_required"),
    ],
)
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, body, status, code):
    with server.client() as c:
        r = c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
        assert c.post("/v1/completions", json={"model": "free", "prompt": "ok", "max_tokens": 2}).status_code == 200


def test_forged_payment_headers_are_refused_without_charging(server):
    agent = Agent(server.url, payer_key=DEV_KEYS[1], session_key=DEV_KEYS[3])  # session key not the channel's
    agent.open(OPERATOR, 10**18)
    agent.session = Account.from_key(DEV_KEYS[4])  # sign with another key
    r = agent.call("/v1/chat/completions", CHAT)
    assert r.status_code == 402 and r.json()["error"]["code"] == "invalid_signature"
    with server.client() as c:
        for junk in ("", "!!!", "e30="):
            r = c.post("/v1/chat/completions", json=CHAT, headers={"PAYMENT-SIGNATURE": junk})
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_payment"
        assert c.get(f"/v1/channels/0x{agent.channel_id.hex()}").json()["chargedCumulativeAmount"] == "0"


def test_metrics(server):
    with server.client() as c:
        c.post("/v1/completions", json={"model": "free", "prompt": "hi", "max_tokens": 2})
        text = c.get("/metrics").text
    for name in ("loraledger_requests_total", "loraledger_tokens_total", "loraledger_queue_requests",
                 "loraledger_adapter_cache", "loraledger_payments_total", "loraledger_unsettled_wei",
                 "loraledger_settlement_lag_seconds"):  # fmt: skip
        assert name in text, name



def _signed_upload(server, adapter_id: str, files: dict[str, bytes], signer, *, expires: int | None = None):
    from loraledger.sdk.adapter_auth import adapter_message, files_digest, sign_adapter_message

    with server.client() as c:
        chain_id = c.get("/v1/chain").json()["chainId"]
        expires = expires or int(time.time()) + 300
        message = adapter_message("upload", adapter_id, chain_id=chain_id, runtime=OPERATOR, expires=expires,
                                  files=files_digest(files))  # fmt: skip
        return c.post("/v1/adapters", data={"adapter_id": adapter_id, "expires": str(expires),
                                            "signature": sign_adapter_message(signer, message)},
                      files={name: (name, data) for name, data in files.items()})  # fmt: skip


def test_adapter_upload_and_delete_need_the_operators_or_owners_signature(server):
    from loraledger.sdk.adapter_auth import adapter_message, sign_adapter_message

    operator, stranger = Account.from_key(DEV_KEYS[0]), Account.from_key(DEV_KEYS[5])
    src = server.root / "adapters" / "free"
    files = {n: (src / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
    assert _signed_upload(server, "uploaded", files, stranger).status_code == 403
    assert _signed_upload(server, "uploaded", files, operator, expires=int(time.time()) - 1).status_code == 401
    broken = {**files, "adapter_model.safetensors": files["adapter_model.safetensors"][:100]}
    for name in ("../escape.json", "adapter_model.bin", "attribution/../../x.npy", "run.py"):  # data files only
        r = _signed_upload(server, "uploaded", {**files, name: b"{}"}, operator)
        assert r.status_code == 400 and "unexpected file" in r.json()["error"]["message"], name
    assert not (server.root / "escape.json").exists()
    bad = _signed_upload(server, "uploaded", broken, operator)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_adapter"
    ok = _signed_upload(server, "uploaded", files, operator)
    assert ok.status_code == 201, ok.text
    assert ok.json() == {"id": "uploaded", "rank": 4, "registered": False, "owner": None, "attribution": False}
    with server.client() as c:
        assert "uploaded" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        r = c.post("/v1/completions", json={"model": "uploaded", "prompt": "hi", "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200
        # The signature binds the files: the same signature over other bytes is refused.
        chain_id = c.get("/v1/chain").json()["chainId"]
        expires = int(time.time()) + 300
        delete = adapter_message("delete", "uploaded", chain_id=chain_id, runtime=OPERATOR, expires=expires)
        r = c.delete("/v1/adapters/uploaded", params={"expires": expires, "signature": sign_adapter_message(stranger, delete)})
        assert r.status_code == 403
        r = c.delete("/v1/adapters/uploaded", params={"expires": expires, "signature": sign_adapter_message(operator, delete)})
        assert r.status_code == 200
        assert "uploaded" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert c.post("/v1/completions", json={"model": "uploaded", "prompt": "hi"}).status_code == 404


def test_one_call_in_flight_per_channel(server):
    """A second call on a channel whose reservation is still running is refused (409 channel_busy): two calls
    must not spend the same voucher raise. Agents open several channels (lanes) for concurrent calls."""
    agent = Agent(server.url, payer_key=DEV_KEYS[4], session_key=DEV_KEYS[5])
    agent.open(OPERATOR, 10**18)
    body = {**CHAT, "stream": True, "max_tokens": 40}
    first = agent.http.post("/v1/chat/completions", json=body)
    accepted = unb64(first.headers["PAYMENT-REQUIRED"])["accepts"][0]
    hold = agent.payment(accepted, int(accepted["amount"]), "hold-1")
    with agent.http.stream("POST", "/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": hold}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)  # the stream has started: the reservation is held
        second = agent.payment(accepted, 2 * int(accepted["amount"]), "second-1")
        busy = agent.http.post("/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": second})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "channel_busy"
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    with server.client() as c:
        channel = c.get(f"/v1/channels/0x{agent.channel_id.hex()}").json()
    assert channel["reservation"] is None and int(channel["chargedCumulativeAmount"]) > 0
