"""Typed web3.py bindings of the five loraledger contracts, and their deployment."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_abi import encode
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxReceipt

from ..vouchers import ChannelConfig, Domain
from .artifacts import CONTRACT_NAMES, load_artifact
from .provider import Chain

__all__ = [
    "Adapter",
    "AdapterRegistry",
    "Anchor",
    "ChannelState",
    "Claim",
    "Contracts",
    "DatanetRegistry",
    "Deployments",
    "OpenToken",
    "PaymentChannels",
    "Pool",
    "Revenue",
    "RevenuePolicy",
    "TraceAnchor",
    "deploy_contracts",
    "erc1271_accepts",
]

OPEN = 10**18
"""One OPEN in its smallest unit (the token has 18 decimals)."""

_ERC1271_SELECTOR = Web3.keccak(text="isValidSignature(bytes32,bytes)")[:4]
_ERC1271_MAGIC = _ERC1271_SELECTOR + bytes(28)  # the selector, as a bytes32 return value


def erc1271_accepts(chain: Chain, signer: str, digest: bytes, signature: bytes, *, gas: int = 100_000) -> bool | None:
    """Whether the contract at `signer` accepts `signature` over `digest` through ERC-1271 `isValidSignature`, decided
    as OpenZeppelin's SignatureChecker decides it (a 32-byte answer equal to the selector); None when `signer` has no
    code (an EOA: only ECDSA recovery can authorize it). A revert, a short answer or running out of `gas` is False:
    the cap bounds what a wallet's code can make the caller's node run (common wallets need well under 50,000)."""
    w3, signer = chain.w3, Web3.to_checksum_address(signer)
    if not w3.eth.get_code(signer):
        return None
    data = _ERC1271_SELECTOR + encode(["bytes32", "bytes"], [digest, signature])
    try:
        out = w3.eth.call({"to": signer, "data": "0x" + data.hex(), "gas": gas})
    except Exception:  # noqa: BLE001 - a reverting or misbehaving wallet answers "no", whatever it raises
        return False
    return bytes(out[:32]) == _ERC1271_MAGIC


def _b32(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)


@dataclass(frozen=True)
class RevenuePolicy:
    """Shares in basis points; the operator gets 10,000 minus their sum."""

    owner_bps: int
    data_bps: int
    protocol_bps: int

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.owner_bps, self.data_bps, self.protocol_bps)


@dataclass(frozen=True)
class Adapter:
    owner: str
    base_model_hash: bytes
    weights_hash: bytes
    uri: str
    policy: RevenuePolicy
    datanet_ids: tuple[int, ...]
    datanet_weights_bps: tuple[int, ...]


@dataclass(frozen=True)
class ChannelState:
    config: ChannelConfig
    deposited: int
    claimed: int
    withdraw_requested_at: int
    closed: bool


@dataclass(frozen=True)
class Claim:
    """Claim of one channel: cumulative `amount` under a voucher for cumulative `voucher_amount`."""

    channel_id: bytes
    voucher_amount: int
    amount: int
    call_hash: bytes
    signature: bytes

    def as_tuple(self) -> tuple[bytes, int, int, bytes, bytes]:
        return (_b32(self.channel_id), self.voucher_amount, self.amount, _b32(self.call_hash), bytes(self.signature))


@dataclass(frozen=True)
class Revenue:
    """Revenue earned by one adapter in a claim (adapter id zero: calls to the base model)."""

    adapter_id: bytes
    amount: int

    def as_tuple(self) -> tuple[bytes, int]:
        return (_b32(self.adapter_id), self.amount)


@dataclass(frozen=True)
class Pool:
    funded: int
    paid_out: int
    root: bytes
    root_total: int
    epoch: int


@dataclass(frozen=True)
class Anchor:
    count: int
    timestamp: int
    block_number: int


class _Binding:
    name: str

    def __init__(self, chain: Chain, address: str):
        self.chain = chain
        self.address = Web3.to_checksum_address(address)
        self.contract = chain.w3.eth.contract(address=self.address, abi=load_artifact(self.name).abi)

    def _call(self, fn: str, *args: Any) -> Any:
        return self.chain.call(self.contract.functions[fn](*args))

    def _send(self, account: LocalAccount, fn: str, *args: Any, gas: int | None = None) -> TxReceipt:
        return self.chain.send(account, self.contract.functions[fn](*args), gas=gas)

    def events(self, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
        """The decoded `event` logs this contract emitted in `receipt`, as dicts of arguments."""
        logs = [log for log in receipt["logs"] if Web3.to_checksum_address(log["address"]) == self.address]
        decoder = self.contract.events[event]()
        out = []
        for log in logs:
            try:
                out.append(dict(decoder.process_log(log)["args"]))
            except Exception:  # a log of another event of this contract
                continue
        return out


class OpenToken(_Binding):
    """ERC-20 with permit (EIP-2612) and transfer authorizations (EIP-3009)."""

    name = "OpenToken"

    def balance_of(self, account: str) -> int:
        return self._call("balanceOf", Web3.to_checksum_address(account))

    def allowance(self, owner: str, spender: str) -> int:
        return self._call("allowance", Web3.to_checksum_address(owner), Web3.to_checksum_address(spender))

    def total_supply(self) -> int:
        return self._call("totalSupply")

    def approve(self, account: LocalAccount, spender: str, amount: int) -> TxReceipt:
        return self._send(account, "approve", Web3.to_checksum_address(spender), amount)

    def transfer(self, account: LocalAccount, to: str, amount: int) -> TxReceipt:
        return self._send(account, "transfer", Web3.to_checksum_address(to), amount)

    def mint(self, account: LocalAccount, to: str, amount: int) -> TxReceipt:
        return self._send(account, "mint", Web3.to_checksum_address(to), amount)

    def mint_batch(self, account: LocalAccount, to: Sequence[str], amounts: Sequence[int]) -> TxReceipt:
        return self._send(account, "mintBatch", [Web3.to_checksum_address(a) for a in to], list(amounts))


class DatanetRegistry(_Binding):
    """Datanets and their registered contributions."""

    name = "DatanetRegistry"

    def create_datanet(self, account: LocalAccount, metadata_uri: str) -> int:
        receipt = self._send(account, "createDatanet", metadata_uri)
        return self.events(receipt, "DatanetCreated")[0]["datanetId"]

    def register_contributions(
        self, account: LocalAccount, datanet_id: int, contributors: Sequence[str], content_hashes: Sequence[bytes]
    ) -> TxReceipt:
        return self._send(
            account,
            "registerContributions",
            datanet_id,
            [Web3.to_checksum_address(c) for c in contributors],
            [_b32(h) for h in content_hashes],
        )

    def set_metadata_uri(self, account: LocalAccount, datanet_id: int, metadata_uri: str) -> TxReceipt:
        return self._send(account, "setMetadataURI", datanet_id, metadata_uri)

    def transfer_curation(self, account: LocalAccount, datanet_id: int, new_curator: str) -> TxReceipt:
        return self._send(account, "transferCuration", datanet_id, Web3.to_checksum_address(new_curator))

    def datanet_count(self) -> int:
        return self._call("datanetCount")

    def get_datanet(self, datanet_id: int) -> tuple[str, str, int]:
        """(curator, metadata URI, contribution count)."""
        curator, uri, count = self._call("getDatanet", datanet_id)
        return curator, uri, count

    def get_contribution(self, datanet_id: int, index: int) -> tuple[str, bytes]:
        contributor, content_hash = self._call("getContribution", datanet_id, index)
        return contributor, bytes(content_hash)

    def is_contributor(self, datanet_id: int, account: str) -> bool:
        return self._call("isContributor", datanet_id, Web3.to_checksum_address(account))

    def contributions_of(self, datanet_id: int, account: str) -> int:
        return self._call("contributionsOf", datanet_id, Web3.to_checksum_address(account))

    def is_registered_content(self, datanet_id: int, content_hash: bytes) -> bool:
        return self._call("isRegisteredContent", datanet_id, _b32(content_hash))

    def exists(self, datanet_id: int) -> bool:
        return self._call("exists", datanet_id)


class AdapterRegistry(_Binding):
    """Adapter ids to owners, hashes, datanets and revenue policies."""

    name = "AdapterRegistry"

    def register(
        self,
        account: LocalAccount,
        adapter_id: bytes,
        *,
        base_model_hash: bytes,
        weights_hash: bytes,
        uri: str,
        policy: RevenuePolicy,
        datanet_ids: Sequence[int] = (),
        datanet_weights_bps: Sequence[int] = (),
    ) -> TxReceipt:
        return self._send(
            account,
            "register",
            _b32(adapter_id),
            _b32(base_model_hash),
            _b32(weights_hash),
            uri,
            policy.as_tuple(),
            list(datanet_ids),
            list(datanet_weights_bps),
        )

    def update_weights(self, account: LocalAccount, adapter_id: bytes, weights_hash: bytes, uri: str) -> TxReceipt:
        return self._send(account, "updateWeights", _b32(adapter_id), _b32(weights_hash), uri)

    def set_revenue_policy(
        self,
        account: LocalAccount,
        adapter_id: bytes,
        policy: RevenuePolicy,
        datanet_ids: Sequence[int] = (),
        datanet_weights_bps: Sequence[int] = (),
    ) -> TxReceipt:
        return self._send(
            account, "setRevenuePolicy", _b32(adapter_id), policy.as_tuple(), list(datanet_ids), list(datanet_weights_bps)
        )

    def transfer_adapter(self, account: LocalAccount, adapter_id: bytes, new_owner: str) -> TxReceipt:
        return self._send(account, "transferAdapter", _b32(adapter_id), Web3.to_checksum_address(new_owner))

    def owner_of(self, adapter_id: bytes) -> str:
        return self._call("ownerOf", _b32(adapter_id))

    def get_adapter(self, adapter_id: bytes) -> Adapter:
        owner, base, weights, uri, policy, ids, w = self._call("getAdapter", _b32(adapter_id))
        return Adapter(owner, bytes(base), bytes(weights), uri, RevenuePolicy(*policy), tuple(ids), tuple(w))


class PaymentChannels(_Binding):
    """One-way payment channels with batched claims, revenue splits and contributor pools."""

    name = "PaymentChannels"

    @property
    def domain(self) -> Domain:
        return Domain(chain_id=self.chain.chain_id, verifying_contract=self.address)

    def open(self, account: LocalAccount, config: ChannelConfig, amount: int) -> bytes:
        """Opens a channel funded by `account` (approve the token first); returns its id."""
        receipt = self._send(account, "open", config.as_tuple(), amount)
        return bytes(self.events(receipt, "ChannelOpened")[0]["channelId"])

    def open_with_permit(
        self, account: LocalAccount, config: ChannelConfig, amount: int, deadline: int, v: int, r: bytes, s: bytes
    ) -> bytes:
        receipt = self._send(account, "openWithPermit", config.as_tuple(), amount, deadline, v, r, s)
        return bytes(self.events(receipt, "ChannelOpened")[0]["channelId"])

    def deposit(self, account: LocalAccount, channel_id: bytes, amount: int) -> TxReceipt:
        return self._send(account, "deposit", _b32(channel_id), amount)

    def claim(
        self,
        account: LocalAccount,
        claims: Sequence[Claim],
        revenues: Sequence[Revenue],
        *,
        gas: int | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> TxReceipt:
        fn = self.contract.functions.claim([c.as_tuple() for c in claims], [r.as_tuple() for r in revenues])
        return self.chain.send(account, fn, gas=gas, on_sent=on_sent)

    def initiate_withdraw(self, account: LocalAccount, channel_id: bytes) -> TxReceipt:
        return self._send(account, "initiateWithdraw", _b32(channel_id))

    def finalize_withdraw(self, account: LocalAccount, channel_id: bytes) -> TxReceipt:
        return self._send(account, "finalizeWithdraw", _b32(channel_id))

    def close(self, account: LocalAccount, channel_id: bytes) -> TxReceipt:
        return self._send(account, "close", _b32(channel_id))

    def withdraw_earnings(self, account: LocalAccount, to: str | None = None) -> TxReceipt:
        return self._send(account, "withdrawEarnings", Web3.to_checksum_address(to or account.address))

    def post_epoch_root(
        self,
        account: LocalAccount,
        datanet_id: int,
        root: bytes,
        total: int,
        receipts_root: bytes = b"\x00" * 32,
        attribution_root: bytes = b"\x00" * 32,
    ) -> TxReceipt:
        return self._send(
            account, "postEpochRoot", datanet_id, _b32(root), total, _b32(receipts_root), _b32(attribution_root)
        )

    def claim_contribution(
        self, account: LocalAccount, operator: str, datanet_id: int, cumulative_amount: int, proof: Sequence[bytes]
    ) -> TxReceipt:
        return self._send(
            account,
            "claimContribution",
            Web3.to_checksum_address(operator),
            datanet_id,
            cumulative_amount,
            [_b32(p) for p in proof],
        )

    def set_protocol_treasury(self, account: LocalAccount, treasury: str) -> TxReceipt:
        return self._send(account, "setProtocolTreasury", Web3.to_checksum_address(treasury))

    def get_channel(self, channel_id: bytes) -> ChannelState:
        config, deposited, claimed, requested_at, closed = self._call("getChannel", _b32(channel_id))
        payer, authorizer, payee, token, delay, salt = config
        return ChannelState(
            ChannelConfig(payer, authorizer, payee, token, delay, bytes(salt)), deposited, claimed, requested_at, closed
        )

    def channel_id_of(self, config: ChannelConfig) -> bytes:
        return bytes(self._call("channelIdOf", config.as_tuple()))

    def voucher_digest(self, channel_id: bytes, cumulative_amount: int, call_hash: bytes) -> bytes:
        return bytes(self._call("voucherDigest", _b32(channel_id), cumulative_amount, _b32(call_hash)))

    def domain_separator(self) -> bytes:
        return bytes(self._call("domainSeparator"))

    def earnings(self, account: str) -> int:
        return self._call("earnings", Web3.to_checksum_address(account))

    def get_pool(self, operator: str, datanet_id: int) -> Pool:
        funded, paid, root, total, epoch = self._call("getPool", Web3.to_checksum_address(operator), datanet_id)
        return Pool(funded, paid, bytes(root), total, epoch)

    def contributor_claimed(self, operator: str, datanet_id: int, contributor: str) -> int:
        return self._call(
            "contributorClaimed", Web3.to_checksum_address(operator), datanet_id, Web3.to_checksum_address(contributor)
        )

    def protocol_treasury(self) -> str:
        return self._call("protocolTreasury")


class TraceAnchor(_Binding):
    """Anchors reasoning-log roots."""

    name = "TraceAnchor"

    def anchor(self, account: LocalAccount, root: bytes, count: int) -> int:
        receipt = self._send(account, "anchor", _b32(root), count)
        return self.events(receipt, "TraceAnchored")[0]["index"]

    def get_anchor(self, agent: str, root: bytes) -> Anchor:
        count, timestamp, block = self._call("getAnchor", Web3.to_checksum_address(agent), _b32(root))
        return Anchor(count, timestamp, block)

    def anchor_count(self, agent: str) -> int:
        return self._call("anchorCount", Web3.to_checksum_address(agent))


@dataclass
class Deployments:
    """Where the contracts live: the content of a deployments file."""

    chain_id: int
    rpc_url: str | None
    contracts: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"chainId": self.chain_id, "rpcUrl": self.rpc_url, "contracts": dict(self.contracts)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployments:
        contracts = data.get("contracts", {})
        missing = [n for n in CONTRACT_NAMES if n not in contracts]
        if missing:
            raise ValueError(f"deployments lack {', '.join(missing)}")
        return cls(
            chain_id=int(data["chainId"]),
            rpc_url=data.get("rpcUrl"),
            contracts={n: Web3.to_checksum_address(contracts[n]) for n in CONTRACT_NAMES},
        )

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> Deployments:
        return cls.from_json(json.loads(Path(path).read_text()))


class Contracts:
    """The five deployed contracts on one chain."""

    def __init__(self, chain: Chain, deployments: Deployments):
        if deployments.chain_id != chain.chain_id:
            raise ValueError(f"deployments are for chain {deployments.chain_id}, connected to {chain.chain_id}")
        self.chain = chain
        self.deployments = deployments
        c = deployments.contracts
        self.token = OpenToken(chain, c["OpenToken"])
        self.datanets = DatanetRegistry(chain, c["DatanetRegistry"])
        self.adapters = AdapterRegistry(chain, c["AdapterRegistry"])
        self.channels = PaymentChannels(chain, c["PaymentChannels"])
        self.anchor = TraceAnchor(chain, c["TraceAnchor"])


def deploy_contracts(
    chain: Chain,
    deployer: LocalAccount,
    *,
    treasury: str | None = None,
    fund: Sequence[str] = (),
    fund_amount: int = 1_000_000 * OPEN,
) -> Contracts:
    """Deploys OpenToken, the registries, PaymentChannels and TraceAnchor; mints `fund_amount` to each of `fund`.

    The deployer owns the token and PaymentChannels; the protocol treasury defaults to the deployer.
    """

    def deploy(name: str, *args: Any) -> str:
        artifact = load_artifact(name)
        address, _ = chain.deploy(deployer, artifact.abi, artifact.bytecode, *args)
        return address

    token = deploy("OpenToken", deployer.address)
    datanets = deploy("DatanetRegistry")
    adapters = deploy("AdapterRegistry", datanets)
    channels = deploy("PaymentChannels", token, adapters, datanets, treasury or deployer.address, deployer.address)
    anchor = deploy("TraceAnchor")
    deployments = Deployments(
        chain_id=chain.chain_id,
        rpc_url=chain.rpc_url,
        contracts={
            "OpenToken": token,
            "DatanetRegistry": datanets,
            "AdapterRegistry": adapters,
            "PaymentChannels": channels,
            "TraceAnchor": anchor,
        },
    )
    contracts = Contracts(chain, deployments)
    if fund:
        contracts.token.mint_batch(deployer, list(fund), [fund_amount] * len(fund))
    return contracts
