"""An outside agent written against DESIGN.md's protocol reference alone: plain web3.py and eth-account.

Usage: python outside_agent.py DEPLOYMENTS_JSON ARTIFACTS_DIR
Opens a channel from dev account 1 (session key: dev account 2) to the operator (dev account 0), signs a
voucher, lets the operator claim part of it, and prints the resulting channel state as JSON.
"""

import json
import sys
from pathlib import Path

from eth_account import Account
from web3 import Web3

OPERATOR_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
SESSION_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"

deployments = json.loads(Path(sys.argv[1]).read_text())
artifacts = Path(sys.argv[2])
w3 = Web3(Web3.HTTPProvider(deployments["rpcUrl"]))
assert w3.eth.chain_id == deployments["chainId"]
abi = {n: json.loads((artifacts / f"{n}.json").read_text())["abi"] for n in ("OpenToken", "PaymentChannels")}
token = w3.eth.contract(address=deployments["contracts"]["OpenToken"], abi=abi["OpenToken"])
channels = w3.eth.contract(address=deployments["contracts"]["PaymentChannels"], abi=abi["PaymentChannels"])
operator, payer, session = (Account.from_key(k) for k in (OPERATOR_KEY, PAYER_KEY, SESSION_KEY))


def send(account, fn):
    tx = fn.build_transaction({"from": account.address, "nonce": w3.eth.get_transaction_count(account.address)})
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))
    assert receipt.status == 1, receipt
    return receipt


deposit = 5 * 10**18
config = (payer.address, session.address, operator.address, token.address, 600, b"\x42" * 32)
send(payer, token.functions.approve(channels.address, deposit))
opened = channels.events.ChannelOpened().process_receipt(send(payer, channels.functions.open(config, deposit)))
channel_id = opened[0].args.channelId

domain = {"name": "loraledger", "version": "1", "chainId": w3.eth.chain_id, "verifyingContract": channels.address}
voucher_types = {
    "Voucher": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "cumulativeAmount", "type": "uint128"},
        {"name": "callHash", "type": "bytes32"},
    ]
}
voucher = {"channelId": channel_id, "cumulativeAmount": 3 * 10**17, "callHash": b"\x07" * 32}
signature = session.sign_typed_data(domain, voucher_types, voucher).signature
claim = (channel_id, voucher["cumulativeAmount"], 2 * 10**17, voucher["callHash"], signature)
send(operator, channels.functions.claim([claim], [(b"\x00" * 32, 2 * 10**17)]))
config_, deposited, claimed, requested_at, closed = channels.functions.getChannel(channel_id).call()
print(json.dumps({
    "channelId": "0x" + bytes(channel_id).hex(),
    "deposited": deposited,
    "claimed": claimed,
    "operatorEarnings": channels.functions.earnings(operator.address).call(),
    "closed": closed,
}))
