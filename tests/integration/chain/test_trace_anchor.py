"""TraceAnchor: anchoring reasoning-log roots per agent, on both backends."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from loraledger.sdk.chain.contracts import Anchor
from loraledger.sdk.chain.errors import ContractRevert

pytestmark = pytest.mark.integration


def test_anchor_records_count_time_and_block_per_agent(chain, accounts, contracts):
    anchor = contracts.anchor
    agent, other = accounts[3], accounts[4]
    root1, root2 = keccak(text="trace root 1"), keccak(text="trace root 2")
    assert anchor.anchor_count(agent.address) == 0
    assert anchor.get_anchor(agent.address, root1) == Anchor(0, 0, 0)

    receipt = chain.send(agent, anchor.contract.functions.anchor(root1, 12))
    assert anchor.events(receipt, "TraceAnchored") == [{"agent": agent.address, "root": root1, "count": 12, "index": 0}]
    block = chain.w3.eth.get_block(receipt["blockNumber"])
    assert anchor.get_anchor(agent.address, root1) == Anchor(12, block["timestamp"], receipt["blockNumber"])
    assert anchor.anchor(agent, root2, 30) == 1
    assert anchor.anchor_count(agent.address) == 2
    assert anchor.get_anchor(agent.address, root2).count == 30

    # The same root anchored by another agent is that agent's own record.
    assert anchor.anchor(other, root1, 5) == 0
    assert anchor.get_anchor(other.address, root1).count == 5
    assert anchor.get_anchor(agent.address, root1).count == 12
    assert anchor.anchor_count(other.address) == 1


def test_anchor_rejects_empty_and_repeated_roots(accounts, contracts):
    anchor = contracts.anchor
    agent = accounts[3]
    root = keccak(text="trace root")
    for bad_root, count in ((b"\x00" * 32, 3), (root, 0)):
        with pytest.raises(ContractRevert) as info:
            anchor.anchor(agent, bad_root, count)
        assert info.value.name == "EmptyTrace"
    anchor.anchor(agent, root, 3)
    with pytest.raises(ContractRevert) as info:
        anchor.anchor(agent, root, 4)
    assert (info.value.name, info.value.args_) == ("AlreadyAnchored", (root,))
    assert anchor.get_anchor(agent.address, root).count == 3
    assert anchor.anchor_count(agent.address) == 1
