"""The call path: validate → (402 | verify voucher → reserve) → generate → attribute → receipt → charge → respond.

DESIGN.md's call path is the spec. The order of durable writes is what keeps money safe: the reservation is
in the ledger before the engine sees the request; the receipt and the channel's new total are written in one
transaction before the response (or the stream's last event) leaves; any failure in between releases the
reservation, so nothing is ever charged without a receipt.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import rfc8785
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loraledger.sdk import _x402 as x402
from loraledger.sdk.vouchers import Receipt, sign_receipt

from ..billing.ledger import ChannelBusy, IdempotencyConflict, Ledger, StaleVoucher
from ..billing.payments import PaymentGate, PaymentRefused, VerifiedPayment
from ..billing.settler import Settler
from ..engine.engine import GenerationRequest
from ..engine.sampling import SamplingParams
from ..errors import APIError
from .catalog import AdapterInfo, Catalog
from .metrics import Metrics
from .schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["Attributor", "CallService", "PreparedCall", "data_share_attribution"]

logger = logging.getLogger(__name__)

Attributor = Callable[[AdapterInfo, list[int], str], dict[str, Any]]
"""(adapter, output token ids, output text) → the call's attribution record (JSON-able)."""


def data_share_attribution(adapter: AdapterInfo, token_ids: list[int], text: str) -> dict[str, Any]:
    """The fallback attribution: the adapter's datanets by their declared data shares."""
    return {
        "method": "declared-shares",
        "adapter": adapter.id,
        "datanets": [{"datanetId": d.datanet_id, "weightBps": d.weight_bps} for d in adapter.terms.datanets],
        "contributors": [],
    }


def _hash_json(value: Any) -> bytes:
    return keccak(rfc8785.dumps(value))


@dataclass(frozen=True)
class PreparedCall:
    kind: str  # "chat.completion" or "text_completion"
    adapter: AdapterInfo
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    request_hash: str
    created: int


class CallService:
    def __init__(
        self,
        *,
        engine,
        catalog: Catalog,
        ledger: Ledger,
        gate: PaymentGate,
        settler: Settler,
        operator: LocalAccount,
        metrics: Metrics,
        max_tokens_limit: int,
        attributor: Attributor = data_share_attribution,
    ):
        self.engine = engine
        self.catalog = catalog
        self.ledger = ledger
        self.gate = gate
        self.settler = settler
        self.operator = operator
        self.metrics = metrics
        self.max_tokens_limit = max_tokens_limit
        self.attributor = attributor

    # ------------------------------------------------------------------------------------------- prepare

    def prepare(self, body: ChatCompletionRequest | CompletionRequest, raw: dict[str, Any]) -> PreparedCall:
        if body.model not in self.catalog:
            raise APIError("model_not_found", f"no adapter {body.model!r} here; GET /v1/models lists them", param="model")
        adapter = self.catalog.get(body.model)
        tokenizer = self.engine.tokenizer
        if isinstance(body, ChatCompletionRequest):
            kind = "chat.completion"
            try:
                messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            except ValueError as exc:
                raise APIError("invalid_request", str(exc), param="messages") from None
            try:
                prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            except Exception as exc:  # the model's own template rejected the conversation
                raise APIError("invalid_request", f"the chat template rejected the messages: {exc}", param="messages")
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            requested = body.requested_max_tokens()
            include_usage = bool((body.stream_options or {}).get("include_usage", True))
        else:
            kind = "text_completion"
            prompt_ids = tokenizer.encode(body.prompt, add_special_tokens=True)
            requested = body.max_tokens
            include_usage = True
        if not prompt_ids:
            raise APIError("invalid_request", "the prompt is empty", param="prompt")
        room = self.engine.max_model_len - len(prompt_ids)
        if room < 1:
            raise APIError(
                "context_length_exceeded",
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.engine.max_model_len}",
                param="messages" if kind == "chat.completion" else "prompt",
            )
        if requested is not None and requested > min(room, self.max_tokens_limit):
            raise APIError(
                "invalid_request",
                f"max_tokens {requested} is above what this call may generate ({min(room, self.max_tokens_limit)})",
                param="max_tokens",
            )
        max_tokens = requested if requested is not None else min(room, self.max_tokens_limit, 256)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            seed=body.seed,
            stop=body.stop_strings(),
        )
        return PreparedCall(
            kind=kind,
            adapter=adapter,
            prompt_ids=prompt_ids,
            params=params,
            stream=body.stream,
            include_usage=include_usage,
            request_hash="0x" + _hash_json(raw).hex(),
            created=int(time.time()),
        )

    # ------------------------------------------------------------------------------------------- run

    async def run(self, call: PreparedCall, headers: Any, url: str):
        prices = call.adapter.terms.prices
        if prices.free:
            return await self._serve(call, None, call.params)
        max_amount = prices.cost(len(call.prompt_ids), call.params.max_tokens)
        header = headers.get(x402.PAYMENT_SIGNATURE_HEADER)
        if header is None:
            self.metrics.payments.labels(result="required").inc()
            raise self._402(url, call, max_amount, "payment_required", "this adapter is paid: pay with x402 (PAYMENT-REQUIRED)")
        try:
            payment = self.gate.authenticate(header)
            key = payment.idempotency_key or headers.get(x402.IDEMPOTENCY_HEADER) or "call:" + os.urandom(16).hex()
            # A retry of a call that was charged (its response lost to a timeout or a crash) is answered from the
            # ledger before funds are checked: its voucher is stale by then, since the call raised the total.
            existing = self.ledger.call_by_key(key)
            if existing is not None:
                if existing.request_hash != call.request_hash or existing.channel_id != payment.channel_id:
                    raise APIError("idempotency_conflict", f"idempotency key {key!r} was used for another request")
                if existing.state == "charged":
                    self.metrics.payments.labels(result="replayed").inc()
                    return self._replay(call, existing.response)
                if existing.state == "reserved":
                    raise APIError("call_in_progress", f"the call with idempotency key {key!r} is still running")
            payment = self.gate.fund(payment, max_amount)
        except PaymentRefused as refused:
            self.metrics.payments.labels(result=refused.code).inc()
            raise self._402(url, call, max_amount, refused.code, str(refused), status=refused.status,
                            charged=refused.charged_cumulative)  # fmt: skip
        affordable = prices.max_output_tokens(payment.budget_wei, len(call.prompt_ids))
        if affordable < 1:
            raise self._402(url, call, max_amount, "insufficient_voucher",
                            f"the voucher's raise of {payment.budget_wei} does not pay for the prompt and one token",
                            charged=self.ledger.channel(payment.channel_id).charged)  # fmt: skip
        params = call.params
        if affordable < params.max_tokens:
            params = SamplingParams(**{**params.__dict__, "max_tokens": affordable})
        call_id = "0x" + os.urandom(32).hex()
        try:
            # Durable writes wait on fsync: off the event loop, so other calls go on meanwhile.
            await run_in_threadpool(
                self.ledger.reserve,
                call_id=call_id,
                idempotency_key=key,
                request_hash=call.request_hash,
                channel_id=payment.channel_id,
                adapter=call.adapter.id,
                adapter_id="0x" + call.adapter.revenue_id.hex(),
                voucher_amount=payment.voucher.cumulative_amount,
                voucher_call_hash="0x" + payment.voucher.call_hash.hex(),
                voucher_signature="0x" + payment.signature.hex(),
                budget=payment.budget_wei,
            )
        except ChannelBusy as exc:
            raise APIError("channel_busy", f"{exc}") from None
        except StaleVoucher as exc:
            raise self._402(url, call, max_amount, "stale_voucher", str(exc), charged=exc.charged) from None
        except IdempotencyConflict as exc:
            raise APIError("call_in_progress", str(exc)) from None
        self.metrics.payments.labels(result="reserved").inc()
        return await self._serve(call, _Paid(call_id, payment), params)

    def _402(self, url: str, call: PreparedCall, max_amount: int, code: str, message: str, *, status: int = 402,
             charged: int | None = None) -> APIError:  # fmt: skip
        required = self.gate.required(url, call.adapter.terms.prices, max_amount, error=code, charged_cumulative=charged)
        extra = {}
        if status == 402:  # the body repeats the header's requirements, as x402 servers do
            extra = {"x402Version": 2,
                     "accepts": [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in required.accepts]}  # fmt: skip
        headers = {x402.PAYMENT_REQUIRED_HEADER: x402.encode_payment_required(required)}
        return APIError(code, message, status=status, headers=headers, extra=extra)

    # ------------------------------------------------------------------------------------------- serve

    async def _serve(self, call: PreparedCall, paid: _Paid | None, params: SamplingParams):
        request = GenerationRequest(prompt=call.prompt_ids, adapter_id=call.adapter.id, params=params)
        self.metrics.requests_in_flight.inc()
        if call.stream:
            return StreamingResponse(
                self._stream(call, paid, request), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )  # fmt: skip
        try:
            token_ids: list[int] = []
            text: list[str] = []
            finish, usage, error = None, None, None
            async for event in self.engine.generate(request):
                token_ids.extend(event.token_ids)
                text.append(event.text)
                if event.finished:
                    finish, usage, error = event.finish_reason, event.usage, event.error
            if finish in (None, "error", "abort"):
                raise APIError("overloaded" if finish == "abort" else "internal_error",
                               f"generation did not finish ({error if finish else 'no result'}); nothing was charged")  # fmt: skip
            body, settle_header = await self._complete(call, paid, request.request_id, token_ids, "".join(text), finish,
                                                       usage)  # fmt: skip
            headers = {} if settle_header is None else {x402.PAYMENT_RESPONSE_HEADER: settle_header}
            return JSONResponse(body, headers=headers)
        except BaseException:
            if paid is not None:
                self.ledger.release(paid.call_id, "the call failed before its receipt")
            raise
        finally:
            self.metrics.requests_in_flight.dec()

    async def _stream(self, call: PreparedCall, paid: _Paid | None, request: GenerationRequest) -> AsyncIterator[str]:
        chunk_id = request.request_id
        resolved = False  # the reservation was charged or released
        try:
            token_ids: list[int] = []
            text: list[str] = []
            finish, usage, error = None, None, None
            if call.kind == "chat.completion":
                yield _sse(self._chunk(call, chunk_id, {"role": "assistant", "content": ""}, None))
            async for event in self.engine.generate(request):
                token_ids.extend(event.token_ids)
                if event.text:
                    text.append(event.text)
                    delta = {"content": event.text} if call.kind == "chat.completion" else event.text
                    yield _sse(self._chunk(call, chunk_id, delta, None))
                if event.finished:
                    finish, usage, error = event.finish_reason, event.usage, event.error
            if finish in (None, "error", "abort"):
                yield _sse({"error": {"message": f"generation did not finish ({error}); nothing was charged",
                                      "type": "server_error", "code": "internal_error"}}, event="error")  # fmt: skip
                if paid is not None:
                    self.ledger.release(paid.call_id, "generation failed")
                    resolved = True
                return
            body, settle_header = await self._complete(call, paid, request.request_id, token_ids, "".join(text), finish,
                                                       usage)  # fmt: skip
            resolved = True
            last = self._chunk(call, chunk_id, {} if call.kind == "chat.completion" else "", finish)
            if call.include_usage:
                last["usage"] = _usage(usage)
            if paid is not None:
                last["receipt"] = body["receipt"]
            yield _sse(last)
            if settle_header is not None:
                yield f"event: {x402.STREAM_PAYMENT_EVENT}\ndata: {settle_header}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            if paid is not None and not resolved:
                self.ledger.release(paid.call_id, "the stream ended before its receipt")
            self.metrics.requests_in_flight.dec()

    # ------------------------------------------------------------------------------------------- charge

    async def _complete(self, call: PreparedCall, paid: _Paid | None, request_id: str, token_ids: list[int],
                        output: str, finish: str, usage) -> tuple[dict[str, Any], str | None]:  # fmt: skip
        """A finished generation: its OpenAI body and, for a paid call, the receipt charged with it (in the body)
        and the PAYMENT-RESPONSE value. The ledger's fsync runs off the event loop."""
        body = self._body(call, request_id, output, finish, usage)
        settle_header = None
        if paid is not None:
            body["receipt"], settle_header = await run_in_threadpool(
                self._charge, call, paid, token_ids, output, usage, body
            )
        self.metrics.tokens.labels(kind="prompt").inc(usage.prompt_tokens)
        self.metrics.tokens.labels(kind="completion").inc(usage.completion_tokens)
        return body, settle_header

    def _charge(self, call: PreparedCall, paid: _Paid, token_ids: list[int], output: str, usage, body: dict):
        """Attributes the output, signs the receipt and writes it with the channel's new total (one transaction).
        Returns (receipt JSON with signature, PAYMENT-RESPONSE value)."""
        prices = call.adapter.terms.prices
        amount = prices.cost(usage.prompt_tokens, usage.completion_tokens)
        if amount > paid.payment.budget_wei:  # max_tokens was capped to the budget: this is a bug, not a charge
            raise RuntimeError(f"cost {amount} above the voucher's budget {paid.payment.budget_wei}")
        attribution = self.attributor(call.adapter, token_ids, output)
        charged_before = self.ledger.channel(paid.payment.channel_id).charged
        receipt = Receipt(
            call_id=bytes.fromhex(paid.call_id[2:]),
            channel_id=paid.payment.voucher.channel_id,
            adapter_id=call.adapter.onchain_id,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            amount=amount,
            cumulative_amount=charged_before + amount,
            call_hash=paid.payment.voucher.call_hash,
            output_hash=keccak(output.encode()),
            attribution_hash=_hash_json(attribution),
        )
        signature = "0x" + sign_receipt(self.operator, self.gate.terms.domain, receipt).hex()
        receipt_json = _receipt_json(receipt)
        wire = receipt_json | {"signature": signature}
        settle_header = self.gate.settle_response(
            paid.payment.config.payer, amount, receipt.cumulative_amount, receipt_json, signature
        )
        self.ledger.charge(
            paid.call_id,
            amount=amount,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            receipt=receipt_json,
            receipt_signature=signature,
            attribution=attribution,
            response={"body": body | {"receipt": wire}, "paymentResponse": settle_header},
        )
        self.metrics.payments.labels(result="charged").inc()
        self.metrics.charged_wei.inc(amount)
        self.settler.notify()
        return wire, settle_header

    def _replay(self, call: PreparedCall, stored: dict[str, Any]):
        body, settle_header = stored["body"], stored["paymentResponse"]
        if not call.stream:
            return JSONResponse(body, headers={x402.PAYMENT_RESPONSE_HEADER: settle_header})

        async def one_shot() -> AsyncIterator[str]:
            choice = body["choices"][0]
            delta = {"role": "assistant", "content": choice["message"]["content"]} if call.kind == "chat.completion" \
                else choice["text"]  # fmt: skip
            chunk = self._chunk(call, body["id"], delta, choice["finish_reason"])
            chunk["usage"] = body["usage"]
            chunk["receipt"] = body["receipt"]
            yield _sse(chunk)
            yield f"event: {x402.STREAM_PAYMENT_EVENT}\ndata: {settle_header}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(one_shot(), media_type="text/event-stream")

    # ------------------------------------------------------------------------------------------- shapes

    def _body(self, call: PreparedCall, rid: str, output: str, finish: str, usage) -> dict[str, Any]:
        if call.kind == "chat.completion":
            choice = {"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": finish,
                      "logprobs": None}  # fmt: skip
        else:
            choice = {"index": 0, "text": output, "finish_reason": finish, "logprobs": None}
        return {"id": f"{'chatcmpl' if call.kind == 'chat.completion' else 'cmpl'}-{rid}", "object": call.kind,
                "created": call.created, "model": call.adapter.id, "choices": [choice], "usage": _usage(usage)}  # fmt: skip

    def _chunk(self, call: PreparedCall, rid: str, delta: Any, finish: str | None) -> dict[str, Any]:
        if call.kind == "chat.completion":
            return {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": call.created,
                    "model": call.adapter.id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                           "logprobs": None}]}  # fmt: skip
        return {"id": f"cmpl-{rid}", "object": "text_completion", "created": call.created, "model": call.adapter.id,
                "choices": [{"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}]}  # fmt: skip


@dataclass(frozen=True)
class _Paid:
    call_id: str
    payment: VerifiedPayment


def _usage(usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}  # fmt: skip


def _receipt_json(r: Receipt) -> dict[str, Any]:
    m = r.as_message()
    return {k: ("0x" + v.hex() if isinstance(v, bytes) else str(v) if k in ("amount", "cumulativeAmount") else v)
            for k, v in m.items()}  # fmt: skip


def _sse(payload: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(payload, separators=(',', ':'))}\n\n"


