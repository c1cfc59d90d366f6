"""EIP-712 typed data of the payment protocol: digests, signatures and their binding to chain and contract."""

import dataclasses
import os

import pytest
from eth_account import Account

from loraledger.sdk.vouchers import (
    ChannelConfig,
    Domain,
    Receipt,
    Voucher,
    adapter_id,
    channel_id,
    recover_receipt_signer,
    recover_voucher_signer,
    sign_receipt,
    sign_voucher,
    typed_data_digest,
)

CONTRACT = "0xCf7Ed3AccA5a467e9e704C703E8D87F634fB0Fc9"


def _config(**overrides):
    fields = dict(
        payer="0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        payer_authorizer="0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
        payee="0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        token="0x5FbDB2315678afecb367f032d93F642f64180aa3",
        withdraw_delay_s=3600,
        salt=b"\x01" * 32,
    )
    fields.update(overrides)
    return ChannelConfig(**fields)


def test_channel_id_binds_chain_contract_and_every_field():
    base = channel_id(Domain(31337, CONTRACT), _config())
    assert len(base) == 32
    assert channel_id(Domain(1, CONTRACT), _config()) != base
    assert channel_id(Domain(31337, "0x" + "12" * 20), _config()) != base
    for field, value in [("withdraw_delay_s", 3601), ("salt", b"\x02" * 32), ("payee", "0x" + "34" * 20)]:
        assert channel_id(Domain(31337, CONTRACT), _config(**{field: value})) != base


def test_voucher_signature_recovers_the_session_key_and_breaks_on_any_change():
    session = Account.create()
    domain = Domain(31337, CONTRACT)
    voucher = Voucher(os.urandom(32), 12_345, os.urandom(32))
    signature = sign_voucher(session, domain, voucher)
    assert len(signature) == 65
    assert recover_voucher_signer(domain, voucher, signature) == session.address
    changed = Voucher(voucher.channel_id, voucher.cumulative_amount + 1, voucher.call_hash)
    assert recover_voucher_signer(domain, changed, signature) != session.address
    assert recover_voucher_signer(Domain(1, CONTRACT), voucher, signature) != session.address


def test_receipt_signature_round_trip():
    operator = Account.create()
    domain = Domain(31337, CONTRACT)
    receipt = Receipt(os.urandom(32), os.urandom(32), adapter_id("sql"), 10, 20, 30, 300, *(os.urandom(32) for _ in range(3)))
    signature = sign_receipt(operator, domain, receipt)
    assert recover_receipt_signer(domain, receipt, signature) == operator.address
    inflated = dataclasses.replace(receipt, amount=receipt.amount + 1)
    assert recover_receipt_signer(domain, inflated, signature) != operator.address


def test_adapter_id_is_keccak_of_utf8_name():
    from Crypto.Hash import keccak  # pycryptodome: an implementation independent of eth-hash's backend

    for name in ["sql", "médecin-fr", ""]:
        assert adapter_id(name) == keccak.new(digest_bits=256, data=name.encode("utf-8")).digest()
    assert adapter_id("sql") != adapter_id("SQL")


def test_bad_bytes32_fields_are_rejected():
    with pytest.raises(ValueError, match="32 bytes"):
        Voucher(b"\x01" * 31, 1, b"\x00" * 32).as_message()


def test_only_the_signature_form_the_contract_accepts_recovers():
    import pytest
    from eth_account import Account

    from loraledger.sdk.vouchers import Domain, Voucher, recover_voucher_signer, sign_voucher

    key = Account.create()
    domain = Domain(31337, "0x" + "11" * 20)
    voucher = Voucher(b"\x01" * 32, 5, b"\x02" * 32)
    sig = sign_voucher(key, domain, voucher)
    assert recover_voucher_signer(domain, voucher, sig) == key.address
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = sig[:32] + (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big") + bytes([55 - sig[64]])
    for bad, why in ((high_s, "upper half"), (sig[:64] + bytes([sig[64] - 27]), "v must be"), (sig[:64], "65 bytes")):
        with pytest.raises(ValueError, match=why):
            recover_voucher_signer(domain, voucher, bad)


def test_the_hand_encoded_voucher_digest_equals_the_generic_encoder():
    import os

    from eth_account import Account

    from loraledger.sdk.vouchers import Domain, Voucher, recover_voucher_signer, sign_voucher
    from loraledger.sdk.vouchers import voucher_digest

    for _ in range(20):
        domain = Domain(int.from_bytes(os.urandom(4), "big") + 1, "0x" + os.urandom(20).hex())
        voucher = Voucher(os.urandom(32), int.from_bytes(os.urandom(16), "big"), os.urandom(32))
        assert voucher_digest(domain, voucher) == typed_data_digest(domain, "Voucher", voucher.as_message())
        key = Account.create()
        assert recover_voucher_signer(domain, voucher, sign_voucher(key, domain, voucher)) == key.address


def test_hand_encoded_receipts_sign_and_recover_like_eth_account():
    import os

    from eth_account import Account
    from eth_account.messages import encode_typed_data

    from loraledger.sdk.vouchers import TYPES, Domain, Receipt, receipt_digest, recover_receipt_signer, sign_receipt

    key = Account.create()
    for _ in range(10):
        domain = Domain(int.from_bytes(os.urandom(4), "big") + 1, "0x" + os.urandom(20).hex())
        r = Receipt(os.urandom(32), os.urandom(32), os.urandom(32), 17, 2**32 - 1, 10**24, 10**25, os.urandom(32),
                    os.urandom(32), os.urandom(32))  # fmt: skip
        assert receipt_digest(domain, r) == typed_data_digest(domain, "Receipt", r.as_message())
        sig = sign_receipt(key, domain, r)
        # eth-account's generic path recovers the same signer from our signature.
        full = {"types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                           {"name": "chainId", "type": "uint256"},
                                           {"name": "verifyingContract", "type": "address"}],
                          "Receipt": TYPES["Receipt"]},
                "primaryType": "Receipt", "domain": domain.as_dict(), "message": r.as_message()}  # fmt: skip
        assert Account.recover_message(encode_typed_data(full_message=full), signature=sig) == key.address
        assert recover_receipt_signer(domain, r, sig) == key.address
