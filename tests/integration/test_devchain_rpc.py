"""The embedded chain's JSON-RPC server answers like a node and survives malformed input."""

from __future__ import annotations

import json
import urllib.request

import pytest

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import deploy_contracts
from loraledger.sdk.chain.devchain import JsonRpcServer
from loraledger.sdk.chain.provider import embedded_chain, rpc_chain
from loraledger.sdk.chain.errors import ContractRevert

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    chain = embedded_chain(accounts=3)
    srv = JsonRpcServer(chain, "127.0.0.1", 0).start()
    yield srv, chain
    srv.stop()


def _post(url: str, body: bytes):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_wire_values_are_hex_quantities(server):
    srv, chain = server
    answer = _post(srv.url, json.dumps({"jsonrpc": "2.0", "id": 7, "method": "eth_chainId", "params": []}).encode())
    assert answer == {"jsonrpc": "2.0", "id": 7, "result": hex(chain.chain_id)}
    block = _post(srv.url, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["latest", False]}).encode())
    assert block["result"]["number"].startswith("0x")
    assert block["result"]["hash"].startswith("0x") and len(block["result"]["hash"]) == 66


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server):
    srv, _ = server
    assert _post(srv.url, b"{not json")["error"]["code"] == -32700
    assert _post(srv.url, b"[1, 2]") == [
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "invalid request"}},
    ] * 2
    unknown = _post(srv.url, json.dumps({"jsonrpc": "2.0", "id": 3, "method": "eth_fooBar", "params": []}).encode())
    assert unknown["error"]["code"] == -32601
    bad_raw = _post(
        srv.url, json.dumps({"jsonrpc": "2.0", "id": 4, "method": "eth_sendRawTransaction", "params": ["0x1234"]}).encode()
    )
    assert "error" in bad_raw
    bad_params = _post(
        srv.url, json.dumps({"jsonrpc": "2.0", "id": 5, "method": "eth_getBalance", "params": [123, {"x": 1}]}).encode()
    )
    assert "error" in bad_params
    batch = _post(
        srv.url,
        json.dumps([
            {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []},
            {"jsonrpc": "2.0", "id": 2, "method": "net_version", "params": []},
        ]).encode(),
    )
    assert [r["id"] for r in batch] == [1, 2] and all("result" in r for r in batch)


def test_reverts_carry_the_custom_error_data_over_http(server):
    srv, chain = server
    operator = dev_accounts(3)[0]
    contracts = deploy_contracts(chain, operator)
    remote = rpc_chain(srv.url, dev=True)
    from loraledger.sdk.chain.contracts import PaymentChannels

    channels = PaymentChannels(remote, contracts.channels.address)
    with pytest.raises(ContractRevert) as info:
        channels.withdraw_earnings(dev_accounts(3)[1])
    assert info.value.name == "NothingToWithdraw"
    with pytest.raises(ContractRevert) as info:
        channels.get_channel(b"\x01" * 32)
    assert info.value.name == "UnknownChannel"
    assert info.value.args_ == (b"\x01" * 32,)


def test_time_travel_and_snapshots_over_rpc(server):
    srv, _ = server
    remote = rpc_chain(srv.url, dev=True)
    before = remote.w3.eth.get_block("latest")["timestamp"]
    snapshot = remote.dev.snapshot()
    remote.dev.increase_time(3600)
    assert remote.w3.eth.get_block("latest")["timestamp"] >= before + 3600
    remote.dev.revert(snapshot)
    assert remote.w3.eth.get_block("latest")["timestamp"] < before + 3600
