// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

import {DatanetRegistry} from "./DatanetRegistry.sol";

/// @title AdapterRegistry
/// @notice Maps an adapter id (keccak256 of its utf-8 name) to its owner, the hashes of its base model and
///         weights, a URI, the datanets it was trained on and its revenue policy. PaymentChannels reads the
///         policy to split every claimed payment.
contract AdapterRegistry {
    /// @notice Basis points in a whole.
    uint16 public constant BPS = 10_000;
    /// @notice Most datanets one adapter may name (bounds the split loop in claims).
    uint256 public constant MAX_DATANETS = 16;

    /// @notice How revenue for calls to an adapter is split. The operator serving the call gets the rest.
    /// @param ownerBps Share of the adapter's owner.
    /// @param dataBps Share of the data contributors, divided among the adapter's datanets by weight.
    /// @param protocolBps Share of the protocol treasury.
    struct RevenuePolicy {
        uint16 ownerBps;
        uint16 dataBps;
        uint16 protocolBps;
    }

    /// @notice A registered adapter.
    /// @param owner The owner (paid the owner share; may update the adapter).
    /// @param baseModelHash Hash identifying the base model.
    /// @param weightsHash Hash of the adapter weights.
    /// @param uri Where the weights can be fetched.
    /// @param policy The revenue policy.
    /// @param datanetIds Datanets the adapter was trained on.
    /// @param datanetWeightsBps Each datanet's part of the data share; sums to 10,000 when there are datanets.
    struct Adapter {
        address owner;
        bytes32 baseModelHash;
        bytes32 weightsHash;
        string uri;
        RevenuePolicy policy;
        uint256[] datanetIds;
        uint16[] datanetWeightsBps;
    }

    /// @notice The datanet registry the adapters' datanets are checked against.
    DatanetRegistry public immutable datanets;

    mapping(bytes32 adapterId => Adapter) private _adapters;

    /// @notice Emitted when an adapter is registered.
    /// @param adapterId The id.
    /// @param owner The owner.
    /// @param baseModelHash The base model hash.
    /// @param weightsHash The weights hash.
    /// @param uri The URI.
    event AdapterRegistered(
        bytes32 indexed adapterId, address indexed owner, bytes32 baseModelHash, bytes32 weightsHash, string uri
    );
    /// @notice Emitted when an adapter's weights change.
    /// @param adapterId The id.
    /// @param weightsHash The new weights hash.
    /// @param uri The new URI.
    event AdapterWeightsUpdated(bytes32 indexed adapterId, bytes32 weightsHash, string uri);
    /// @notice Emitted when an adapter's revenue policy or datanets are set (at registration and on change).
    /// @param adapterId The id.
    /// @param ownerBps Owner share.
    /// @param dataBps Data share.
    /// @param protocolBps Protocol share.
    /// @param datanetIds The datanets.
    /// @param datanetWeightsBps Their weights.
    event RevenuePolicySet(
        bytes32 indexed adapterId,
        uint16 ownerBps,
        uint16 dataBps,
        uint16 protocolBps,
        uint256[] datanetIds,
        uint16[] datanetWeightsBps
    );
    /// @notice Emitted when an adapter changes hands.
    /// @param adapterId The id.
    /// @param previousOwner The old owner.
    /// @param newOwner The new owner.
    event AdapterTransferred(bytes32 indexed adapterId, address indexed previousOwner, address indexed newOwner);

    /// @notice The id is zero or already registered.
    /// @param adapterId The id.
    error AdapterExists(bytes32 adapterId);
    /// @notice No adapter has this id.
    /// @param adapterId The id.
    error UnknownAdapter(bytes32 adapterId);
    /// @notice The caller does not own the adapter.
    /// @param adapterId The id.
    /// @param caller The caller.
    error NotAdapterOwner(bytes32 adapterId, address caller);
    /// @notice The shares add up to more than 10,000 basis points.
    error InvalidPolicy();
    /// @notice The datanets are unknown, repeated, too many, or their weights do not sum to 10,000; or a data
    ///         share is set without datanets.
    error InvalidDatanets();
    /// @notice An address argument is zero.
    error ZeroAddress();

    /// @param datanetRegistry The datanet registry.
    constructor(DatanetRegistry datanetRegistry) {
        datanets = datanetRegistry;
    }

    modifier onlyAdapterOwner(bytes32 adapterId) {
        address owner = _adapters[adapterId].owner;
        if (owner == address(0)) revert UnknownAdapter(adapterId);
        if (owner != msg.sender) revert NotAdapterOwner(adapterId, msg.sender);
        _;
    }

    /// @notice Registers an adapter owned by the caller.
    /// @param adapterId keccak256 of the adapter's utf-8 name; must be new and non-zero.
    /// @param baseModelHash Hash identifying the base model.
    /// @param weightsHash Hash of the weights.
    /// @param uri Where the weights can be fetched.
    /// @param policy The revenue policy.
    /// @param datanetIds Datanets the adapter was trained on (at most 16, no repeats).
    /// @param datanetWeightsBps Each datanet's part of the data share, summing to 10,000.
    function register(
        bytes32 adapterId,
        bytes32 baseModelHash,
        bytes32 weightsHash,
        string calldata uri,
        RevenuePolicy calldata policy,
        uint256[] calldata datanetIds,
        uint16[] calldata datanetWeightsBps
    ) external {
        if (adapterId == bytes32(0) || _adapters[adapterId].owner != address(0)) revert AdapterExists(adapterId);
        Adapter storage a = _adapters[adapterId];
        a.owner = msg.sender;
        a.baseModelHash = baseModelHash;
        a.weightsHash = weightsHash;
        a.uri = uri;
        emit AdapterRegistered(adapterId, msg.sender, baseModelHash, weightsHash, uri);
        _setPolicy(adapterId, policy, datanetIds, datanetWeightsBps);
    }

    /// @notice Points the adapter at new weights. Only the owner.
    /// @param adapterId The id.
    /// @param weightsHash The new weights hash.
    /// @param uri The new URI.
    function updateWeights(bytes32 adapterId, bytes32 weightsHash, string calldata uri)
        external
        onlyAdapterOwner(adapterId)
    {
        Adapter storage a = _adapters[adapterId];
        a.weightsHash = weightsHash;
        a.uri = uri;
        emit AdapterWeightsUpdated(adapterId, weightsHash, uri);
    }

    /// @notice Replaces the revenue policy and datanets. Only the owner. Applies to payments claimed afterwards.
    /// @param adapterId The id.
    /// @param policy The new policy.
    /// @param datanetIds The datanets.
    /// @param datanetWeightsBps Their weights, summing to 10,000.
    function setRevenuePolicy(
        bytes32 adapterId,
        RevenuePolicy calldata policy,
        uint256[] calldata datanetIds,
        uint16[] calldata datanetWeightsBps
    ) external onlyAdapterOwner(adapterId) {
        _setPolicy(adapterId, policy, datanetIds, datanetWeightsBps);
    }

    /// @notice Hands the adapter to `newOwner`. Only the owner.
    /// @param adapterId The id.
    /// @param newOwner The new owner.
    function transferAdapter(bytes32 adapterId, address newOwner) external onlyAdapterOwner(adapterId) {
        if (newOwner == address(0)) revert ZeroAddress();
        _adapters[adapterId].owner = newOwner;
        emit AdapterTransferred(adapterId, msg.sender, newOwner);
    }

    /// @notice Reads an adapter.
    /// @param adapterId The id.
    /// @return The adapter; reverts with {UnknownAdapter} when there is none.
    function getAdapter(bytes32 adapterId) external view returns (Adapter memory) {
        Adapter storage a = _adapters[adapterId];
        if (a.owner == address(0)) revert UnknownAdapter(adapterId);
        return a;
    }

    /// @notice The owner of an adapter, zero when unregistered.
    /// @param adapterId The id.
    /// @return The owner.
    function ownerOf(bytes32 adapterId) external view returns (address) {
        return _adapters[adapterId].owner;
    }

    /// @notice What PaymentChannels needs to split a payment for `adapterId`.
    /// @param adapterId The id.
    /// @return owner The owner.
    /// @return policy The revenue policy.
    /// @return datanetIds The datanets.
    /// @return datanetWeightsBps Their weights.
    function revenueSplit(bytes32 adapterId)
        external
        view
        returns (
            address owner,
            RevenuePolicy memory policy,
            uint256[] memory datanetIds,
            uint16[] memory datanetWeightsBps
        )
    {
        Adapter storage a = _adapters[adapterId];
        owner = a.owner;
        if (owner == address(0)) revert UnknownAdapter(adapterId);
        return (owner, a.policy, a.datanetIds, a.datanetWeightsBps);
    }

    function _setPolicy(
        bytes32 adapterId,
        RevenuePolicy calldata policy,
        uint256[] calldata datanetIds,
        uint16[] calldata datanetWeightsBps
    ) private {
        if (uint256(policy.ownerBps) + policy.dataBps + policy.protocolBps > BPS) revert InvalidPolicy();
        uint256 n = datanetIds.length;
        if (n != datanetWeightsBps.length || n > MAX_DATANETS) revert InvalidDatanets();
        if (policy.dataBps != 0 && n == 0) revert InvalidDatanets();
        uint256 weightSum = 0;
        for (uint256 i = 0; i < n; ++i) {
            if (!datanets.exists(datanetIds[i]) || datanetWeightsBps[i] == 0) revert InvalidDatanets();
            for (uint256 j = 0; j < i; ++j) {
                if (datanetIds[j] == datanetIds[i]) revert InvalidDatanets();
            }
            weightSum += datanetWeightsBps[i];
        }
        if (n != 0 && weightSum != BPS) revert InvalidDatanets();
        Adapter storage a = _adapters[adapterId];
        a.policy = policy;
        a.datanetIds = datanetIds;
        a.datanetWeightsBps = datanetWeightsBps;
        emit RevenuePolicySet(
            adapterId, policy.ownerBps, policy.dataBps, policy.protocolBps, datanetIds, datanetWeightsBps
        );
    }
}
