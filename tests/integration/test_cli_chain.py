"""`loraledger chain` runs a dev chain that an outside web3 script can open a channel on and claim against."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraledger.sdk.chain.provider import find_anvil, free_port

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "sdk" / "chain" / "artifacts"
CLI = Path(sys.executable).with_name("loraledger")

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    deployments = tmp_path / "deployments.json"
    port = free_port()
    proc = subprocess.Popen(
        [str(CLI), "chain", "--port", str(port), "--accounts", "4", "--deployments", str(deployments), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Ctrl-C stops the chain" in line:
            return proc, deployments
    proc.kill()
    raise AssertionError("dev chain did not start:\n" + "".join(lines) + proc.stderr.read())


@pytest.mark.parametrize("backend", ["embedded", pytest.param("anvil", marks=pytest.mark.anvil)])
def test_outside_web3_script_opens_and_claims_then_sigterm_stops_cleanly(tmp_path, backend):
    if backend == "anvil" and find_anvil(REPO) is None:
        pytest.fail("anvil is not installed: run `npm ci`")
    proc, deployments_path = _start(tmp_path, *(["--anvil"] if backend == "anvil" else []))
    try:
        deployments = json.loads(deployments_path.read_text())
        assert set(deployments["contracts"]) == {
            "OpenToken", "DatanetRegistry", "AdapterRegistry", "PaymentChannels", "TraceAnchor"
        }  # fmt: skip
        assert deployments["rpcUrl"].startswith("http://127.0.0.1:")
        agent = subprocess.run(
            [sys.executable, str(REPO / "tests" / "integration" / "outside_agent.py"), str(deployments_path), str(ARTIFACTS)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert agent.returncode == 0, agent.stderr
        state = json.loads(agent.stdout.strip().splitlines()[-1])
        assert state == {
            "channelId": state["channelId"],
            "deposited": 5 * 10**18,
            "claimed": 2 * 10**17,
            "operatorEarnings": 2 * 10**17,
            "closed": False,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "dev chain stopped" in out


def test_chain_rejects_a_busy_port(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(
            [str(CLI), "chain", "--port", str(port), "--deployments", str(tmp_path / "d.json")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert "could not start the dev chain" in proc.stderr
    assert not (tmp_path / "d.json").exists()
