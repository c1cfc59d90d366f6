"""The HTTP client over httpx.MockTransport: every resource sync and async, retries, idempotency keys, errors,
timeouts, streaming, environment fallbacks and the flat public API."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import loraledger.sdk as sdk
from loraledger.sdk import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    InternalServerError,
    NotFoundError,
    PaymentRequired,
    RateLimitError,
    Trace,
)
from loraledger.sdk import _exceptions

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "sql-expert",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "SELECT 1"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    "system_fingerprint": "a field this SDK does not know",
}
COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1,
    "model": "sql-expert",
    "choices": [{"index": 0, "text": " world", "finish_reason": "length"}],
}
MODELS = {
    "object": "list",
    "data": [
        {"id": "sql-expert", "object": "model", "owned_by": "0xabc", "price_per_input_token_wei": 2, "price_per_output_token_wei": 5},
        {"id": "free", "object": "model", "owned_by": "0xabc", "new_field": [1, 2]},
    ],
}
RECEIPT = {
    "callId": "0x" + "11" * 32,
    "channelId": "0x" + "22" * 32,
    "adapterId": "0x" + "33" * 32,
    "inputTokens": 3,
    "outputTokens": 2,
    "amount": "16",
    "cumulativeAmount": "116",
    "callHash": "0x" + "44" * 32,
    "outputHash": "0x" + "55" * 32,
    "attributionHash": "0x" + "00" * 32,
    "signature": "0x" + "66" * 65,
}
DEPLOYMENTS = {
    "chainId": 31337,
    "rpcUrl": "http://127.0.0.1:8000/rpc",
    "contracts": {
        name: "0x" + f"{i:040x}"
        for i, name in enumerate(("OpenToken", "DatanetRegistry", "AdapterRegistry", "PaymentChannels", "TraceAnchor"), 1)
    },
}


def _sse(*events: str) -> bytes:
    return "".join(events).encode()


CHAT_STREAM = _sse(
    'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"SEL"}}]}\n\n',
    ": a comment line\n",
    'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ECT 1"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\n',
    "event: some-future-event\ndata: {}\n\n",
    "data: [DONE]\n\n",
)
COMPLETION_STREAM = _sse(
    'data: {"id":"c2","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"hel"}]}\n\n',
    'data: {"id":"c2","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"lo"}]}\n\n',
    "data: [DONE]\n\n",
)


class Runtime:
    """A scripted runtime: answers by route, records every request."""

    def __init__(self, scripted: dict[str, list[httpx.Response | Exception]] | None = None) -> None:
        self.scripted = scripted or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.scripted.get(request.url.path)
        if queue:
            item = queue.pop(0)
            if isinstance(item, Exception):
                raise item
            return item
        path = request.url.path
        if path == "/v1/chat/completions":
            body = json.loads(request.content)
            if body.get("stream"):
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=CHAT_STREAM)
            return httpx.Response(200, json=CHAT)
        if path == "/v1/completions":
            body = json.loads(request.content)
            if body.get("stream"):
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=COMPLETION_STREAM)
            return httpx.Response(200, json=COMPLETION)
        if path == "/v1/models":
            return httpx.Response(200, json=MODELS)
        if path.startswith("/v1/receipts/"):
            return httpx.Response(200, json={"id": path.rsplit("/", 1)[1], "receipt": RECEIPT, "unknown": True})
        if path.startswith("/v1/channels/"):
            return httpx.Response(200, json={"channelId": path.rsplit("/", 1)[1], "chargedCumulativeAmount": "116"})
        if path == "/v1/chain":
            return httpx.Response(200, json=DEPLOYMENTS)
        return httpx.Response(404, json={"error": {"message": "no route"}})


def _client(runtime: Runtime, **kwargs) -> Client:
    kwargs.setdefault("retry_backoff_s", 0.0)
    return Client(base_url="http://runtime.test", http_client=httpx.Client(transport=httpx.MockTransport(runtime)), **kwargs)


def _aclient(runtime: Runtime, **kwargs) -> AsyncClient:
    kwargs.setdefault("retry_backoff_s", 0.0)
    return AsyncClient(
        base_url="http://runtime.test", http_client=httpx.AsyncClient(transport=httpx.MockTransport(runtime)), **kwargs
    )


MESSAGES = [{"role": "user", "content": "count the users"}]


# ---------------------------------------------------------------------------------------------- resources, sync


def test_chat_completion_parses_and_keeps_unknown_fields():
    runtime = Runtime()
    reply = _client(runtime).chat.completions.create(model="sql-expert", messages=MESSAGES, max_tokens=8, temperature=0.0)
    assert isinstance(reply, sdk.ChatCompletion)
    assert reply.choices[0].message.content == "SELECT 1"
    assert reply.usage.completion_tokens == 2
    assert reply.system_fingerprint == "a field this SDK does not know"
    assert reply.receipt is None and reply.payment is None  # a free adapter
    sent = json.loads(runtime.requests[0].content)
    assert sent == {"model": "sql-expert", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.0}
    assert runtime.requests[0].url == "http://runtime.test/v1/chat/completions"


def test_completion_and_extra_body():
    runtime = Runtime()
    reply = _client(runtime).completions.create(model="sql-expert", prompt="hello", extra_body={"top_k": 5})
    assert isinstance(reply, sdk.Completion) and reply.choices[0].text == " world"
    assert json.loads(runtime.requests[0].content) == {"model": "sql-expert", "prompt": "hello", "top_k": 5}


def test_models_list_receipts_channels_and_deployments():
    client = _client(Runtime())
    models = client.models.list()
    assert [m.id for m in models] == ["sql-expert", "free"] and len(models) == 2
    assert models.data[0].price_per_output_token_wei == 5 and models.data[1].price_per_input_token_wei == 0
    record = client.receipts.get(RECEIPT["callId"])
    assert record.id == RECEIPT["callId"]
    assert record.receipt.amount_wei == 16 and record.receipt.cumulative_amount_wei == 116
    assert record.receipt.to_eip712().call_hash == bytes.fromhex("44" * 32)
    assert client.receipts.get(bytes.fromhex("11" * 32)).id == RECEIPT["callId"]
    assert client.channels.get("0x" + "22" * 32).charged_cumulative_amount_wei == 116
    deployments = client.deployments.get()
    assert deployments.chain_id == 31337 and deployments.contracts["TraceAnchor"].endswith("5")


def test_chat_stream_yields_chunks_and_skips_comments_and_unknown_events():
    with _client(Runtime()).chat.completions.create(model="m", messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert all(isinstance(c, sdk.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "SELECT 1"
    assert chunks[-1].usage.total_tokens == 3
    assert stream.receipt is None and stream.payment is None


def test_completion_stream():
    runtime = Runtime()
    stream = _client(runtime).completions.create(model="m", prompt="x", stream=True)
    assert "".join(c.choices[0].text for c in stream) == "hello"
    assert json.loads(runtime.requests[0].content)["stream"] is True
    assert runtime.requests[0].headers["accept"] == "text/event-stream"


def test_stream_error_event_raises():
    runtime = Runtime(
        {"/v1/completions": [httpx.Response(200, content=_sse('event: error\ndata: {"message":"engine died"}\n\n'))]}
    )
    with pytest.raises(sdk.APIError, match="engine died"):
        list(_client(runtime).completions.create(model="m", prompt="x", stream=True))


# ---------------------------------------------------------------------------------------------- resources, async


def test_async_resources():
    async def main():
        runtime = Runtime()
        async with _aclient(runtime) as client:
            reply = await client.chat.completions.create(model="sql-expert", messages=MESSAGES)
            completion = await client.completions.create(model="sql-expert", prompt="hello")
            models = await client.models.list()
            record = await client.receipts.get(RECEIPT["callId"])
            channel = await client.channels.get("0x" + "22" * 32)
            deployments = await client.deployments.get()
            chat_stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            chat_text = "".join([c.choices[0].delta.content or "" async for c in chat_stream])
            async with await client.completions.create(model="m", prompt="x", stream=True) as stream:
                text = "".join([c.choices[0].text async for c in stream])
        return reply, completion, models, record, channel, deployments, chat_text, text

    reply, completion, models, record, channel, deployments, chat_text, text = asyncio.run(main())
    assert reply.choices[0].message.content == "SELECT 1" and reply.receipt is None
    assert completion.choices[0].text == " world"
    assert [m.id for m in models] == ["sql-expert", "free"]
    assert record.receipt.input_tokens == 3
    assert channel.charged_cumulative_amount_wei == 116
    assert deployments.chain_id == 31337
    assert chat_text == "SELECT 1" and text == "hello"


# ---------------------------------------------------------------------------------------------- retries


def test_retries_on_5xx_and_429_reuse_one_idempotency_key():
    runtime = Runtime(
        {
            "/v1/chat/completions": [
                httpx.Response(503, json={"error": {"message": "busy"}}),
                httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}}),
            ]
        }
    )
    reply = _client(runtime).chat.completions.create(model="m", messages=MESSAGES)
    assert reply.id == "chatcmpl-1"
    keys = {r.headers["idempotency-key"] for r in runtime.requests}
    assert len(runtime.requests) == 3 and len(keys) == 1
    assert keys.pop().startswith("ll_")


def test_each_logical_call_gets_its_own_key_unless_given():
    runtime = Runtime()
    client = _client(runtime)
    client.chat.completions.create(model="m", messages=MESSAGES)
    client.chat.completions.create(model="m", messages=MESSAGES)
    client.chat.completions.create(model="m", messages=MESSAGES, idempotency_key="my-key-0123456789")
    keys = [r.headers["idempotency-key"] for r in runtime.requests]
    assert keys[0] != keys[1] and keys[2] == "my-key-0123456789"


def test_retries_connection_errors_then_gives_up():
    runtime = Runtime({"/v1/models": [httpx.ConnectError("refused")] * 3})
    with pytest.raises(APIConnectionError) as info:
        _client(runtime, max_retries=2).models.list()
    assert not isinstance(info.value, APITimeoutError)
    assert len(runtime.requests) == 3

    runtime = Runtime({"/v1/models": [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]})
    assert len(_client(runtime, max_retries=2).models.list()) == 2


def test_timeout_raises_api_timeout_error_and_is_passed_to_httpx():
    runtime = Runtime({"/v1/models": [httpx.ReadTimeout("slow")]})
    with pytest.raises(APITimeoutError):
        _client(runtime, max_retries=0).models.list()

    runtime = Runtime()
    _client(runtime, timeout=3.0).models.list(timeout=1.5)
    _client(runtime, timeout=3.0).models.list()
    assert runtime.requests[0].extensions["timeout"]["read"] == 1.5
    assert runtime.requests[1].extensions["timeout"]["read"] == 3.0


def test_4xx_is_not_retried_and_maps_to_its_class():
    cases = [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, PaymentRequired),
        (403, sdk.PermissionDeniedError),
        (404, NotFoundError),
        (409, sdk.ConflictError),
        (422, sdk.UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (418, sdk.APIStatusError),
    ]
    for status, cls in cases:
        runtime = Runtime({"/v1/models": [httpx.Response(status, json={"error": {"message": f"nope {status}"}})]})
        with pytest.raises(cls, match=f"nope {status}") as info:
            _client(runtime, max_retries=0).models.list()
        assert info.value.status_code == status and info.value.body == {"error": {"message": f"nope {status}"}}
        assert len(runtime.requests) == 1


def test_async_retries_and_errors():
    async def main():
        runtime = Runtime({"/v1/chat/completions": [httpx.Response(502), httpx.ConnectError("reset")]})
        reply = await _aclient(runtime).chat.completions.create(model="m", messages=MESSAGES)
        assert reply.id == "chatcmpl-1"
        assert len({r.headers["idempotency-key"] for r in runtime.requests}) == 1 and len(runtime.requests) == 3
        runtime = Runtime({"/v1/models": [httpx.Response(404, json={"error": {"message": "gone"}})]})
        with pytest.raises(NotFoundError, match="gone"):
            await _aclient(runtime).models.list()
        runtime = Runtime({"/v1/models": [httpx.ReadTimeout("slow")] * 2})
        with pytest.raises(APITimeoutError):
            await _aclient(runtime, max_retries=1).models.list()

    asyncio.run(main())


def test_a_402_without_a_wallet_raises_payment_required():
    runtime = Runtime({"/v1/chat/completions": [httpx.Response(402, json={"error": {"message": "pay first"}})]})
    with pytest.raises(PaymentRequired, match="pay first"):
        _client(runtime).chat.completions.create(model="m", messages=MESSAGES)


def test_malformed_bodies_raise_validation_errors():
    runtime = Runtime({"/v1/models": [httpx.Response(200, content=b"not json")]})
    with pytest.raises(APIResponseValidationError):
        _client(runtime).models.list()
    runtime = Runtime({"/v1/models": [httpx.Response(200, json={"data": [{"no_id": 1}]})]})
    with pytest.raises(APIResponseValidationError):
        _client(runtime).models.list()


# ---------------------------------------------------------------------------------------------- configuration


def test_environment_fallbacks_are_read_in_the_constructor(monkeypatch):
    monkeypatch.setenv("LORALEDGER_BASE_URL", "http://from-env.test/")
    monkeypatch.setenv("LORALEDGER_API_KEY", "secret-key")
    monkeypatch.delenv("LORALEDGER_PRIVATE_KEY", raising=False)
    monkeypatch.delenv("LORALEDGER_KEYSTORE", raising=False)
    runtime = Runtime()
    client = Client(http_client=httpx.Client(transport=httpx.MockTransport(runtime)))
    monkeypatch.setenv("LORALEDGER_BASE_URL", "http://changed-later.test")
    client.models.list()
    assert runtime.requests[0].url == "http://from-env.test/v1/models"
    assert runtime.requests[0].headers["authorization"] == "Bearer secret-key"
    assert "secret-key" not in repr(client)
    assert client.wallet is None

    explicit = Client(base_url="http://arg.test", api_key="k2", http_client=httpx.Client(transport=httpx.MockTransport(runtime)))
    explicit.models.list()
    assert runtime.requests[1].url == "http://arg.test/v1/models"
    assert runtime.requests[1].headers["authorization"] == "Bearer k2"


def test_wallet_from_environment(monkeypatch):
    from loraledger.sdk.chain.accounts import dev_accounts

    payer = dev_accounts(2)[1]
    monkeypatch.setenv("LORALEDGER_PRIVATE_KEY", payer.key.hex())
    monkeypatch.setenv("LORALEDGER_RPC_URL", "http://127.0.0.1:1/rpc")
    client = Client(base_url="http://runtime.test")
    assert client.wallet is not None and client.wallet.address == payer.address
    assert client.wallet.chain.rpc_url == "http://127.0.0.1:1/rpc"
    assert payer.key.hex() not in repr(client)


def test_with_options_and_headers():
    runtime = Runtime()
    client = _client(runtime, default_headers={"X-Agent": "a1"})
    other = client.with_options(max_retries=0, trace=Trace())
    assert other.max_retries == 0 and other.trace is not None and other.base_url == client.base_url
    other.models.list(timeout=2)
    client.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"X-Run": "r1"})
    assert runtime.requests[0].headers["x-agent"] == "a1" and "idempotency-key" not in runtime.requests[0].headers
    assert runtime.requests[1].headers["x-run"] == "r1"


def test_free_calls_with_a_trace_are_recorded():
    trace = Trace()
    _client(Runtime(), trace=trace).chat.completions.create(model="sql-expert", messages=MESSAGES)
    (entry,) = trace.entries
    assert entry.kind == "adapter_call"
    assert entry.data["model"] == "sql-expert" and entry.data["response"]["output"] == ["SELECT 1"]
    trace.verify()


# ---------------------------------------------------------------------------------------------- public API


def test_public_api_is_flat_sorted_and_complete():
    assert sdk.__all__ == sorted(sdk.__all__)
    for name in sdk.__all__:
        assert hasattr(sdk, name), name
    for name in _exceptions.__all__:
        assert name in sdk.__all__, name
    for name in ("Client", "AsyncClient", "Wallet", "Budget", "Trace", "BudgetExceeded", "InvalidReceipt"):
        assert name in sdk.__all__


def test_every_error_has_one_root_and_the_tree_is_documented():
    doc = _exceptions.__doc__
    for name in _exceptions.__all__:
        cls = getattr(_exceptions, name)
        assert issubclass(cls, sdk.LoraLedgerError), name
        assert name in doc, f"{name} missing from the exception tree"
    assert issubclass(PaymentRequired, sdk.APIStatusError)
    assert issubclass(sdk.BudgetExceeded, sdk.PaymentError) and issubclass(sdk.InvalidReceipt, sdk.PaymentError)
