// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.26;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

import {AdapterRegistry} from "./AdapterRegistry.sol";
import {DatanetRegistry} from "./DatanetRegistry.sol";

/// @title PaymentChannels
/// @notice x402-style one-way payment channels in one ERC-20 (OPEN). A payer deposits into a channel to a payee
///         (an operator); the payer's session key signs EIP-712 vouchers of cumulative amounts; the payee claims
///         many channels in one transaction, is paid only the monotone delta and never more than the deposit,
///         and the delta is split by each adapter's revenue policy: owner, operator and protocol shares become
///         balances their holders withdraw (pull payments); the data share funds per-datanet contributor pools
///         that the operator pays out through epoch Merkle roots of cumulative per-contributor amounts.
/// @dev Channel ids are EIP-712 digests of the channel config under this contract's domain, so a channel and
///      its vouchers are bound to one chain and one contract. Payer exit: initiateWithdraw, wait the channel's
///      withdraw delay (the payee can still claim), finalizeWithdraw. The payee can close at once.
contract PaymentChannels is EIP712, ReentrancyGuard, Ownable2Step {
    using SafeERC20 for IERC20;

    /// @notice EIP-712 type of a channel config; its struct hash under this domain is the channel id.
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address payee,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    /// @notice EIP-712 type of a voucher signed by the channel's payer authorizer.
    bytes32 public constant VOUCHER_TYPEHASH =
        keccak256("Voucher(bytes32 channelId,uint128 cumulativeAmount,bytes32 callHash)");
    /// @notice Basis points in a whole.
    uint256 public constant BPS = 10_000;

    /// @notice What the payer commits to when opening a channel.
    /// @param payer Funds the channel and gets the refund.
    /// @param payerAuthorizer Signs vouchers (an EOA session key or an ERC-1271 contract).
    /// @param payee The operator paid from the channel.
    /// @param token Must be this contract's token.
    /// @param withdrawDelay Seconds between initiating and finalizing a payer withdrawal.
    /// @param salt Makes several channels between the same parties distinct ("lanes").
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address payee;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    /// @notice A claim of one channel: the payee takes `amount` (cumulative) under a voucher for at most
    ///         `voucherAmount` (cumulative) signed by the payer authorizer.
    /// @param channelId The channel.
    /// @param voucherAmount The voucher's signed cumulative amount.
    /// @param amount The cumulative amount claimed; at most `voucherAmount` and the deposit.
    /// @param callHash The voucher's call hash.
    /// @param signature The payer authorizer's signature of the voucher.
    struct Claim {
        bytes32 channelId;
        uint128 voucherAmount;
        uint128 amount;
        bytes32 callHash;
        bytes signature;
    }

    /// @notice How much of a claim's total was earned by calls to one adapter (zero id: the base model).
    /// @param adapterId keccak256 of the adapter's name, or zero for calls without an adapter.
    /// @param amount The amount.
    struct Revenue {
        bytes32 adapterId;
        uint128 amount;
    }

    /// @notice A channel's full state as returned by {getChannel}.
    /// @param config The config it was opened with.
    /// @param deposited Total deposited.
    /// @param claimed Cumulative amount claimed by the payee.
    /// @param withdrawRequestedAt When the payer initiated a withdrawal; zero when not withdrawing.
    /// @param closed Whether the channel is closed (finalized or closed by the payee).
    struct ChannelState {
        ChannelConfig config;
        uint128 deposited;
        uint128 claimed;
        uint40 withdrawRequestedAt;
        bool closed;
    }

    /// @notice A contributor pool: the data share one operator's claims gave to one datanet.
    /// @param funded Total funded by claims.
    /// @param paidOut Total paid to contributors.
    /// @param root Current epoch root of cumulative per-contributor amounts.
    /// @param rootTotal Sum of the cumulative amounts under `root`.
    /// @param epoch Number of roots posted.
    struct Pool {
        uint128 funded;
        uint128 paidOut;
        bytes32 root;
        uint128 rootTotal;
        uint64 epoch;
    }

    // Storage layout keeps what `claim` reads in three slots: (payee, delay, withdraw time, closed),
    // (payerAuthorizer), (deposited, claimed).
    struct Channel {
        address payee;
        uint40 withdrawDelay;
        uint40 withdrawRequestedAt;
        bool closed;
        address payerAuthorizer;
        uint128 deposited;
        uint128 claimed;
        address payer;
        bytes32 salt;
    }

    /// @notice The one token of every channel.
    IERC20 public immutable token;
    /// @notice Where revenue policies come from.
    AdapterRegistry public immutable adapters;
    /// @notice Where contributor registrations come from.
    DatanetRegistry public immutable datanets;
    /// @notice Receives the protocol share.
    address public protocolTreasury;

    mapping(bytes32 channelId => Channel) private _channels;
    /// @notice Withdrawable balances (owner, operator and protocol shares).
    mapping(address account => uint256) public earnings;
    mapping(address operator => mapping(uint256 datanetId => Pool)) private _pools;
    /// @notice Cumulative amount each contributor has been paid from an operator's pool of a datanet.
    mapping(address operator => mapping(uint256 datanetId => mapping(address contributor => uint256))) public
        contributorClaimed;

    /// @notice Emitted when a channel is opened.
    /// @param channelId The id.
    /// @param payer The payer.
    /// @param payee The payee.
    /// @param payerAuthorizer The voucher signer.
    /// @param withdrawDelay The withdraw delay in seconds.
    /// @param salt The salt.
    /// @param amount The opening deposit.
    event ChannelOpened(
        bytes32 indexed channelId,
        address indexed payer,
        address indexed payee,
        address payerAuthorizer,
        uint40 withdrawDelay,
        bytes32 salt,
        uint128 amount
    );
    /// @notice Emitted on a top-up.
    /// @param channelId The channel.
    /// @param from Who paid.
    /// @param amount The amount added.
    /// @param deposited The new total deposit.
    event Deposited(bytes32 indexed channelId, address indexed from, uint128 amount, uint128 deposited);
    /// @notice Emitted for each channel in a claim.
    /// @param channelId The channel.
    /// @param payee The payee.
    /// @param amount The delta paid now.
    /// @param claimed The new cumulative claimed amount.
    /// @param callHash The voucher's call hash.
    event Claimed(bytes32 indexed channelId, address indexed payee, uint128 amount, uint128 claimed, bytes32 callHash);
    /// @notice Emitted for each revenue entry of a claim: how it was split.
    /// @param adapterId The adapter (zero: base model).
    /// @param operator The claiming payee.
    /// @param amount The revenue.
    /// @param ownerShare To the adapter owner's earnings.
    /// @param dataShare To the datanets' pools.
    /// @param protocolShare To the protocol treasury's earnings.
    /// @param operatorShare To the operator's earnings.
    event RevenueSplit(
        bytes32 indexed adapterId,
        address indexed operator,
        uint128 amount,
        uint256 ownerShare,
        uint256 dataShare,
        uint256 protocolShare,
        uint256 operatorShare
    );
    /// @notice Emitted when a claim funds a contributor pool.
    /// @param operator The operator whose pool it is.
    /// @param datanetId The datanet.
    /// @param amount The amount added.
    event PoolFunded(address indexed operator, uint256 indexed datanetId, uint256 amount);
    /// @notice Emitted when the payer starts a withdrawal.
    /// @param channelId The channel.
    /// @param finalizeAfter The earliest time {finalizeWithdraw} succeeds.
    event WithdrawInitiated(bytes32 indexed channelId, uint256 finalizeAfter);
    /// @notice Emitted when a channel closes and the unclaimed deposit goes back to the payer.
    /// @param channelId The channel.
    /// @param by Who closed it (payer after the delay, or payee).
    /// @param refund The amount returned to the payer.
    event ChannelClosed(bytes32 indexed channelId, address indexed by, uint128 refund);
    /// @notice Emitted when an account withdraws its earnings.
    /// @param account The account.
    /// @param to The receiver.
    /// @param amount The amount.
    event EarningsWithdrawn(address indexed account, address indexed to, uint256 amount);
    /// @notice Emitted when an operator posts an epoch root for its pool of a datanet.
    /// @param operator The operator.
    /// @param datanetId The datanet.
    /// @param epoch The epoch number (1, 2, ...).
    /// @param root Merkle root of cumulative per-contributor amounts.
    /// @param total Sum of the cumulative amounts.
    /// @param receiptsRoot Merkle root of the epoch's receipts.
    /// @param attributionRoot Merkle root of the epoch's attribution records.
    event EpochRootPosted(
        address indexed operator,
        uint256 indexed datanetId,
        uint64 indexed epoch,
        bytes32 root,
        uint128 total,
        bytes32 receiptsRoot,
        bytes32 attributionRoot
    );
    /// @notice Emitted when a contributor is paid.
    /// @param operator The operator whose pool paid.
    /// @param datanetId The datanet.
    /// @param contributor The contributor.
    /// @param amount Paid now.
    /// @param cumulativeAmount The contributor's cumulative amount under the root.
    event ContributorPaid(
        address indexed operator,
        uint256 indexed datanetId,
        address indexed contributor,
        uint256 amount,
        uint256 cumulativeAmount
    );
    /// @notice Emitted when the protocol treasury changes.
    /// @param treasury The new treasury.
    event ProtocolTreasuryUpdated(address indexed treasury);

    /// @notice An address argument is zero.
    error ZeroAddress();
    /// @notice An amount argument is zero.
    error ZeroAmount();
    /// @notice The caller must be the config's payer.
    error NotPayer();
    /// @notice The config names another token than this contract's.
    /// @param token The token named.
    error UnsupportedToken(address token);
    /// @notice A channel with this id exists already.
    /// @param channelId The id.
    error ChannelExists(bytes32 channelId);
    /// @notice No channel has this id.
    /// @param channelId The id.
    error UnknownChannel(bytes32 channelId);
    /// @notice The channel is closed.
    /// @param channelId The id.
    error ChannelIsClosed(bytes32 channelId);
    /// @notice The payer has started withdrawing; no deposits.
    /// @param channelId The id.
    error ChannelWithdrawing(bytes32 channelId);
    /// @notice Only the channel's payee may do this.
    /// @param channelId The channel.
    /// @param caller The caller.
    error NotPayee(bytes32 channelId, address caller);
    /// @notice Only the channel's payer may do this.
    /// @param channelId The channel.
    /// @param caller The caller.
    error NotChannelPayer(bytes32 channelId, address caller);
    /// @notice The claim does not raise the claimed amount (replayed or stale voucher).
    /// @param channelId The channel.
    /// @param claimed Already claimed.
    /// @param amount The claim's cumulative amount.
    error StaleClaim(bytes32 channelId, uint128 claimed, uint128 amount);
    /// @notice The claimed amount is above the voucher's signed amount.
    /// @param channelId The channel.
    error ClaimExceedsVoucher(bytes32 channelId);
    /// @notice The claimed amount is above the deposit.
    /// @param channelId The channel.
    /// @param deposited The deposit.
    /// @param amount The claim's cumulative amount.
    error ClaimExceedsDeposit(bytes32 channelId, uint128 deposited, uint128 amount);
    /// @notice The voucher signature is not the payer authorizer's.
    /// @param channelId The channel.
    error InvalidSignature(bytes32 channelId);
    /// @notice A claim needs at least one channel.
    error EmptyClaim();
    /// @notice The revenue entries do not add up to the claimed total.
    /// @param claimed The claimed total.
    /// @param attributed The sum of the revenue entries.
    error RevenueMismatch(uint256 claimed, uint256 attributed);
    /// @notice No withdrawal was initiated, or one is already pending.
    /// @param channelId The channel.
    error WithdrawState(bytes32 channelId);
    /// @notice The withdraw delay has not passed.
    /// @param channelId The channel.
    /// @param finalizeAfter The earliest time finalizing succeeds.
    error WithdrawDelayNotElapsed(bytes32 channelId, uint256 finalizeAfter);
    /// @notice Nothing to withdraw or claim.
    error NothingToWithdraw();
    /// @notice A posted root's total is above the pool's funding or below the previous root's total.
    /// @param total The root's total.
    /// @param funded The pool's funding.
    /// @param previousTotal The previous root's total.
    error InvalidRootTotal(uint128 total, uint128 funded, uint128 previousTotal);
    /// @notice The account is not a registered contributor of the datanet.
    /// @param datanetId The datanet.
    /// @param account The account.
    error NotContributor(uint256 datanetId, address account);
    /// @notice The Merkle proof does not match the pool's current root.
    error InvalidProof();
    /// @notice The contributor already claimed this cumulative amount.
    /// @param claimed Already claimed.
    /// @param cumulativeAmount The proven cumulative amount.
    error AlreadyClaimed(uint256 claimed, uint256 cumulativeAmount);
    /// @notice The payout would take the pool below zero.
    error PoolExhausted();

    /// @param token_ The channels' token.
    /// @param adapters_ The adapter registry.
    /// @param datanets_ The datanet registry.
    /// @param treasury The protocol treasury.
    /// @param initialOwner May change the treasury.
    constructor(
        IERC20 token_,
        AdapterRegistry adapters_,
        DatanetRegistry datanets_,
        address treasury,
        address initialOwner
    ) EIP712("loraledger", "1") Ownable(initialOwner) {
        if (address(token_) == address(0) || treasury == address(0)) revert ZeroAddress();
        token = token_;
        adapters = adapters_;
        datanets = datanets_;
        protocolTreasury = treasury;
        emit ProtocolTreasuryUpdated(treasury);
    }

    // ------------------------------------------------------------------ channels

    /// @notice Opens a channel funded by the caller, who must be `config.payer` (approve the token first).
    /// @param config The channel config.
    /// @param amount The opening deposit (non-zero).
    /// @return channelId The channel id ({channelIdOf} of the config).
    function open(ChannelConfig calldata config, uint128 amount) external nonReentrant returns (bytes32 channelId) {
        channelId = _open(config, amount);
    }

    /// @notice Opens a channel with an EIP-2612 permit instead of a prior approval.
    /// @dev A failing permit is ignored when the allowance already suffices, so a front-run permit cannot block it.
    /// @param config The channel config.
    /// @param amount The opening deposit.
    /// @param deadline The permit deadline.
    /// @param v The permit signature's v.
    /// @param r The permit signature's r.
    /// @param s The permit signature's s.
    /// @return channelId The channel id.
    function openWithPermit(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant returns (bytes32 channelId) {
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        channelId = _open(config, amount);
    }

    /// @notice Adds `amount` to a channel's deposit, paid by the caller.
    /// @param channelId The channel.
    /// @param amount The amount (non-zero).
    function deposit(bytes32 channelId, uint128 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        Channel storage ch = _existing(channelId);
        if (ch.closed) revert ChannelIsClosed(channelId);
        if (ch.withdrawRequestedAt != 0) revert ChannelWithdrawing(channelId);
        uint128 deposited = ch.deposited + amount;
        ch.deposited = deposited;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit Deposited(channelId, msg.sender, amount, deposited);
    }

    /// @notice Claims many channels at once; only their payee. Pays each channel's delta over what was claimed,
    ///         checks each voucher signature, and splits the total by `revenues`.
    /// @param claims One entry per channel (all with the caller as payee).
    /// @param revenues The total's split by adapter; must add up to the claimed total.
    /// @return total The amount claimed.
    function claim(Claim[] calldata claims, Revenue[] calldata revenues)
        external
        nonReentrant
        returns (uint256 total)
    {
        uint256 n = claims.length;
        if (n == 0) revert EmptyClaim();
        for (uint256 i = 0; i < n; ++i) {
            total += _claimOne(claims[i]);
        }
        _split(total, revenues);
    }

    /// @notice Starts the payer's exit; the payee may still claim until {finalizeWithdraw}.
    /// @param channelId The channel.
    function initiateWithdraw(bytes32 channelId) external {
        Channel storage ch = _existing(channelId);
        if (ch.payer != msg.sender) revert NotChannelPayer(channelId, msg.sender);
        if (ch.closed) revert ChannelIsClosed(channelId);
        if (ch.withdrawRequestedAt != 0) revert WithdrawState(channelId);
        ch.withdrawRequestedAt = uint40(block.timestamp);
        emit WithdrawInitiated(channelId, block.timestamp + ch.withdrawDelay);
    }

    /// @notice Closes the channel after the withdraw delay and refunds the unclaimed deposit to the payer.
    /// @param channelId The channel.
    function finalizeWithdraw(bytes32 channelId) external nonReentrant {
        Channel storage ch = _existing(channelId);
        if (ch.payer != msg.sender) revert NotChannelPayer(channelId, msg.sender);
        uint256 requestedAt = ch.withdrawRequestedAt;
        if (requestedAt == 0) revert WithdrawState(channelId);
        uint256 finalizeAfter = requestedAt + ch.withdrawDelay;
        if (block.timestamp < finalizeAfter) revert WithdrawDelayNotElapsed(channelId, finalizeAfter);
        _close(channelId, ch);
    }

    /// @notice Closes the channel at once and refunds the unclaimed deposit to the payer; only the payee
    ///         (claim first: nothing can be claimed after closing).
    /// @param channelId The channel.
    function close(bytes32 channelId) external nonReentrant {
        Channel storage ch = _existing(channelId);
        if (ch.payee != msg.sender) revert NotPayee(channelId, msg.sender);
        _close(channelId, ch);
    }

    // ------------------------------------------------------------------ earnings and contributor pools

    /// @notice Withdraws the caller's earnings to `to`.
    /// @param to The receiver.
    /// @return amount The amount withdrawn.
    function withdrawEarnings(address to) external nonReentrant returns (uint256 amount) {
        if (to == address(0)) revert ZeroAddress();
        amount = earnings[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        earnings[msg.sender] = 0;
        token.safeTransfer(to, amount);
        emit EarningsWithdrawn(msg.sender, to, amount);
    }

    /// @notice Posts the caller's epoch root for its contributor pool of `datanetId`.
    /// @dev Leaves are `keccak256(bytes.concat(keccak256(abi.encode(datanetId, contributor, cumulativeAmount))))`.
    ///      Cumulative amounts only grow, so `total` may not fall below the previous root's and may not pass
    ///      what the pool was funded with.
    /// @param datanetId The datanet.
    /// @param root The Merkle root of cumulative per-contributor amounts.
    /// @param total The sum of the cumulative amounts.
    /// @param receiptsRoot Merkle root of the epoch's receipts (recorded in the event).
    /// @param attributionRoot Merkle root of the epoch's attribution records (recorded in the event).
    /// @return epoch The new epoch number.
    function postEpochRoot(
        uint256 datanetId,
        bytes32 root,
        uint128 total,
        bytes32 receiptsRoot,
        bytes32 attributionRoot
    ) external returns (uint64 epoch) {
        Pool storage pool = _pools[msg.sender][datanetId];
        if (total > pool.funded || total < pool.rootTotal) {
            revert InvalidRootTotal(total, pool.funded, pool.rootTotal);
        }
        pool.root = root;
        pool.rootTotal = total;
        epoch = ++pool.epoch;
        emit EpochRootPosted(msg.sender, datanetId, epoch, root, total, receiptsRoot, attributionRoot);
    }

    /// @notice Pays the caller, a registered contributor of `datanetId`, what the operator's current root gives
    ///         it beyond what it was already paid.
    /// @param operator The operator whose pool pays.
    /// @param datanetId The datanet.
    /// @param cumulativeAmount The caller's cumulative amount under the root.
    /// @param proof The Merkle proof of the caller's leaf.
    /// @return amount Paid now.
    function claimContribution(
        address operator,
        uint256 datanetId,
        uint256 cumulativeAmount,
        bytes32[] calldata proof
    ) external nonReentrant returns (uint256 amount) {
        if (!datanets.isContributor(datanetId, msg.sender)) revert NotContributor(datanetId, msg.sender);
        Pool storage pool = _pools[operator][datanetId];
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(datanetId, msg.sender, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, pool.root, leaf)) revert InvalidProof();
        uint256 already = contributorClaimed[operator][datanetId][msg.sender];
        if (cumulativeAmount <= already) revert AlreadyClaimed(already, cumulativeAmount);
        amount = cumulativeAmount - already;
        uint256 paidOut = pool.paidOut + amount;
        if (paidOut > pool.funded) revert PoolExhausted();
        pool.paidOut = uint128(paidOut);
        contributorClaimed[operator][datanetId][msg.sender] = cumulativeAmount;
        token.safeTransfer(msg.sender, amount);
        emit ContributorPaid(operator, datanetId, msg.sender, amount, cumulativeAmount);
    }

    /// @notice Sets the protocol treasury; only the owner.
    /// @param treasury The new treasury.
    function setProtocolTreasury(address treasury) external onlyOwner {
        if (treasury == address(0)) revert ZeroAddress();
        protocolTreasury = treasury;
        emit ProtocolTreasuryUpdated(treasury);
    }

    // ------------------------------------------------------------------ views

    /// @notice The channel id of a config: its EIP-712 digest under this contract's domain.
    /// @param config The config.
    /// @return The id.
    function channelIdOf(ChannelConfig calldata config) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(
                abi.encode(
                    CHANNEL_CONFIG_TYPEHASH,
                    config.payer,
                    config.payerAuthorizer,
                    config.payee,
                    config.token,
                    config.withdrawDelay,
                    config.salt
                )
            )
        );
    }

    /// @notice The EIP-712 digest a payer authorizer signs for a voucher.
    /// @param channelId The channel.
    /// @param cumulativeAmount The cumulative amount.
    /// @param callHash The call hash.
    /// @return The digest.
    function voucherDigest(bytes32 channelId, uint128 cumulativeAmount, bytes32 callHash)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, cumulativeAmount, callHash)));
    }

    /// @notice This contract's EIP-712 domain separator.
    /// @return The separator.
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice Reads a channel.
    /// @param channelId The channel.
    /// @return state The channel; reverts with {UnknownChannel} when there is none.
    function getChannel(bytes32 channelId) external view returns (ChannelState memory state) {
        Channel storage ch = _existing(channelId);
        state.config = ChannelConfig({
            payer: ch.payer,
            payerAuthorizer: ch.payerAuthorizer,
            payee: ch.payee,
            token: address(token),
            withdrawDelay: ch.withdrawDelay,
            salt: ch.salt
        });
        state.deposited = ch.deposited;
        state.claimed = ch.claimed;
        state.withdrawRequestedAt = ch.withdrawRequestedAt;
        state.closed = ch.closed;
    }

    /// @notice Reads an operator's contributor pool of a datanet.
    /// @param operator The operator.
    /// @param datanetId The datanet.
    /// @return The pool.
    function getPool(address operator, uint256 datanetId) external view returns (Pool memory) {
        return _pools[operator][datanetId];
    }

    // ------------------------------------------------------------------ internals

    function _open(ChannelConfig calldata config, uint128 amount) private returns (bytes32 channelId) {
        if (config.payer != msg.sender) revert NotPayer();
        if (config.token != address(token)) revert UnsupportedToken(config.token);
        if (config.payerAuthorizer == address(0) || config.payee == address(0)) revert ZeroAddress();
        if (amount == 0) revert ZeroAmount();
        channelId = channelIdOf(config);
        Channel storage ch = _channels[channelId];
        if (ch.payee != address(0)) revert ChannelExists(channelId);
        ch.payee = config.payee;
        ch.withdrawDelay = config.withdrawDelay;
        ch.payerAuthorizer = config.payerAuthorizer;
        ch.deposited = amount;
        ch.payer = config.payer;
        ch.salt = config.salt;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit ChannelOpened(
            channelId, config.payer, config.payee, config.payerAuthorizer, config.withdrawDelay, config.salt, amount
        );
    }

    function _claimOne(Claim calldata c) private returns (uint256 delta) {
        bytes32 channelId = c.channelId;
        Channel storage ch = _channels[channelId];
        address payee = ch.payee;
        if (payee != msg.sender) {
            if (payee == address(0)) revert UnknownChannel(channelId);
            revert NotPayee(channelId, msg.sender);
        }
        if (ch.closed) revert ChannelIsClosed(channelId);
        uint128 claimed = ch.claimed;
        uint128 amount = c.amount;
        if (amount <= claimed) revert StaleClaim(channelId, claimed, amount);
        if (amount > c.voucherAmount) revert ClaimExceedsVoucher(channelId);
        uint128 deposited = ch.deposited;
        if (amount > deposited) revert ClaimExceedsDeposit(channelId, deposited, amount);
        bytes32 digest = voucherDigest(channelId, c.voucherAmount, c.callHash);
        if (!SignatureChecker.isValidSignatureNowCalldata(ch.payerAuthorizer, digest, c.signature)) {
            revert InvalidSignature(channelId);
        }
        ch.claimed = amount;
        delta = amount - claimed;
        emit Claimed(channelId, msg.sender, uint128(delta), amount, c.callHash);
    }

    function _split(uint256 total, Revenue[] calldata revenues) private {
        uint256 attributed = 0;
        uint256 protocolTotal = 0;
        uint256 operatorTotal = 0;
        for (uint256 i = 0; i < revenues.length; ++i) {
            Revenue calldata r = revenues[i];
            if (r.amount == 0) revert ZeroAmount();
            attributed += r.amount;
            if (r.adapterId == bytes32(0)) {
                operatorTotal += r.amount;
                emit RevenueSplit(bytes32(0), msg.sender, r.amount, 0, 0, 0, r.amount);
                continue;
            }
            (
                address owner,
                AdapterRegistry.RevenuePolicy memory policy,
                uint256[] memory datanetIds,
                uint16[] memory weights
            ) = adapters.revenueSplit(r.adapterId);
            uint256 ownerShare = uint256(r.amount) * policy.ownerBps / BPS;
            uint256 dataShare = uint256(r.amount) * policy.dataBps / BPS;
            uint256 protocolShare = uint256(r.amount) * policy.protocolBps / BPS;
            uint256 operatorShare = r.amount - ownerShare - dataShare - protocolShare;
            if (ownerShare != 0) earnings[owner] += ownerShare;
            if (dataShare != 0) _fundPools(dataShare, datanetIds, weights);
            protocolTotal += protocolShare;
            operatorTotal += operatorShare;
            emit RevenueSplit(r.adapterId, msg.sender, r.amount, ownerShare, dataShare, protocolShare, operatorShare);
        }
        if (attributed != total) revert RevenueMismatch(total, attributed);
        if (protocolTotal != 0) earnings[protocolTreasury] += protocolTotal;
        if (operatorTotal != 0) earnings[msg.sender] += operatorTotal;
    }

    function _fundPools(uint256 dataShare, uint256[] memory datanetIds, uint16[] memory weights) private {
        uint256 remaining = dataShare;
        uint256 last = datanetIds.length - 1;
        for (uint256 j = 0; j <= last; ++j) {
            uint256 part = j == last ? remaining : dataShare * weights[j] / BPS;
            remaining -= part;
            if (part == 0) continue;
            Pool storage pool = _pools[msg.sender][datanetIds[j]];
            pool.funded += uint128(part);
            emit PoolFunded(msg.sender, datanetIds[j], part);
        }
    }

    function _close(bytes32 channelId, Channel storage ch) private {
        if (ch.closed) revert ChannelIsClosed(channelId);
        uint128 refund = ch.deposited - ch.claimed;
        ch.closed = true;
        ch.deposited = ch.claimed;
        if (refund != 0) token.safeTransfer(ch.payer, refund);
        emit ChannelClosed(channelId, msg.sender, refund);
    }

    function _existing(bytes32 channelId) private view returns (Channel storage ch) {
        ch = _channels[channelId];
        if (ch.payee == address(0)) revert UnknownChannel(channelId);
    }
}
