"""EIP-712 typed data of the payment protocol (channel configs, vouchers, receipts), shared with the runtime.

DESIGN.md's "Protocol reference" is the spec: domain {name: "loraledger", version: "1", chainId,
verifyingContract: PaymentChannels}; a channel id is the EIP-712 digest of its ChannelConfig; the
payer's session key signs Vouchers; the operator signs Receipts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "ChannelConfig",
    "Domain",
    "Receipt",
    "Voucher",
    "adapter_id",
    "channel_id",
    "check_signature_form",
    "domain_separator",
    "receipt_digest",
    "receipt_leaf",
    "recover_receipt_signer",
    "recover_voucher_signer",
    "sign_receipt",
    "sign_voucher",
    "typed_data_digest",
    "voucher_digest",
]

DOMAIN_NAME = "loraledger"
DOMAIN_VERSION = "1"

TYPES: dict[str, list[dict[str, str]]] = {
    "ChannelConfig": [
        {"name": "payer", "type": "address"},
        {"name": "payerAuthorizer", "type": "address"},
        {"name": "payee", "type": "address"},
        {"name": "token", "type": "address"},
        {"name": "withdrawDelay", "type": "uint40"},
        {"name": "salt", "type": "bytes32"},
    ],
    "Voucher": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "cumulativeAmount", "type": "uint128"},
        {"name": "callHash", "type": "bytes32"},
    ],
    "Receipt": [
        {"name": "callId", "type": "bytes32"},
        {"name": "channelId", "type": "bytes32"},
        {"name": "adapterId", "type": "bytes32"},
        {"name": "inputTokens", "type": "uint32"},
        {"name": "outputTokens", "type": "uint32"},
        {"name": "amount", "type": "uint128"},
        {"name": "cumulativeAmount", "type": "uint128"},
        {"name": "callHash", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
        {"name": "attributionHash", "type": "bytes32"},
    ],
}


@dataclass(frozen=True)
class Domain:
    """The EIP-712 domain: one chain and one PaymentChannels contract."""

    chain_id: int
    verifying_contract: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.verifying_contract),
        }


@dataclass(frozen=True)
class ChannelConfig:
    """What a payer commits to when opening a channel; its EIP-712 digest is the channel id."""

    payer: str
    payer_authorizer: str
    payee: str
    token: str
    withdraw_delay_s: int
    salt: bytes

    def as_message(self) -> dict[str, Any]:
        return {
            "payer": to_checksum_address(self.payer),
            "payerAuthorizer": to_checksum_address(self.payer_authorizer),
            "payee": to_checksum_address(self.payee),
            "token": to_checksum_address(self.token),
            "withdrawDelay": self.withdraw_delay_s,
            "salt": _bytes32(self.salt),
        }

    def as_tuple(self) -> tuple[str, str, str, str, int, bytes]:
        m = self.as_message()
        return (m["payer"], m["payerAuthorizer"], m["payee"], m["token"], m["withdrawDelay"], m["salt"])


@dataclass(frozen=True)
class Voucher:
    """The payer's promise: the payee may claim up to `cumulative_amount` in total from the channel."""

    channel_id: bytes
    cumulative_amount: int
    call_hash: bytes

    def as_message(self) -> dict[str, Any]:
        return {
            "channelId": _bytes32(self.channel_id),
            "cumulativeAmount": self.cumulative_amount,
            "callHash": _bytes32(self.call_hash),
        }


@dataclass(frozen=True)
class Receipt:
    """The operator's signed account of one call."""

    call_id: bytes
    channel_id: bytes
    adapter_id: bytes
    input_tokens: int
    output_tokens: int
    amount: int
    cumulative_amount: int
    call_hash: bytes
    output_hash: bytes
    attribution_hash: bytes

    def as_message(self) -> dict[str, Any]:
        return {
            "callId": _bytes32(self.call_id),
            "channelId": _bytes32(self.channel_id),
            "adapterId": _bytes32(self.adapter_id),
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "amount": self.amount,
            "cumulativeAmount": self.cumulative_amount,
            "callHash": _bytes32(self.call_hash),
            "outputHash": _bytes32(self.output_hash),
            "attributionHash": _bytes32(self.attribution_hash),
        }


def _bytes32(value: bytes) -> bytes:
    if isinstance(value, str):
        value = bytes.fromhex(value.removeprefix("0x"))
    if len(value) != 32:
        raise ValueError(f"expected 32 bytes, got {len(value)}")
    return bytes(value)


def _typed(domain: Domain, primary: str, message: dict[str, Any]) -> Any:
    return encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                primary: TYPES[primary],
            },
            "primaryType": primary,
            "domain": domain.as_dict(),
            "message": message,
        }
    )


def typed_data_digest(domain: Domain, primary: str, message: dict[str, Any]) -> bytes:
    """The 32-byte EIP-712 digest of `message` of type `primary` under `domain`."""
    signable = _typed(domain, primary, message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def channel_id(domain: Domain, config: ChannelConfig) -> bytes:
    """The channel id: the EIP-712 digest of the config, bound to one chain and one contract."""
    return typed_data_digest(domain, "ChannelConfig", config.as_message())


def adapter_id(name: str) -> bytes:
    """The on-chain adapter id: keccak256 of the adapter's utf-8 name."""
    return keccak(text=name)


def sign_voucher(account: LocalAccount, domain: Domain, voucher: Voucher) -> bytes:
    """Signs a voucher with the channel's payer authorizer (session key); returns the 65-byte signature."""
    return bytes(account.sign_message(_typed(domain, "Voucher", voucher.as_message())).signature)


_SECP256K1_HALF_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2


def check_signature_form(signature: bytes) -> None:
    """Raises ValueError unless `signature` is the one form OpenZeppelin's ECDSA accepts on chain: 65 bytes
    r || s || v with v in {27, 28} and s in the lower half of the curve order.

    eth-account recovers high-s twins and v in {0, 1} too; a runtime that took those would serve calls whose
    vouchers the contract then refuses to pay.
    """
    if len(signature) != 65:
        raise ValueError(f"a signature is 65 bytes, got {len(signature)}")
    if signature[64] not in (27, 28):
        raise ValueError(f"signature v must be 27 or 28, got {signature[64]}")
    if int.from_bytes(signature[32:64], "big") > _SECP256K1_HALF_N:
        raise ValueError("signature s is in the upper half of the curve order (malleable form)")


_VOUCHER_TYPEHASH = keccak(text="Voucher(bytes32 channelId,uint128 cumulativeAmount,bytes32 callHash)")
_DOMAIN_TYPEHASH = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")


@lru_cache(maxsize=64)
def domain_separator(domain: Domain) -> bytes:
    """The EIP-712 domain separator (what PaymentChannels.domainSeparator() returns)."""
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(text=DOMAIN_NAME)
        + keccak(text=DOMAIN_VERSION)
        + domain.chain_id.to_bytes(32, "big")
        + bytes.fromhex(to_checksum_address(domain.verifying_contract)[2:]).rjust(32, b"\x00")
    )


def voucher_digest(domain: Domain, voucher: Voucher) -> bytes:
    """The voucher's EIP-712 digest, encoded by hand: the runtime checks every paid call's voucher, and
    eth-account's generic typed-data encoder costs several times the signature recovery itself. A test holds it
    equal to typed_data_digest and to PaymentChannels.voucherDigest."""
    if not 0 <= voucher.cumulative_amount < 2**128:
        raise ValueError(f"cumulativeAmount {voucher.cumulative_amount} is not a uint128")
    struct = keccak(
        _VOUCHER_TYPEHASH
        + _bytes32(voucher.channel_id)
        + voucher.cumulative_amount.to_bytes(32, "big")
        + _bytes32(voucher.call_hash)
    )
    return keccak(b"\x19\x01" + domain_separator(domain) + struct)


def recover_voucher_signer(domain: Domain, voucher: Voucher, signature: bytes) -> str:
    """The address that signed `voucher` (EOA signatures in the form the contract accepts; see
    check_signature_form)."""
    signature = bytes(signature)
    check_signature_form(signature)
    vrs = (signature[64] - 27, int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"))
    public_key = keys.Signature(vrs=vrs).recover_public_key_from_msg_hash(voucher_digest(domain, voucher))
    return public_key.to_checksum_address()


_RECEIPT_TYPEHASH = keccak(
    text="Receipt(bytes32 callId,bytes32 channelId,bytes32 adapterId,uint32 inputTokens,uint32 outputTokens,"
    "uint128 amount,uint128 cumulativeAmount,bytes32 callHash,bytes32 outputHash,bytes32 attributionHash)"
)


def receipt_digest(domain: Domain, receipt: Receipt) -> bytes:
    """The receipt's EIP-712 digest, encoded by hand like voucher_digest (the runtime signs one per paid call)."""
    for name, value, bits in (("inputTokens", receipt.input_tokens, 32), ("outputTokens", receipt.output_tokens, 32),
                              ("amount", receipt.amount, 128), ("cumulativeAmount", receipt.cumulative_amount, 128)):
        if not 0 <= value < 2**bits:
            raise ValueError(f"{name} {value} is not a uint{bits}")
    struct = keccak(
        _RECEIPT_TYPEHASH
        + _bytes32(receipt.call_id)
        + _bytes32(receipt.channel_id)
        + _bytes32(receipt.adapter_id)
        + receipt.input_tokens.to_bytes(32, "big")
        + receipt.output_tokens.to_bytes(32, "big")
        + receipt.amount.to_bytes(32, "big")
        + receipt.cumulative_amount.to_bytes(32, "big")
        + _bytes32(receipt.call_hash)
        + _bytes32(receipt.output_hash)
        + _bytes32(receipt.attribution_hash)
    )
    return keccak(b"\x19\x01" + domain_separator(domain) + struct)


def receipt_leaf(domain: Domain, receipt: Receipt) -> bytes:
    """A receipt's leaf in its settled batch's receipts root: the StandardMerkleTree leaf of its EIP-712 digest
    (what the operator signed), as the runtime builds the tree and PaymentChannels records the root."""
    from .merkle import leaf_hash

    return leaf_hash(("bytes32",), (receipt_digest(domain, receipt),))


def sign_receipt(account: LocalAccount, domain: Domain, receipt: Receipt) -> bytes:
    """Signs a receipt with the operator's key (65 bytes, v in {27, 28}, low s)."""
    signature = keys.PrivateKey(bytes(account.key)).sign_msg_hash(receipt_digest(domain, receipt))
    return signature.to_bytes()[:64] + bytes([signature.v + 27])


def recover_receipt_signer(domain: Domain, receipt: Receipt, signature: bytes) -> str:
    """The address that signed `receipt` (canonical form only; see check_signature_form)."""
    signature = bytes(signature)
    check_signature_form(signature)
    vrs = (signature[64] - 27, int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"))
    return keys.Signature(vrs=vrs).recover_public_key_from_msg_hash(receipt_digest(domain, receipt)).to_checksum_address()
