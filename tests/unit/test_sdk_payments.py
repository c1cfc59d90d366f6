"""The payment flow against an operator that really implements the protocol (loraledger.sdk.testing.MockOperator:
vouchers checked against PaymentChannels on a real chain, receipts signed with the operator's key), and every
way it can misbehave."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from loraledger.sdk import (
    AsyncClient,
    Budget,
    BudgetExceeded,
    Client,
    InternalServerError,
    InvalidReceipt,
    PaymentNotAllowed,
    PaymentRequired,
    Trace,
    Wallet,
    WalletError,
    call_hash,
)
from loraledger.sdk import _x402
from loraledger.sdk.chain.contracts import Claim, Revenue
from loraledger.sdk.testing import MockOperator
from loraledger.sdk.vouchers import Domain, Voucher, recover_voucher_signer

ADAPTER = "sql-expert"
PRICE_IN, PRICE_OUT = 2, 5
MESSAGES = [{"role": "user", "content": "list the active users by name"}]  # 6 input tokens
MAX_TOKENS = 20
REPLY_TOKENS = 14  # the operator's canned reply
MAX_AMOUNT = 6 * PRICE_IN + MAX_TOKENS * PRICE_OUT  # what the operator quotes: 112
COST = 6 * PRICE_IN + REPLY_TOKENS * PRICE_OUT  # what it charges: 82


@pytest.fixture
def operator(contracts, accounts):
    return MockOperator(contracts, accounts[0], prices={ADAPTER: (PRICE_IN, PRICE_OUT), "free": (0, 0)})


@pytest.fixture
def wallet(contracts, accounts):
    return Wallet(accounts[1], chain=contracts.chain, deposit_wei=1_000)


def _client(operator, wallet, **kwargs) -> Client:
    kwargs.setdefault("retry_backoff_s", 0.0)
    return Client(base_url="http://runtime.test", http_client=httpx.Client(transport=operator.transport()), wallet=wallet, **kwargs)


def _aclient(operator, wallet, **kwargs) -> AsyncClient:
    kwargs.setdefault("retry_backoff_s", 0.0)
    return AsyncClient(
        base_url="http://runtime.test", http_client=httpx.AsyncClient(transport=operator.transport()), wallet=wallet, **kwargs
    )


def _ask(client, **kwargs):
    return client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=MAX_TOKENS, **kwargs)


def _signed_requests(operator) -> list[httpx.Request]:
    return [r for r in operator.requests if _x402.PAYMENT_SIGNATURE_HEADER in r.headers]


# ---------------------------------------------------------------------------------------------- the happy path


def test_a_paid_call_pays_verifies_the_receipt_and_is_traced(operator, wallet, contracts, accounts):
    trace = Trace()
    trace.append("thought", {"text": "I need the active users; the SQL adapter can write the query."})
    head = trace.head
    budget = Budget(max_per_call_wei=MAX_AMOUNT)
    reply = _ask(_client(operator, wallet, budget=budget, trace=trace))

    assert reply.choices[0].message.content.startswith("SELECT")
    payment, receipt = reply.payment, reply.receipt
    assert payment.amount_wei == receipt.amount_wei == COST
    assert payment.max_amount_wei == MAX_AMOUNT and payment.voucher_amount_wei == MAX_AMOUNT
    assert payment.cumulative_amount_wei == COST and payment.payee == accounts[0].address
    assert receipt.recover_signer(Domain(contracts.chain.chain_id, contracts.channels.address)) == accounts[0].address
    assert budget.spent_session_wei == COST and budget.reserved_wei == 0

    # One logical call: the unpaid request and the paid retry share the idempotency key, which is also the x402
    # payment identifier; the voucher is signed by the session key over charged-so-far + max and the call hash.
    first, paid = operator.requests
    assert first.headers["idempotency-key"] == paid.headers["idempotency-key"] == payment.payment_id
    payload = _x402.decode_payment_signature(paid.headers[_x402.PAYMENT_SIGNATURE_HEADER])
    assert _x402.payment_identifier(payload.extensions) == payment.payment_id
    voucher = payload.payload["voucher"]
    expected_hash = call_hash(json.loads(paid.content), head)
    assert voucher["callHash"] == "0x" + expected_hash.hex() == receipt.call_hash
    assert recover_voucher_signer(
        Domain(contracts.chain.chain_id, contracts.channels.address),
        Voucher(bytes.fromhex(voucher["channelId"][2:]), int(voucher["cumulativeAmount"]), expected_hash),
        bytes.fromhex(payload.payload["signature"][2:]),
    ) == wallet.session_address

    # The channel is on chain, funded by the payer, authorized by the session key.
    (lane,) = wallet.lanes()
    state = contracts.channels.get_channel(lane.channel_id)
    assert state.config.payer == accounts[1].address and state.config.payer_authorizer == wallet.session_address
    assert state.deposited == 1_000 and lane.charged_wei == COST and lane.settled

    # The trace holds the call and its receipt, after the thought the call hash committed to.
    assert [e.kind for e in trace] == ["thought", "adapter_call", "receipt"]
    assert trace[1].data["callHash"] == receipt.call_hash and trace[1].data["traceHead"] == "0x" + head.hex()
    assert trace[2].data["receipt"]["cumulativeAmount"] == str(COST)
    trace.verify()

    # The receipt is retrievable, and the voucher is good for a real on-chain claim.
    assert _client(operator, wallet).receipts.get(receipt.call_id).receipt.amount_wei == COST
    contracts.channels.claim(
        accounts[0],
        [Claim(lane.channel_id, MAX_AMOUNT, COST, expected_hash, bytes.fromhex(payload.payload["signature"][2:]))],
        [Revenue(b"\x00" * 32, COST)],
    )
    assert contracts.channels.get_channel(lane.channel_id).claimed == COST


def test_calls_accumulate_on_one_lane(operator, wallet):
    client = _client(operator, wallet)
    amounts = [_ask(client).payment for _ in range(3)]
    assert [p.cumulative_amount_wei for p in amounts] == [COST, 2 * COST, 3 * COST]
    assert [p.voucher_amount_wei for p in amounts] == [MAX_AMOUNT, COST + MAX_AMOUNT, 2 * COST + MAX_AMOUNT]
    assert len(wallet.lanes()) == 1 and len({p.payment_id for p in amounts}) == 3


def test_free_adapters_are_not_paid(operator, wallet):
    reply = _client(operator, wallet).completions.create(model="free", prompt="hello there")
    assert reply.payment is None and reply.receipt is None and wallet.lanes() == []


def test_paid_stream_carries_its_receipt_at_the_end(operator, wallet):
    trace = Trace()
    budget = Budget()
    stream = _ask(_client(operator, wallet, budget=budget, trace=trace), stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert len(text.split()) == REPLY_TOKENS
    assert stream.payment.amount_wei == COST and stream.receipt.output_tokens == REPLY_TOKENS
    assert budget.spent_session_wei == COST
    assert [e.kind for e in trace] == ["adapter_call", "receipt"] and trace[0].data["response"]["output"] == [text]


def test_a_paid_stream_left_unfinished_counts_its_maximum(operator, wallet):
    budget = Budget()
    with _ask(_client(operator, wallet, budget=budget), stream=True) as stream:
        next(iter(stream))
    assert budget.spent_session_wei == MAX_AMOUNT and budget.reserved_wei == 0
    assert not wallet.lanes()[0].settled and not wallet.lanes()[0].busy

    _ask(_client(operator, wallet, budget=budget), stream=True).close()  # closed before reading anything
    assert budget.spent_session_wei == 2 * MAX_AMOUNT and budget.reserved_wei == 0
    assert not any(lane.busy for lane in wallet.lanes())


def test_async_paid_calls_and_streams(operator, wallet):
    async def main():
        budget = Budget()
        async with _aclient(operator, wallet, budget=budget) as client:
            reply = await client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=MAX_TOKENS)
            stream = await client.completions.create(model=ADAPTER, prompt="one two three", max_tokens=4, stream=True)
            text = "".join([c.choices[0].text async for c in stream])
        return reply, stream, text, budget

    reply, stream, text, budget = asyncio.run(main())
    assert reply.payment.amount_wei == COST
    assert stream.payment.amount_wei == 3 * PRICE_IN + 4 * PRICE_OUT and len(text.split()) == 4
    assert stream.payment.cumulative_amount_wei == COST + stream.payment.amount_wei
    assert budget.spent_session_wei == stream.payment.cumulative_amount_wei


def test_no_wallet_means_payment_required_with_the_terms(operator):
    client = Client(base_url="http://runtime.test", http_client=httpx.Client(transport=operator.transport()))
    with pytest.raises(PaymentRequired) as info:
        _ask(client)
    (requirements,) = info.value.payment_required.accepts
    assert requirements.scheme == "loraledger-channel" and int(requirements.amount) == MAX_AMOUNT


def test_quote_is_a_dry_run(operator, wallet):
    client = _client(operator, wallet, budget=Budget(max_per_call_wei=MAX_AMOUNT - 1))
    quote = client.chat.completions.quote(model=ADAPTER, messages=MESSAGES, max_tokens=MAX_TOKENS)
    assert quote.max_amount_wei == MAX_AMOUNT and quote.price_per_output_token_wei == PRICE_OUT
    assert not quote.allowed and "per-call cap" in quote.reason
    assert _signed_requests(operator) == [] and wallet.lanes() == []
    assert client.completions.quote(model="free", prompt="x").max_amount_wei == 0


# ---------------------------------------------------------------------------------------------- budget


@pytest.mark.parametrize(
    ("budget", "cap"),
    [
        (Budget(max_per_call_wei=MAX_AMOUNT - 1), "per_call"),
        (Budget(max_per_session_wei=MAX_AMOUNT - 1), "per_session"),
        (Budget(max_total_wei=10_000, spent_total_wei=10_000 - MAX_AMOUNT + 1), "total"),
    ],
)
def test_budget_exceeded_before_anything_is_signed(operator, wallet, budget, cap):
    with pytest.raises(BudgetExceeded) as info:
        _ask(_client(operator, wallet, budget=budget))
    assert info.value.cap == cap and info.value.amount_wei == MAX_AMOUNT
    assert _signed_requests(operator) == [] and wallet.lanes() == [] and budget.reserved_wei == 0


def test_session_cap_counts_what_was_paid(operator, wallet):
    budget = Budget(max_per_session_wei=COST + MAX_AMOUNT - 1)
    client = _client(operator, wallet, budget=budget)
    _ask(client)
    with pytest.raises(BudgetExceeded, match="per-session"):
        _ask(client)
    assert budget.spent_session_wei == COST and budget.remaining_wei() == MAX_AMOUNT - 1


@pytest.mark.parametrize("field", ["adapters", "payees", "contracts", "tokens"])
def test_allowlists_refuse_before_anything_is_signed(operator, wallet, contracts, accounts, field):
    allowed = {
        "adapters": ["another-adapter"],
        "payees": [accounts[5].address],
        "contracts": [contracts.anchor.address],
        "tokens": [contracts.anchor.address],
    }[field]
    with pytest.raises(PaymentNotAllowed, match=field.rstrip("s")):
        _ask(_client(operator, wallet, budget=Budget(**{field: allowed})))
    assert _signed_requests(operator) == [] and wallet.lanes() == []


def test_allowlists_that_match_let_the_call_through(operator, wallet, contracts, accounts):
    budget = Budget(
        adapters=[ADAPTER],
        payees=[accounts[0].address.lower()],
        contracts=[contracts.channels.address],
        tokens=[contracts.token.address],
    )
    assert _ask(_client(operator, wallet, budget=budget)).payment.amount_wei == COST


def test_wrong_chain_is_refused_before_anything_is_signed(operator, wallet):
    operator.faults.add("wrong_chain")
    with pytest.raises(PaymentNotAllowed, match="wallet is on"):
        _ask(_client(operator, wallet))
    assert _signed_requests(operator) == [] and wallet.lanes() == []


# ---------------------------------------------------------------------------------------------- misbehaving operators


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("overcharge", "overcharge"),
        ("misprice", "at the quoted prices"),
        ("bad_signature", "not by the payee"),
        ("receipt_other_chain", "not by the payee"),
        ("inconsistent_cumulative", "inconsistent cumulative"),
        ("wrong_output", "another output"),
        ("no_receipt", "without PAYMENT-RESPONSE"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_bad_receipt_is_refused_and_so_is_the_payee(operator, wallet, accounts, fault, message, stream):
    budget = Budget()
    client = _client(operator, wallet, budget=budget)
    _ask(client)  # a good call first, so cumulative amounts are non-trivial
    operator.faults.add(fault)
    with pytest.raises(InvalidReceipt, match=message) as info:
        result = _ask(client, stream=stream)
        if stream:
            list(result)
    assert info.value.payee == accounts[0].address
    assert budget.spent_session_wei == COST + MAX_AMOUNT  # the unverified call counts at its maximum
    assert accounts[0].address in budget.refused_payees()
    assert not wallet.lanes()[0].settled and not wallet.lanes()[0].busy

    operator.faults.clear()
    signed = len(_signed_requests(operator))
    with pytest.raises(PaymentNotAllowed, match="refused"):
        _ask(client)
    assert len(_signed_requests(operator)) == signed


def test_a_false_stale_claim_is_refused(operator, wallet, accounts):
    budget = Budget()
    client = _client(operator, wallet, budget=budget)
    _ask(client)
    operator.faults.add("false_stale")
    with pytest.raises(InvalidReceipt, match="receipts account for"):
        _ask(client)
    assert accounts[0].address in budget.refused_payees()


def test_async_bad_receipt(operator, wallet):
    operator.faults.add("bad_signature")

    async def main():
        async with _aclient(operator, wallet) as client:
            await client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=MAX_TOKENS)

    with pytest.raises(InvalidReceipt):
        asyncio.run(main())


# ---------------------------------------------------------------------------------------------- retries and stale vouchers


def test_a_lost_response_is_retried_with_the_same_key_and_charged_once(operator, wallet):
    operator.faults.add("fail_after_charge")
    budget = Budget()
    reply = _ask(_client(operator, wallet, budget=budget, max_retries=1))
    assert reply.payment.cumulative_amount_wei == COST
    assert operator.charged[wallet.lanes()[0].channel_id] == COST
    signed = _signed_requests(operator)
    assert len(signed) == 2 and signed[0].headers[_x402.PAYMENT_SIGNATURE_HEADER] == signed[1].headers[_x402.PAYMENT_SIGNATURE_HEADER]
    assert len({r.headers["idempotency-key"] for r in operator.requests}) == 1
    assert budget.spent_session_wei == COST


def test_an_unsettled_lane_asks_the_runtime_what_it_charged(operator, wallet):
    operator.faults.add("fail_after_charge")
    budget = Budget()
    client = _client(operator, wallet, budget=budget, max_retries=0)
    with pytest.raises(InternalServerError):
        _ask(client)
    (lane,) = wallet.lanes()
    assert not lane.settled and lane.charged_wei == 0 and lane.authorized_wei == MAX_AMOUNT
    assert budget.spent_session_wei == MAX_AMOUNT  # unknown outcome: counted at its maximum

    # The runtime did charge COST. Before signing on this lane again the SDK asks GET /v1/channels/{id}.
    reply = _ask(client, idempotency_key="a-new-logical-call-0001")
    assert reply.payment.cumulative_amount_wei == 2 * COST
    assert reply.payment.voucher_amount_wei == COST + MAX_AMOUNT
    assert lane.settled and lane.charged_wei == 2 * COST
    asked = [r for r in operator.requests if r.url.path == "/v1/channels/" + lane.channel_id_hex]
    assert len(asked) == 1
    assert len([r for r in _signed_requests(operator) if r.headers["idempotency-key"] == "a-new-logical-call-0001"]) == 1


def test_a_runtime_claiming_more_than_the_lane_could_owe_is_refused(operator, wallet, accounts):
    operator.faults.add("fail_after_charge")
    budget = Budget()
    client = _client(operator, wallet, budget=budget, max_retries=0)
    with pytest.raises(InternalServerError):
        _ask(client)
    lane = wallet.lanes()[0]
    operator.charged[lane.channel_id] = MAX_AMOUNT + 1  # more than any voucher ever signed on the lane
    with pytest.raises(InvalidReceipt, match="receipts account for 0 to"):
        _ask(client)
    assert accounts[0].address in budget.refused_payees()


def test_a_stale_voucher_answer_is_followed_once(operator, wallet):
    """If the charged total the runtime reported is behind its ledger, the voucher is stale: the 402 carries the
    real total and the SDK re-signs on it once, if it is a total the lane could owe."""
    operator.faults.add("fail_after_charge")
    client = _client(operator, wallet, max_retries=0)
    with pytest.raises(InternalServerError):
        _ask(client)
    lane = wallet.lanes()[0]
    operator.charged[lane.channel_id] = MAX_AMOUNT  # the most the lost call could have been charged

    def lagging(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/channels/"):
            return httpx.Response(200, json={"channelId": lane.channel_id_hex, "chargedCumulativeAmount": "0"})
        return operator.handle(request)

    client = Client(base_url="http://runtime.test", http_client=httpx.Client(transport=httpx.MockTransport(lagging)),
                    wallet=wallet, retry_backoff_s=0.0)  # fmt: skip
    reply = _ask(client)
    assert reply.payment.cumulative_amount_wei == MAX_AMOUNT + COST
    assert reply.payment.voucher_amount_wei == 2 * MAX_AMOUNT
    signed = [r for r in _signed_requests(operator) if r.headers["idempotency-key"] == reply.payment.payment_id]
    assert len(signed) == 2  # the stale voucher (0 + max), then max + max


# ---------------------------------------------------------------------------------------------- lanes and the chain


def test_concurrent_calls_open_lanes_up_to_the_limit(operator, contracts, accounts):
    def run(max_lanes: int, calls: int):
        wallet = Wallet(accounts[1], chain=contracts.chain, deposit_wei=1_000, max_lanes_per_payee=max_lanes)
        in_flight, peak = 0, 0
        gate = asyncio.Event()

        async def handler(request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            if _x402.PAYMENT_SIGNATURE_HEADER in request.headers:
                in_flight += 1
                peak = max(peak, in_flight)
                if in_flight >= min(max_lanes, calls):
                    gate.set()
                await asyncio.wait_for(gate.wait(), 10)
                in_flight -= 1
            return operator.handle(request)

        async def main():
            http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            async with AsyncClient(base_url="http://runtime.test", http_client=http, wallet=wallet) as client:
                return await asyncio.gather(
                    *[client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=MAX_TOKENS) for _ in range(calls)]
                )

        replies = asyncio.run(main())
        return wallet, replies, peak

    wallet, replies, peak = run(max_lanes=3, calls=3)
    assert len(wallet.lanes()) == 3 and peak == 3
    assert len({r.payment.channel_id for r in replies}) == 3
    assert all(r.payment.cumulative_amount_wei == COST for r in replies)

    wallet, replies, peak = run(max_lanes=1, calls=3)
    assert len(wallet.lanes()) == 1 and peak == 1
    assert sorted(r.payment.cumulative_amount_wei for r in replies) == [COST, 2 * COST, 3 * COST]


def test_lanes_are_topped_up_on_chain(operator, contracts, accounts):
    wallet = Wallet(accounts[1], chain=contracts.chain, deposit_wei=MAX_AMOUNT + 10)
    client = _client(operator, wallet)
    _ask(client)
    (lane,) = wallet.lanes()
    assert contracts.channels.get_channel(lane.channel_id).deposited == MAX_AMOUNT + 10
    _ask(client)  # needs COST + MAX_AMOUNT > the deposit
    assert contracts.channels.get_channel(lane.channel_id).deposited == 2 * (MAX_AMOUNT + 10)
    assert lane.deposited_wei == 2 * (MAX_AMOUNT + 10)


def test_min_deposit_and_budget_bound_the_deposit(contracts, accounts):
    operator = MockOperator(contracts, accounts[0], prices={ADAPTER: (PRICE_IN, PRICE_OUT)}, min_deposit_wei=500)
    wallet = Wallet(accounts[1], chain=contracts.chain, deposit_wei=100)
    _ask(_client(operator, wallet))
    assert wallet.lanes()[0].deposited_wei == 500
    operator.min_deposit_wei = 0
    wallet = Wallet(accounts[2], chain=contracts.chain, deposit_wei=10**9)
    _ask(_client(operator, wallet, budget=Budget(max_total_wei=600, spent_total_wei=100)))
    assert wallet.lanes()[0].deposited_wei == 500  # never locks up more than the budget can still spend


def test_withdrawal_returns_the_unclaimed_deposit(operator, wallet, contracts, accounts):
    client = _client(operator, wallet)
    _ask(client)
    (lane,) = wallet.lanes()
    before = contracts.token.balance_of(accounts[1].address)
    wallet.initiate_withdraw(lane)
    assert lane.withdraw_requested_at > 0 and not lane.usable
    with pytest.raises(WalletError, match="WithdrawDelayNotElapsed"):
        wallet.finalize_withdraw(lane)
    contracts.chain.dev.increase_time(3601)
    wallet.finalize_withdraw(lane)
    assert lane.closed
    assert contracts.token.balance_of(accounts[1].address) == before + 1_000  # nothing was claimed yet
    _ask(client)  # a withdrawn lane takes no calls: a new one is opened
    assert len(wallet.lanes()) == 2 and wallet.lanes()[1].usable


def test_a_later_session_attaches_its_channel(operator, contracts, accounts):
    session = accounts[7]
    first = Wallet(accounts[1], chain=contracts.chain, session_key=session, deposit_wei=1_000)
    _ask(_client(operator, first))
    channel = first.lanes()[0].channel_id

    later = Wallet(accounts[1], chain=contracts.chain, session_key=session, deposit_wei=1_000)
    lane = later.attach_lane(contracts.channels.address, "0x" + channel.hex())
    assert not lane.settled and lane.deposited_wei == 1_000
    reply = _ask(_client(operator, later))  # learns the charged amount from the stale-voucher answer
    assert reply.payment.cumulative_amount_wei == 2 * COST and lane.settled

    stranger = Wallet(accounts[1], chain=contracts.chain)
    with pytest.raises(WalletError, match="not this session key"):
        stranger.attach_lane(contracts.channels.address, channel)


def test_wallet_keys_from_env_and_keystore(contracts, accounts, tmp_path, monkeypatch):
    from eth_account import Account

    monkeypatch.setenv("LORALEDGER_PRIVATE_KEY", accounts[3].key.hex())
    monkeypatch.setenv("LORALEDGER_SESSION_KEY", accounts[4].key.hex())
    wallet = Wallet.from_env(chain=contracts.chain)
    assert wallet.address == accounts[3].address and wallet.session_address == accounts[4].address
    assert accounts[3].key.hex() not in repr(wallet)

    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(accounts[5].key, "pw", iterations=2)))
    wallet = Wallet.from_keystore(keystore, "pw", chain=contracts.chain)
    assert wallet.address == accounts[5].address and wallet.session_address != accounts[5].address
    with pytest.raises(WalletError, match="cannot decrypt"):
        Wallet.from_keystore(keystore, "wrong", chain=contracts.chain)
    monkeypatch.delenv("LORALEDGER_PRIVATE_KEY")
    with pytest.raises(WalletError, match="not set"):
        Wallet.from_env(chain=contracts.chain)
