"""Adapter uploads and deletions on a runtime: the files an upload may hold, and the EIP-191 message the adapter's
registered owner (or the runtime's operator) signs to authorise them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

__all__ = [
    "ADAPTER_FILES",
    "MAX_VALIDITY_S",
    "REQUIRED_ADAPTER_FILES",
    "adapter_message",
    "delete_adapter",
    "files_digest",
    "recover_adapter_signer",
    "sign_adapter_message",
    "upload_adapter",
]

MAX_VALIDITY_S = 600
"""A signed message is accepted until its `expires`, at most this far in the runtime's future."""

REQUIRED_ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors"})
ADAPTER_FILES = REQUIRED_ADAPTER_FILES | {
    "loraledger.json",  # prices, owner, datanets, revenue policy
    "manifest.json",  # ModelFactory's record of what the adapter was trained on
    *(f"attribution/{n}" for n in ("index.json", "tokens.npy", "doc_starts.npy", "suffix_array.npy",
                                   "influence.json", "influence.npy")),  # the Proof-of-Attribution index
}  # fmt: skip
"""Every file an adapter upload may hold, by its path in the adapter folder: data only (safetensors, JSON, numpy
arrays that load without pickle), never code."""


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


def upload_adapter(base_url: str, folder: Path | str, signer: LocalAccount, *, adapter_id: str | None = None,
                   timeout_s: float = 300.0) -> dict:  # fmt: skip
    """Uploads the adapter in `folder` (every ADAPTER_FILES file it has) to the runtime at `base_url` as
    `adapter_id` (default: the folder's name), signed by `signer`; returns the runtime's answer. Raises
    httpx.HTTPStatusError when the runtime refuses (its body says why)."""
    folder = Path(folder)
    adapter_id = adapter_id or folder.resolve().name
    files = {name: (folder / name).read_bytes() for name in sorted(ADAPTER_FILES) if (folder / name).is_file()}
    missing = REQUIRED_ADAPTER_FILES - set(files)
    if missing:
        raise FileNotFoundError(f"{folder}: missing {sorted(missing)}")
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        chain_id, runtime = _runtime_identity(http)
        expires = int(time.time()) + MAX_VALIDITY_S // 2
        message = adapter_message("upload", adapter_id, chain_id=chain_id, runtime=runtime, expires=expires,
                                  files=files_digest(files))  # fmt: skip
        response = http.post(
            "/v1/adapters",
            data={"adapter_id": adapter_id, "expires": str(expires), "signature": sign_adapter_message(signer, message)},
            files=[(name, (name, data)) for name, data in files.items()],
        )
        response.raise_for_status()
        return response.json()


def delete_adapter(base_url: str, adapter_id: str, signer: LocalAccount, *, timeout_s: float = 60.0) -> dict:
    """Removes `adapter_id` from the runtime at `base_url`, signed by `signer` (its owner or the operator)."""
    with httpx.Client(base_url=base_url, timeout=timeout_s) as http:
        chain_id, runtime = _runtime_identity(http)
        expires = int(time.time()) + MAX_VALIDITY_S // 2
        message = adapter_message("delete", adapter_id, chain_id=chain_id, runtime=runtime, expires=expires)
        response = http.delete(f"/v1/adapters/{adapter_id}",
                               params={"expires": expires, "signature": sign_adapter_message(signer, message)})  # fmt: skip
        response.raise_for_status()
        return response.json()


def _runtime_identity(http: httpx.Client) -> tuple[int, str]:
    """(chain id, operator address) of a runtime: what an adapter message binds to."""
    chain = http.get("/v1/chain").raise_for_status().json()
    return int(chain["chainId"]), chain["operator"]
