"""The examples run as smoke tests: train and publish an adapter, serve it with `loraledger serve`, then pay for it
from the LangChain agent example and from the SDK quickstart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from loraledger.sdk.chain.provider import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("loraledger")
AGENT_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # dev account 1
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env or ENV, cwd=cwd, timeout=300,
                          check=False)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def factory(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("factory")
    printed = _run(str(REPO / "examples" / "train_and_publish.py"), "--out", str(out))
    assert "published legal-expert" in printed
    assert "attributed by spans" in printed and printed.count("0x14dC7996") == 2  # Bob's answer is Bob's
    assert (out / "adapters" / "legal-expert" / "attribution" / "index.json").is_file()
    return out


@pytest.fixture(scope="module")
def runtime(factory, tmp_path_factory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(CLI), "serve", "--model", str(factory / "base-model"), "--adapters", str(factory / "adapters"),
             "--port", str(port), "--data-dir", str(log.parent / "data")],
            stdout=out, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"serve exited:\n{log.read_text()}"
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_langchain_agent_example(runtime, tmp_path):
    env = {**ENV, "LORALEDGER_PRIVATE_KEY": AGENT_KEY}
    printed = _run(str(REPO / "examples" / "langchain_agent.py"), "--base-url", runtime, "--trace-out",
                   str(tmp_path / "trace.jsonl"), env=env)  # fmt: skip
    assert "tool legal-expert: Legal specialist for contracts, land sales and wills." in printed
    # the adapter trained on the datanet answers with the contribution, and is paid for it
    assert "A: A valid will must be in writing, signed by the testator" in printed
    assert "legal-expert answered for" in printed and "anchored and verified" in printed
    assert "tool_call, adapter_call, receipt, tool_result, payment" in printed


def test_quickstart_example(runtime, tmp_path):
    env = {**ENV, "LORALEDGER_PRIVATE_KEY": AGENT_KEY}
    printed = _run(str(REPO / "examples" / "quickstart.py"), "--base-url", runtime, "--adapter", "legal-expert",
                   "--trace-out", str(tmp_path / "trace.jsonl"), env=env)  # fmt: skip
    assert "signed by the operator" in printed and "anchored" in printed
