"""The attribution record of one call: its canonical JSON, its keccak hash, and basis-point apportioning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import rfc8785
from eth_utils import keccak

__all__ = [
    "BPS",
    "RECORD_VERSION",
    "AttributionRecord",
    "ContributorWeight",
    "DatanetWeight",
    "Span",
    "apportion",
    "combine_datanets",
]

BPS = 10_000
RECORD_VERSION = 1


def apportion(total: int, weights: Mapping[Any, int]) -> dict[Any, int]:
    """Splits the integer `total` in proportion to non-negative integer `weights`, exactly.

    Largest remainder: each key gets floor(total·w/W), and the units left over go one each to the keys
    with the largest remainders, ties broken by key order, so the result is deterministic and sums to
    `total`. Keys whose share is 0 are dropped.
    """
    if total < 0:
        raise ValueError(f"total must be non-negative, got {total}")
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must be non-negative")
    weight_sum = sum(weights.values())
    if weight_sum == 0:
        raise ValueError("weights sum to zero")
    keys = sorted(weights)
    shares = {k: total * weights[k] // weight_sum for k in keys}
    left = total - sum(shares.values())
    by_remainder = sorted(range(len(keys)), key=lambda i: (-(total * weights[keys[i]] % weight_sum), i))
    for i in by_remainder[:left]:
        shares[keys[i]] += 1
    return {k: v for k, v in shares.items() if v}


@dataclass(frozen=True)
class Span:
    """Output tokens [start, end) found verbatim in `count` places of the training contributions."""

    start: int
    end: int
    count: int
    score_milli: int  # length x rarity, x 1000, rounded: integers keep the record's hash portable
    contributions: tuple[str, ...]  # content hashes (0x-hex) of the first contributions holding it, sorted

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "count": self.count,
            "scoreMilli": self.score_milli,
            "contributions": list(self.contributions),
        }


@dataclass(frozen=True)
class DatanetWeight:
    """One datanet's part of the data share (the adapter's on-chain datanet weight) and how it was split."""

    datanet: int  # on-chain datanet id (the local store id while the datanet is not registered)
    weight_bps: int
    method: str  # "spans" or "data-share"

    def to_json(self) -> dict[str, Any]:
        return {"datanet": self.datanet, "weightBps": self.weight_bps, "method": self.method}


@dataclass(frozen=True)
class ContributorWeight:
    datanet: int
    address: str  # checksummed
    weight_bps: int

    def to_json(self) -> dict[str, Any]:
        return {"datanet": self.datanet, "address": self.address, "weightBps": self.weight_bps}


@dataclass(frozen=True)
class AttributionRecord:
    """Which contributions one call's output drew on.

    `contributors` weights sum to 10,000 over the record, and within each datanet to that datanet's
    `weight_bps`, because the contract funds each datanet's pool by those weights: a datanet the output
    drew on is split by span scores, one it did not by its data shares. `method` is "spans" when any
    span matched, "data-share" when none did (or "influence" for the gradient method).
    """

    adapter: str
    method: str
    output_tokens: int
    params: Mapping[str, int]
    spans: tuple[Span, ...]
    datanets: tuple[DatanetWeight, ...]
    contributors: tuple[ContributorWeight, ...]

    def __post_init__(self) -> None:
        total = sum(c.weight_bps for c in self.contributors)
        if total != BPS:
            raise ValueError(f"contributor weights sum to {total}, not {BPS}")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "adapter": self.adapter,
            "method": self.method,
            "outputTokens": self.output_tokens,
            "params": dict(self.params),
            "spans": [s.to_json() for s in self.spans],
            "datanets": [d.to_json() for d in self.datanets],
            "contributors": [c.to_json() for c in self.contributors],
        }

    def canonical_json(self) -> bytes:
        """RFC 8785 (JCS) bytes of `to_json()`: the same on every machine and in every language."""
        return rfc8785.dumps(self.to_json())

    @property
    def hash(self) -> bytes:
        """keccak256 of the canonical JSON: the receipt's attributionHash."""
        return keccak(self.canonical_json())

    def weights_by_datanet(self) -> dict[int, dict[str, int]]:
        """{datanet: {address: weight_bps}}."""
        out: dict[int, dict[str, int]] = {}
        for c in self.contributors:
            out.setdefault(c.datanet, {})[c.address] = c.weight_bps
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttributionRecord:
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported attribution record version {data.get('version')!r}")
        return cls(
            adapter=data["adapter"],
            method=data["method"],
            output_tokens=int(data["outputTokens"]),
            params={k: int(v) for k, v in data["params"].items()},
            spans=tuple(
                Span(s["start"], s["end"], s["count"], s["scoreMilli"], tuple(s["contributions"]))
                for s in data["spans"]
            ),
            datanets=tuple(DatanetWeight(d["datanet"], d["weightBps"], d["method"]) for d in data["datanets"]),
            contributors=tuple(
                ContributorWeight(c["datanet"], c["address"], c["weightBps"]) for c in data["contributors"]
            ),
        )


def combine_datanets(
    datanet_weights_bps: Sequence[tuple[int, int]],
    scores: Mapping[int, Mapping[str, int]],
    data_shares: Mapping[int, Mapping[str, int]],
) -> tuple[tuple[DatanetWeight, ...], tuple[ContributorWeight, ...]]:
    """Contributor weights from per-datanet integer scores, falling back to data shares per datanet.

    `datanet_weights_bps`: (datanet, weight) pairs summing to 10,000; `scores` and `data_shares`:
    {datanet: {address: non-negative integer}}.
    """
    if sum(w for _, w in datanet_weights_bps) != BPS:
        raise ValueError("datanet weights must sum to 10,000 bps")
    datanets, contributors = [], []
    for datanet, weight in sorted(datanet_weights_bps):
        matched = {a: s for a, s in scores.get(datanet, {}).items() if s > 0}
        method = "spans" if matched else "data-share"
        source = matched or data_shares.get(datanet, {})
        if not any(source.values()):
            raise ValueError(f"datanet {datanet} has no contributor to attribute to")
        datanets.append(DatanetWeight(datanet, weight, method))
        for address, bps in sorted(apportion(weight, source).items()):
            contributors.append(ContributorWeight(datanet, address, bps))
    return tuple(datanets), tuple(contributors)
