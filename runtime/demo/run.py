"""`loraledger demo`: the whole system end to end on CPU, in about a minute, with nothing downloaded.

Builds a tiny base model; creates three datanets (legal, medical, finance) with several contributors each and
registers them on the embedded chain; trains one LoRA adapter per datanet with ModelFactory and publishes it with
a revenue policy; serves them with the runtime; then a LangChain agent with a budget opens a payment channel,
routes questions to the right adapters, pays per call and keeps a trace. Prints each answer with its cost and
attribution, the settled split, what every party ends up with, the contributors' on-chain claims, and verifies
the receipts and the anchored trace.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import rfc8785
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from loraledger.sdk import Budget, Client, Trace, TraceVerificationError, Wallet
from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Contracts, RevenuePolicy
from loraledger.sdk.chain.provider import free_port, rpc_chain
from loraledger.sdk.merkle import leaf_hash
from loraledger.sdk.merkle import verify as verify_proof
from loraledger.sdk.vouchers import Domain, receipt_digest

from .data import DATANETS, QUESTIONS, contributor_account

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

logger = logging.getLogger(__name__)

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRICES = {"legal": (2_000, 10_000), "medical": (1_500, 8_000), "finance": (2_500, 12_000)}
"""(input, output) price per token, in the token's smallest unit (wei of OPEN)."""
POLICIES = {
    "legal": RevenuePolicy(owner_bps=5_000, data_bps=3_000, protocol_bps=500),
    "medical": RevenuePolicy(owner_bps=4_000, data_bps=4_000, protocol_bps=500),
    "finance": RevenuePolicy(owner_bps=4_500, data_bps=3_500, protocol_bps=500),
}
"""Owner, data (the datanet's contributors) and protocol shares; the operator keeps the rest."""
DETAIL_QUESTION = "In detail: How does compound interest work?"
CHANNEL_DEPOSIT_WEI = 5_000_000
MAX_PER_CALL_WEI = 1_000_000
MAX_PER_SESSION_WEI = 5_000_000
CONTRIBUTOR_GAS_WEI = 10**17
SPARE_ACCOUNT = 5
"""A funded dev account the demo leaves alone, for the user to pay with under --keep-running."""


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path | None = None  # default: a fresh temporary folder
    port: int = 0  # 0: a free port
    keep_running: bool = False
    epochs: int = 100
    seed: int = 0


@dataclass
class CallRow:
    question: str
    adapter: str
    answer: str
    call_id: str | None = None
    cost_wei: int = 0
    max_wei: int = 0
    tokens: tuple[int, int] = (0, 0)
    contributors: dict[str, int] = field(default_factory=dict)  # name -> weight bps
    source: str = ""  # the contributor whose entry the answer reproduces ("" when none)
    method: str = ""
    refused: str = ""


@dataclass
class DemoResult:
    base_url: str
    rows: list[CallRow]
    balances: dict[str, int]  # party -> change in OPEN (wei)
    claims: dict[str, int]  # contributor name -> claimed on chain (wei)
    trace_path: Path
    trace_entries: int
    checks: dict[str, bool]
    seconds: float


class _Out:
    """Prints the demo's narration and tables (the CLI's output, not logging)."""

    def __init__(self, write: Callable[[str], None]):
        self.write = write
        self.t0 = time.perf_counter()

    def step(self, text: str) -> None:
        self.write(f"[{time.perf_counter() - self.t0:5.1f}s] {text}")

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> None:
        cells = [[str(c) for c in r] for r in rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

        self.write("")
        self.write(title)
        self.write(line(headers))
        self.write(line(["-" * w for w in widths]))
        for r in cells:
            self.write(line(r))


def _wei(amount: int) -> str:
    return f"{amount:,}"


def _short(address: str) -> str:
    return address[:6] + "…" + address[-4:]


def _quiet_libraries() -> None:
    """Model loading and training libraries print progress bars and advice a demo reader does not need."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", module="transformers")


class _Server:
    """The runtime's FastAPI app under uvicorn on a thread of this process."""

    def __init__(self, app, host: str, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, name="loraledger-demo-runtime", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout_s: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the runtime did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def run_demo(config: DemoConfig, write: Callable[[str], None] = print, wait: Callable[[], None] | None = None) -> DemoResult:
    """Runs the demo; `write` gets each line of output; with `config.keep_running`, `wait()` blocks until the user
    is done (the runtime and chain stay up until it returns)."""
    out = _Out(write)
    if config.workdir is None:
        with tempfile.TemporaryDirectory(prefix="loraledger-demo-") as tmp:
            result = _run(config, Path(tmp), out, wait)
        out.write("(the working folder was temporary and is gone: pass --dir to keep the models, ledger and trace)")
        return result
    config.workdir.mkdir(parents=True, exist_ok=True)
    return _run(config, config.workdir, out, wait)


def _run(config: DemoConfig, root: Path, out: _Out, wait: Callable[[], None] | None) -> DemoResult:
    _quiet_libraries()
    import torch

    from ..chain import connect
    from ..config import ServeSettings
    from ..datanets import ContributionRow, DatanetStore, register_datanet
    from ..engine.engine import Engine
    from ..factory import TrainConfig, publish_adapter, train_adapter
    from ..server.app import Runtime, create_app
    from .model import build_base_model

    torch.manual_seed(config.seed)
    started = time.perf_counter()
    out.write("loraledger demo: three datanets, three paid LoRA adapters, one agent with a budget, on a local chain")
    out.write(f"working folder: {root}")

    # ---- the chain and its parties
    port = config.port or free_port()
    adapters_dir = root / "adapters"
    settings = ServeSettings(model=root / "base-model", adapters=adapters_dir, data_dir=root / "runtime", port=port,
                             min_withdraw_delay_s=60)  # fmt: skip
    chain = connect(settings)
    contracts = chain.contracts
    dev = dev_accounts()
    operator, agent_key, treasury = chain.operator, dev[1], dev[9]
    owners = {d.name: dev[2 + i] for i, d in enumerate(DATANETS)}
    contracts.channels.set_protocol_treasury(operator, treasury.address)
    names = sorted({e.contributor for d in DATANETS for e in d.entries})
    people = {n: contributor_account(n) for n in names}
    for account in people.values():  # gas for their claims later; they hold no OPEN yet
        chain.chain.transfer_eth(operator, account.address, CONTRIBUTOR_GAS_WEI)
    out.step(f"embedded chain {chain.chain.chain_id} up, contracts deployed; operator {_short(operator.address)}, "
             f"protocol treasury {_short(treasury.address)}")  # fmt: skip

    # ---- base model and datanets
    texts = [e.text for d in DATANETS for e in d.entries] + [DETAIL_QUESTION]
    build_base_model(settings.model, texts, seed=config.seed)
    out.step("built a tiny random Llama (2 layers, word-level tokenizer) as the base model")
    store = DatanetStore(root / "datanets.sqlite")
    local_ids: dict[str, int] = {}
    for d in DATANETS:
        local_ids[d.name] = store.create(d.name, description=d.description)
        store.add(local_ids[d.name], [ContributionRow(e.text, people[e.contributor].address) for e in d.entries])
        register_datanet(store, local_ids[d.name], contracts, owners[d.name])
    onchain = {d.name: store.get(local_ids[d.name]).chain_datanet_id for d in DATANETS}
    out.step("datanets registered on chain: " + ", ".join(
        f"{d.name} #{onchain[d.name]} ({len(d.entries)} contributions by "
        f"{', '.join(sorted({e.contributor for e in d.entries}))})" for d in DATANETS))  # fmt: skip

    # ---- ModelFactory: train, describe, publish
    for d in DATANETS:
        folder = adapters_dir / d.adapter
        result = train_adapter(store, TrainConfig(
            settings.model, (local_ids[d.name],), folder, rank=8, alpha=16, targets=ALL_TARGETS, epochs=config.epochs,
            lr=1e-2, batch_size=8, seed=config.seed, device="cpu"))  # fmt: skip
        price_in, price_out = PRICES[d.name]
        policy = POLICIES[d.name]
        (folder / "loraledger.json").write_text(json.dumps({
            "pricePerInputToken": price_in, "pricePerOutputToken": price_out, "owner": owners[d.name].address,
            "datanets": [{"id": onchain[d.name], "weightBps": 10_000}], "description": d.description,
            "revenuePolicy": {"ownerBps": policy.owner_bps, "dataBps": policy.data_bps, "protocolBps": policy.protocol_bps},
        }, indent=2))  # fmt: skip
        publish_adapter(folder, contracts, owners[d.name], policy=policy, store=store)
        out.step(f"trained {d.adapter} on {d.name} ({result.manifest.training['steps']} steps, loss "
                 f"{result.first_loss:.2f} -> {result.loss_by_epoch[-1]:.2f}) and published it: owner "
                 f"{_short(owners[d.name].address)}, owner/data/protocol {policy.owner_bps / 100:g}/"
                 f"{policy.data_bps / 100:g}/{policy.protocol_bps / 100:g}%")  # fmt: skip
    store.close()

    # ---- the runtime
    tracked = {"agent": agent_key.address, "operator": operator.address, "protocol": treasury.address,
               **{f"owner:{n}": a.address for n, a in owners.items()}, **{n: a.address for n, a in people.items()}}  # fmt: skip
    before = {k: contracts.token.balance_of(a) for k, a in tracked.items()}
    engine = Engine.from_pretrained(settings.model, device="cpu", max_adapters=4, max_lora_rank=16)
    runtime = Runtime(settings, engine, chain)
    server = _Server(create_app(runtime), settings.host, port)
    server.start()
    base_url = server.url
    out.step(f"runtime serving {', '.join(d.adapter for d in DATANETS)} at {base_url} (chain at {base_url}/rpc)")
    try:
        result = _agent_and_report(config, out, base_url, agent_key, operator, owners, treasury, people, tracked,
                                   before, onchain, root, started)  # fmt: skip
        if config.keep_running and wait is not None:
            _print_keep_running(out, base_url)
            wait()
        return result
    finally:
        server.stop()
        chain.close()


def _agent_and_report(
    config: DemoConfig, out: _Out, base_url: str, agent_key: LocalAccount, operator: LocalAccount,
    owners: dict[str, LocalAccount], treasury: LocalAccount, people: dict[str, LocalAccount], tracked: dict[str, str],
    before: dict[str, int], onchain: dict[str, int], root: Path, started: float,
) -> DemoResult:  # fmt: skip
    from loraledger.agents import LoraLedgerToolkit, TraceCallbackHandler

    from .agent import KeywordRouter, run_agent

    # Everything from here on goes through the runtime's HTTP API and its JSON-RPC, as an outside agent would.
    rpc = rpc_chain(f"{base_url}/rpc")
    probe = Client(base_url=base_url)
    deployments = probe.deployments.get()
    contracts = Contracts(rpc, deployments)
    wallet = Wallet(agent_key, chain=rpc, deposit_wei=CHANNEL_DEPOSIT_WEI)
    budget = Budget(max_per_call_wei=MAX_PER_CALL_WEI, max_per_session_wei=MAX_PER_SESSION_WEI,
                    payees=[operator.address], contracts=[deployments.contracts["PaymentChannels"]],
                    tokens=[deployments.contracts["OpenToken"]])  # fmt: skip
    trace = Trace()
    client = Client(base_url=base_url, wallet=wallet, budget=budget, trace=trace)
    # Greedy decoding: each adapter answers with what it learned from its datanet, the same on every run.
    tools = LoraLedgerToolkit(client=client, include_free=False, tool_kwargs={"temperature": 0.0}).get_tools()
    handler = TraceCallbackHandler(trace)
    router = KeywordRouter()
    out.step(f"agent {_short(agent_key.address)}: {len(tools)} paid tools from GET /v1/models; budget "
             f"{_wei(MAX_PER_CALL_WEI)} wei per call, {_wei(MAX_PER_SESSION_WEI)} per session")  # fmt: skip
    by_adapter = {d.adapter: d for d in DATANETS}
    names_by_address = {a.address: n for n, a in people.items()}

    rows: list[CallRow] = []
    for question in [*QUESTIONS, DETAIL_QUESTION]:
        turn = run_agent(router, tools, question, config={"callbacks": [handler]})
        for message in turn.tool_messages:
            tool = next(t for t in tools if t.name == message.name)
            row = CallRow(question=question, adapter=tool.adapter_id, answer=turn.answer)
            if message.status == "error":
                row.refused = message.text
                row.answer = ""
            else:
                call = message.artifact
                row.answer = call.answer.strip()
                row.call_id = call.receipt.call_id
                row.cost_wei, row.max_wei = call.payment.amount_wei, call.payment.max_amount_wei
                row.tokens = (call.receipt.input_tokens, call.receipt.output_tokens)
                entry = next((e for e in by_adapter[tool.adapter_id].entries if e.answer == row.answer), None)
                row.source = entry.contributor if entry is not None else ""
            rows.append(row)
    lanes = wallet.lanes()
    out.step(f"agent done: {sum(1 for r in rows if r.call_id)} paid calls over {len(lanes)} channel(s), "
             f"{_wei(budget.spent_session_wei)} wei spent")  # fmt: skip

    # ---- settlement: the runtime claims each call and posts the contributors' epoch roots
    records = _wait_settled(client, rows, onchain, people, timeout_s=60)
    for row in rows:
        if row.call_id:
            record = records[row.call_id]["attribution"]
            row.method = record.get("method", "")
            row.contributors = {names_by_address.get(c["address"], _short(c["address"])): c["weightBps"]
                                for c in record.get("contributors", [])}  # fmt: skip
    out.step("every call settled on chain; contributor epoch roots posted")

    # ---- contributors claim their pools; owners, operator and protocol withdraw their earnings
    claims: dict[str, int] = {}
    for name, account in people.items():
        for d in DATANETS:
            if name not in {e.contributor for e in d.entries}:
                continue
            response = httpx.get(f"{base_url}/v1/datanets/{onchain[d.name]}/contributors/{account.address}", timeout=30)
            if response.status_code == 404:
                continue
            response.raise_for_status()
            body = response.json()
            proof = [bytes.fromhex(p.removeprefix("0x")) for p in body["proof"]]
            contracts.channels.claim_contribution(account, operator.address, onchain[d.name], int(body["cumulativeAmount"]), proof)
            claims[name] = claims.get(name, 0) + int(body["cumulativeAmount"])
    earnings = {}
    for label, account in [("operator", operator), ("protocol", treasury), *((f"owner:{n}", a) for n, a in owners.items())]:
        earnings[label] = contracts.channels.earnings(account.address)
        if earnings[label]:
            contracts.channels.withdraw_earnings(account)
    out.step(f"{len(claims)} contributors claimed their share with Merkle proofs; owners, operator and protocol "
             "withdrew their earnings")  # fmt: skip

    # ---- verification
    domain = Domain(deployments.chain_id, deployments.contracts["PaymentChannels"])
    checks = _verify(client, rows, records, domain, operator.address, contracts, lanes)
    trace_path = root / "agent-trace.jsonl"
    trace.save(trace_path)
    anchored = trace.anchor(contracts.anchor, wallet.funding_account)
    try:
        Trace.load(trace_path).verify_anchor(contracts.anchor, wallet.address)
        checks["the saved trace verifies against its on-chain anchor"] = True
    except TraceVerificationError as exc:  # reported as a failed check
        out.write(f"trace verification failed: {exc}")
        checks["the saved trace verifies against its on-chain anchor"] = False
    tampered = root / "agent-trace-tampered.jsonl"
    lines = trace_path.read_text().splitlines()
    first = json.loads(lines[0])
    first["data"]["text"] = "I will ask the cheapest adapter."  # rewrite the agent's first thought after the fact
    lines[0] = json.dumps(first)
    tampered.write_text("\n".join(lines) + "\n")
    try:
        Trace.load(tampered)
        checks["an edited copy of the trace is rejected"] = False
    except TraceVerificationError:
        checks["an edited copy of the trace is rejected"] = True
    out.step(f"trace of {anchored.count} entries anchored on chain (root 0x{anchored.root.hex()[:16]}…)")

    after = {k: contracts.token.balance_of(a) for k, a in tracked.items()}
    changes = {k: after[k] - before[k] for k in tracked}
    unspent = sum(contracts.channels.get_channel(lane.channel_id).deposited - contracts.channels.get_channel(lane.channel_id).claimed for lane in lanes)
    dust = sum(p.funded - p.paid_out for p in (contracts.channels.get_pool(operator.address, i) for i in onchain.values()))
    checks["every unit is accounted for: Σ changes + unspent deposit + pool dust = 0"] = (
        sum(changes.values()) + unspent + dust == 0
    )
    checks["the contributors paid are the ones whose text each answer reproduced"] = all(
        r.source and max(r.contributors, key=r.contributors.get) == r.source and claims.get(r.source, 0) > 0
        for r in rows if r.call_id
    )  # fmt: skip
    _report(out, rows, changes, claims, earnings, unspent, dust, owners, people, tracked, checks, trace_path, anchored)
    seconds = time.perf_counter() - started
    out.write(f"\ndemo finished in {seconds:.1f}s")
    return DemoResult(base_url, rows, changes, claims, trace_path, anchored.count, checks, seconds)


def _wait_settled(client: Client, rows: list[CallRow], onchain: dict[str, int], people: dict[str, LocalAccount],
                  timeout_s: float) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Polls the receipts until every call is settled and every datanet's epoch root is posted."""
    deadline = time.monotonic() + timeout_s
    records: dict[str, dict[str, Any]] = {}
    while True:
        for row in rows:
            if row.call_id and row.call_id not in records:
                record = client.receipts.get(row.call_id)
                extra = record.model_extra or {}
                if (extra.get("settlement") or {}).get("state") == "settled" and record.proof is not None:
                    records[row.call_id] = {"record": record, "attribution": extra.get("attribution") or {}}
        if len(records) == sum(1 for r in rows if r.call_id):
            pending = [
                d for d in onchain.values()
                if not any(httpx.get(f"{client.base_url}/v1/datanets/{d}/contributors/{a.address}", timeout=30).status_code
                           == 200 for a in people.values())
            ]  # fmt: skip
            if not pending:
                return records
        if time.monotonic() > deadline:
            raise RuntimeError("settlement did not complete in time; see the runtime's /healthz settlementError")
        time.sleep(0.3)


def _verify(client: Client, rows: list[CallRow], records: dict[str, dict[str, Any]], domain: Domain, operator: str,
            contracts: Contracts, lanes) -> dict[str, bool]:  # fmt: skip
    checks: dict[str, bool] = {}
    signed = proved = attributed = True
    for row in rows:
        if not row.call_id:
            continue
        record = records[row.call_id]["record"]
        receipt = record.receipt
        signed &= receipt.recover_signer(domain) == to_checksum_address(operator)
        leaf = leaf_hash(("bytes32",), (receipt_digest(domain, receipt.to_eip712()),))
        proof = [bytes.fromhex(p.removeprefix("0x")) for p in record.proof or []]
        proved &= record.root is not None and verify_proof(bytes.fromhex(record.root.removeprefix("0x")), leaf, proof)
        attribution = records[row.call_id]["attribution"]
        attributed &= "0x" + keccak(rfc8785.dumps(attribution)).hex() == receipt.attribution_hash
    checks["every receipt is signed by the operator"] = signed
    checks["every receipt is in its settlement batch's Merkle root"] = proved
    checks["every receipt's attributionHash is the hash of its attribution record"] = attributed
    charged = sum(r.cost_wei for r in rows)
    claimed = sum(contracts.channels.get_channel(lane.channel_id).claimed for lane in lanes)
    checks["the channel's on-chain claims equal the receipts' total"] = charged == claimed
    return checks


def _report(out: _Out, rows: list[CallRow], changes: dict[str, int], claims: dict[str, int], earnings: dict[str, int],
            unspent: int, dust: int, owners: dict[str, LocalAccount], people: dict[str, LocalAccount],
            tracked: dict[str, str], checks: dict[str, bool], trace_path: Path, anchored) -> None:  # fmt: skip
    answers = []
    for i, r in enumerate(rows, 1):
        if r.refused:
            answers.append((i, r.adapter, "refused by the budget, not paid: " + r.refused.split(": ", 1)[-1][:80] + "…", "-", "-"))
            continue
        text = r.answer if len(r.answer) <= 120 else r.answer[:119] + "…"
        answers.append((i, r.adapter, text, _wei(r.cost_wei), f"{r.tokens[0]}+{r.tokens[1]}"))
    out.table("ANSWERS (greedy output of each adapter; cost = input·price + output·price)",
              ["#", "adapter", "answer", "cost (wei)", "tokens in+out"], answers, right=(0, 3, 4))  # fmt: skip

    attribution = []
    for i, r in enumerate(rows, 1):
        if not r.call_id:
            continue
        split = ", ".join(f"{n} {bps / 100:g}%" for n, bps in sorted(r.contributors.items(), key=lambda x: -x[1]))
        attribution.append((i, r.adapter, r.method, split, r.source or "-"))
    out.table("ATTRIBUTION (span matching of each answer against its adapter's training contributions)",
              ["#", "adapter", "method", "contributors (share of the data pool)", "text reproduced from"],
              attribution, right=(0,))  # fmt: skip

    splits = []
    for d in DATANETS:
        paid = [r for r in rows if r.adapter == d.adapter and r.call_id]
        total = sum(r.cost_wei for r in paid)
        policy = POLICIES[d.name]
        owner = sum(r.cost_wei * policy.owner_bps // 10_000 for r in paid)
        data = sum(r.cost_wei * policy.data_bps // 10_000 for r in paid)
        protocol = sum(r.cost_wei * policy.protocol_bps // 10_000 for r in paid)
        splits.append((d.adapter, len(paid), _wei(total), _wei(owner), _wei(data), _wei(protocol), _wei(total - owner - data - protocol)))
    out.table("SETTLED SPLIT (PaymentChannels.claim, per call, by each adapter's on-chain revenue policy; wei)",
              ["adapter", "calls", "charged", "owner", "data pool", "protocol", "operator"], splits,
              right=(1, 2, 3, 4, 5, 6))  # fmt: skip

    contributor_rows = []
    for d in DATANETS:
        for name in sorted({e.contributor for e in d.entries}):
            contributor_rows.append((name, d.name, _short(people[name].address), _wei(claims.get(name, 0))))
    out.table("CONTRIBUTOR CLAIMS (claimContribution with the runtime's Merkle proof, paid on chain; wei)",
              ["contributor", "datanet", "address", "claimed"], contributor_rows, right=(3,))  # fmt: skip

    roles = {"agent": "payer (channel deposit)", "operator": "GPU operator", "protocol": "protocol treasury",
             **{f"owner:{n}": f"owner of {n}-expert" for n in owners}}  # fmt: skip
    balances = [(k.removeprefix("owner:") + (" (owner)" if k.startswith("owner:") else ""), roles.get(k, "contributor"),
                 _short(tracked[k]), f"{changes[k]:+,}") for k in tracked]  # fmt: skip
    out.table("FINAL BALANCES (change in OPEN on chain, in wei)", ["party", "role", "address", "change"], balances,
              right=(3,))  # fmt: skip
    out.write(f"agent's channel still holds {_wei(unspent)} wei of unspent deposit (refundable); "
              f"{_wei(dust)} wei of rounding dust stays in the data pools")  # fmt: skip

    out.write("\nVERIFIED")
    for name, ok in checks.items():
        out.write(f"  [{'ok' if ok else 'FAILED'}] {name}")
    out.write(f"trace: {trace_path} ({anchored.count} entries, root 0x{anchored.root.hex()} anchored by the agent)")


def _print_keep_running(out: _Out, base_url: str) -> None:
    spare = dev_accounts()[SPARE_ACCOUNT].key.to_0x_hex()
    out.write(f"""
The runtime and its chain stay up until Ctrl-C:
  API        {base_url}/v1/models   (OpenAI-compatible; receipts at /v1/receipts/<callId>)
  chain      {base_url}/rpc         (JSON-RPC; contracts at {base_url}/v1/chain)
Pay from Python with the SDK (dev account {SPARE_ACCOUNT} is funded and unused by the demo):
  from loraledger.sdk import Client, Wallet, Budget
  from loraledger.sdk.chain.provider import rpc_chain
  wallet = Wallet("{spare}", chain=rpc_chain("{base_url}/rpc"))
  client = Client(base_url="{base_url}", wallet=wallet, budget=Budget(max_per_call_wei=10**6))
  client.chat.completions.create(model="legal-expert", messages=[{{"role": "user", "content": "What makes a will valid?"}}])""")
