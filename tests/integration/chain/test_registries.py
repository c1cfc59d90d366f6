"""DatanetRegistry and AdapterRegistry: every function, event and misuse error, on both backends."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from eth_utils import keccak

from loraledger.sdk.chain.contracts import RevenuePolicy
from loraledger.sdk.chain.errors import ContractRevert
from loraledger.sdk.vouchers import adapter_id

pytestmark = pytest.mark.integration

ZERO = "0x0000000000000000000000000000000000000000"
BASE = keccak(text="base model")
WEIGHTS = keccak(text="weights v1")


@contextmanager
def reverts(name: str, *args):
    """Expects a ContractRevert with custom error `name` (and, when given, exactly these decoded arguments)."""
    with pytest.raises(ContractRevert) as info:
        yield info
    assert info.value.name == name, info.value
    if args:  # the decoder gives addresses in lower case
        assert _lower(info.value.args_) == _lower(args), info.value


def _lower(values: tuple) -> tuple:
    return tuple(v.lower() if isinstance(v, str) else v for v in values)


def _h(label: str) -> bytes:
    return keccak(text=label)


# ---------------------------------------------------------------------------------------------- datanets


def test_create_datanets_and_read_them(chain, accounts, contracts):
    datanets = contracts.datanets
    curator, other = accounts[1], accounts[2]
    assert datanets.datanet_count() == 0
    assert not datanets.exists(0) and not datanets.exists(1)

    receipt = chain.send(curator, datanets.contract.functions.createDatanet("ipfs://legal"))
    assert datanets.events(receipt, "DatanetCreated") == [
        {"datanetId": 1, "curator": curator.address, "metadataURI": "ipfs://legal"}
    ]
    assert datanets.create_datanet(other, "ipfs://medical") == 2
    assert datanets.datanet_count() == 2
    assert datanets.exists(1) and datanets.exists(2) and not datanets.exists(3)
    assert datanets.get_datanet(1) == (curator.address, "ipfs://legal", 0)
    assert datanets.get_datanet(2) == (other.address, "ipfs://medical", 0)
    for missing in (0, 3):
        with reverts("UnknownDatanet", missing):
            datanets.get_datanet(missing)


def test_curator_sets_metadata_and_hands_over_curation(accounts, contracts):
    datanets = contracts.datanets
    curator, successor, stranger = accounts[1], accounts[2], accounts[3]
    dn = datanets.create_datanet(curator, "ipfs://v1")

    receipt = datanets.set_metadata_uri(curator, dn, "ipfs://v2")
    assert datanets.events(receipt, "DatanetMetadataUpdated") == [{"datanetId": dn, "metadataURI": "ipfs://v2"}]
    assert datanets.get_datanet(dn)[1] == "ipfs://v2"
    with reverts("NotCurator", dn, stranger.address):
        datanets.set_metadata_uri(stranger, dn, "ipfs://evil")
    with reverts("UnknownDatanet", 7):
        datanets.set_metadata_uri(curator, 7, "ipfs://nowhere")

    with reverts("ZeroAddress"):
        datanets.transfer_curation(curator, dn, ZERO)
    with reverts("NotCurator", dn, stranger.address):
        datanets.transfer_curation(stranger, dn, stranger.address)
    with reverts("UnknownDatanet", 7):
        datanets.transfer_curation(curator, 7, successor.address)
    receipt = datanets.transfer_curation(curator, dn, successor.address)
    assert datanets.events(receipt, "CuratorTransferred") == [
        {"datanetId": dn, "previousCurator": curator.address, "newCurator": successor.address}
    ]
    assert datanets.get_datanet(dn) == (successor.address, "ipfs://v2", 0)
    with reverts("NotCurator", dn, curator.address):
        datanets.set_metadata_uri(curator, dn, "ipfs://v3")
    with reverts("NotCurator", dn, curator.address):
        datanets.register_contributions(curator, dn, [curator.address], [_h("c")])
    datanets.set_metadata_uri(successor, dn, "ipfs://v3")
    datanets.register_contributions(successor, dn, [stranger.address], [_h("c")])
    assert datanets.get_datanet(dn) == (successor.address, "ipfs://v3", 1)


def test_register_contributions_in_batches(chain, accounts, contracts):
    datanets = contracts.datanets
    curator, ann, ben = accounts[1], accounts[2], accounts[3]
    dn = datanets.create_datanet(curator, "ipfs://code")
    other_dn = datanets.create_datanet(curator, "ipfs://other")

    fn = datanets.contract.functions.registerContributions(
        dn, [ann.address, ben.address, ann.address], [_h("a"), _h("b"), _h("c")]
    )
    assert chain.call(fn, sender=curator.address) == 0  # firstIndex
    receipt = datanets.register_contributions(
        curator, dn, [ann.address, ben.address, ann.address], [_h("a"), _h("b"), _h("c")]
    )
    assert datanets.events(receipt, "ContributionRegistered") == [
        {"datanetId": dn, "index": 0, "contributor": ann.address, "contentHash": _h("a")},
        {"datanetId": dn, "index": 1, "contributor": ben.address, "contentHash": _h("b")},
        {"datanetId": dn, "index": 2, "contributor": ann.address, "contentHash": _h("c")},
    ]
    fn = datanets.contract.functions.registerContributions(dn, [ben.address], [_h("d")])
    assert chain.call(fn, sender=curator.address) == 3
    receipt = datanets.register_contributions(curator, dn, [ben.address], [_h("d")])
    assert datanets.events(receipt, "ContributionRegistered")[0]["index"] == 3

    assert datanets.get_datanet(dn) == (curator.address, "ipfs://code", 4)
    assert [datanets.get_contribution(dn, i) for i in range(5)] == [
        (ann.address, _h("a")),
        (ben.address, _h("b")),
        (ann.address, _h("c")),
        (ben.address, _h("d")),
        (ZERO, b"\x00" * 32),
    ]
    assert (datanets.contributions_of(dn, ann.address), datanets.contributions_of(dn, ben.address)) == (2, 2)
    assert datanets.is_contributor(dn, ann.address) and not datanets.is_contributor(dn, curator.address)
    assert not datanets.is_contributor(other_dn, ann.address) and datanets.contributions_of(other_dn, ann.address) == 0
    assert datanets.is_registered_content(dn, _h("a")) and not datanets.is_registered_content(dn, _h("zz"))

    # Content hashes are unique per datanet, not globally.
    datanets.register_contributions(curator, other_dn, [ben.address], [_h("a")])
    assert datanets.is_registered_content(other_dn, _h("a")) and datanets.is_contributor(other_dn, ben.address)


def test_register_contributions_rejects_bad_batches_atomically(accounts, contracts):
    datanets = contracts.datanets
    curator, ann, stranger = accounts[1], accounts[2], accounts[3]
    dn = datanets.create_datanet(curator, "ipfs://code")
    datanets.register_contributions(curator, dn, [ann.address], [_h("a")])

    with reverts("BadBatch"):
        datanets.register_contributions(curator, dn, [], [])
    with reverts("BadBatch"):
        datanets.register_contributions(curator, dn, [ann.address, ann.address], [_h("x")])
    with reverts("ZeroAddress"):
        datanets.register_contributions(curator, dn, [ann.address, ZERO], [_h("x"), _h("y")])
    with reverts("DuplicateContribution", dn, _h("a")):
        datanets.register_contributions(curator, dn, [stranger.address, ann.address], [_h("x"), _h("a")])
    with reverts("DuplicateContribution", dn, _h("x")):
        datanets.register_contributions(curator, dn, [ann.address, stranger.address], [_h("x"), _h("x")])
    with reverts("NotCurator", dn, stranger.address):
        datanets.register_contributions(stranger, dn, [stranger.address], [_h("x")])
    with reverts("UnknownDatanet", 9):
        datanets.register_contributions(curator, 9, [ann.address], [_h("x")])

    # None of the rejected batches left a trace.
    assert datanets.get_datanet(dn)[2] == 1
    assert not datanets.is_registered_content(dn, _h("x"))
    assert not datanets.is_contributor(dn, stranger.address)
    assert datanets.contributions_of(dn, ann.address) == 1


# ---------------------------------------------------------------------------------------------- adapters


def _datanets(contracts, curator, n: int) -> list[int]:
    return [contracts.datanets.create_datanet(curator, f"ipfs://dn{i}") for i in range(n)]


def _revenue_split(contracts, aid: bytes):
    adapters = contracts.adapters
    owner, policy, ids, weights = adapters.chain.call(adapters.contract.functions.revenueSplit(aid))
    return owner, tuple(policy), tuple(ids), tuple(weights)


def test_register_adapter_and_read_it(chain, accounts, contracts):
    adapters = contracts.adapters
    owner = accounts[2]
    dn1, dn2 = _datanets(contracts, accounts[1], 2)
    aid = adapter_id("legal-summarizer")
    assert chain.call(adapters.contract.functions.BPS()) == 10_000
    assert chain.call(adapters.contract.functions.MAX_DATANETS()) == 16
    assert chain.call(adapters.contract.functions.datanets()) == contracts.datanets.address
    assert adapters.owner_of(aid) == ZERO

    receipt = adapters.register(
        owner,
        aid,
        base_model_hash=BASE,
        weights_hash=WEIGHTS,
        uri="ipfs://w1",
        policy=RevenuePolicy(5_000, 3_000, 500),
        datanet_ids=[dn1, dn2],
        datanet_weights_bps=[7_000, 3_000],
    )
    assert adapters.events(receipt, "AdapterRegistered") == [
        {"adapterId": aid, "owner": owner.address, "baseModelHash": BASE, "weightsHash": WEIGHTS, "uri": "ipfs://w1"}
    ]
    assert adapters.events(receipt, "RevenuePolicySet") == [
        {
            "adapterId": aid,
            "ownerBps": 5_000,
            "dataBps": 3_000,
            "protocolBps": 500,
            "datanetIds": [dn1, dn2],
            "datanetWeightsBps": [7_000, 3_000],
        }
    ]
    adapter = adapters.get_adapter(aid)
    assert (adapter.owner, adapter.base_model_hash, adapter.weights_hash, adapter.uri) == (
        owner.address,
        BASE,
        WEIGHTS,
        "ipfs://w1",
    )
    assert adapter.policy == RevenuePolicy(5_000, 3_000, 500)
    assert (adapter.datanet_ids, adapter.datanet_weights_bps) == ((dn1, dn2), (7_000, 3_000))
    assert adapters.owner_of(aid) == owner.address
    assert _revenue_split(contracts, aid) == (owner.address, (5_000, 3_000, 500), (dn1, dn2), (7_000, 3_000))

    # No datanets and no data share; the shares may take the whole 10,000.
    bare = adapter_id("bare")
    adapters.register(
        owner, bare, base_model_hash=BASE, weights_hash=WEIGHTS, uri="", policy=RevenuePolicy(9_000, 0, 1_000)
    )
    assert _revenue_split(contracts, bare) == (owner.address, (9_000, 0, 1_000), (), ())

    unknown = adapter_id("unknown")
    with reverts("UnknownAdapter", unknown):
        adapters.get_adapter(unknown)
    with reverts("UnknownAdapter", unknown):
        _revenue_split(contracts, unknown)


def test_register_rejects_taken_ids_and_bad_policies(accounts, contracts):
    adapters = contracts.adapters
    owner, rival = accounts[2], accounts[3]
    dns = _datanets(contracts, accounts[1], 17)
    aid = adapter_id("taken")

    def register(who, adapter, policy, ids=(), weights=()):
        return adapters.register(
            who,
            adapter,
            base_model_hash=BASE,
            weights_hash=WEIGHTS,
            uri="u",
            policy=policy,
            datanet_ids=ids,
            datanet_weights_bps=weights,
        )

    register(owner, aid, RevenuePolicy(1_000, 0, 0))
    with reverts("AdapterExists", aid):
        register(rival, aid, RevenuePolicy(1_000, 0, 0))
    with reverts("AdapterExists", b"\x00" * 32):
        register(rival, b"\x00" * 32, RevenuePolicy(1_000, 0, 0))
    fresh = adapter_id("fresh")
    with reverts("InvalidPolicy"):
        register(owner, fresh, RevenuePolicy(6_000, 3_000, 1_001), [dns[0]], [10_000])
    with reverts("InvalidPolicy"):
        register(owner, fresh, RevenuePolicy(10_001, 0, 0))

    bad_datanets = {
        "unknown datanet": ([dns[0], 99], [5_000, 5_000]),
        "datanet zero": ([0], [10_000]),
        "repeated": ([dns[0], dns[1], dns[0]], [4_000, 3_000, 3_000]),
        "weights under 10,000": ([dns[0], dns[1]], [5_000, 4_999]),
        "weights over 10,000": ([dns[0], dns[1]], [5_000, 5_001]),
        "zero weight": ([dns[0], dns[1], dns[2]], [10_000, 0, 0]),
        "lengths differ": ([dns[0], dns[1]], [10_000]),
        "data share without datanets": ([], []),
        "17 datanets": (dns, [588] * 16 + [592]),
    }
    for label, (ids, weights) in bad_datanets.items():
        with reverts("InvalidDatanets"):
            register(owner, fresh, RevenuePolicy(1_000, 2_000, 0), ids, weights)
        assert adapters.owner_of(fresh) == ZERO, label
    # Weights must sum to 10,000 even when the data share is zero.
    with reverts("InvalidDatanets"):
        register(owner, fresh, RevenuePolicy(1_000, 0, 0), [dns[0]], [9_999])

    register(owner, fresh, RevenuePolicy(1_000, 2_000, 0), dns[:16], [625] * 16)
    assert adapters.get_adapter(fresh).datanet_ids == tuple(dns[:16])


def test_owner_updates_weights_and_policy_and_transfers(accounts, contracts):
    adapters = contracts.adapters
    owner, buyer, stranger = accounts[2], accounts[3], accounts[4]
    dn1, dn2, dn3 = _datanets(contracts, accounts[1], 3)
    aid = adapter_id("evolving")
    unknown = adapter_id("nobody")
    adapters.register(
        owner,
        aid,
        base_model_hash=BASE,
        weights_hash=WEIGHTS,
        uri="ipfs://w1",
        policy=RevenuePolicy(2_000, 1_000, 100),
        datanet_ids=[dn1],
        datanet_weights_bps=[10_000],
    )

    weights_v2 = keccak(text="weights v2")
    receipt = adapters.update_weights(owner, aid, weights_v2, "ipfs://w2")
    assert adapters.events(receipt, "AdapterWeightsUpdated") == [
        {"adapterId": aid, "weightsHash": weights_v2, "uri": "ipfs://w2"}
    ]
    adapter = adapters.get_adapter(aid)
    assert (adapter.weights_hash, adapter.uri, adapter.base_model_hash) == (weights_v2, "ipfs://w2", BASE)
    with reverts("NotAdapterOwner", aid, stranger.address):
        adapters.update_weights(stranger, aid, WEIGHTS, "ipfs://evil")
    with reverts("UnknownAdapter", unknown):
        adapters.update_weights(owner, unknown, WEIGHTS, "ipfs://w")

    receipt = adapters.set_revenue_policy(owner, aid, RevenuePolicy(3_000, 4_000, 200), [dn2, dn3], [2_500, 7_500])
    assert adapters.events(receipt, "RevenuePolicySet") == [
        {
            "adapterId": aid,
            "ownerBps": 3_000,
            "dataBps": 4_000,
            "protocolBps": 200,
            "datanetIds": [dn2, dn3],
            "datanetWeightsBps": [2_500, 7_500],
        }
    ]
    assert _revenue_split(contracts, aid) == (owner.address, (3_000, 4_000, 200), (dn2, dn3), (2_500, 7_500))
    with reverts("InvalidDatanets"):
        adapters.set_revenue_policy(owner, aid, RevenuePolicy(3_000, 4_000, 200), [dn2, dn2], [5_000, 5_000])
    with reverts("InvalidPolicy"):
        adapters.set_revenue_policy(owner, aid, RevenuePolicy(9_000, 1_000, 1))
    with reverts("NotAdapterOwner", aid, stranger.address):
        adapters.set_revenue_policy(stranger, aid, RevenuePolicy(0, 0, 0))
    with reverts("UnknownAdapter", unknown):
        adapters.set_revenue_policy(owner, unknown, RevenuePolicy(0, 0, 0))
    # Dropping the datanets together with the data share.
    adapters.set_revenue_policy(owner, aid, RevenuePolicy(3_000, 0, 200))
    assert _revenue_split(contracts, aid) == (owner.address, (3_000, 0, 200), (), ())

    with reverts("ZeroAddress"):
        adapters.transfer_adapter(owner, aid, ZERO)
    with reverts("NotAdapterOwner", aid, stranger.address):
        adapters.transfer_adapter(stranger, aid, stranger.address)
    with reverts("UnknownAdapter", unknown):
        adapters.transfer_adapter(owner, unknown, buyer.address)
    receipt = adapters.transfer_adapter(owner, aid, buyer.address)
    assert adapters.events(receipt, "AdapterTransferred") == [
        {"adapterId": aid, "previousOwner": owner.address, "newOwner": buyer.address}
    ]
    assert adapters.owner_of(aid) == buyer.address == adapters.get_adapter(aid).owner
    with reverts("NotAdapterOwner", aid, owner.address):
        adapters.update_weights(owner, aid, WEIGHTS, "ipfs://w")
    adapters.update_weights(buyer, aid, WEIGHTS, "ipfs://w3")
    assert adapters.get_adapter(aid).uri == "ipfs://w3"
