// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

/// @title DatanetRegistry
/// @notice Datanets are curated data sets that adapters are trained on. Each has a curator and a metadata URI,
///         and a list of contributions (contributor address, content hash) registered in batches by the curator.
///         Only registered contributors of a datanet can be paid from its contributor pool.
contract DatanetRegistry {
    /// @notice A datanet.
    /// @param curator The account that registers contributions and can hand over curation.
    /// @param metadataURI Where the datanet's description lives.
    /// @param contributionCount Number of contributions registered so far.
    struct Datanet {
        address curator;
        string metadataURI;
        uint256 contributionCount;
    }

    /// @notice One registered contribution.
    /// @param contributor The account paid for it.
    /// @param contentHash Hash of the contributed content.
    struct Contribution {
        address contributor;
        bytes32 contentHash;
    }

    /// @notice Number of datanets; ids run from 1 to `datanetCount`.
    uint256 public datanetCount;

    mapping(uint256 datanetId => Datanet) private _datanets;
    mapping(uint256 datanetId => mapping(uint256 index => Contribution)) private _contributions;
    mapping(uint256 datanetId => mapping(bytes32 contentHash => bool)) private _registeredContent;
    mapping(uint256 datanetId => mapping(address contributor => uint256)) private _contributionsOf;

    /// @notice Emitted when a datanet is created.
    /// @param datanetId The new id.
    /// @param curator Its curator.
    /// @param metadataURI Its metadata URI.
    event DatanetCreated(uint256 indexed datanetId, address indexed curator, string metadataURI);
    /// @notice Emitted when a datanet's metadata URI changes.
    /// @param datanetId The datanet.
    /// @param metadataURI The new URI.
    event DatanetMetadataUpdated(uint256 indexed datanetId, string metadataURI);
    /// @notice Emitted when curation passes to another account.
    /// @param datanetId The datanet.
    /// @param previousCurator The old curator.
    /// @param newCurator The new curator.
    event CuratorTransferred(uint256 indexed datanetId, address indexed previousCurator, address indexed newCurator);
    /// @notice Emitted for each registered contribution.
    /// @param datanetId The datanet.
    /// @param index The contribution's index in the datanet.
    /// @param contributor The contributor.
    /// @param contentHash The content hash.
    event ContributionRegistered(
        uint256 indexed datanetId, uint256 index, address indexed contributor, bytes32 indexed contentHash
    );

    /// @notice No datanet has this id.
    /// @param datanetId The id.
    error UnknownDatanet(uint256 datanetId);
    /// @notice The caller is not the datanet's curator.
    /// @param datanetId The datanet.
    /// @param caller The caller.
    error NotCurator(uint256 datanetId, address caller);
    /// @notice An address argument is zero.
    error ZeroAddress();
    /// @notice The argument arrays differ in length or are empty.
    error BadBatch();
    /// @notice This content hash is already registered in this datanet.
    /// @param datanetId The datanet.
    /// @param contentHash The duplicate hash.
    error DuplicateContribution(uint256 datanetId, bytes32 contentHash);

    modifier onlyCurator(uint256 datanetId) {
        address curator = _datanets[datanetId].curator;
        if (curator == address(0)) revert UnknownDatanet(datanetId);
        if (curator != msg.sender) revert NotCurator(datanetId, msg.sender);
        _;
    }

    /// @notice Creates a datanet curated by the caller.
    /// @param metadataURI Where the datanet's description lives.
    /// @return datanetId The new id (ids start at 1).
    function createDatanet(string calldata metadataURI) external returns (uint256 datanetId) {
        datanetId = ++datanetCount;
        Datanet storage d = _datanets[datanetId];
        d.curator = msg.sender;
        d.metadataURI = metadataURI;
        emit DatanetCreated(datanetId, msg.sender, metadataURI);
    }

    /// @notice Changes the metadata URI. Only the curator.
    /// @param datanetId The datanet.
    /// @param metadataURI The new URI.
    function setMetadataURI(uint256 datanetId, string calldata metadataURI) external onlyCurator(datanetId) {
        _datanets[datanetId].metadataURI = metadataURI;
        emit DatanetMetadataUpdated(datanetId, metadataURI);
    }

    /// @notice Hands curation to `newCurator`. Only the curator.
    /// @param datanetId The datanet.
    /// @param newCurator The new curator.
    function transferCuration(uint256 datanetId, address newCurator) external onlyCurator(datanetId) {
        if (newCurator == address(0)) revert ZeroAddress();
        _datanets[datanetId].curator = newCurator;
        emit CuratorTransferred(datanetId, msg.sender, newCurator);
    }

    /// @notice Registers contributions in one batch. Only the curator.
    /// @param datanetId The datanet.
    /// @param contributors The contributor of each contribution.
    /// @param contentHashes The content hash of each contribution; unique within the datanet.
    /// @return firstIndex Index of the first contribution registered.
    function registerContributions(uint256 datanetId, address[] calldata contributors, bytes32[] calldata contentHashes)
        external
        onlyCurator(datanetId)
        returns (uint256 firstIndex)
    {
        uint256 n = contributors.length;
        if (n == 0 || n != contentHashes.length) revert BadBatch();
        Datanet storage d = _datanets[datanetId];
        firstIndex = d.contributionCount;
        for (uint256 i = 0; i < n; ++i) {
            address contributor = contributors[i];
            bytes32 contentHash = contentHashes[i];
            if (contributor == address(0)) revert ZeroAddress();
            if (_registeredContent[datanetId][contentHash]) revert DuplicateContribution(datanetId, contentHash);
            _registeredContent[datanetId][contentHash] = true;
            uint256 index = firstIndex + i;
            _contributions[datanetId][index] = Contribution(contributor, contentHash);
            ++_contributionsOf[datanetId][contributor];
            emit ContributionRegistered(datanetId, index, contributor, contentHash);
        }
        d.contributionCount = firstIndex + n;
    }

    /// @notice Whether the datanet exists.
    /// @param datanetId The id.
    /// @return True when it was created.
    function exists(uint256 datanetId) public view returns (bool) {
        return _datanets[datanetId].curator != address(0);
    }

    /// @notice Whether `account` has at least one contribution registered in the datanet.
    /// @param datanetId The datanet.
    /// @param account The account.
    /// @return True for a registered contributor.
    function isContributor(uint256 datanetId, address account) external view returns (bool) {
        return _contributionsOf[datanetId][account] != 0;
    }

    /// @notice Number of contributions `account` has in the datanet.
    /// @param datanetId The datanet.
    /// @param account The account.
    /// @return The count.
    function contributionsOf(uint256 datanetId, address account) external view returns (uint256) {
        return _contributionsOf[datanetId][account];
    }

    /// @notice Whether a content hash is registered in the datanet.
    /// @param datanetId The datanet.
    /// @param contentHash The hash.
    /// @return True when registered.
    function isRegisteredContent(uint256 datanetId, bytes32 contentHash) external view returns (bool) {
        return _registeredContent[datanetId][contentHash];
    }

    /// @notice Reads a datanet.
    /// @param datanetId The id.
    /// @return The datanet; reverts with {UnknownDatanet} when there is none.
    function getDatanet(uint256 datanetId) external view returns (Datanet memory) {
        if (!exists(datanetId)) revert UnknownDatanet(datanetId);
        return _datanets[datanetId];
    }

    /// @notice Reads one contribution.
    /// @param datanetId The datanet.
    /// @param index The contribution's index.
    /// @return The contribution (zero when the index is past the end).
    function getContribution(uint256 datanetId, uint256 index) external view returns (Contribution memory) {
        return _contributions[datanetId][index];
    }
}
