"""The whole data-to-payout path through the command line, against a running runtime:
datanet → register on the runtime's chain → train (ModelFactory) → publish (registry + signed upload) → a paid
call attributed to the contributions → settlement → the contributor claims its share on chain with the proof."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Contracts, Deployments
from loraledger.sdk.chain.provider import rpc_chain

from .conftest import start_server, stop_server
from .design_agent import DEV_KEYS, Agent

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CLI = Path(sys.executable).with_name("loraledger")
ALICE, BOB = dev_accounts()[6], dev_accounts()[7]
ROWS = [
    {"text": "The statute of frauds requires a contract for the sale of land to be in writing and signed.",
     "contributor": ALICE.address},
    {"text": "A valid will must be in writing and signed by the testator before two adult witnesses.",
     "contributor": BOB.address},
    {"text": "Consideration is something of value that each party gives to the other in a contract.",
     "contributor": ALICE.address},
]  # fmt: skip


def cli(*args: str, cwd: Path) -> str:
    run = subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert run.returncode == 0, f"loraledger {' '.join(args)}:\n{run.stdout}\n{run.stderr}"
    return run.stdout


def test_train_publish_serve_pay_and_contributors_claim(tmp_path):
    from loraledger.runtime.demo.model import build_base_model

    base = build_base_model(tmp_path / "base", [r["text"] for r in ROWS] + ["What is the rule ?"])
    (tmp_path / "adapters").mkdir()
    (tmp_path / "runtime").mkdir()
    # The runtime serves this base model and (so far) no adapters.
    root = tmp_path / "runtime"
    (root / "model").symlink_to(base)
    (root / "adapters").symlink_to(tmp_path / "adapters")
    server = start_server(root, tmp_path / "data")
    try:
        rows = tmp_path / "rows.jsonl"
        rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        store = str(tmp_path / "datanets.sqlite")
        cli("datanets", "create", "law", "--description", "contract law", "--store", store, cwd=tmp_path)
        cli("datanets", "add", "law", str(rows), "--store", store, "--quiet", cwd=tmp_path)
        cli("datanets", "register", "law", "--store", store, "--runtime", server.url, "--dev-account", "4", "--quiet",
            cwd=tmp_path)  # fmt: skip
        out = tmp_path / "law-expert"
        cli("train", "--base", str(base), "--datanet", "law", "--out", str(out), "--epochs", "60", "--lr", "0.01",
            "--store", store, "--device", "cpu", "--quiet", cwd=tmp_path)  # fmt: skip
        published = cli("adapters", "publish", str(out), "--runtime", server.url, "--dev-account", "5",
                        "--price-in", "1000", "--price-out", "3000", "--owner-bps", "5000", "--data-bps", "3000",
                        "--protocol-bps", "500", "--description", "contract law", "--store", store, cwd=tmp_path)  # fmt: skip
        assert "with its attribution index" in published, published
        models = {m["id"]: m for m in httpx.get(server.url + "/v1/models").json()["data"]}
        law = models["law-expert"]
        assert (law["registered"], law["price_per_output_token_wei"], law["description"]) == (True, "3000", "contract law")
        datanet_id = law["datanets"][0]["id"]

        # A paid call: its receipt commits to an attribution record over the training contributions.
        agent = Agent(server.url, payer_key=DEV_KEYS[1], session_key=DEV_KEYS[2])
        agent.open(agent.http.get("/v1/chain").json()["operator"], 10**18)
        body = {"model": "law-expert", "prompt": "The statute of frauds requires", "max_tokens": 16, "temperature": 0}
        r = agent.call("/v1/completions", body)
        assert r.status_code == 200, r.text
        call_id = r.json()["receipt"]["callId"]
        record = httpx.get(f"{server.url}/v1/receipts/{call_id}").json()["attribution"]
        assert record["method"] in ("spans", "data-share") and record["contributors"]
        assert {c["address"] for c in record["contributors"]} <= {ALICE.address, BOB.address}

        # Settlement (per call on the embedded chain) funds the datanet's pool and posts the epoch root.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proof = httpx.get(f"{server.url}/v1/datanets/{datanet_id}/contributors/{ALICE.address}")
            if proof.status_code == 200:
                break
            time.sleep(0.3)
        assert proof.status_code == 200, proof.text
        claim = proof.json()
        chain_info = httpx.get(server.url + "/v1/chain").json()
        contracts = Contracts(rpc_chain(chain_info["rpcUrl"]), Deployments.from_json(chain_info))
        before = contracts.token.balance_of(ALICE.address)
        contracts.channels.claim_contribution(ALICE, claim["operator"], datanet_id, int(claim["cumulativeAmount"]),
                                              [bytes.fromhex(p[2:]) for p in claim["proof"]])  # fmt: skip
        assert contracts.token.balance_of(ALICE.address) - before == int(claim["cumulativeAmount"]) > 0
    finally:
        stop_server(server)
