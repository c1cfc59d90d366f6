"""A real `loraledger serve` on loopback: tiny random model, a free and a priced adapter, the embedded chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loraledger.sdk.chain.provider import free_port

CLI = Path(sys.executable).with_name("loraledger")
PRICE_IN, PRICE_OUT = 1_000, 3_000
ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class Server:
    url: str
    root: Path
    proc: subprocess.Popen
    log: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


@pytest.fixture(scope="session")
def model_and_adapters(tmp_path_factory) -> Path:
    from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

    root = tmp_path_factory.mktemp("runtime")
    model = make_tiny_model(root / "model")
    adapters = root / "adapters"
    make_peft_adapter(model, adapters / "free", r=4, targets=["q_proj", "v_proj"], seed=1)
    make_peft_adapter(model, adapters / "legal", r=8, targets=ALL_TARGETS, seed=2)
    (adapters / "legal" / "loraledger.json").write_text(
        json.dumps({"pricePerInputToken": PRICE_IN, "pricePerOutputToken": PRICE_OUT, "description": "contract law"})
    )
    return root


def start_server(root: Path, data_dir: Path, *extra: str, port: int | None = None) -> Server:
    port = port or free_port()
    log = data_dir.with_suffix(".log")
    data_dir.mkdir(parents=True, exist_ok=True)
    out = log.open("ab")
    proc = subprocess.Popen(
        [str(CLI), "serve", "--model", str(root / "model"), "--adapters", str(root / "adapters"), "--port", str(port),
         "--data-dir", str(data_dir), *extra],
        stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(url, root, proc, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture(scope="module")
def server(model_and_adapters, tmp_path_factory) -> Iterator[Server]:
    s = start_server(model_and_adapters, tmp_path_factory.mktemp("data") / "run")
    yield s
    stop_server(s)
