// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ERC3009} from "@openzeppelin/contracts/token/ERC20/extensions/draft-ERC3009.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title OpenToken (OPEN)
/// @notice The token agents pay in. ERC-20 with EIP-2612 `permit` and EIP-3009 transfer authorizations.
/// @dev Deployed only on local and development chains; on a real network the OPEN address is configuration.
///      The owner mints; there is no supply cap because a dev chain funds as many accounts as it likes.
contract OpenToken is ERC20, ERC20Permit, ERC3009, Ownable {
    /// @param initialOwner The account allowed to mint.
    constructor(address initialOwner) ERC20("Open", "OPEN") ERC20Permit("Open") Ownable(initialOwner) {}

    /// @notice Mints `amount` OPEN to `to`.
    /// @dev Only the owner. Emits {Transfer} from the zero address.
    /// @param to The receiver.
    /// @param amount The amount in the token's smallest unit.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @notice Mints to many accounts in one transaction (dev-chain funding).
    /// @dev Only the owner. Reverts with {LengthMismatch} when the arrays differ in length.
    /// @param to The receivers.
    /// @param amounts The amount for each receiver.
    function mintBatch(address[] calldata to, uint256[] calldata amounts) external onlyOwner {
        if (to.length != amounts.length) revert LengthMismatch();
        for (uint256 i = 0; i < to.length; ++i) {
            _mint(to[i], amounts[i]);
        }
    }

    /// @notice The argument arrays differ in length.
    error LengthMismatch();
}
