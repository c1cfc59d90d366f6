"""An agent written from DESIGN.md's protocol reference alone — web3.py, eth-account and httpx, no loraledger code —
that opens a channel on the runtime's own chain and pays for calls. If this agent can pay, the wire is the spec."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data
from web3 import Web3
from web3.logs import DISCARD

ARTIFACTS = Path(__file__).resolve().parents[3] / "sdk" / "chain" / "artifacts"
DEV_KEYS = [
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
]
VOUCHER_TYPES = {"Voucher": [{"name": "channelId", "type": "bytes32"}, {"name": "cumulativeAmount", "type": "uint128"},
                             {"name": "callHash", "type": "bytes32"}]}  # fmt: skip
RECEIPT_TYPES = {"Receipt": [
    {"name": "callId", "type": "bytes32"}, {"name": "channelId", "type": "bytes32"}, {"name": "adapterId", "type": "bytes32"},
    {"name": "inputTokens", "type": "uint32"}, {"name": "outputTokens", "type": "uint32"},
    {"name": "amount", "type": "uint128"}, {"name": "cumulativeAmount", "type": "uint128"},
    {"name": "callHash", "type": "bytes32"}, {"name": "outputHash", "type": "bytes32"},
    {"name": "attributionHash", "type": "bytes32"}]}  # fmt: skip


def b64(obj) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def unb64(value: str):
    return json.loads(base64.b64decode(value))


@dataclass
class Agent:
    url: str
    payer_key: str = DEV_KEYS[1]
    session_key: str = DEV_KEYS[2]
    charged: int = 0
    channel: dict = field(default_factory=dict)
    channel_id: bytes = b""

    def __post_init__(self):
        self.http = httpx.Client(base_url=self.url, timeout=120)
        chain = self.http.get("/v1/chain").json()
        self.w3 = Web3(Web3.HTTPProvider(chain["rpcUrl"]))
        self.chain_id = chain["chainId"]
        abi = {n: json.loads((ARTIFACTS / f"{n}.json").read_text())["abi"] for n in ("OpenToken", "PaymentChannels")}
        self.token = self.w3.eth.contract(address=chain["contracts"]["OpenToken"], abi=abi["OpenToken"])
        self.channels = self.w3.eth.contract(address=chain["contracts"]["PaymentChannels"], abi=abi["PaymentChannels"])
        self.payer = Account.from_key(self.payer_key)
        self.session = Account.from_key(self.session_key)
        self.domain = {"name": "loraledger", "version": "1", "chainId": self.chain_id,
                       "verifyingContract": self.channels.address}  # fmt: skip

    def send(self, fn):
        tx = fn.build_transaction({"from": self.payer.address, "nonce": self.w3.eth.get_transaction_count(self.payer.address)})
        h = self.w3.eth.send_raw_transaction(self.payer.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(h)
        assert receipt.status == 1
        return receipt

    def open(self, payee: str, deposit: int, withdraw_delay: int = 600) -> bytes:
        salt = os.urandom(32)
        config = (self.payer.address, self.session.address, payee, self.token.address, withdraw_delay, salt)
        self.send(self.token.functions.approve(self.channels.address, deposit))
        receipt = self.send(self.channels.functions.open(config, deposit))
        self.channel_id = bytes(self.channels.events.ChannelOpened().process_receipt(receipt, errors=DISCARD)[0].args.channelId)
        self.channel = {"payer": self.payer.address, "payerAuthorizer": self.session.address, "payee": payee,
                        "token": self.token.address, "withdrawDelay": withdraw_delay, "salt": "0x" + salt.hex()}  # fmt: skip
        return self.channel_id

    def payment(self, accepted: dict, cumulative: int, key: str, call_hash: bytes | None = None) -> str:
        voucher = {"channelId": self.channel_id, "cumulativeAmount": cumulative, "callHash": call_hash or os.urandom(32)}
        sig = self.session.sign_typed_data(self.domain, VOUCHER_TYPES, voucher).signature
        return b64({
            "x402Version": 2, "accepted": accepted,
            "payload": {"channel": self.channel,
                        "voucher": {"channelId": "0x" + self.channel_id.hex(), "cumulativeAmount": str(cumulative),
                                    "callHash": "0x" + voucher["callHash"].hex()},
                        "signature": "0x" + bytes(sig).hex()},
            "extensions": {"payment-identifier": {"info": {"id": key}}},
        })  # fmt: skip

    def call(self, path: str, body: dict, key: str | None = None, cumulative: int | None = None) -> httpx.Response:
        """The x402 dance: unpaid try → 402 → pay charged + max → retry; returns the paid response."""
        first = self.http.post(path, json=body)
        if first.status_code != 402:
            return first
        required = unb64(first.headers["PAYMENT-REQUIRED"])
        accepted = required["accepts"][0]
        amount = int(accepted["amount"])
        key = key or "k" + os.urandom(12).hex()
        target = self.charged + amount if cumulative is None else cumulative
        response = self.http.post(path, json=body, headers={"PAYMENT-SIGNATURE": self.payment(accepted, target, key)})
        if response.status_code == 200:
            settle = unb64(response.headers["PAYMENT-RESPONSE"])
            self.charged = int(settle["extra"]["chargedCumulativeAmount"])
        return response

    def receipt_signer(self, receipt: dict, signature: str) -> str:
        message = {k: (bytes.fromhex(v[2:]) if isinstance(v, str) and v.startswith("0x") else int(v))
                   for k, v in receipt.items() if k != "signature"}  # fmt: skip
        signable = encode_typed_data(self.domain, RECEIPT_TYPES, message)
        return Account.recover_message(signable, signature=bytes.fromhex(signature[2:]))
