"""Datanets and adapters on chain: batched registration by the curator, publishing with a revenue policy, and
contributors paid through an epoch root built from attribution records."""

from __future__ import annotations

import numpy as np
import pytest

from loraledger.runtime.attribution import (
    ATTRIBUTION_DIR,
    AttributedCall,
    AttributionService,
    contributor_amounts,
    epoch_roots,
)
from loraledger.runtime.attribution.index import AttributionIndex, Contribution, DatanetShare, SpanParams
from loraledger.runtime.datanets import ContributionRow, DatanetError, DatanetStore, register_datanet
from loraledger.runtime.factory import AdapterManifest, ManifestDatanet, PublishError, adapter_id_hash, publish_adapter
from loraledger.sdk.chain.contracts import RevenuePolicy

WORDS = [f"w{i}" for i in range(400)]


@pytest.fixture
def store(tmp_path, accounts):
    rng = np.random.default_rng(0)
    with DatanetStore(tmp_path / "d.db") as s:
        d = s.create("legal")
        s.add(d, [ContributionRow(" ".join(rng.choice(WORDS, 30)), accounts[1 + i % 3].address) for i in range(25)])
        yield s


def test_registration_in_batches_is_resumable(store, contracts, accounts):
    curator = accounts[4]
    result = register_datanet(store, 1, contracts, curator, batch_size=10)
    assert (result.created, result.registered, result.transactions) == (True, 25, 3)
    onchain = result.chain_datanet_id
    assert contracts.datanets.get_datanet(onchain) == (curator.address, "loraledger:datanet:legal", 25)
    assert all(contracts.datanets.is_contributor(onchain, a.address) for a in accounts[1:4])
    first = store.contributions(1)[0]
    assert contracts.datanets.get_contribution(onchain, 0) == (first.contributor, bytes.fromhex(first.content_hash[2:]))

    # new rows register alone; one registered behind the store's back is recognised, not re-sent
    store.add(1, [ContributionRow("late one", accounts[5].address), ContributionRow("late two", accounts[5].address)])
    late = store.contributions(1, registered=False)
    contracts.datanets.register_contributions(curator, onchain, [late[0].contributor], [late[0].content_hash])
    again = register_datanet(store, 1, contracts, curator, batch_size=10)
    assert (again.created, again.registered, again.already_on_chain, again.transactions) == (False, 1, 1, 1)
    assert store.get(1).registered == 27
    with pytest.raises(DatanetError, match="curated by"):
        register_datanet(store, 1, contracts, accounts[5])


def _fake_adapter(tmp_path, store, name="legal-v1"):
    """An adapter folder as `loraledger train` writes it, without training: weights bytes, manifest, index."""
    out = tmp_path / name
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(b"weights of " + name.encode())
    rows = store.contributions(1)
    docs = [(Contribution(1, r.contributor, r.content_hash), [WORDS.index(w) for w in r.text.split()]) for r in rows]
    AttributionIndex.build(docs, [DatanetShare(1, 10_000)], SpanParams(min_span_tokens=5)).save(out / ATTRIBUTION_DIR)
    from loraledger.runtime.factory import weights_hash

    AdapterManifest(
        base_model_path="/models/tiny",
        base_model_hash="0x" + "11" * 32,
        weights_hash="0x" + weights_hash(out).hex(),
        datanets=[ManifestDatanet(1, "legal", 10_000, len(rows), 30 * len(rows))],
        contribution_hashes=[r.content_hash for r in rows],
        training={"rank": 8},
    ).save(out)
    return out


def test_publish_then_pay_contributors_by_attribution(store, contracts, accounts, payments, tmp_path):
    operator, owner, payer = accounts[0], accounts[6], accounts[7]
    adapter_dir = _fake_adapter(tmp_path, store)
    policy = RevenuePolicy(owner_bps=3000, data_bps=4000, protocol_bps=500)
    with pytest.raises(PublishError, match="not registered on chain"):
        publish_adapter(adapter_dir, contracts, owner, policy=policy)
    register_datanet(store, 1, contracts, accounts[4])
    published = publish_adapter(adapter_dir, contracts, owner, policy=policy, store=store)
    onchain = store.get(1).chain_datanet_id
    adapter = contracts.adapters.get_adapter(adapter_id_hash("legal-v1"))
    assert (adapter.owner, adapter.policy, adapter.datanet_ids, adapter.datanet_weights_bps) == (
        owner.address, policy, (onchain,), (10_000,)
    )
    assert published.datanet_ids == (onchain,)
    assert AdapterManifest.load(adapter_dir).datanets[0].chain_id == onchain
    with pytest.raises(PublishError, match="already registered"):
        publish_adapter(adapter_dir, contracts, owner, policy=policy)

    # two calls: one reproduces contributor 1's text, one is unrelated (data shares)
    service = AttributionService(tmp_path)
    rows = store.contributions(1)
    records = [
        service.attribute("legal-v1", [WORDS.index(w) for w in rows[0].text.split()]),
        service.attribute("legal-v1", [399, 398, 397, 396, 395, 394]),
    ]
    assert records[0].method == "spans" and records[1].method == "data-share"
    assert all(c.datanet == onchain for r in records for c in r.contributors)

    # the operator claims both calls' payments, then posts the contributors' epoch root
    from loraledger.sdk.chain.contracts import Revenue

    charged = [6_000_000, 4_000_000]
    channel_id, _ = payments.open(payer, payer, operator, 10**18)
    claim = payments.voucher(payer, channel_id, sum(charged))
    contracts.channels.claim(operator, [claim], [Revenue(adapter_id_hash("legal-v1"), sum(charged))])
    cumulative = contributor_amounts(AttributedCall(a, policy.data_bps, r) for a, r in zip(charged, records))
    root = epoch_roots(cumulative)[onchain]
    contracts.channels.post_epoch_root(operator, onchain, root.root, root.total)
    best = max(root.contributors, key=lambda a: cumulative[onchain][a])
    assert best == rows[0].contributor
    account = next(a for a in accounts if a.address == best)
    amount, proof = root.proof(best)
    before = contracts.token.balance_of(best)
    contracts.channels.claim_contribution(account, operator.address, onchain, amount, proof)
    assert contracts.token.balance_of(best) - before == amount > 0
    assert root.total <= contracts.channels.get_pool(operator.address, onchain).funded
