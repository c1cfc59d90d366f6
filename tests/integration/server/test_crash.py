"""Crash test: concurrent paid clients while the server is killed with SIGKILL at random moments and restarted.

At the end: every 200 carried exactly one receipt, no idempotency key was charged twice, the ledger's totals
equal the sum of the receipts the clients hold, and after settlement the chain's balances (channels claimed,
owner/operator/protocol earnings, the datanet pools) equal the ledger's split to the last unit.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Contracts, RevenuePolicy
from loraledger.sdk.chain.devchain import start_dev_chain
from loraledger.sdk.chain.provider import find_anvil, free_port
from loraledger.sdk.vouchers import adapter_id

from .conftest import start_server, stop_server
from .design_agent import DEV_KEYS, Agent, unb64

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[3]
POLICY = RevenuePolicy(owner_bps=2_000, data_bps=3_000, protocol_bps=500)
WEIGHTS = (7_000, 3_000)
BPS = 10_000
CLIENTS = 4
KILLS = 3


def _client(agent: Agent, results: list, stop: threading.Event, errors: list) -> None:
    """Calls until told to stop, retrying each logical call (same key, same voucher) until it gets an answer."""
    body = {"model": "legal", "messages": [{"role": "user", "content": "Define estoppel."}], "max_tokens": 4}
    while not stop.is_set():
        key = "crash-" + random.randbytes(8).hex()
        payment = None
        for _attempt in range(200):
            try:
                if payment is None:
                    first = agent.http.post("/v1/chat/completions", json=body)
                    if first.status_code != 402:
                        errors.append(f"unpaid call answered {first.status_code}")
                        return
                    accepted = unb64(first.headers["PAYMENT-REQUIRED"])["accepts"][0]
                    payment = agent.payment(accepted, agent.charged + int(accepted["amount"]), key)
                r = agent.http.post("/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": payment})
            except httpx.HTTPError:
                time.sleep(0.3)  # the server is down: retry the same logical call
                continue
            if r.status_code == 409 and r.json()["error"]["code"] == "call_in_progress":
                time.sleep(0.2)
                continue
            if r.status_code >= 500:
                time.sleep(0.3)
                continue
            if r.status_code != 200:
                errors.append(f"{r.status_code}: {r.text}")
                return
            settle = unb64(r.headers["PAYMENT-RESPONSE"])
            receipt = settle["extra"]["receipt"]
            if r.json()["receipt"]["callId"] != receipt["callId"]:
                errors.append("body and header receipts differ")
            agent.charged = int(settle["extra"]["chargedCumulativeAmount"])
            results.append((key, receipt))
            break
        else:
            errors.append(f"call {key} never got an answer")
            return


@pytest.mark.skipif(find_anvil(REPO) is None, reason="anvil is not installed (npm)")
def test_kill_9_under_load_loses_nothing_and_charges_nothing_twice(model_and_adapters, tmp_path):
    dev = start_dev_chain(port=free_port(), use_anvil=True, deployments_path=tmp_path / "deployments.json")
    try:
        contracts: Contracts = dev.contracts
        keys = dev_accounts()
        operator, owner, curator = keys[0], keys[7], keys[8]
        contracts.channels.set_protocol_treasury(operator, keys[9].address)
        datanets = [contracts.datanets.create_datanet(curator, f"ipfs://d{i}") for i in range(2)]
        contracts.adapters.register(owner, adapter_id("legal"), base_model_hash=b"\x01" * 32, weights_hash=b"\x02" * 32,
                                    uri="file://legal", policy=POLICY, datanet_ids=datanets, datanet_weights_bps=WEIGHTS)  # fmt: skip
        port = free_port()
        args = ("--chain", dev.rpc_url, "--deployments", str(tmp_path / "deployments.json"),
                "--operator-key", operator.key.to_0x_hex(), "--settle-every-calls", "3", "--settle-interval-s", "1")  # fmt: skip
        data = tmp_path / "data"
        server = start_server(model_and_adapters, data, *args, port=port)
        agents = []
        for i in range(CLIENTS):
            a = Agent(server.url, payer_key=DEV_KEYS[1 + i], session_key=DEV_KEYS[(2 + i) % 6])
            a.open(operator.address, 10**18)
            agents.append(a)
        before = _balances(contracts, operator.address, owner.address, keys[9].address, datanets)
        results: list = []
        errors: list = []
        stop = threading.Event()
        threads = [threading.Thread(target=_client, args=(a, results, stop, errors)) for a in agents]
        for t in threads:
            t.start()
        rng = random.Random(1234)
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.5, 4.0))
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            time.sleep(rng.uniform(0.0, 1.0))
            server = start_server(model_and_adapters, data, *args, port=port)
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(300)
        assert not errors, errors
        assert len(results) >= 10, f"only {len(results)} calls got through"
        # Settlement catches up (per 3 calls or every second).
        ledger_path = data / "ledger.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            unsettled = httpx.get(server.url + "/healthz").json()["unsettledWei"]
            if unsettled == "0":
                break
            time.sleep(0.5)
        assert unsettled == "0"
        stop_server(server)

        # 1. One receipt per key; a replay carries the same receipt.
        by_key: dict[str, dict] = {}
        for key, receipt in results:
            assert by_key.setdefault(key, receipt) == receipt
        receipts = list(by_key.values())
        assert len({r["callId"] for r in receipts}) == len(receipts)
        # 2. Per channel, the receipts chain without gaps or double charges.
        per_channel: dict[str, list] = {}
        for r in receipts:
            per_channel.setdefault(r["channelId"], []).append(r)
        for cid, rs in per_channel.items():
            rs.sort(key=lambda r: int(r["cumulativeAmount"]))
            total = 0
            for r in rs:
                total += int(r["amount"])
                assert int(r["cumulativeAmount"]) == total, "a gap or a double charge in the receipt chain"
            assert contracts.channels.get_channel(bytes.fromhex(cid[2:])).claimed == total
        # 3. The ledger holds exactly these receipts.
        db = sqlite3.connect(ledger_path)
        charged = {row[0]: json.loads(row[1]) for row in db.execute("SELECT call_id, receipt FROM calls WHERE state = 'charged'")}
        assert set(charged) == {r["callId"] for r in receipts}
        assert db.execute("SELECT COUNT(*) FROM calls WHERE state = 'reserved'").fetchone()[0] == 0
        batches = [json.loads(x) for (x,) in db.execute(
            "SELECT json_group_array(json_array(adapter_id, amount)) FROM calls WHERE state = 'charged'"
            " GROUP BY settlement_id")]  # fmt: skip
        db.close()
        # 4. The chain's split equals the contract's arithmetic over the ledger's batches, to the last unit.
        want = {"owner": 0, "protocol": 0, "operator": 0, "pools": [0, 0]}
        for batch in batches:
            revenue: dict[str, int] = {}
            for aid, amount in batch:
                revenue[aid] = revenue.get(aid, 0) + int(amount)
            for aid, amount in revenue.items():
                assert aid == "0x" + adapter_id("legal").hex()
                o, d, p = amount * POLICY.owner_bps // BPS, amount * POLICY.data_bps // BPS, amount * POLICY.protocol_bps // BPS
                want["owner"] += o
                want["protocol"] += p
                want["operator"] += amount - o - d - p
                first = d * WEIGHTS[0] // BPS
                want["pools"][0] += first
                want["pools"][1] += d - first
        after = _balances(contracts, operator.address, owner.address, keys[9].address, datanets)
        got = {k: (after[k] - before[k]) if k != "pools" else [a - b for a, b in zip(after[k], before[k], strict=True)]
               for k in after}  # fmt: skip
        assert got == want
        assert sum(int(r["amount"]) for r in receipts) == want["owner"] + want["protocol"] + want["operator"] + sum(want["pools"])
    finally:
        dev.close()


def _balances(contracts: Contracts, operator: str, owner: str, treasury: str, datanets: list[int]) -> dict:
    ch = contracts.channels
    return {"owner": ch.earnings(owner), "protocol": ch.earnings(treasury), "operator": ch.earnings(operator),
            "pools": [ch.get_pool(operator, d).funded for d in datanets]}  # fmt: skip
