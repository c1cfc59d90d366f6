"""`loraledger demo` end to end, as a user runs it: the tables, every check passing, and with --keep-running a
runtime and chain that an outside SDK client can pay, until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loraledger.runtime.demo.data import DATANETS
from loraledger.sdk import Budget, Client, Wallet
from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.provider import free_port, rpc_chain

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = Path(sys.executable).with_name("loraledger")
BANNER = "The runtime and its chain stay up until Ctrl-C"


def test_the_demo_end_to_end_then_keep_running(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [str(CLI), "demo", "--keep-running", "--port", str(port), "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: list[str] = []
    started = time.monotonic()
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if BANNER in line:
                break
            assert time.monotonic() - started < 240, "\n".join(lines)
        output = "\n".join(lines)
        assert BANNER in output, output

        for title in ("ANSWERS", "ATTRIBUTION", "SETTLED SPLIT", "CONTRIBUTOR CLAIMS", "FINAL BALANCES", "VERIFIED"):
            assert title in output
        checks = re.findall(r"^  \[(ok|FAILED)\] (.*)$", output, re.MULTILINE)
        assert len(checks) == 8 and all(status == "ok" for status, _ in checks), output

        # each adapter answered from its own datanet, and the span attribution names the contributor who wrote it
        attribution = output[output.index("ATTRIBUTION") : output.index("SETTLED SPLIT")]
        rows = re.findall(r"^\s*\d+\s+(\S+)\s+spans\s+(\w+) 100%\s+(\w+)$", attribution, re.MULTILINE)
        assert len(rows) == 6 and all(who == source for _, who, source in rows), attribution
        for adapter, who, _ in rows:
            datanet = next(d for d in DATANETS if d.adapter == adapter)
            assert who in {e.contributor for e in datanet.entries}
        assert "refused by the budget, not paid" in output

        # the runtime and chain are still up: an outside agent pays with the SDK
        url = f"http://127.0.0.1:{port}"
        spare = dev_accounts()[5]
        wallet = Wallet(spare, chain=rpc_chain(f"{url}/rpc"), deposit_wei=10**6)
        with Client(base_url=url, wallet=wallet, budget=Budget(max_per_call_wei=10**6)) as client:
            reply = client.chat.completions.create(
                model="medical-expert", messages=[{"role": "user", "content": "What blood pressure counts as high?"}],
                max_tokens=40, temperature=0,
            )  # fmt: skip
        assert reply.choices[0].message.content.strip().startswith("Blood pressure is high when it stays")
        assert reply.payment.amount_wei > 0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "\n".join(lines) + (proc.stdout.read() if proc.stdout else "")
    assert time.monotonic() - started < 180
