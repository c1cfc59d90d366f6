"""Custom-error reverts decode into named errors with typed arguments."""

from eth_abi import encode
from eth_utils import keccak

from loraledger.sdk.chain.artifacts import CONTRACT_NAMES, load_artifact
from loraledger.sdk.chain.errors import decode_revert


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


def test_decodes_custom_error_with_arguments():
    channel = bytes(range(32))
    data = _selector("StaleClaim(bytes32,uint128,uint128)") + encode(["bytes32", "uint128", "uint128"], [channel, 7, 5])
    err = decode_revert("0x" + data.hex())
    assert err.name == "StaleClaim"
    assert err.args_ == (channel, 7, 5)
    assert "StaleClaim(0x0001" in str(err)


def test_decodes_errors_of_every_contract_and_openzeppelin():
    data = _selector("OwnableUnauthorizedAccount(address)") + encode(["address"], ["0x" + "11" * 20])
    assert decode_revert(data).name == "OwnableUnauthorizedAccount"
    data = _selector("UnknownAdapter(bytes32)") + encode(["bytes32"], [b"\x01" * 32])
    assert decode_revert(data).name == "UnknownAdapter"
    data = _selector("ERC20InsufficientBalance(address,uint256,uint256)") + encode(
        ["address", "uint256", "uint256"], ["0x" + "22" * 20, 1, 2]
    )
    assert decode_revert(data).args_[1:] == (1, 2)


def test_decodes_string_reasons_and_panics():
    assert decode_revert(_selector("Error(string)") + encode(["string"], ["nope"])).args_ == ("nope",)
    panic = decode_revert(_selector("Panic(uint256)") + encode(["uint256"], [0x11]))
    assert panic.name == "Panic"
    assert panic.args_ == (0x11, "arithmetic overflow or underflow")


def test_unknown_and_empty_reverts_are_named_not_raised():
    assert decode_revert(b"").name == "EmptyRevert"
    unknown = decode_revert(b"\xde\xad\xbe\xef" + b"\x00" * 32)
    assert unknown.name == "UnknownError"
    assert unknown.args_ == (b"\xde\xad\xbe\xef",)
    truncated = decode_revert(_selector("StaleClaim(bytes32,uint128,uint128)") + b"\x00" * 5)
    assert truncated.name == "StaleClaim"
    assert "undecodable" in truncated.args_[0]


def test_every_contract_error_has_a_unique_selector():
    seen: dict[bytes, str] = {}
    for name in CONTRACT_NAMES:
        for entry in load_artifact(name).abi:
            if entry["type"] != "error":
                continue
            sig = f"{entry['name']}({','.join(i['type'] for i in entry['inputs'])})"
            selector = _selector(sig)
            assert seen.setdefault(selector, sig) == sig, f"selector clash: {sig} vs {seen[selector]}"
