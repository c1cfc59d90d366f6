"""Registering a datanet and its contributions in DatanetRegistry, in batches, by the curator."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from tqdm import tqdm

from loraledger.sdk.chain.contracts import Contracts

from .store import DatanetError, DatanetStore

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_BATCH_SIZE", "Registration", "register_datanet"]

DEFAULT_BATCH_SIZE = 100
"""Contributions per registerContributions transaction (about 75k gas each on the dev chain)."""


@dataclass(frozen=True)
class Registration:
    datanet_id: int
    chain_datanet_id: int
    created: bool  # the datanet was created on chain by this call
    registered: int  # contributions registered by this call
    already_on_chain: int  # found registered (an earlier run stopped before recording them)
    transactions: int


def register_datanet(
    store: DatanetStore,
    datanet_id: int,
    contracts: Contracts,
    curator: LocalAccount,
    *,
    metadata_uri: str = "",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> Registration:
    """Creates the datanet on chain (first time) and registers its unregistered contributions.

    Resumable: a contribution whose content hash the registry already holds (a run that stopped between
    its transaction and the store's update) is marked registered without a second transaction.
    """
    if batch_size < 1:
        raise DatanetError("batch size must be at least 1")
    datanet = store.get(datanet_id)
    chain_id = contracts.chain.chain_id
    if datanet.curator is not None and datanet.curator != curator.address:
        raise DatanetError(f"datanet {datanet.name!r} is curated by {datanet.curator}, not {curator.address}")
    created = False
    if datanet.chain_datanet_id is None:
        uri = metadata_uri or f"loraledger:datanet:{datanet.name}"
        onchain_id = contracts.datanets.create_datanet(curator, uri)
        store.set_chain_id(datanet_id, network_chain_id=chain_id, chain_datanet_id=onchain_id, curator=curator.address)
        created = True
        logger.info("datanet %r created on chain %d as %d", datanet.name, chain_id, onchain_id)
    else:
        if datanet.network_chain_id != chain_id:
            raise DatanetError(
                f"datanet {datanet.name!r} is registered on chain {datanet.network_chain_id}, not {chain_id}"
            )
        onchain_id = datanet.chain_datanet_id
        onchain_curator = contracts.datanets.get_datanet(onchain_id)[0]
        if onchain_curator != curator.address:
            raise DatanetError(f"datanet {onchain_id} on chain is curated by {onchain_curator}, not {curator.address}")
    pending = store.contributions(datanet_id, registered=False)
    already = [c.id for c in pending if contracts.datanets.is_registered_content(onchain_id, c.content_hash)]
    if already:
        store.mark_registered(already)
    done = set(already)
    todo = [c for c in pending if c.id not in done]
    transactions = 0
    with tqdm(total=len(todo), disable=not progress, unit="contribution", desc="registering") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            contracts.datanets.register_contributions(
                curator, onchain_id, [c.contributor for c in batch], [c.content_hash for c in batch]
            )
            store.mark_registered([c.id for c in batch])
            transactions += 1
            bar.update(len(batch))
    return Registration(datanet_id, onchain_id, created, len(todo), len(already), transactions)
