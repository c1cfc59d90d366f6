"""The FastAPI app: OpenAI-compatible completions paid per call with x402, plus models, receipts, channels,
adapter uploads, the embedded chain's JSON-RPC, health and metrics."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from loraledger.sdk.adapter_auth import (
    ADAPTER_FILES,
    MAX_VALIDITY_S,
    REQUIRED_ADAPTER_FILES,
    adapter_message,
    files_digest,
    recover_adapter_signer,
)
from loraledger.sdk.chain.devchain import JsonRpcHandler

from ..attribution import AttributionService, epoch_roots
from ..billing.ledger import Ledger
from ..billing.payments import ChannelReader, PaymentGate, PaymentTerms
from ..billing.pricing import Prices, TermsError
from ..billing.receipts import receipts_tree
from ..billing.settler import Settler
from ..chain import RuntimeChain
from ..config import ServeSettings
from ..errors import APIError, error_body
from .calls import Attributor, CallService, data_share_attribution
from .catalog import ADAPTER_NAME, AdapterInfo, Catalog
from .metrics import Metrics
from .schemas import ChatCompletionRequest, CompletionRequest

__all__ = ["Runtime", "create_app"]

logger = logging.getLogger(__name__)



class Runtime:
    """Everything one server process runs: engine, chain, ledger, payment gate, settler, adapter catalog."""

    def __init__(self, settings: ServeSettings, engine, chain: RuntimeChain, *, attributor: Attributor | None = None):
        self.settings = settings
        self.engine = engine
        self.chain = chain
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(settings.data_dir / "ledger.sqlite")
        released = self.ledger.recover()
        if released:
            logger.warning("released %d reservations left without a receipt by the last run", released)
        contracts = chain.contracts
        self.terms = PaymentTerms(
            chain_id=chain.chain.chain_id,
            contract=contracts.channels.address,
            token=contracts.token.address,
            payee=chain.operator.address,
            min_deposit_wei=settings.min_deposit,
            min_withdraw_delay_s=settings.min_withdraw_delay_s,
            max_unsettled_wei=settings.max_unsettled,
        )
        self.gate = PaymentGate(self.terms, ChannelReader(contracts.channels), self.ledger)
        self.metrics = Metrics()
        self.settler = Settler(
            self.ledger, contracts, chain.operator, batch_calls=settings.settle_batch_calls,
            interval_s=settings.settle_interval_s, on_settled=lambda _r: self.metrics.settlements.inc(),
        )  # fmt: skip
        self.catalog = Catalog(engine, contracts, Prices(settings.default_price, settings.default_price))
        self.adapters_dir = settings.adapters or settings.data_dir / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.catalog.load_folder(self.adapters_dir)
        self.attribution = AttributionService(self.adapters_dir)
        self.calls = CallService(
            engine=engine, catalog=self.catalog, ledger=self.ledger, gate=self.gate, settler=self.settler,
            operator=chain.operator, metrics=self.metrics, max_tokens_limit=settings.max_tokens_limit,
            attributor=attributor or self._attribute,
        )  # fmt: skip
        # The public /rpc serves reads and raw transactions only: evm_revert or evm_increaseTime from an outsider
        # would rewrite the history the ledger was settled against.
        self.rpc = JsonRpcHandler(chain.chain, methods=("eth_", "net_", "web3_")) if chain.embedded else None
        self.metrics.bind(
            engine_stats=engine.stats, unsettled=self.ledger.unsettled_amount, forfeited=self.ledger.forfeited_amount,
            last_settled_at=lambda: self.settler.last_settled_at, settlement_error=lambda: self.settler.last_error,
        )  # fmt: skip
        self._started = False

    def _attribute(self, adapter: AdapterInfo, token_ids: list[int], text: str) -> dict[str, Any]:
        """Proof of Attribution over the adapter's training contributions when ModelFactory left an index beside
        it; otherwise the adapter's declared datanet shares."""
        if adapter.folder is not None and self.attribution.has_index(adapter.id):
            return self.attribution.attribute(adapter.id, token_ids).to_json()
        return data_share_attribution(adapter, token_ids, text)

    def start(self) -> None:
        self.engine.start()
        self.settler.start()
        self._started = True

    def close(self) -> None:
        if self._started:
            self.settler.stop()
            self.engine.stop()
            self._started = False
        self.ledger.close()



def create_app(runtime: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        runtime.start()
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(title="loraledger runtime", version="0.1.0", lifespan=lifespan)
    app.state.runtime = runtime
    metrics = runtime.metrics

    @app.middleware("http")
    async def count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")
        metrics.requests.labels(route=name, status=str(response.status_code)).inc()
        metrics.latency.labels(route=name).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        code = "invalid_json" if first.get("type") == "json_invalid" else "invalid_request"
        err = APIError(code, f"{where or 'body'}: {first.get('msg', 'invalid request')}", param=where or None)
        return JSONResponse(error_body(err), status_code=400)

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return JSONResponse(error_body(APIError("internal_error", "internal error")), status_code=500)

    # ------------------------------------------------------------------------------------------- completions

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        call = runtime.calls.prepare(body, body.model_dump(mode="json"))
        return await runtime.calls.run(call, request.headers, str(request.url))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        call = runtime.calls.prepare(body, body.model_dump(mode="json"))
        return await runtime.calls.run(call, request.headers, str(request.url))

    # ------------------------------------------------------------------------------------------- catalog

    @app.get("/v1/models")
    async def models():
        data = []
        for a in runtime.catalog.all():
            data.append({
                "id": a.id, "object": "model", "created": 0, "owned_by": a.owner or runtime.terms.payee,
                "rank": a.rank, "targets": list(a.targets), "description": a.terms.description,
                "price_per_input_token_wei": str(a.terms.prices.input_wei),
                "price_per_output_token_wei": str(a.terms.prices.output_wei),
                "owner": a.owner, "registered": a.registered,
                "datanets": [{"id": d.datanet_id, "weightBps": d.weight_bps} for d in a.terms.datanets],
                "revenue_policy": None if a.terms.revenue is None else {
                    "ownerBps": a.terms.revenue.owner_bps, "dataBps": a.terms.revenue.data_bps,
                    "protocolBps": a.terms.revenue.protocol_bps},
            })  # fmt: skip
        return {"object": "list", "data": data}

    @app.post("/v1/adapters", status_code=201)
    async def upload_adapter(request: Request):
        """Multipart upload of one adapter: form fields `adapter_id`, `expires`, `signature` and one part per file,
        named by its path in the adapter folder (ADAPTER_FILES; data only: safetensors, JSON and numpy arrays
        read without pickle). The signature is EIP-191 over adapter_message("upload", ...) by the adapter's
        registered owner or the operator."""
        limit = runtime.settings.max_upload_bytes
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + (1 << 20):
            raise APIError("payload_too_large", f"the upload is above {limit} bytes")
        try:
            form = await request.form(max_files=len(ADAPTER_FILES), max_fields=8)
        except Exception as exc:  # malformed multipart bodies are the client's error
            raise APIError("invalid_request", f"expected a multipart/form-data body: {exc}") from None
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        uploads = [(k, v) for k, v in form.multi_items() if not isinstance(v, str)]
        try:
            adapter_id, expires, signature = fields["adapter_id"], int(fields["expires"]), fields["signature"]
        except (KeyError, ValueError):
            raise APIError("invalid_request", "the form needs adapter_id, expires (unix seconds) and signature") from None
        if not ADAPTER_NAME.match(adapter_id) or adapter_id == "base":
            raise APIError("invalid_request", f"{adapter_id!r} is not a valid adapter id", param="adapter_id")
        files: dict[str, bytes] = {}
        budget = limit
        for name, upload in uploads:
            if name not in ADAPTER_FILES or name in files:
                raise APIError("invalid_request", f"unexpected file {name!r}; an adapter upload holds {sorted(ADAPTER_FILES)}")
            data = await upload.read(budget + 1)
            budget -= len(data)
            if budget < 0:
                raise APIError("payload_too_large", f"the upload is above {limit} bytes")
            files[name] = data
        missing = REQUIRED_ADAPTER_FILES - set(files)
        if missing:
            raise APIError("invalid_request", f"missing {sorted(missing)}")
        message = adapter_message("upload", adapter_id, chain_id=runtime.terms.chain_id, runtime=runtime.terms.payee,
                                  expires=expires, files=files_digest(files))  # fmt: skip
        _authorize(runtime, adapter_id, message, signature, expires)
        info = await run_in_threadpool(_install, runtime, adapter_id, files)
        return {"id": info.id, "rank": info.rank, "registered": info.registered, "owner": info.owner,
                "attribution": runtime.attribution.has_index(info.id)}  # fmt: skip

    @app.delete("/v1/adapters/{adapter_id}")
    async def delete_adapter(adapter_id: str, expires: int, signature: str):
        if adapter_id not in runtime.catalog or adapter_id == "base":
            raise APIError("model_not_found", f"no adapter {adapter_id!r} here")
        message = adapter_message("delete", adapter_id, chain_id=runtime.terms.chain_id, runtime=runtime.terms.payee,
                                  expires=expires)  # fmt: skip
        _authorize(runtime, adapter_id, message, signature, expires)
        runtime.catalog.remove(adapter_id)
        runtime.attribution.forget(adapter_id)
        shutil.rmtree(runtime.adapters_dir / adapter_id, ignore_errors=True)
        return {"id": adapter_id, "deleted": True}

    # ------------------------------------------------------------------------------------------- payments

    @app.get("/v1/receipts/{call_id}")
    async def receipt(call_id: str):
        try:
            record = runtime.ledger.call(call_id)
        except KeyError:
            raise APIError("not_found", f"no receipt {call_id!r}") from None
        if record.receipt is None:
            raise APIError("not_found", f"call {call_id} has no receipt ({record.state})")
        body: dict[str, Any] = {
            "id": call_id, "receipt": record.receipt | {"signature": record.receipt_signature},
            "network": runtime.terms.network, "contract": runtime.terms.contract, "attribution": record.attribution,
            "settlement": None, "root": None, "proof": None,
        }  # fmt: skip
        settled = runtime.ledger.settlement_of(call_id)
        forfeit = runtime.ledger.forfeit_of(call_id)
        if forfeit is not None:
            body["settlement"] = {"batch": None, "transaction": None, "state": "forfeited", "reason": forfeit}
        elif settled is not None:
            batch_id, tx, state = settled
            body["settlement"] = {"batch": batch_id, "transaction": tx or None, "state": state}
            if state == "settled":
                receipts = [c.receipt for c in runtime.ledger.batch_calls(batch_id)]
                tree = receipts_tree(runtime.terms.domain, receipts)
                mine = receipts.index(record.receipt)
                body["root"] = "0x" + tree.root.hex()
                body["proof"] = ["0x" + p.hex() for p in tree.proof(mine)]
        return body

    @app.get("/v1/channels/{channel_id}")
    async def channel(channel_id: str):
        try:
            cid = "0x" + bytes.fromhex(channel_id.removeprefix("0x")).hex()
        except ValueError:
            raise APIError("invalid_request", "a channel id is 32 bytes of hex") from None
        if len(cid) != 66:
            raise APIError("invalid_request", "a channel id is 32 bytes of hex")
        c = runtime.ledger.channel(cid)
        return {"channelId": cid, "chargedCumulativeAmount": str(c.charged), "settledCumulativeAmount": str(c.settled),
                "reservation": None if c.reserved_call_id is None else {"callId": c.reserved_call_id}}  # fmt: skip

    @app.get("/v1/datanets/{datanet_id}/contributors/{address}")
    async def contributor(datanet_id: int, address: str):
        """What a contributor may claim from this operator's pool of a datanet, with the Merkle proof against the
        last posted epoch root (PaymentChannels.claimContribution takes exactly these)."""
        posted = runtime.ledger.posted_roots().get(datanet_id)
        roots = epoch_roots(runtime.ledger.contributor_totals())
        root = roots.get(datanet_id)
        if posted is None or root is None or "0x" + root.root.hex() != posted[2]:
            raise APIError("not_found", f"no posted epoch root for datanet {datanet_id} yet (settlement pending)")
        try:
            amount, proof = root.proof(address)
        except ValueError:
            raise APIError("not_found", f"{address} has earned nothing from datanet {datanet_id} here") from None
        return {"datanetId": datanet_id, "contributor": address, "operator": runtime.terms.payee,
                "cumulativeAmount": str(amount), "proof": ["0x" + p.hex() for p in proof], "root": posted[2],
                "epoch": posted[1]}  # fmt: skip

    @app.get("/v1/chain")
    async def chain_info(request: Request):
        info = runtime.chain.deployments.to_json() | {"operator": runtime.terms.payee}
        if runtime.rpc is not None:  # the embedded chain is reached through this server's own /rpc
            info["rpcUrl"] = str(request.url_for("rpc"))
        return info

    @app.post("/rpc", name="rpc")
    async def rpc(request: Request):
        if runtime.rpc is None:
            raise APIError("not_found", "this runtime does not run its own chain; see GET /v1/chain")
        raw = await request.body()
        if len(raw) > 8 << 20:
            raise APIError("payload_too_large", "JSON-RPC bodies are limited to 8 MiB")
        return JSONResponse(await run_in_threadpool(runtime.rpc.handle_body, raw))

    # ------------------------------------------------------------------------------------------- ops

    @app.get("/healthz")
    async def healthz():
        stats = runtime.engine.stats()
        return {"status": "ok", "engine": {k: stats[k] for k in ("waiting", "running", "kv_blocks_free")},
                "unsettledWei": str(runtime.ledger.unsettled_amount()), "settlementError": runtime.settler.last_error}  # fmt: skip

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _authorize(runtime: Runtime, adapter_id: str, message: str, signature: str, expires: int) -> None:
    now = int(time.time())
    if not now <= expires <= now + MAX_VALIDITY_S:
        raise APIError("unauthorized", f"expires must be within the next {MAX_VALIDITY_S}s of the runtime's clock")
    try:
        signer = recover_adapter_signer(message, signature)
    except Exception:  # malformed signatures are the client's error
        raise APIError("unauthorized", "the signature does not recover (EIP-191 over the adapter message)") from None
    owner, registered = runtime.catalog.registry_owner(adapter_id)
    allowed = {runtime.terms.payee.lower()} | ({owner.lower()} if registered and owner else set())
    if signer.lower() not in allowed:
        raise APIError("forbidden", f"{signer} may not change adapter {adapter_id!r}: only its registered owner or the operator")


def _install(runtime: Runtime, adapter_id: str, files: dict[str, bytes]):
    """Writes the files to a fresh folder, validates them by registering, then moves it in place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{adapter_id}-", dir=runtime.adapters_dir))
    target = runtime.adapters_dir / adapter_id
    try:
        for name, data in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
        if adapter_id in runtime.catalog:
            runtime.catalog.remove(adapter_id)
        runtime.attribution.forget(adapter_id)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        try:
            return runtime.catalog.add(adapter_id, target)
        except (ValueError, TermsError, OSError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise APIError("invalid_adapter", str(exc).replace(str(target), adapter_id)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
