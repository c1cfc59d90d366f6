"""From many calls' (amount, attribution) to cumulative per-contributor amounts per datanet, and epoch roots.

PaymentChannels funds an operator's pool of each datanet with floor(amount·dataBps/10⁴) of every claimed
adapter revenue, divided among the adapter's datanets by their weights. Here each call's share is
computed with floors at every step (the contract gives the last datanet the rounding remainder; this
does not), so the sum over calls never exceeds what the contract funded, however the calls were
batched into claims: a few units of dust stay in the pool. Inside a datanet, a call's part is split
exactly among that datanet's contributors by their weights in the call's record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eth_utils import to_checksum_address

from loraledger.sdk.merkle import MerkleTree, contributor_leaf, leaf_hash

from .record import BPS, AttributionRecord, apportion

__all__ = ["AttributedCall", "EpochRoot", "attribution_root", "contributor_amounts", "epoch_roots"]


@dataclass(frozen=True)
class AttributedCall:
    """One settled call: what was charged, the adapter's data share at claim time, and its record."""

    amount_wei: int
    data_bps: int
    record: AttributionRecord


def contributor_amounts(
    calls: Iterable[AttributedCall], previous: Mapping[int, Mapping[str, int]] | None = None
) -> dict[int, dict[str, int]]:
    """Cumulative {datanet: {contributor: amount_wei}}: `previous` (the last epoch's) plus these calls."""
    out: dict[int, dict[str, int]] = {d: dict(m) for d, m in (previous or {}).items()}
    for call in calls:
        if call.amount_wei < 0 or not 0 <= call.data_bps <= BPS:
            raise ValueError(f"bad call: amount {call.amount_wei}, data share {call.data_bps} bps")
        data_wei = call.amount_wei * call.data_bps // BPS
        if data_wei == 0:
            continue
        weights = call.record.weights_by_datanet()
        for datanet in call.record.datanets:
            part = data_wei * datanet.weight_bps // BPS
            if part == 0:
                continue
            per = out.setdefault(datanet.datanet, {})
            for address, amount in apportion(part, weights[datanet.datanet]).items():
                per[address] = per.get(address, 0) + amount
    return out


@dataclass(frozen=True)
class EpochRoot:
    """One datanet's epoch root: what `PaymentChannels.postEpochRoot` takes, and the proofs to hand out."""

    datanet: int
    root: bytes
    total: int
    contributors: tuple[str, ...]  # leaf order
    amounts: tuple[int, ...]
    tree: MerkleTree

    def proof(self, contributor: str) -> tuple[int, list[bytes]]:
        """(cumulative amount, Merkle proof) for `contributor`'s claimContribution."""
        i = self.contributors.index(to_checksum_address(contributor))
        return self.amounts[i], self.tree.proof(i)


def epoch_roots(cumulative: Mapping[int, Mapping[str, int]]) -> dict[int, EpochRoot]:
    """The Merkle root of cumulative amounts (sdk.merkle contributor leaves) for each datanet with any."""
    roots = {}
    for datanet, amounts in sorted(cumulative.items()):
        items = sorted((to_checksum_address(a), v) for a, v in amounts.items() if v > 0)
        if not items:
            continue
        tree = MerkleTree([contributor_leaf(datanet, a, v) for a, v in items])
        roots[datanet] = EpochRoot(
            datanet,
            tree.root,
            sum(v for _, v in items),
            tuple(a for a, _ in items),
            tuple(v for _, v in items),
            tree,
        )
    return roots


def attribution_root(record_hashes: Iterable[bytes]) -> bytes:
    """The Merkle root of an epoch's attribution record hashes (postEpochRoot's attributionRoot); zero when none."""
    hashes = list(record_hashes)
    if not hashes:
        return b"\x00" * 32
    return MerkleTree([leaf_hash(("bytes32",), (h,)) for h in hashes]).root
