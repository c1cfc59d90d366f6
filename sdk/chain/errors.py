"""Typed chain errors and decoding of custom-error reverts against every loraledger ABI."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import keccak

from .artifacts import CONTRACT_NAMES, load_artifact

__all__ = ["ChainError", "ContractRevert", "TransactionFailed", "decode_revert"]

_PANIC_CODES = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x31: "pop on empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to a zero-initialized function",
}


class ChainError(Exception):
    """Root of the chain layer's errors.

    ChainError
    ├── ContractRevert     a call or transaction reverted; `.name` and `.args` decode the custom error
    └── TransactionFailed  a mined transaction failed without a decodable reason
    """


class ContractRevert(ChainError):
    """A contract call reverted. `name` is the custom error's name ("StaleClaim", "Error", "Panic", ...)."""

    def __init__(self, name: str, args: tuple[Any, ...], data: bytes, contract: str | None = None):
        self.name = name
        self.args_ = args
        self.data = data
        self.contract = contract
        rendered = ", ".join(_render(a) for a in args)
        where = f"{contract}: " if contract else ""
        super().__init__(f"{where}{name}({rendered})")


class TransactionFailed(ChainError):
    """A transaction was mined with status 0 and its revert could not be replayed."""


def _render(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return repr(value)


def _signature(entry: dict[str, Any]) -> str:
    return f"{entry['name']}({','.join(_canonical_type(i) for i in entry['inputs'])})"


def _canonical_type(param: dict[str, Any]) -> str:
    kind = param["type"]
    if kind.startswith("tuple"):
        return "(" + ",".join(_canonical_type(c) for c in param["components"]) + ")" + kind[len("tuple") :]
    return kind


@cache
def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    """selector -> (error name, input types) for every error in every loraledger ABI (and Error/Panic)."""
    table: dict[bytes, tuple[str, list[str]]] = {
        keccak(text="Error(string)")[:4]: ("Error", ["string"]),
        keccak(text="Panic(uint256)")[:4]: ("Panic", ["uint256"]),
    }
    for name in CONTRACT_NAMES:
        _add_errors(table, load_artifact(name).abi)
    return table


def _add_errors(table: dict[bytes, tuple[str, list[str]]], abi: Iterable[dict[str, Any]]) -> None:
    for entry in abi:
        if entry.get("type") == "error":
            table[keccak(text=_signature(entry))[:4]] = (entry["name"], [_canonical_type(i) for i in entry["inputs"]])


def decode_revert(data: bytes | str, extra_abis: Iterable[list[dict[str, Any]]] = ()) -> ContractRevert:
    """Decodes revert data into a ContractRevert naming the custom error and its arguments."""
    if isinstance(data, str):
        data = bytes.fromhex(data.removeprefix("0x"))
    table = _error_table()
    if extra_abis:
        table = dict(table)
        for abi in extra_abis:
            _add_errors(table, abi)
    if len(data) < 4:
        return ContractRevert("EmptyRevert", (), data)
    known = table.get(data[:4])
    if known is None:
        return ContractRevert("UnknownError", (data[:4],), data)
    name, types = known
    try:
        args = tuple(abi_decode(types, data[4:]))
    except Exception as exc:  # eth_abi raises several decoding error types
        return ContractRevert(name, (f"<undecodable arguments: {exc}>",), data)
    if name == "Panic":
        args = (args[0], _PANIC_CODES.get(args[0], "unknown panic"))
    return ContractRevert(name, args, data)
