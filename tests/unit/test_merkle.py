"""Merkle trees: proofs verify for every leaf, tampering fails, roots match independently computed vectors."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak

from loraledger.sdk import merkle
from loraledger.sdk.merkle import MerkleTree, contributor_leaf, leaf_hash, verify


def _leaves(n: int) -> list[bytes]:
    return [contributor_leaf(7, f"0x{i + 1:040x}", 1_000 * (i + 1)) for i in range(n)]


def _pair(a: bytes, b: bytes) -> bytes:
    lo, hi = sorted((a, b))
    return keccak(lo + hi)


def test_all_is_sorted() -> None:
    assert merkle.__all__ == sorted(merkle.__all__)


@pytest.mark.parametrize("n", range(1, 18))
def test_every_proof_verifies(n: int) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    assert len(tree) == n
    for i, leaf in enumerate(leaves):
        assert verify(tree.root, leaf, tree.proof(i))


@pytest.mark.parametrize("n", [2, 3, 5, 8, 17])
def test_tampering_fails(n: int) -> None:
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    other = contributor_leaf(7, "0x" + "ee" * 20, 1)
    for i, leaf in enumerate(leaves):
        proof = tree.proof(i)
        assert not verify(tree.root, other, proof)
        assert not verify(tree.root, bytes([leaf[0] ^ 1]) + leaf[1:], proof)
        for j in range(len(proof)):
            bad = list(proof)
            bad[j] = bytes([bad[j][0] ^ 1]) + bad[j][1:]
            assert not verify(tree.root, leaf, bad)
        assert not verify(tree.root, leaf, proof[:-1])
        assert not verify(tree.root, leaf, [*proof, other])
        assert not verify(keccak(b"another root"), leaf, proof)


def test_single_leaf_is_its_own_root() -> None:
    leaf = _leaves(1)[0]
    tree = MerkleTree([leaf])
    assert tree.root == leaf
    assert tree.proof(0) == []
    assert verify(leaf, leaf, [])


def test_three_leaf_vector() -> None:
    leaves = _leaves(3)
    a, b, c = sorted(leaves)
    # StandardMerkleTree layout of sorted leaves a < b < c, reversed into the last slots:
    # node 0 = root, node 1 = hash(node 3, node 4), node 2 = c, node 3 = b, node 4 = a.
    expected = _pair(c, _pair(a, b))
    tree = MerkleTree(leaves)
    assert tree.root == expected
    assert tree.proof(leaves.index(c)) == [_pair(a, b)]
    assert tree.proof(leaves.index(a)) == [b, c]
    assert tree.proof(leaves.index(b)) == [a, c]


def test_openzeppelin_readme_vector() -> None:
    # The root printed by @openzeppelin/merkle-tree's README example (StandardMerkleTree.of).
    values = [
        ("0x1111111111111111111111111111111111111111", 5_000_000_000_000_000_000),
        ("0x2222222222222222222222222222222222222222", 2_500_000_000_000_000_000),
    ]
    tree = MerkleTree([leaf_hash(["address", "uint256"], v) for v in values])
    assert tree.root.hex() == "d4dee0beab2d53f2cc83e567171bd2820e49898130a22622b10ead383e90bd77"


def test_contributor_leaf_matches_solidity_encoding() -> None:
    contributor = "0x" + "ab" * 20
    encoded = (7).to_bytes(32, "big") + bytes(12) + bytes.fromhex("ab" * 20) + (123).to_bytes(32, "big")
    assert encode(["uint256", "address", "uint256"], [7, contributor, 123]) == encoded
    assert contributor_leaf(7, contributor, 123) == keccak(keccak(encoded))


def test_root_ignores_leaf_order() -> None:
    leaves = _leaves(9)
    assert MerkleTree(leaves).root == MerkleTree(leaves[::-1]).root


def test_duplicate_leaves_each_prove() -> None:
    leaves = _leaves(3)
    leaves = [leaves[0], leaves[1], leaves[0], leaves[2], leaves[1]]
    tree = MerkleTree(leaves)
    for i, leaf in enumerate(leaves):
        assert verify(tree.root, leaf, tree.proof(i))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        MerkleTree([])
    with pytest.raises(ValueError):
        MerkleTree([b"\x00" * 31])
    tree = MerkleTree(_leaves(2))
    with pytest.raises(IndexError):
        tree.proof(2)
    with pytest.raises(IndexError):
        tree.proof(-1)
