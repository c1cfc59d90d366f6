"""Merkle trees and proofs that OpenZeppelin's MerkleProof and StandardMerkleTree accept."""

from __future__ import annotations

from collections.abc import Sequence

from eth_abi import encode
from eth_utils import keccak

__all__ = ["MerkleTree", "contributor_leaf", "hash_pair", "leaf_hash", "verify"]

CONTRIBUTOR_LEAF_TYPES = ("uint256", "address", "uint256")


def leaf_hash(types: Sequence[str], values: Sequence) -> bytes:
    """The StandardMerkleTree leaf of `values`: `keccak256(bytes.concat(keccak256(abi.encode(values...))))`.

    Hashing twice keeps a leaf from ever equalling an inner node (a 64-byte preimage), which would
    let a proof of an inner node pass as a leaf.
    """
    return keccak(keccak(encode(list(types), list(values))))


def contributor_leaf(datanet_id: int, contributor: str, cumulative_amount: int) -> bytes:
    """The leaf PaymentChannels.claimContribution checks for a contributor's cumulative amount of a datanet."""
    return leaf_hash(CONTRIBUTOR_LEAF_TYPES, (datanet_id, contributor, cumulative_amount))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative keccak256 of two nodes: the smaller one (as bytes) first."""
    return keccak(a + b) if a < b else keccak(b + a)


def verify(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` proves `leaf` under `root`, exactly as `MerkleProof.verify` decides."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root


class MerkleTree:
    """A Merkle tree of 32-byte leaf hashes, shaped exactly like OpenZeppelin's StandardMerkleTree.

    Shape: the leaves are sorted by hash (ascending bytes) and laid out, with the inner nodes, in one
    array of `2n - 1` nodes, a complete binary tree stored heap-style: node `i` has children
    `2i + 1` and `2i + 2`, the root is node 0 and the sorted leaves fill the last `n` slots in
    reverse order. The root therefore depends only on the multiset of leaves, not on their order,
    and equals the JavaScript library's root for the same leaves. One leaf is its own root with an
    empty proof; odd counts need no padding; duplicate leaves each get a slot and a valid proof.
    Proofs are asked for by the leaf's index in the sequence the tree was built from.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for i, leaf in enumerate(leaves):
            if not isinstance(leaf, bytes | bytearray) or len(leaf) != 32:
                raise ValueError(f"leaf {i} is not 32 bytes: {leaf!r}")
        self._leaves = [bytes(leaf) for leaf in leaves]
        n = len(self._leaves)
        order = sorted(range(n), key=lambda i: self._leaves[i])
        size = 2 * n - 1
        self._nodes: list[bytes] = [b""] * size
        # The leaf at `order[k]` (k-th smallest) sits at node `size - 1 - k`.
        self._node_of_leaf = [0] * n
        for k, i in enumerate(order):
            self._node_of_leaf[i] = size - 1 - k
            self._nodes[size - 1 - k] = self._leaves[i]
        for j in range(size - n - 1, -1, -1):
            self._nodes[j] = hash_pair(self._nodes[2 * j + 1], self._nodes[2 * j + 2])

    @property
    def root(self) -> bytes:
        """The 32-byte root."""
        return self._nodes[0]

    @property
    def leaves(self) -> list[bytes]:
        """The leaf hashes in the order the tree was built from."""
        return list(self._leaves)

    def __len__(self) -> int:
        return len(self._leaves)

    def proof(self, index: int) -> list[bytes]:
        """The sibling hashes from the leaf at `index` (of the built-from sequence) up to the root."""
        if not 0 <= index < len(self._leaves):
            raise IndexError(f"leaf index {index} out of range for {len(self._leaves)} leaves")
        node = self._node_of_leaf[index]
        siblings = []
        while node > 0:
            siblings.append(self._nodes[node - 1 if node % 2 == 0 else node + 1])
            node = (node - 1) // 2
        return siblings
