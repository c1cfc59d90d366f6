"""What payment costs: voucher verifications per second on one core, the latency the paid path adds over a free
call, and paid requests per second end to end — on CPU, with a tiny random model, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/payments/bench_payments.py [--calls 60] [--seconds 15]

The latency comparison serves two adapters with the same weights, one free and one priced, from one server on
loopback (embedded chain, settlement batched every 100 calls so claims do not share the measured window). A paid
call is timed three ways: the first call of a logical request (402, then the paid retry: two round trips), and a
call whose client already holds the price (one round trip with PAYMENT-SIGNATURE; how the SDK pays repeat calls).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration" / "server"))

from design_agent import DEV_KEYS, Agent, unb64  # noqa: E402  (the protocol-only agent of the tests)

from loraledger.sdk.chain.provider import free_port  # noqa: E402

MAX_TOKENS = 8


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_verification(n: int) -> dict:
    """Voucher signature recovery alone, and PaymentGate's full check (decode, bind, recover, ledger, chain state
    from its cache) on an embedded chain, with a fresh voucher each time (signing not timed)."""
    from loraledger.runtime.billing.ledger import Ledger
    from loraledger.runtime.billing.payments import ChannelReader, PaymentGate, PaymentTerms
    from loraledger.runtime.billing.pricing import Prices
    from loraledger.sdk import _x402 as x402
    from loraledger.sdk.chain.accounts import dev_accounts
    from loraledger.sdk.chain.contracts import deploy_contracts
    from loraledger.sdk.chain.provider import embedded_chain
    from loraledger.sdk.vouchers import ChannelConfig, Voucher, recover_voucher_signer, sign_voucher

    keys = dev_accounts()
    chain = embedded_chain()
    contracts = deploy_contracts(chain, keys[0], fund=[k.address for k in keys])
    operator, payer, session = keys[0], keys[1], keys[2]
    config = ChannelConfig(payer.address, session.address, operator.address, contracts.token.address, 600, os.urandom(32))
    contracts.token.approve(payer, contracts.channels.address, 10**20)
    cid = contracts.channels.open(payer, config, 10**20)
    domain = contracts.channels.domain
    vouchers = [Voucher(cid, 1000 + i, os.urandom(32)) for i in range(n)]
    sigs = [sign_voucher(session, domain, v) for v in vouchers]
    t = time.perf_counter()
    for v, s in zip(vouchers, sigs, strict=True):
        assert recover_voucher_signer(domain, v, s) == session.address
    recover_s = (time.perf_counter() - t) / n

    tmp = Path(tempfile.mkdtemp())
    ledger = Ledger(tmp / "ledger.sqlite")
    terms = PaymentTerms(chain.chain_id, contracts.channels.address, contracts.token.address, operator.address)
    gate = PaymentGate(terms, ChannelReader(contracts.channels, ttl_s=3600), ledger)
    requirements = gate.requirements(Prices(1, 1), 10**6)
    headers = []
    for v, s in zip(vouchers, sigs, strict=True):
        payload = x402.PaymentPayload(
            x402_version=2, accepted=requirements,
            payload={"channel": {"payer": config.payer, "payerAuthorizer": config.payer_authorizer, "payee": config.payee,
                                 "token": config.token, "withdrawDelay": config.withdraw_delay_s,
                                 "salt": "0x" + config.salt.hex()},
                     "voucher": {"channelId": "0x" + cid.hex(), "cumulativeAmount": str(v.cumulative_amount),
                                 "callHash": "0x" + v.call_hash.hex()},
                     "signature": "0x" + s.hex()},
            extensions=x402.payment_identifier_extension("k"),
        )  # fmt: skip
        headers.append(x402.encode_payment_signature(payload))
    gate.verify(headers[0], 10**6)  # warm the channel-state cache
    t = time.perf_counter()
    for h in headers:
        gate.verify(h, 10**6)
    gate_s = (time.perf_counter() - t) / n
    ledger.close()
    shutil.rmtree(tmp)
    return {"recover_per_s": 1 / recover_s, "gate_per_s": 1 / gate_s, "recover_us": recover_s * 1e6, "gate_us": gate_s * 1e6}


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("loraledger")), "serve", "--model", str(root / "model"), "--adapters",
         str(root / "adapters"), "--port", str(port), "--data-dir", str(root / "data"), "--settle-every-calls", "100",
         "--settle-interval-s", "600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def bench_latency(url: str, calls: int) -> dict:
    agent = Agent(url, payer_key=DEV_KEYS[1], session_key=DEV_KEYS[2])
    agent.open("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", 10**20)
    body = {"messages": [{"role": "user", "content": "Summarise the clause."}], "max_tokens": MAX_TOKENS,
            "temperature": 0}  # fmt: skip
    free, paid_402, paid_direct = [], [], []
    first = agent.http.post("/v1/chat/completions", json={**body, "model": "same-paid"})
    accepted = unb64(first.headers["PAYMENT-REQUIRED"])["accepts"][0]
    for i in range(calls):
        t = time.perf_counter()
        r = agent.http.post("/v1/chat/completions", json={**body, "model": "same-free"})
        free.append(time.perf_counter() - t)
        assert r.status_code == 200
        t = time.perf_counter()
        r = agent.call("/v1/chat/completions", {**body, "model": "same-paid"})
        paid_402.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        t = time.perf_counter()
        header = agent.payment(accepted, agent.charged + int(accepted["amount"]), f"direct-{i}")
        r = agent.http.post("/v1/chat/completions", json={**body, "model": "same-paid"}, headers={"PAYMENT-SIGNATURE": header})
        paid_direct.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        agent.charged = int(unb64(r.headers["PAYMENT-RESPONSE"])["extra"]["chargedCumulativeAmount"])
    ms = lambda xs, q: pct(xs, q) * 1e3  # noqa: E731
    return {name: {"p50_ms": ms(xs, 0.5), "p99_ms": ms(xs, 0.99)}
            for name, xs in (("free", free), ("paid_402_then_pay", paid_402), ("paid_one_round_trip", paid_direct))}


def bench_throughput(url: str, seconds: float, clients: int) -> dict:
    agents = [Agent(url, payer_key=DEV_KEYS[1 + i], session_key=DEV_KEYS[2]) for i in range(clients)]
    for a in agents:
        a.open("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", 10**20)
    body = {"model": "same-paid", "messages": [{"role": "user", "content": "Next clause?"}], "max_tokens": MAX_TOKENS}
    done = [0] * clients
    free_done = [0] * clients
    stop = time.monotonic() + seconds

    def paid(i: int) -> None:
        a = agents[i]
        first = a.http.post("/v1/chat/completions", json=body)
        accepted = unb64(first.headers["PAYMENT-REQUIRED"])["accepts"][0]
        while time.monotonic() < stop:
            header = a.payment(accepted, a.charged + int(accepted["amount"]), os.urandom(8).hex())
            r = a.http.post("/v1/chat/completions", json=body, headers={"PAYMENT-SIGNATURE": header})
            assert r.status_code == 200, r.text
            a.charged = int(unb64(r.headers["PAYMENT-RESPONSE"])["extra"]["chargedCumulativeAmount"])
            done[i] += 1

    def free(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < stop:
                assert c.post("/v1/chat/completions", json={**body, "model": "same-free"}).status_code == 200
                free_done[i] += 1

    out = {}
    for name, fn, counter in (("paid", paid, done), ("free", free, free_done)):
        stop = time.monotonic() + seconds
        threads = [threading.Thread(target=fn, args=(i,)) for i in range(clients)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out[f"{name}_requests_per_s"] = sum(counter) / (time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--verifications", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from loraledger.runtime.engine.testing import make_peft_adapter, make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="bench-payments-"))
    try:
        model = make_tiny_model(root / "model")
        make_peft_adapter(model, root / "adapters" / "same-free", r=8, targets=["q_proj", "v_proj"], seed=3)
        shutil.copytree(root / "adapters" / "same-free", root / "adapters" / "same-paid")
        (root / "adapters" / "same-paid" / "loraledger.json").write_text(
            json.dumps({"pricePerInputToken": 1000, "pricePerOutputToken": 3000}))
        verification = bench_verification(args.verifications)
        proc, url = start_server(root)
        try:
            latency = bench_latency(url, args.calls)
            throughput = bench_throughput(url, args.seconds, args.clients)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    result = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
              "verification": verification, "latency": latency, "throughput": throughput,
              "max_tokens": MAX_TOKENS, "clients": args.clients}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
