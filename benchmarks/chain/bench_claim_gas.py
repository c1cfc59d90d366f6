"""Gas of PaymentChannels.claim over 1, 10 and 100 channels for two revenue mixes, and of the other payment-path
transactions (open, deposit, postEpochRoot, claimContribution); prints a markdown table.

    .venv/bin/python benchmarks/chain/bench_claim_gas.py [--anvil] [--json results.json]

Every claimed channel has its own payer (a fresh key funded with ETH and OPEN) and its own session key, and
carries a valid voucher. Claims are measured in steady state: before the measured claims, one claim of the same
revenue mix has already made the owners', the operator's, the treasury's and the pools' balances non-zero, as
they are for a settler that claims every few minutes (the first-ever claim of a mix is reported apart).
Revenue mixes: "one adapter" sends the whole claim to one adapter; "10 adapters" spreads it over 10 adapters
with 2 datanets each, so each claim carries 10 revenue entries whatever its channel count.
Reported: gasUsed of the transaction (21,000 base and calldata included), gas per channel = total / channels,
and the marginal gas of one more channel = (gas(100) - gas(1)) / 99. The goal is at most 30,000 per channel in
a 100-channel claim.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Claim, Contracts, Revenue, RevenuePolicy, deploy_contracts
from loraledger.sdk.chain.provider import Chain, anvil_chain, embedded_chain, find_anvil
from loraledger.sdk.merkle import MerkleTree, contributor_leaf
from loraledger.sdk.vouchers import ChannelConfig, Voucher, adapter_id, sign_voucher

REPO = Path(__file__).resolve().parents[2]
OPEN = 10**18
CHANNEL_COUNTS = (1, 10, 100)
ADAPTER_COUNT = 10
DATANETS_PER_ADAPTER = 2
CONTRIBUTORS = 64
GOAL_GAS_PER_CHANNEL = 30_000
POLICY = RevenuePolicy(owner_bps=2_000, data_bps=3_000, protocol_bps=500)
DEPOSIT_WEI = 1_000 * OPEN
CLAIM_STEP_WEI = OPEN  # each claim raises a channel's cumulative amount by this much
PAYER_ETH_WEI = 10**18


@dataclass(frozen=True)
class BenchChannel:
    id: bytes
    session: LocalAccount


@dataclass
class BenchWorld:
    """The operator, the adapters of the two mixes, and what each channel has been claimed so far."""

    chain: Chain
    contracts: Contracts
    operator: LocalAccount
    adapter_ids: list[bytes]
    claimed: dict[bytes, int]
    label: str = "bench"

    def new_key(self, what: str) -> LocalAccount:
        """A fresh deterministic key (distinct per world label, so nothing collides on a reused chain)."""
        return Account.from_key(keccak(text=f"{self.label} {what}"))


def setup_world(chain: Chain, contracts: Contracts, operator: LocalAccount, *, adapters: int, label: str = "bench"):
    """Registers `adapters` adapters, each owned by its own account and trained on its own 2 datanets."""
    world = BenchWorld(chain, contracts, operator, [], {}, label)
    for i in range(adapters):
        datanet_ids = [contracts.datanets.create_datanet(operator, f"ipfs://{label}-datanet-{i}-{j}") for j in range(2)]
        owner = world.new_key(f"adapter owner {i}").address
        aid = adapter_id(f"{label}-adapter-{i}")
        contracts.adapters.register(
            operator,
            aid,
            base_model_hash=keccak(text="base"),
            weights_hash=keccak(aid),
            uri=f"ipfs://{label}-adapter-{i}",
            policy=POLICY,
            datanet_ids=datanet_ids,
            datanet_weights_bps=[6_000, 4_000],
        )
        # The registry records the caller as owner; hand it over so each adapter pays a distinct account.
        contracts.adapters.transfer_adapter(operator, aid, owner)
        world.adapter_ids.append(aid)
    return world


def open_channels(world: BenchWorld, count: int) -> list[BenchChannel]:
    """Opens `count` channels to the operator, each from a fresh payer funded with ETH and OPEN by the operator
    (account 0: the token's owner), each with its own session key."""
    chain, contracts, funder = world.chain, world.contracts, world.operator
    payers = [world.new_key(f"payer {i}") for i in range(count)]
    contracts.token.mint_batch(funder, [p.address for p in payers], [DEPOSIT_WEI] * count)
    opened = []
    for i, payer in enumerate(payers):
        chain.transfer_eth(funder, payer.address, PAYER_ETH_WEI)
        session = world.new_key(f"session {i}")
        config = ChannelConfig(
            payer.address, session.address, world.operator.address, contracts.token.address, 3600, keccak(text=str(i))
        )
        contracts.token.approve(payer, contracts.channels.address, DEPOSIT_WEI)
        channel_id = contracts.channels.open(payer, config, DEPOSIT_WEI // 2)
        world.claimed[channel_id] = 0
        opened.append(BenchChannel(channel_id, session))
    return opened


def claim_gas(world: BenchWorld, channels: Sequence[BenchChannel], adapter_ids: Sequence[bytes]) -> int:
    """gasUsed of one claim raising every channel by CLAIM_STEP_WEI, its total split evenly over `adapter_ids`."""
    domain = world.contracts.channels.domain
    claims = []
    for ch in channels:
        cumulative = world.claimed[ch.id] + CLAIM_STEP_WEI
        call_hash = keccak(ch.id + cumulative.to_bytes(32, "big"))
        signature = sign_voucher(ch.session, domain, Voucher(ch.id, cumulative, call_hash))
        claims.append(Claim(ch.id, cumulative, cumulative, call_hash, signature))
    total = CLAIM_STEP_WEI * len(channels)
    share = total // len(adapter_ids)
    revenues = [Revenue(aid, share) for aid in adapter_ids[:-1]]
    revenues.append(Revenue(adapter_ids[-1], total - share * (len(adapter_ids) - 1)))
    receipt = world.contracts.channels.claim(world.operator, claims, revenues)
    for c in claims:
        world.claimed[c.channel_id] = c.amount
    return int(receipt["gasUsed"])


def measure_claims(
    world: BenchWorld, channels: Sequence[BenchChannel], counts: Sequence[int], mixes: dict[str, list[bytes]]
) -> list[dict[str, Any]]:
    """One row per (mix, channel count): steady-state gas, and the first-ever claim of each mix apart."""
    rows = []
    for mix, adapter_ids in mixes.items():
        first = claim_gas(world, channels[:1], adapter_ids)  # makes the mix's balance slots non-zero
        rows.append({"mix": mix, "channels": 1, "state": "first claim of the mix", "gas": first})
        for n in counts:
            gas = claim_gas(world, channels[:n], adapter_ids)
            rows.append({"mix": mix, "channels": n, "state": "steady", "gas": gas, "gas_per_channel": gas / n})
    return rows


def measure_other(world: BenchWorld, contributors: int) -> list[dict[str, Any]]:
    """open, deposit, postEpochRoot (first and later) and claimContribution with a proof over `contributors`."""
    chain, contracts, operator = world.chain, world.contracts, world.operator
    channels = contracts.channels
    rows = []

    payer = world.new_key("other payer")
    contracts.token.mint(operator, payer.address, DEPOSIT_WEI)
    chain.transfer_eth(operator, payer.address, PAYER_ETH_WEI)
    contracts.token.approve(payer, channels.address, DEPOSIT_WEI)
    session = world.new_key("other session")
    config = ChannelConfig(payer.address, session.address, operator.address, contracts.token.address, 3600, b"\1" * 32)
    receipt = chain.send(payer, channels.contract.functions.open(config.as_tuple(), DEPOSIT_WEI // 2))
    rows.append({"operation": "open (new channel, approved)", "gas": int(receipt["gasUsed"])})
    channel_id = channels.events(receipt, "ChannelOpened")[0]["channelId"]
    receipt = channels.deposit(payer, channel_id, DEPOSIT_WEI // 4)
    rows.append({"operation": "deposit", "gas": int(receipt["gasUsed"])})

    # A datanet of `contributors` registered contributors, funded by one claim to an adapter trained on it only.
    datanet_id = contracts.datanets.create_datanet(operator, "ipfs://bench-contributors")
    members = [world.new_key(f"contributor {i}") for i in range(contributors)]
    contracts.datanets.register_contributions(
        operator, datanet_id, [m.address for m in members], [keccak(text=f"content {i}") for i in range(contributors)]
    )
    aid = adapter_id(f"{world.label}-contributors-adapter")
    contracts.adapters.register(
        operator,
        aid,
        base_model_hash=keccak(text="base"),
        weights_hash=keccak(aid),
        uri="ipfs://bench-contributors-adapter",
        policy=POLICY,
        datanet_ids=[datanet_id],
        datanet_weights_bps=[10_000],
    )
    world.claimed[channel_id] = 0
    claim_gas(world, [BenchChannel(channel_id, session)], [aid])
    funded = channels.get_pool(operator.address, datanet_id).funded

    def post(amounts: list[int]) -> tuple[MerkleTree, int]:
        tree = MerkleTree([contributor_leaf(datanet_id, m.address, a) for m, a in zip(members, amounts, strict=True)])
        receipt = channels.post_epoch_root(operator, datanet_id, tree.root, sum(amounts), keccak(b"r"), keccak(b"a"))
        return tree, int(receipt["gasUsed"])

    per_member = funded // (2 * contributors)
    _, gas = post([per_member] * contributors)
    rows.append({"operation": "postEpochRoot (first root of the pool)", "gas": gas})
    amounts = [2 * per_member] * contributors
    tree, gas = post(amounts)
    rows.append({"operation": "postEpochRoot (later epoch)", "gas": gas})

    claimant = members[contributors // 2]
    chain.transfer_eth(operator, claimant.address, PAYER_ETH_WEI)
    proof = tree.proof(contributors // 2)
    receipt = channels.claim_contribution(claimant, operator.address, datanet_id, amounts[contributors // 2], proof)
    rows.append(
        {
            "operation": f"claimContribution (first claim, {contributors} contributors, proof of {len(proof)})",
            "gas": int(receipt["gasUsed"]),
        }
    )
    return rows


def run(chain: Chain, counts: Sequence[int] = CHANNEL_COUNTS) -> dict[str, Any]:
    operator = dev_accounts()[0]
    contracts = deploy_contracts(chain, operator)
    world = setup_world(chain, contracts, operator, adapters=ADAPTER_COUNT)
    channels = open_channels(world, max(counts))
    mixes = {"one adapter": world.adapter_ids[:1], f"{ADAPTER_COUNT} adapters": world.adapter_ids}
    claims = measure_claims(world, channels, counts, mixes)
    marginal = {}
    for mix in mixes:
        steady = {r["channels"]: r["gas"] for r in claims if r["mix"] == mix and r["state"] == "steady"}
        lo, hi = min(steady), max(steady)
        if hi > lo:
            marginal[mix] = (steady[hi] - steady[lo]) / (hi - lo)
    return {"claims": claims, "marginal_gas_per_channel": marginal, "other": measure_other(world, CONTRIBUTORS)}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Backend: {results['backend']}; commit {results['commit']}; {results['date']}",
        "",
        "| claim | revenue mix | channels | gasUsed | gas / channel |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results["claims"]:
        per = f"{r['gas'] / r['channels']:,.0f}"
        lines.append(f"| {r['state']} | {r['mix']} | {r['channels']} | {r['gas']:,} | {per} |")
    lines += ["", "| revenue mix | marginal gas / channel (gas(100) - gas(1)) / 99 |", "|---|---:|"]
    for mix, gas in results["marginal_gas_per_channel"].items():
        lines.append(f"| {mix} | {gas:,.0f} |")
    lines += ["", "| operation | gasUsed |", "|---|---:|"]
    lines += [f"| {r['operation']} | {r['gas']:,} |" for r in results["other"]]
    top = max(r["channels"] for r in results["claims"])
    lines.append("")
    for r in results["claims"]:
        if r["channels"] == top and r["state"] == "steady":
            verdict = "meets" if r["gas_per_channel"] <= GOAL_GAS_PER_CHANNEL else "misses"
            lines.append(
                f"{r['mix']}: {r['gas_per_channel']:,.0f} gas per channel at {top} channels "
                f"{verdict} the goal of {GOAL_GAS_PER_CHANNEL:,}."
            )
    return "\n".join(lines)


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anvil", action="store_true", help="run on an anvil node instead of the embedded EVM")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--channels", type=int, nargs="+", default=list(CHANNEL_COUNTS), help="channel counts per claim"
    )
    args = parser.parse_args(argv)
    if args.anvil:
        binary = find_anvil(REPO)
        if binary is None:
            parser.error("anvil not found: run `npm install` in the repository")
        chain = anvil_chain(binary=binary)
        backend = f"anvil ({binary.parent.parent.name}, hardfork cancun)"
    else:
        chain = embedded_chain()
        backend = "embedded (eth-tester / py-evm)"
    with chain:
        results = run(chain, sorted(set(args.channels)))
    results |= {
        "backend": backend,
        "commit": _commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "goal_gas_per_channel": GOAL_GAS_PER_CHANNEL,
    }
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
