"""A stand-in runtime for tests: an httpx handler that serves the API with a canned model and plays the operator's
side of the payment protocol for real (x402 headers, vouchers checked against PaymentChannels on a real chain,
receipts signed with the operator's key).

    operator = MockOperator(contracts, operator_account, prices={"sql-expert": (2, 5)})
    client = Client(http_client=httpx.Client(transport=operator.transport()), wallet=wallet)

`faults` makes it misbehave in the ways the SDK must catch (see FAULTS). Not a server: no model, no ledger,
no settlement (PAYMENT-RESPONSE's transaction stays empty, as while the runtime defers settlement).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from . import _x402
from .chain.contracts import Contracts
from .vouchers import ChannelConfig, Domain, Receipt, Voucher, adapter_id, channel_id, recover_voucher_signer, sign_receipt

__all__ = ["FAULTS", "MockOperator"]

FAULTS = frozenset(
    {
        "overcharge",  # charge more than the quoted maximum
        "misprice",  # charge within the maximum, but more than the token counts cost
        "bad_signature",  # sign the receipt with another key
        "receipt_other_chain",  # sign the receipt under another chain id's domain
        "inconsistent_cumulative",  # a cumulative amount that is not charged-before + amount
        "wrong_output",  # a receipt whose outputHash commits to another text than the one returned
        "wrong_chain",  # ask for payment on another network
        "no_receipt",  # answer a paid call without PAYMENT-RESPONSE
        "false_stale",  # answer a paid call with stale_voucher, claiming more was charged than receipts say
        "fail_after_charge",  # charge and sign, then answer the first such call 503 (a lost response)
    }
)


def _words(text: str) -> list[str]:
    return text.split()


class MockOperator:
    """The operator's side of the protocol over one deployment; `prices` maps adapter id to (input, output)
    price per token (adapters not listed are free)."""

    def __init__(
        self,
        contracts: Contracts,
        operator: LocalAccount,
        *,
        prices: Mapping[str, tuple[int, int]],
        reply: str = "SELECT name FROM users WHERE active = 1 ORDER BY name LIMIT 10 ;",
        default_max_tokens: int = 16,
        min_deposit_wei: int = 0,
        withdraw_delay_s: int = 3600,
    ) -> None:
        self.contracts = contracts
        self.operator = operator
        self.prices = dict(prices)
        self.reply = reply
        self.default_max_tokens = default_max_tokens
        self.min_deposit_wei = min_deposit_wei
        self.withdraw_delay_s = withdraw_delay_s
        self.chain_id = contracts.chain.chain_id
        self.domain = Domain(self.chain_id, contracts.channels.address)
        self.faults: set[str] = set()
        self.charged: dict[bytes, int] = {}
        self.receipts: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self._completed: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self._failed_once = False
        self._lock = threading.Lock()

    def transport(self) -> httpx.MockTransport:
        """A transport for httpx.Client and httpx.AsyncClient alike."""
        return httpx.MockTransport(self.handle)

    # ------------------------------------------------------------------------------------------ routes

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
            path = request.url.path
            if request.method == "GET" and path == "/v1/models":
                return httpx.Response(200, json={"object": "list", "data": [self._model(m) for m in self.prices]})
            if request.method == "GET" and path.startswith("/v1/receipts/"):
                record = self.receipts.get(path.rsplit("/", 1)[1])
                return httpx.Response(200, json=record) if record else _error(404, "no such receipt")
            if request.method == "GET" and path.startswith("/v1/channels/"):
                cid = bytes.fromhex(path.rsplit("/", 1)[1].removeprefix("0x"))
                return httpx.Response(
                    200, json={"channelId": "0x" + cid.hex(), "chargedCumulativeAmount": str(self.charged.get(cid, 0))}
                )
            if request.method == "GET" and path == "/v1/chain":
                return httpx.Response(200, json=self.contracts.deployments.to_json())
            if request.method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
                return self._complete(request, chat=path == "/v1/chat/completions")
            return _error(404, f"no route {request.method} {path}")

    def _model(self, name: str) -> dict[str, Any]:
        price_in, price_out = self.prices[name]
        return {
            "id": name,
            "object": "model",
            "owned_by": self.operator.address,
            "price_per_input_token_wei": price_in,
            "price_per_output_token_wei": price_out,
        }

    # ------------------------------------------------------------------------------------------ calls

    def _complete(self, request: httpx.Request, *, chat: bool) -> httpx.Response:
        body = json.loads(request.content)
        model = body.get("model")
        if model not in self.prices:
            return _error(404, f"adapter {model!r} not found")
        prompt = " ".join(m.get("content", "") for m in body["messages"]) if chat else body["prompt"]
        input_tokens = len(_words(prompt))
        max_tokens = int(body.get("max_tokens") or self.default_max_tokens)
        output = _words(self.reply)[:max_tokens]
        price_in, price_out = self.prices[model]
        max_amount = input_tokens * price_in + max_tokens * price_out
        if max_amount == 0:
            return self._answer(body, chat, output, input_tokens, None)

        requirements = self._requirements(max_amount, price_in, price_out)
        header = request.headers.get(_x402.PAYMENT_SIGNATURE_HEADER)
        if not header:
            return self._payment_required(requirements, None)
        payload = _x402.decode_payment_signature(header)
        key = _x402.payment_identifier(payload.extensions)
        if key and key in self._completed:  # the same logical call again: the same answer, charged once
            status, headers, content = self._completed[key]
            return httpx.Response(status, headers=headers, content=content)

        accepted = payload.accepted
        if (accepted.scheme, accepted.network, accepted.pay_to, accepted.asset, accepted.amount) != (
            requirements.scheme, requirements.network, requirements.pay_to, requirements.asset, requirements.amount
        ):  # fmt: skip
            return self._payment_required(requirements, "invalid_payment")
        ch = payload.payload["channel"]
        config = ChannelConfig(
            ch["payer"], ch["payerAuthorizer"], ch["payee"], ch["token"], int(ch["withdrawDelay"]),
            bytes.fromhex(ch["salt"].removeprefix("0x")),
        )  # fmt: skip
        voucher_data = payload.payload["voucher"]
        cid = channel_id(self.domain, config)
        if "0x" + cid.hex() != voucher_data["channelId"].lower():
            return self._payment_required(requirements, "invalid_channel")
        state = self.contracts.channels.get_channel(cid)
        if (
            to_checksum_address(state.config.payee) != self.operator.address
            or to_checksum_address(state.config.payer_authorizer) != to_checksum_address(config.payer_authorizer)
            or state.closed
            or state.withdraw_requested_at
        ):
            return self._payment_required(requirements, "invalid_channel")
        voucher = Voucher(cid, int(voucher_data["cumulativeAmount"]), bytes.fromhex(voucher_data["callHash"][2:]))
        signature = bytes.fromhex(payload.payload["signature"].removeprefix("0x"))
        if recover_voucher_signer(self.domain, voucher, signature) != to_checksum_address(config.payer_authorizer):
            return self._payment_required(requirements, "invalid_signature")
        charged = self.charged.get(cid, 0)
        if "false_stale" in self.faults:
            return self._payment_required(requirements, "stale_voucher", charged + max_amount * 3)
        # As the runtime does: a voucher not above the charged total is stale; one above it pays for what its
        # raise affords, up to the call's maximum (fewer output tokens if it falls short).
        if voucher.cumulative_amount <= charged:
            return self._payment_required(requirements, "stale_voucher", charged)
        if voucher.cumulative_amount > state.deposited:
            return self._payment_required(requirements, "insufficient_deposit", charged)
        budget = min(voucher.cumulative_amount - charged, max_amount)
        affordable = max_tokens if price_out == 0 else (budget - input_tokens * price_in) // price_out
        if affordable < 1:
            return self._payment_required(requirements, "insufficient_voucher", charged)
        output = output[:affordable]

        cost = input_tokens * price_in + len(output) * price_out
        if "overcharge" in self.faults:
            cost = max_amount + price_out
        if "misprice" in self.faults:
            cost += 1
        cumulative = charged + cost + (1 if "inconsistent_cumulative" in self.faults else 0)
        call_id = keccak(text=key or str(time.time_ns()))
        receipt = Receipt(
            call_id=call_id,
            channel_id=cid,
            adapter_id=adapter_id(model),
            input_tokens=input_tokens,
            output_tokens=len(output),
            amount=cost,
            cumulative_amount=cumulative,
            call_hash=voucher.call_hash,
            output_hash=keccak(text=" ".join(output) + ("?" if "wrong_output" in self.faults else "")),
            attribution_hash=b"\x00" * 32,
        )
        signer = Account.create() if "bad_signature" in self.faults else self.operator
        domain = Domain(self.chain_id + 1, self.domain.verifying_contract) if "receipt_other_chain" in self.faults else self.domain
        receipt_signature = "0x" + sign_receipt(signer, domain, receipt).hex()
        self.charged[cid] = cumulative
        receipt_json = _receipt_json(receipt)
        self.receipts["0x" + call_id.hex()] = {
            "id": "0x" + call_id.hex(),
            "receipt": {**receipt_json, "signature": receipt_signature},
            "network": requirements.network,
            "contract": self.contracts.channels.address,
        }
        settle = _x402.SettleResponse(
            success=True,
            transaction="",
            network=requirements.network,
            payer=to_checksum_address(config.payer),
            amount=str(cost),
            extra={"chargedCumulativeAmount": str(cumulative), "receipt": receipt_json, "receiptSignature": receipt_signature},
        )
        response = self._answer(body, chat, output, input_tokens, None if "no_receipt" in self.faults else settle)
        if key:
            self._completed[key] = (response.status_code, dict(response.headers), response.content)
        if "fail_after_charge" in self.faults and not self._failed_once:
            self._failed_once = True
            return _error(503, "lost response")
        return response

    def _requirements(self, max_amount: int, price_in: int, price_out: int) -> _x402.PaymentRequirements:
        chain_id = self.chain_id + 1 if "wrong_chain" in self.faults else self.chain_id
        return _x402.PaymentRequirements(
            scheme=_x402.SCHEME,
            network=_x402.network_of(chain_id),
            amount=str(max_amount),
            asset=self.contracts.token.address,
            pay_to=self.operator.address,
            max_timeout_seconds=300,
            extra={
                "contract": self.contracts.channels.address,
                "name": "loraledger",
                "version": "1",
                "pricePerInputToken": str(price_in),
                "pricePerOutputToken": str(price_out),
                "minDeposit": str(self.min_deposit_wei),
                "withdrawDelay": self.withdraw_delay_s,
            },
        )

    def _payment_required(
        self, requirements: _x402.PaymentRequirements, error: str | None, charged: int | None = None
    ) -> httpx.Response:
        if charged is not None:
            requirements = requirements.model_copy(
                update={"extra": {**requirements.extra, "chargedCumulativeAmount": str(charged)}}
            )
        required = _x402.PaymentRequired(
            x402_version=2,
            error=error,
            accepts=[requirements],
            extensions=_x402.payment_identifier_extension("", required=False),
        )
        return httpx.Response(
            402,
            headers={_x402.PAYMENT_REQUIRED_HEADER: _x402.encode_payment_required(required)},
            json={"error": {"message": error or "payment required", "type": "payment_required"}},
        )

    def _answer(
        self, body: dict[str, Any], chat: bool, output: list[str], input_tokens: int, settle: _x402.SettleResponse | None
    ) -> httpx.Response:
        text = " ".join(output)
        usage = {"prompt_tokens": input_tokens, "completion_tokens": len(output), "total_tokens": input_tokens + len(output)}
        rid = ("chatcmpl-" if chat else "cmpl-") + keccak(text=json.dumps(body) + str(time.time_ns())).hex()[:24]
        created = int(time.time())
        model = body["model"]
        if not body.get("stream"):
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "stop"}
            )
            data = {
                "id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model, "choices": [choice], "usage": usage,
            }  # fmt: skip
            headers = {_x402.PAYMENT_RESPONSE_HEADER: _x402.encode_payment_response(settle)} if settle else {}
            return httpx.Response(200, headers=headers, json=data)
        events = []
        kind = "chat.completion.chunk" if chat else "text_completion"
        for i, word in enumerate(output):
            piece = word if i == 0 else " " + word
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat else {"index": 0, "text": piece, "finish_reason": None}
            events.append(f"data: {json.dumps({'id': rid, 'object': kind, 'created': created, 'model': model, 'choices': [choice]})}\n\n")
        last = {"index": 0, "delta": {}, "finish_reason": "stop"} if chat else {"index": 0, "text": "", "finish_reason": "stop"}
        events.append(f"data: {json.dumps({'id': rid, 'object': kind, 'created': created, 'model': model, 'choices': [last], 'usage': usage})}\n\n")
        if settle is not None:
            events.append(f"event: {_x402.STREAM_PAYMENT_EVENT}\ndata: {_x402.encode_payment_response(settle)}\n\n")
        events.append("data: [DONE]\n\n")
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content="".join(events).encode())


def _receipt_json(receipt: Receipt) -> dict[str, Any]:
    m = receipt.as_message()
    return {
        "callId": "0x" + m["callId"].hex(),
        "channelId": "0x" + m["channelId"].hex(),
        "adapterId": "0x" + m["adapterId"].hex(),
        "inputTokens": m["inputTokens"],
        "outputTokens": m["outputTokens"],
        "amount": str(m["amount"]),
        "cumulativeAmount": str(m["cumulativeAmount"]),
        "callHash": "0x" + m["callHash"].hex(),
        "outputHash": "0x" + m["outputHash"].hex(),
        "attributionHash": "0x" + m["attributionHash"].hex(),
    }


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message}})
