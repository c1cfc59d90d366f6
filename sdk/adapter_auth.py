"""EIP-191 authorisation of adapter uploads and deletions (the message the owner or operator signs)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

__all__ = ["MAX_VALIDITY_S", "adapter_message", "files_digest", "recover_adapter_signer", "sign_adapter_message"]

MAX_VALIDITY_S = 600
"""A signed message is accepted until its `expires`, at most this far in the runtime's future."""


def files_digest(files: Mapping[str, bytes]) -> str:
    """sha256 over the sorted (name, sha256(content)) pairs of the uploaded files, as 0x-hex."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\x00" + hashlib.sha256(files[name]).digest())
    return "0x" + h.hexdigest()


def adapter_message(action: str, adapter_id: str, *, chain_id: int, runtime: str, expires: int,
                    files: str | None = None) -> str:  # fmt: skip
    """The text signed to `upload` (with the files' digest) or `delete` an adapter on one runtime (the operator's
    address) of one chain, valid until `expires` (unix seconds). Binding all of these stops a signature from
    being replayed for other files, another runtime or chain, or later."""
    if action not in ("upload", "delete"):
        raise ValueError(f"unknown action {action!r}")
    if (action == "upload") != (files is not None):
        raise ValueError("an upload signs its files' digest; a delete signs none")
    lines = [
        f"loraledger adapter {action}",
        f"adapter: {adapter_id}",
        f"chain: {chain_id}",
        f"runtime: {to_checksum_address(runtime)}",
        f"expires: {expires}",
    ]
    if files is not None:
        lines.append(f"files: {files}")
    return "\n".join(lines)


def sign_adapter_message(account: LocalAccount, message: str) -> str:
    return "0x" + bytes(account.sign_message(encode_defunct(text=message)).signature).hex()


def recover_adapter_signer(message: str, signature: str) -> str:
    return Account.recover_message(encode_defunct(text=message), signature=bytes.fromhex(signature.removeprefix("0x")))
