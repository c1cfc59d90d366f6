"""Publishing a trained adapter: registering it in AdapterRegistry with its revenue policy and datanets."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from loraledger.sdk.chain.contracts import Contracts, RevenuePolicy

from ..attribution.service import ATTRIBUTION_DIR
from ..datanets.store import DatanetStore
from .manifest import AdapterManifest, weights_hash

logger = logging.getLogger(__name__)

__all__ = ["PublishError", "Published", "adapter_id_hash", "publish_adapter", "write_terms"]

_REGISTRATION_SAMPLE = 64  # contributions per datanet checked on chain before publishing


class PublishError(ValueError):
    """The adapter cannot be published as it is: the message says what to fix."""


@dataclass(frozen=True)
class Published:
    adapter_id: str
    adapter_id_hash: bytes
    owner: str
    datanet_ids: tuple[int, ...]
    datanet_weights_bps: tuple[int, ...]
    policy: RevenuePolicy
    transaction: str


def adapter_id_hash(adapter_id: str) -> bytes:
    """keccak256(utf8(adapter id)): the id AdapterRegistry and receipts use."""
    return keccak(adapter_id.encode("utf-8"))


def publish_adapter(
    adapter_dir: Path | str,
    contracts: Contracts,
    owner: LocalAccount,
    *,
    policy: RevenuePolicy,
    adapter_id: str | None = None,
    uri: str = "",
    store: DatanetStore | None = None,
) -> Published:
    """Registers the adapter in `adapter_dir` (trained by `loraledger train`) as `adapter_id` (default: the
    folder's name, which is the id the runtime serves it under) and records the on-chain datanet ids in
    its manifest and attribution index.

    Checks first: the weights still hash to the manifest's weights hash; every datanet is registered on
    this chain (resolved through `store` when it was registered after training); a sample of the
    training contributions is registered, so that contributors can claim their pool.
    """
    adapter_dir = Path(adapter_dir)
    manifest = AdapterManifest.load(adapter_dir)
    adapter_id = adapter_id or adapter_dir.resolve().name
    actual = "0x" + weights_hash(adapter_dir).hex()
    if actual != manifest.weights_hash:
        raise PublishError(f"adapter weights hash {actual} differs from the manifest's {manifest.weights_hash}")
    chain_id = contracts.chain.chain_id
    for d in manifest.datanets:
        if d.chain_id is None and store is not None:
            stored = store.get(d.id)
            if stored.name != d.name:
                raise PublishError(f"datanet {d.id} in the store is {stored.name!r}, the manifest says {d.name!r}")
            d.chain_id, d.network_chain_id = stored.chain_datanet_id, stored.network_chain_id
        if d.chain_id is None:
            raise PublishError(
                f"datanet {d.name!r} is not registered on chain: run `loraledger datanets register {d.id}` first"
            )
        if d.network_chain_id != chain_id:
            raise PublishError(f"datanet {d.name!r} is registered on chain {d.network_chain_id}, not {chain_id}")
        if not contracts.datanets.exists(d.chain_id):
            raise PublishError(f"datanet {d.chain_id} does not exist on chain {chain_id}")
    _check_contributions_registered(adapter_dir, manifest, contracts)
    if policy.owner_bps + policy.data_bps + policy.protocol_bps > 10_000:
        raise PublishError("owner, data and protocol shares add up to more than 10,000 bps")
    if contracts.adapters.owner_of(adapter_id_hash(adapter_id)) != "0x" + "0" * 40:
        raise PublishError(f"adapter id {adapter_id!r} is already registered")

    ids = tuple(d.chain_id for d in manifest.datanets)
    weights = tuple(d.weight_bps for d in manifest.datanets)
    receipt = contracts.adapters.register(
        owner,
        adapter_id_hash(adapter_id),
        base_model_hash=bytes.fromhex(manifest.base_model_hash[2:]),
        weights_hash=bytes.fromhex(manifest.weights_hash[2:]),
        uri=uri or f"loraledger:adapter:{adapter_id}",
        policy=policy,
        datanet_ids=ids,
        datanet_weights_bps=weights,
    )
    tx = receipt["transactionHash"].to_0x_hex()
    manifest.attribution["published"] = {
        "adapterId": adapter_id,
        "chainId": chain_id,
        "registry": contracts.adapters.address,
        "owner": owner.address,
        "policy": {"ownerBps": policy.owner_bps, "dataBps": policy.data_bps, "protocolBps": policy.protocol_bps},
        "transaction": tx,
    }
    manifest.save(adapter_dir)
    _record_chain_ids(adapter_dir / ATTRIBUTION_DIR, {d.id: d.chain_id for d in manifest.datanets})
    logger.info("adapter %r registered by %s in %s", adapter_id, owner.address, tx)
    return Published(adapter_id, adapter_id_hash(adapter_id), owner.address, ids, weights, policy, tx)


def _check_contributions_registered(adapter_dir: Path, manifest: AdapterManifest, contracts: Contracts) -> None:
    meta = json.loads((adapter_dir / ATTRIBUTION_DIR / "index.json").read_text())
    chain_ids = {d.id: d.chain_id for d in manifest.datanets}
    checked: dict[int, int] = {}
    for datanet, _, content_hash in meta["contributions"]:
        if checked.get(datanet, 0) >= _REGISTRATION_SAMPLE:
            continue
        checked[datanet] = checked.get(datanet, 0) + 1
        if not contracts.datanets.is_registered_content(chain_ids[datanet], content_hash):
            raise PublishError(
                f"contribution {content_hash} of datanet {datanet} is not registered on chain: "
                f"run `loraledger datanets register {datanet}` first"
            )


def _record_chain_ids(index_dir: Path, chain_ids: dict[int, int | None]) -> None:
    path = index_dir / "index.json"
    meta = json.loads(path.read_text())
    for d in meta["datanets"]:
        d["chain_id"] = chain_ids.get(d["id"], d["chain_id"])
    path.write_text(json.dumps(meta) + "\n")


def write_terms(
    adapter_dir: Path | str, published: Published, *, price_per_input_wei: int, price_per_output_wei: int,
    description: str = "",
) -> Path:  # fmt: skip
    """Writes the runtime's `loraledger.json` beside the adapter: its prices and what was registered on chain
    (owner, datanets and weights, revenue policy), so a runtime serving the folder sells it on these terms."""
    if price_per_input_wei < 0 or price_per_output_wei < 0:
        raise PublishError("prices are whole, non-negative amounts of the token's smallest unit")
    terms = {
        "pricePerInputToken": str(price_per_input_wei),
        "pricePerOutputToken": str(price_per_output_wei),
        "owner": published.owner,
        "datanets": [{"id": d, "weightBps": w} for d, w in zip(published.datanet_ids, published.datanet_weights_bps,
                                                                strict=True)],  # fmt: skip
        "revenuePolicy": {"ownerBps": published.policy.owner_bps, "dataBps": published.policy.data_bps,
                          "protocolBps": published.policy.protocol_bps},  # fmt: skip
        "description": description,
    }
    path = Path(adapter_dir) / "loraledger.json"
    path.write_text(json.dumps(terms, indent=2) + "\n")
    return path
