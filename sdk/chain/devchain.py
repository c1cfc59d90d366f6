"""A local development chain: the embedded EVM served over JSON-RPC on loopback (or anvil), with the
contracts deployed and the dev accounts funded with ETH and OPEN."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from .accounts import DEV_ACCOUNT_COUNT, dev_accounts
from .contracts import OPEN, Contracts, deploy_contracts
from .provider import Chain, anvil_chain, embedded_chain

logger = logging.getLogger(__name__)

DEV_OPEN_PER_ACCOUNT = 1_000_000 * OPEN
_MAX_BODY_BYTES = 8 * 1024 * 1024


def _to_json_rpc(value: Any) -> Any:
    """web3-formatted values to JSON-RPC wire values: integers as hex quantities, bytes as 0x-hex."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {k: _to_json_rpc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_rpc(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON-RPC")


class JsonRpcHandler:
    """Answers JSON-RPC requests (single and batch) against one embedded Chain, one request at a time.

    Used by JsonRpcServer and by the runtime, which serves its embedded chain at `/rpc`."""

    def __init__(self, chain: Chain, *, methods: tuple[str, ...] | None = None):
        """`methods`: the method-name prefixes served (e.g. ("eth_", "net_", "web3_") keeps the evm_* time travel
        and snapshot methods away from the public); None serves everything the chain knows."""
        bare = Web3(chain.w3.provider, middleware=[])
        self._request = chain.w3.provider.request_func(bare, bare.middleware_onion)
        self._lock = threading.Lock()
        self._methods = methods

    def handle_body(self, raw: bytes) -> Any:
        """The response to one HTTP body: a response object, or a list of them for a batch."""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}
        if isinstance(body, list):
            if not body:
                return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "empty batch"}}
            return [self.handle(item) for item in body]
        return self.handle(body)

    def handle(self, request: Any) -> dict[str, Any]:
        """Answers one JSON-RPC request object."""
        rid = request.get("id") if isinstance(request, dict) else None
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32600, "message": "invalid request"}}
        params = request.get("params") or []
        if self._methods is not None and not request["method"].startswith(self._methods):
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"method not served: {request['method']}"}}
        with self._lock:
            try:
                response = self._request(request["method"], params)
            except Exception as exc:  # a malformed request must not take the chain down
                logger.debug("rpc %s failed", request["method"], exc_info=True)
                return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"{type(exc).__name__}: {exc}"}}
        if "error" in response:
            return {"jsonrpc": "2.0", "id": rid, "error": dict(response["error"])}
        return {"jsonrpc": "2.0", "id": rid, "result": _to_json_rpc(response.get("result"))}


class JsonRpcServer:
    """Serves one embedded Chain over HTTP JSON-RPC on its own thread."""

    def __init__(self, chain: Chain, host: str = "127.0.0.1", port: int = 8545):
        self.handler = JsonRpcHandler(chain)
        rpc = self.handler

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                if length > _MAX_BODY_BYTES:
                    self._reply(413, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "too large"}})
                    return
                self._reply(200, rpc.handle_body(self.rfile.read(length)))

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                logger.debug("rpc %s", format % args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def handle(self, request: Any) -> dict[str, Any]:
        """Answers one JSON-RPC request object."""
        return self.handler.handle(request)

    def start(self) -> JsonRpcServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loraledger-rpc", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class DevChain:
    """A running dev chain: where it listens, its contracts and its funded accounts."""

    rpc_url: str
    chain: Chain
    contracts: Contracts
    accounts: tuple[LocalAccount, ...]
    _server: JsonRpcServer | None = None

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self.chain.close()


def start_dev_chain(
    *,
    host: str = "127.0.0.1",
    port: int = 8545,
    accounts: int = DEV_ACCOUNT_COUNT,
    use_anvil: bool = False,
    deployments_path: Path | None = None,
) -> DevChain:
    """Starts a dev chain on loopback, deploys the contracts, funds `accounts` dev accounts with ETH and
    1,000,000 OPEN each, and writes the deployments file when `deployments_path` is given."""
    keys = dev_accounts(accounts)
    if use_anvil:
        chain = anvil_chain(host=host, port=port, accounts=accounts)
        server = None
        url = chain.rpc_url
    else:
        chain = embedded_chain(accounts)
        server = JsonRpcServer(chain, host, port).start()
        url = server.url
        chain.rpc_url = url
    try:
        contracts = deploy_contracts(
            chain, keys[0], fund=[k.address for k in keys], fund_amount=DEV_OPEN_PER_ACCOUNT
        )
        contracts.deployments.rpc_url = url
        if deployments_path is not None:
            contracts.deployments.save(deployments_path)
    except BaseException:
        if server is not None:
            server.stop()
        chain.close()
        raise
    return DevChain(rpc_url=url, chain=chain, contracts=contracts, accounts=keys, _server=server)
