"""OpenToken: minting, ERC-20 basics, EIP-2612 permit and EIP-3009 transfer authorizations, on both backends."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from loraledger.sdk.chain.errors import ContractRevert

pytestmark = pytest.mark.integration

OPEN = 10**18
FUNDED_WEI = 1_000_000 * OPEN
ZERO = "0x0000000000000000000000000000000000000000"
MAX_UINT256 = 2**256 - 1

_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_PERMIT_TYPE = [
    {"name": "owner", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]
_AUTHORIZATION_TYPE = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
_CANCEL_TYPE = [{"name": "authorizer", "type": "address"}, {"name": "nonce", "type": "bytes32"}]


@contextmanager
def reverts(name: str, *args):
    """Expects a ContractRevert with custom error `name` (and, when given, exactly these decoded arguments)."""
    with pytest.raises(ContractRevert) as info:
        yield info
    assert info.value.name == name, info.value
    if args:  # the decoder gives addresses in lower case
        assert _lower(info.value.args_) == _lower(args), info.value


def _lower(values: tuple) -> tuple:
    return tuple(v.lower() if isinstance(v, str) else v for v in values)


def _sign_typed(account, token, primary: str, fields: list, message: dict):
    """Signs `message` under the token's EIP-712 domain (name "Open", version "1"); returns (v, r, s)."""
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": _DOMAIN_TYPE, primary: fields},
            "primaryType": primary,
            "domain": {
                "name": "Open",
                "version": "1",
                "chainId": token.chain.chain_id,
                "verifyingContract": token.address,
            },
            "message": message,
        }
    )
    signed = Account.sign_message(signable, account.key)
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def _permit(token, owner, spender: str, value: int, deadline: int, *, signer=None, nonce=None):
    nonce = token.chain.call(token.contract.functions.nonces(owner.address)) if nonce is None else nonce
    message = {"owner": owner.address, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline}
    return _sign_typed(signer or owner, token, "Permit", _PERMIT_TYPE, message)


def _authorization(token, primary: str, signer, to: str, value: int, valid_after: int, valid_before: int, nonce: bytes):
    message = {
        "from": signer.address,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": nonce,
    }
    return _sign_typed(signer, token, primary, _AUTHORIZATION_TYPE, message)


def _now(chain) -> int:
    return chain.w3.eth.get_block("latest")["timestamp"]


def _send(token, account, fn: str, *args):
    return token.chain.send(account, token.contract.functions[fn](*args))


def _call(token, fn: str, *args):
    return token.chain.call(token.contract.functions[fn](*args))


def test_metadata_supply_and_domain(chain, accounts, contracts):
    token = contracts.token
    assert _call(token, "name") == "Open"
    assert _call(token, "symbol") == "OPEN"
    assert _call(token, "decimals") == 18
    assert token.total_supply() == len(accounts) * FUNDED_WEI
    assert all(token.balance_of(a.address) == FUNDED_WEI for a in accounts)
    assert _call(token, "owner") == accounts[0].address

    fields, name, version, chain_id, verifying, salt, extensions = _call(token, "eip712Domain")
    assert (fields, name, version, chain_id, verifying) == (b"\x0f", "Open", "1", chain.chain_id, token.address)
    assert (salt, extensions) == (b"\x00" * 32, [])
    domain_typehash = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    expected = keccak(
        domain_typehash
        + keccak(text="Open")
        + keccak(text="1")
        + chain.chain_id.to_bytes(32, "big")
        + bytes.fromhex(token.address[2:]).rjust(32, b"\x00")
    )
    assert bytes(_call(token, "DOMAIN_SEPARATOR")) == expected


def test_owner_mints_and_mints_in_batches(accounts, contracts):
    token, owner = contracts.token, accounts[0]
    fresh = [Account.from_key(keccak(text=f"fresh {i}")).address for i in range(3)]
    supply = token.total_supply()

    receipt = token.mint(owner, fresh[0], 5 * OPEN)
    assert token.events(receipt, "Transfer") == [{"from": ZERO, "to": fresh[0], "value": 5 * OPEN}]

    receipt = token.mint_batch(owner, [fresh[1], fresh[2], fresh[1]], [1, 2, 3])
    assert [(e["to"], e["value"]) for e in token.events(receipt, "Transfer")] == [
        (fresh[1], 1),
        (fresh[2], 2),
        (fresh[1], 3),
    ]
    assert [token.balance_of(a) for a in fresh] == [5 * OPEN, 4, 2]
    assert token.total_supply() == supply + 5 * OPEN + 6

    with reverts("LengthMismatch"):
        token.mint_batch(owner, fresh, [1, 2])
    with reverts("OwnableUnauthorizedAccount", accounts[1].address):
        token.mint(accounts[1], accounts[1].address, 1)
    with reverts("OwnableUnauthorizedAccount", accounts[1].address):
        token.mint_batch(accounts[1], [accounts[1].address], [1])
    assert token.total_supply() == supply + 5 * OPEN + 6


def test_transfer_approve_and_transfer_from(accounts, contracts):
    token = contracts.token
    alice, bob, carol = accounts[1], accounts[2], accounts[3]

    receipt = token.transfer(alice, bob.address, 7 * OPEN)
    assert token.events(receipt, "Transfer") == [{"from": alice.address, "to": bob.address, "value": 7 * OPEN}]
    assert token.balance_of(alice.address) == FUNDED_WEI - 7 * OPEN
    assert token.balance_of(bob.address) == FUNDED_WEI + 7 * OPEN

    receipt = token.approve(alice, carol.address, 3 * OPEN)
    assert token.events(receipt, "Approval") == [{"owner": alice.address, "spender": carol.address, "value": 3 * OPEN}]
    assert token.allowance(alice.address, carol.address) == 3 * OPEN

    receipt = _send(token, carol, "transferFrom", alice.address, bob.address, 2 * OPEN)
    assert token.events(receipt, "Transfer") == [{"from": alice.address, "to": bob.address, "value": 2 * OPEN}]
    assert token.allowance(alice.address, carol.address) == OPEN
    assert token.balance_of(bob.address) == FUNDED_WEI + 9 * OPEN

    with reverts("ERC20InsufficientAllowance", carol.address, OPEN, OPEN + 1):
        _send(token, carol, "transferFrom", alice.address, bob.address, OPEN + 1)
    with reverts("ERC20InsufficientBalance", bob.address, FUNDED_WEI + 9 * OPEN, FUNDED_WEI + 10 * OPEN):
        token.transfer(bob, alice.address, FUNDED_WEI + 10 * OPEN)
    with reverts("ERC20InvalidReceiver", ZERO):
        token.transfer(alice, ZERO, 1)
    with reverts("ERC20InvalidSpender", ZERO):
        token.approve(alice, ZERO, 1)

    # An unlimited allowance is never spent down.
    token.approve(alice, carol.address, MAX_UINT256)
    _send(token, carol, "transferFrom", alice.address, carol.address, OPEN)
    assert token.allowance(alice.address, carol.address) == MAX_UINT256


def test_permit_sets_an_allowance_from_a_signature(chain, accounts, contracts):
    token = contracts.token
    holder, spender, relayer = accounts[1], accounts[2], accounts[5]
    deadline = _now(chain) + 3600
    assert _call(token, "nonces", holder.address) == 0

    v, r, s = _permit(token, holder, spender.address, 4 * OPEN, deadline)
    receipt = _send(token, relayer, "permit", holder.address, spender.address, 4 * OPEN, deadline, v, r, s)
    assert token.events(receipt, "Approval") == [
        {"owner": holder.address, "spender": spender.address, "value": 4 * OPEN}
    ]
    assert token.allowance(holder.address, spender.address) == 4 * OPEN
    assert _call(token, "nonces", holder.address) == 1

    # Submitting the same permit again: the nonce moved on, so it recovers to some other signer.
    with reverts("ERC2612InvalidSigner"):
        _send(token, relayer, "permit", holder.address, spender.address, 4 * OPEN, deadline, v, r, s)

    v, r, s = _permit(token, holder, spender.address, OPEN, deadline, signer=spender)
    with reverts("ERC2612InvalidSigner", spender.address, holder.address):
        _send(token, relayer, "permit", holder.address, spender.address, OPEN, deadline, v, r, s)

    expired = _now(chain) - 1
    v, r, s = _permit(token, holder, spender.address, OPEN, expired)
    with reverts("ERC2612ExpiredSignature", expired):
        _send(token, relayer, "permit", holder.address, spender.address, OPEN, expired, v, r, s)
    assert token.allowance(holder.address, spender.address) == 4 * OPEN
    assert _call(token, "nonces", holder.address) == 1


def test_transfer_with_authorization_moves_tokens_once(chain, accounts, contracts):
    token = contracts.token
    payer, payee, relayer = accounts[1], accounts[2], accounts[5]
    nonce = keccak(text="authorization 1")
    window = (_now(chain) - 60, _now(chain) + 3600)
    assert _call(token, "authorizationState", payer.address, nonce) is False

    v, r, s = _authorization(token, "TransferWithAuthorization", payer, payee.address, 3 * OPEN, *window, nonce)
    args = (payer.address, payee.address, 3 * OPEN, *window, nonce, v, r, s)
    receipt = _send(token, relayer, "transferWithAuthorization", *args)
    assert token.events(receipt, "AuthorizationUsed") == [{"authorizer": payer.address, "nonce": nonce}]
    assert token.events(receipt, "Transfer") == [{"from": payer.address, "to": payee.address, "value": 3 * OPEN}]
    assert token.balance_of(payer.address) == FUNDED_WEI - 3 * OPEN
    assert token.balance_of(payee.address) == FUNDED_WEI + 3 * OPEN
    assert token.balance_of(relayer.address) == FUNDED_WEI
    assert _call(token, "authorizationState", payer.address, nonce) is True

    with reverts("ERC3009UsedAuthorization", payer.address, nonce):
        _send(token, relayer, "transferWithAuthorization", *args)

    # Signed by someone else than `from`.
    other = keccak(text="authorization 2")
    v, r, s = _authorization(token, "TransferWithAuthorization", payee, payee.address, OPEN, *window, other)
    with reverts("ERC3009InvalidSignature"):
        _send(token, relayer, "transferWithAuthorization", payer.address, payee.address, OPEN, *window, other, v, r, s)
    assert token.balance_of(payer.address) == FUNDED_WEI - 3 * OPEN


def test_authorization_is_valid_only_inside_its_time_window(chain, accounts, contracts):
    token = contracts.token
    payer, payee, relayer = accounts[1], accounts[2], accounts[5]
    now = _now(chain)

    early = keccak(text="early")
    window = (now + 600, now + 3600)
    v, r, s = _authorization(token, "TransferWithAuthorization", payer, payee.address, OPEN, *window, early)
    args = (payer.address, payee.address, OPEN, *window, early, v, r, s)
    with reverts("ERC3009InvalidAuthorizationTime", *window):
        _send(token, relayer, "transferWithAuthorization", *args)
    chain.dev.increase_time(900)
    _send(token, relayer, "transferWithAuthorization", *args)
    assert token.balance_of(payee.address) == FUNDED_WEI + OPEN

    late = keccak(text="late")
    window = (0, _now(chain))
    v, r, s = _authorization(token, "TransferWithAuthorization", payer, payee.address, OPEN, *window, late)
    with reverts("ERC3009InvalidAuthorizationTime", *window):
        _send(token, relayer, "transferWithAuthorization", payer.address, payee.address, OPEN, *window, late, v, r, s)
    assert _call(token, "authorizationState", payer.address, late) is False


def test_receive_with_authorization_only_by_the_receiver(chain, accounts, contracts):
    token = contracts.token
    payer, payee, relayer = accounts[1], accounts[2], accounts[5]
    nonce = keccak(text="receive")
    window = (0, _now(chain) + 3600)
    v, r, s = _authorization(token, "ReceiveWithAuthorization", payer, payee.address, 2 * OPEN, *window, nonce)
    args = (payer.address, payee.address, 2 * OPEN, *window, nonce, v, r, s)

    with reverts("ERC20InvalidReceiver", payee.address):
        _send(token, relayer, "receiveWithAuthorization", *args)
    receipt = _send(token, payee, "receiveWithAuthorization", *args)
    assert token.events(receipt, "AuthorizationUsed") == [{"authorizer": payer.address, "nonce": nonce}]
    assert token.balance_of(payee.address) == FUNDED_WEI + 2 * OPEN
    with reverts("ERC3009UsedAuthorization", payer.address, nonce):
        _send(token, payee, "receiveWithAuthorization", *args)

    # A TransferWithAuthorization signature does not pass as a ReceiveWithAuthorization one.
    nonce = keccak(text="wrong type")
    v, r, s = _authorization(token, "TransferWithAuthorization", payer, payee.address, OPEN, *window, nonce)
    with reverts("ERC3009InvalidSignature"):
        _send(token, payee, "receiveWithAuthorization", payer.address, payee.address, OPEN, *window, nonce, v, r, s)


def test_cancel_authorization_burns_the_nonce(chain, accounts, contracts):
    token = contracts.token
    payer, payee, relayer = accounts[1], accounts[2], accounts[5]
    nonce = keccak(text="cancelled")
    window = (0, _now(chain) + 3600)
    transfer_sig = _authorization(token, "TransferWithAuthorization", payer, payee.address, OPEN, *window, nonce)
    v, r, s = _sign_typed(
        payer, token, "CancelAuthorization", _CANCEL_TYPE, {"authorizer": payer.address, "nonce": nonce}
    )

    forged = _sign_typed(
        payee, token, "CancelAuthorization", _CANCEL_TYPE, {"authorizer": payer.address, "nonce": nonce}
    )
    with reverts("ERC3009InvalidSignature"):
        _send(token, relayer, "cancelAuthorization", payer.address, nonce, *forged)

    receipt = _send(token, relayer, "cancelAuthorization", payer.address, nonce, v, r, s)
    assert token.events(receipt, "AuthorizationCanceled") == [{"authorizer": payer.address, "nonce": nonce}]
    assert _call(token, "authorizationState", payer.address, nonce) is True
    with reverts("ERC3009UsedAuthorization", payer.address, nonce):
        _send(
            token,
            relayer,
            "transferWithAuthorization",
            payer.address,
            payee.address,
            OPEN,
            *window,
            nonce,
            *transfer_sig,
        )
    with reverts("ERC3009UsedAuthorization", payer.address, nonce):
        _send(token, relayer, "cancelAuthorization", payer.address, nonce, v, r, s)
    assert token.balance_of(payee.address) == FUNDED_WEI


def test_ownership_transfer_and_renounce(accounts, contracts):
    token = contracts.token
    owner, successor = accounts[0], accounts[4]

    with reverts("OwnableUnauthorizedAccount", successor.address):
        _send(token, successor, "transferOwnership", successor.address)
    with reverts("OwnableInvalidOwner", ZERO):
        _send(token, owner, "transferOwnership", ZERO)

    receipt = _send(token, owner, "transferOwnership", successor.address)
    assert token.events(receipt, "OwnershipTransferred") == [
        {"previousOwner": owner.address, "newOwner": successor.address}
    ]
    assert _call(token, "owner") == successor.address
    token.mint(successor, successor.address, 1)
    with reverts("OwnableUnauthorizedAccount", owner.address):
        token.mint(owner, owner.address, 1)

    receipt = _send(token, successor, "renounceOwnership")
    assert token.events(receipt, "OwnershipTransferred") == [{"previousOwner": successor.address, "newOwner": ZERO}]
    assert _call(token, "owner") == ZERO
    with reverts("OwnableUnauthorizedAccount", successor.address):
        token.mint(successor, successor.address, 1)
