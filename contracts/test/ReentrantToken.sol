// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title ReentrantToken
/// @notice Test-only ERC-20 that anyone can mint, with a hook that re-enters a target during a transfer.
/// @dev Once armed with a target and calldata, the next `transfer`/`transferFrom` (any balance move that is
///      neither a mint nor a burn) calls the target with that calldata before moving the balances, like an
///      ERC-777 `tokensToSend` hook, then disarms. The inner call's outcome is recorded, never bubbled up, so a
///      test can assert that the target blocked it (e.g. with `ReentrancyGuardReentrantCall()`) while the outer
///      transfer still completes.
contract ReentrantToken is ERC20 {
    /// @notice Whether the next transfer re-enters the target.
    bool public armed;
    /// @notice The contract re-entered.
    address public target;
    /// @notice The calldata replayed on the target.
    bytes public attackData;
    /// @notice Number of re-entries attempted since deployment.
    uint256 public reentryCount;
    /// @notice Whether the last re-entrant call succeeded.
    bool public lastReentrySucceeded;
    /// @notice The last re-entrant call's return data, or its revert data when it failed.
    bytes public lastReentryData;

    /// @notice Emitted when the hook is armed.
    /// @param target The contract to re-enter.
    /// @param data The calldata to replay.
    event Armed(address indexed target, bytes data);
    /// @notice Emitted when the hook is disarmed without firing.
    event Disarmed();
    /// @notice Emitted after each re-entrant call.
    /// @param target The contract re-entered.
    /// @param success Whether the call succeeded.
    /// @param data Its return data, or its revert data when it failed.
    event ReentryAttempted(address indexed target, bool success, bytes data);

    /// @notice The target must be a contract address, not zero.
    error ZeroTarget();

    constructor() ERC20("Reentrant Token", "REENTER") {}

    /// @notice Mints `amount` to `to`; anyone may call (tests only).
    /// @param to The receiver.
    /// @param amount The amount.
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms the hook: the next transfer calls `target_` with `data` once.
    /// @param target_ The contract to re-enter (e.g. PaymentChannels).
    /// @param data The calldata to replay.
    function arm(address target_, bytes calldata data) external {
        if (target_ == address(0)) revert ZeroTarget();
        armed = true;
        target = target_;
        attackData = data;
        emit Armed(target_, data);
    }

    /// @notice Disarms the hook; the recorded outcome of the last re-entry is kept.
    function disarm() external {
        armed = false;
        emit Disarmed();
    }

    /// @dev Fires the armed hook before a transfer's balance move. Disarming first keeps the inner call from
    ///      triggering the hook again through a transfer of its own.
    function _update(address from, address to, uint256 value) internal override {
        if (armed && from != address(0) && to != address(0)) {
            armed = false;
            address target_ = target;
            (bool success, bytes memory data) = target_.call(attackData);
            ++reentryCount;
            lastReentrySucceeded = success;
            lastReentryData = data;
            emit ReentryAttempted(target_, success, data);
        }
        super._update(from, to, value);
    }
}
