// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title ERC1271Wallet
/// @notice Test-only smart-contract wallet controlled by one EOA. It accepts a hash signed directly (no
///         EIP-191 prefix) by its owner as its own signature (ERC-1271), so it can be a channel's payer
///         authorizer; through {execute} it can approve tokens and open channels as payer.
contract ERC1271Wallet is IERC1271 {
    /// @notice The EOA whose signatures this wallet accepts and who may call {execute}.
    address public immutable owner;
    /// @notice When true, every signature is invalid.
    bool public revoked;

    /// @notice Emitted when signatures are revoked or reinstated.
    /// @param revoked The new state.
    event RevokedSet(bool revoked);
    /// @notice Emitted after a call made by the wallet.
    /// @param to The called contract.
    /// @param data The calldata.
    event Executed(address indexed to, bytes data);

    /// @notice The owner cannot be the zero address.
    error ZeroOwner();
    /// @notice Only the owner may call.
    /// @param caller The caller.
    error NotOwner(address caller);

    /// @param owner_ The controlling EOA.
    constructor(address owner_) {
        if (owner_ == address(0)) revert ZeroOwner();
        owner = owner_;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// @notice Makes every signature invalid (`true`) or valid again when the owner's (`false`); only the owner.
    /// @param revoked_ The new state.
    function setRevoked(bool revoked_) external onlyOwner {
        revoked = revoked_;
        emit RevokedSet(revoked_);
    }

    /// @notice Calls `to` with `data` as this wallet; only the owner. Bubbles up the callee's revert data.
    /// @param to The contract to call.
    /// @param data The calldata.
    /// @return result The call's return data.
    function execute(address to, bytes calldata data) external onlyOwner returns (bytes memory result) {
        bool success;
        (success, result) = to.call(data);
        if (!success) {
            assembly ("memory-safe") {
                revert(add(result, 0x20), mload(result))
            }
        }
        emit Executed(to, data);
    }

    /// @notice ERC-1271: valid when not revoked and `signature` is the owner's ECDSA signature of `hash`.
    /// @dev Malformed or malleable (high-s) signatures are invalid rather than reverting.
    /// @param hash The signed digest.
    /// @param signature The 65-byte signature.
    /// @return magicValue `IERC1271.isValidSignature.selector` when valid, `0xffffffff` otherwise.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4 magicValue) {
        if (revoked) return 0xffffffff;
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(hash, signature);
        if (err == ECDSA.RecoverError.NoError && signer == owner) return IERC1271.isValidSignature.selector;
        return 0xffffffff;
    }
}
