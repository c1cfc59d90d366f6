// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

/// @title TraceAnchor
/// @notice Anchors the Merkle root of an agent's hash-chained reasoning log, so anyone can later check a saved
///         log against the chain: which agent committed to it, when, and over how many entries.
contract TraceAnchor {
    /// @notice One anchored root.
    /// @param count Number of log entries the root covers.
    /// @param timestamp Block time of the anchoring.
    /// @param blockNumber Block of the anchoring.
    struct Anchor {
        uint64 count;
        uint64 timestamp;
        uint64 blockNumber;
    }

    /// @notice agent => root => anchor; zero timestamp means never anchored.
    mapping(address agent => mapping(bytes32 root => Anchor)) private _anchors;

    /// @notice Number of roots each agent has anchored.
    mapping(address agent => uint256) public anchorCount;

    /// @notice Emitted when `agent` anchors `root` covering `count` entries.
    /// @param agent The anchoring account.
    /// @param root The Merkle root of the log's entry hashes.
    /// @param count Number of entries covered.
    /// @param index The agent's anchor index (0, 1, 2, ...).
    event TraceAnchored(address indexed agent, bytes32 indexed root, uint64 count, uint256 index);

    /// @notice The root is zero or covers no entries.
    error EmptyTrace();
    /// @notice This agent already anchored this root.
    /// @param root The root.
    error AlreadyAnchored(bytes32 root);

    /// @notice Anchors `root` as the caller's reasoning-log root over `count` entries.
    /// @param root Merkle root of the entry hashes.
    /// @param count Number of entries.
    /// @return index The caller's anchor index.
    function anchor(bytes32 root, uint64 count) external returns (uint256 index) {
        if (root == bytes32(0) || count == 0) revert EmptyTrace();
        Anchor storage a = _anchors[msg.sender][root];
        if (a.timestamp != 0) revert AlreadyAnchored(root);
        a.count = count;
        a.timestamp = uint64(block.timestamp);
        a.blockNumber = uint64(block.number);
        index = anchorCount[msg.sender]++;
        emit TraceAnchored(msg.sender, root, count, index);
    }

    /// @notice Looks up an anchor.
    /// @param agent The anchoring account.
    /// @param root The root.
    /// @return The anchor (all zero when `agent` never anchored `root`).
    function getAnchor(address agent, bytes32 root) external view returns (Anchor memory) {
        return _anchors[agent][root];
    }
}
