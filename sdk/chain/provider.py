"""One chain interface over three backends: the embedded in-process EVM, any JSON-RPC URL, and anvil.

Every transaction is signed locally with an eth-account key and sent raw, so the same code paths run on
every backend. Dev chains (embedded and anvil) also expose time travel and snapshots through DevControls.
"""

from __future__ import annotations

import ast
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

from .accounts import DEV_ACCOUNT_COUNT, DEV_HD_PATH, DEV_MNEMONIC
from .errors import ChainError, ContractRevert, TransactionFailed, decode_revert

logger = logging.getLogger(__name__)

DEV_ETH_BALANCE_WEI = 10_000 * 10**18
_GAS_MARGIN = 1.2


class DevControls(Protocol):
    """What tests and the dev chain need beyond plain JSON-RPC."""

    def increase_time(self, seconds: int) -> None: ...
    def snapshot(self) -> Any: ...
    def revert(self, snapshot_id: Any) -> None: ...


class Chain:
    """A connection to an EVM chain: a Web3 instance plus signing, sending and revert decoding."""

    def __init__(
        self,
        w3: Web3,
        *,
        rpc_url: str | None = None,
        dev: DevControls | None = None,
        on_close: Callable[[], None] | None = None,
    ):
        self.w3 = w3
        self.rpc_url = rpc_url
        self.dev = dev
        self._on_close = on_close
        self._chain_id: int | None = None
        self._send_lock = threading.Lock()

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def call(self, fn: ContractFunction, *, sender: str | None = None) -> Any:
        """Runs a view call; reverts raise ContractRevert."""
        try:
            return fn.call({"from": sender} if sender else {})
        except ContractLogicError as exc:
            raise _revert_from(exc) from None

    def send(
        self,
        account: LocalAccount,
        fn: ContractFunction,
        *,
        gas: int | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> TxReceipt:
        """Signs `fn` with `account`, sends it and waits for the receipt; reverts raise ContractRevert.
        `on_sent(tx_hash)` runs once the node accepted the transaction, before waiting for it to be mined."""
        tx = self._base_tx(account)
        try:
            tx = fn.build_transaction(tx | ({"gas": gas} if gas else {}))
        except ContractLogicError as exc:
            raise _revert_from(exc) from None
        return self._sign_and_send(account, tx, replay=fn, on_sent=on_sent)

    def deploy(self, account: LocalAccount, abi: list, bytecode: str, *args: Any) -> tuple[str, TxReceipt]:
        """Deploys a contract and returns (address, receipt)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        try:
            tx = factory.constructor(*args).build_transaction(self._base_tx(account))
        except ContractLogicError as exc:
            raise _revert_from(exc) from None
        receipt = self._sign_and_send(account, tx, replay=None)
        return Web3.to_checksum_address(receipt["contractAddress"]), receipt

    def transfer_eth(self, account: LocalAccount, to: str, amount_wei: int) -> TxReceipt:
        tx = self._base_tx(account) | {"to": Web3.to_checksum_address(to), "value": amount_wei, "gas": 21_000}
        return self._sign_and_send(account, tx, replay=None)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _base_tx(self, account: LocalAccount) -> dict[str, Any]:
        return {"from": account.address, "chainId": self.chain_id}

    def _sign_and_send(
        self,
        account: LocalAccount,
        tx: dict[str, Any],
        replay: ContractFunction | None,
        on_sent: Callable[[str], None] | None = None,
    ) -> TxReceipt:
        with self._send_lock:
            tx = dict(tx)
            tx["nonce"] = self.w3.eth.get_transaction_count(account.address, "pending")
            if "gas" not in tx:
                try:
                    tx["gas"] = int(self.w3.eth.estimate_gas(tx) * _GAS_MARGIN)
                except ContractLogicError as exc:
                    raise _revert_from(exc) from None
            if "maxFeePerGas" not in tx and "gasPrice" not in tx:
                base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas", 0)
                tip = 10**9
                tx["maxPriorityFeePerGas"] = tip
                tx["maxFeePerGas"] = 2 * base_fee + tip
            signed = account.sign_transaction(tx)
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        if on_sent is not None:
            on_sent(HexBytes(tx_hash).to_0x_hex())
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120, poll_latency=0.05)
        if receipt["status"] != 1:
            self._raise_failed(tx, receipt, replay)
        return receipt

    def _raise_failed(self, tx: dict[str, Any], receipt: TxReceipt, replay: ContractFunction | None) -> None:
        call = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        try:
            self.w3.eth.call(call, receipt["blockNumber"] - 1)
        except ContractLogicError as exc:
            raise _revert_from(exc) from None
        raise TransactionFailed(f"transaction {HexBytes(receipt['transactionHash']).to_0x_hex()} failed")


def _revert_from(exc: ContractLogicError) -> ChainError:
    data = exc.data
    if isinstance(data, dict):  # some providers nest the revert data
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x") and len(data) >= 10:
        return decode_revert(data)
    message = str(exc.message if hasattr(exc, "message") else exc)
    return ContractRevert("Error", (message,), b"")


# ---------------------------------------------------------------------------------------------- embedded


def _embedded_provider_class() -> type:
    """Builds the embedded provider class on first use, so importing this module needs no eth-tester."""
    from eth_tester.exceptions import TransactionFailed as TesterTransactionFailed
    from eth_utils import ValidationError
    from web3.providers.eth_tester import EthereumTesterProvider

    class EmbeddedProvider(EthereumTesterProvider):
        """eth-tester behind JSON-RPC semantics: reverts answer {code: 3, data: 0x...} like geth and anvil,
        and the evm_* dev methods (increaseTime, mine, snapshot, revert) behave as on anvil."""

        def __init__(self, tester: Any):
            super().__init__(tester)
            self._time_offset_s = 0
            self._request_id = 0
            # eth-tester is not thread-safe. The runtime reaches one embedded chain from several threads (its
            # settler and the /rpc it serves to agents); unserialised, a transaction sent while another one is
            # being mined fails with BlockNotFound.
            self._lock = threading.RLock()

        def make_request(self, method: str, params: Any) -> dict[str, Any]:
            with self._lock:
                return self._make_request(method, params)

        def _make_request(self, method: str, params: Any) -> dict[str, Any]:
            self._request_id += 1
            rid = self._request_id
            try:
                result = self._dispatch(method, list(params or []))
            except TesterTransactionFailed as exc:
                return {"id": rid, "jsonrpc": "2.0", "error": _revert_error(exc)}
            except ContractLogicError as exc:  # web3's eth-tester glue pre-decodes panics
                data = exc.data if isinstance(exc.data, str) else "0x"
                return {"id": rid, "jsonrpc": "2.0", "error": {"code": 3, "message": str(exc), "data": data}}
            except NotImplementedError:
                return _rpc_error(rid, -32601, f"method not supported by the embedded chain: {method}")
            except (ValidationError, ValueError, TypeError, KeyError) as exc:
                return _rpc_error(rid, -32000, f"{type(exc).__name__}: {exc}")
            return {"id": rid, "jsonrpc": "2.0", "result": result}

        def _dispatch(self, method: str, params: list[Any]) -> Any:
            tester = self.ethereum_tester
            if method == "evm_increaseTime":
                self._time_offset_s += int(params[0], 16) if isinstance(params[0], str) else int(params[0])
                return self._time_offset_s
            if method == "evm_mine":
                self._mine()
                return "0x0"
            if method == "evm_snapshot":
                return tester.take_snapshot()
            if method == "evm_revert":
                snapshot_id = params[0]
                tester.revert_to_snapshot(int(snapshot_id, 16) if isinstance(snapshot_id, str) else snapshot_id)
                return True
            if method == "eth_sendRawTransaction" and self._time_offset_s:
                self._mine()  # apply a pending time increase to the block this transaction lands in
            namespace, _, endpoint = method.partition("_")
            delegator = self.api_endpoints.get(namespace, {}).get(endpoint)
            if delegator is None:
                raise NotImplementedError(method)
            return delegator(tester, params)

        def _mine(self) -> None:
            tester = self.ethereum_tester
            if self._time_offset_s:
                latest = tester.get_block_by_number("latest")["timestamp"]
                # time_travel(t) mines a block at t - 1 and leaves the pending block at t; as on anvil, the
                # mined block should be `offset` past the last one.
                tester.time_travel(latest + self._time_offset_s + 1)
                self._time_offset_s = 0
            else:
                tester.mine_blocks(1)

    return EmbeddedProvider


def _rpc_error(rid: int, code: int, message: str) -> dict[str, Any]:
    return {"id": rid, "jsonrpc": "2.0", "error": {"code": code, "message": message}}


def _revert_error(exc: Exception) -> dict[str, Any]:
    raw = exc.args[0] if exc.args else b""
    if isinstance(raw, Exception):
        raw = raw.args[0] if raw.args else b""
    if isinstance(raw, str) and raw.startswith(("b'", 'b"')):
        raw = ast.literal_eval(raw)  # eth-tester reports eth_call reverts as the repr of the bytes
    if isinstance(raw, str):
        return {"code": 3, "message": f"execution reverted: {raw}", "data": "0x"}
    return {"code": 3, "message": "execution reverted", "data": "0x" + bytes(raw).hex()}


def embedded_chain(accounts: int = DEV_ACCOUNT_COUNT) -> Chain:
    """An in-process EVM (eth-tester on py-evm) whose dev accounts hold DEV_ETH_BALANCE_WEI each.

    Needs the `chain` extra (`pip install loraledger[chain]`).
    """
    try:
        from eth_tester import EthereumTester, PyEVMBackend
    except ImportError as exc:
        raise ChainError("the embedded chain needs eth-tester and py-evm: pip install 'loraledger[chain]'") from exc
    backend = PyEVMBackend.from_mnemonic(
        DEV_MNEMONIC,
        num_accounts=accounts,
        genesis_state_overrides={"balance": DEV_ETH_BALANCE_WEI},
        hd_path=DEV_HD_PATH,
    )
    provider = _embedded_provider_class()(EthereumTester(backend))
    w3 = Web3(provider)
    return Chain(w3, dev=_RpcControls(w3))


# ---------------------------------------------------------------------------------------------- JSON-RPC


class _RpcControls:
    """Dev controls over the evm_* methods that anvil, hardhat and our embedded dev server share."""

    def __init__(self, w3: Web3):
        self._w3 = w3

    def increase_time(self, seconds: int) -> None:
        self._w3.provider.make_request("evm_increaseTime", [int(seconds)])
        self._w3.provider.make_request("evm_mine", [])

    def snapshot(self) -> Any:
        return _result(self._w3.provider.make_request("evm_snapshot", []))

    def revert(self, snapshot_id: Any) -> None:
        if not _result(self._w3.provider.make_request("evm_revert", [snapshot_id])):
            raise ChainError(f"evm_revert({snapshot_id}) failed")


def _result(response: dict[str, Any]) -> Any:
    if "error" in response:
        raise ChainError(f"JSON-RPC error: {response['error']}")
    return response["result"]


def rpc_chain(url: str, *, dev: bool = False, timeout_s: float = 30.0) -> Chain:
    """A chain behind any EVM JSON-RPC URL. `dev=True` enables evm_* time travel and snapshots."""
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s}))
    return Chain(w3, rpc_url=url, dev=_RpcControls(w3) if dev else None)


# ---------------------------------------------------------------------------------------------- anvil


def find_anvil(start: Path | None = None) -> Path | None:
    """Finds the anvil binary: on PATH, or installed by npm (@foundry-rs/anvil-<platform>) above `start`."""
    found = shutil.which("anvil")
    if found and "node_modules/.bin" not in found:
        return Path(found)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        scope = folder / "node_modules" / "@foundry-rs"
        if scope.is_dir():
            for candidate in sorted(scope.glob("anvil-*/bin/anvil")):
                return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def anvil_chain(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    accounts: int = DEV_ACCOUNT_COUNT,
    binary: Path | None = None,
    startup_timeout_s: float = 30.0,
) -> Chain:
    """Starts an anvil node on loopback (the platform binary directly, so it stops by pid) and connects.

    The node's accounts are the dev mnemonic's; `chain.close()` stops it.
    """
    binary = binary or find_anvil(Path(__file__))
    if binary is None:
        raise ChainError("anvil not found: run `npm ci` in the repository or put anvil on PATH")
    port = port or free_port(host)
    cmd = [
        str(binary),
        "--host", host,
        "--port", str(port),
        "--accounts", str(accounts),
        "--mnemonic", DEV_MNEMONIC,
        "--balance", str(DEV_ETH_BALANCE_WEI // 10**18),
        "--hardfork", "cancun",
        "--silent",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{host}:{port}"

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    chain = rpc_chain(url, dev=True)
    chain._on_close = stop
    deadline = time.monotonic() + startup_timeout_s
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise ChainError(f"anvil exited with {proc.returncode}: {err.strip()}")
        try:
            if chain.w3.is_connected():
                break
        except Exception:  # connection refused until anvil listens
            pass
        if time.monotonic() > deadline:
            stop()
            raise ChainError(f"anvil did not answer on {url} within {startup_timeout_s}s")
        time.sleep(0.05)
    logger.info("anvil %s listening on %s (pid %d)", binary, url, proc.pid)
    chain.process = proc
    return chain
