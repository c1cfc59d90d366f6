"""The embedded chain is shared by threads (the runtime's settler and the /rpc it serves): it must serialise them."""

from __future__ import annotations

import threading

from web3 import Web3

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.provider import Chain, embedded_chain


def test_concurrent_transactions_through_separate_connections_all_land():
    # Each thread has its own Chain over the one provider, as the settler and the /rpc handler do: nothing above
    # the provider serialises them. Without the provider's lock this fails with "No block found for block hash".
    chain = embedded_chain(6)
    keys = dev_accounts(6)
    errors: list[BaseException] = []
    sent = 15

    def pay(sender, receiver) -> None:
        own = Chain(Web3(chain.w3.provider))
        try:
            for _ in range(sent):
                own.transfer_eth(sender, receiver.address, 1)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    before = [chain.w3.eth.get_balance(k.address) for k in keys[3:]]
    threads = [threading.Thread(target=pay, args=(keys[i], keys[3 + i])) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    after = [chain.w3.eth.get_balance(k.address) for k in keys[3:]]
    assert [a - b for a, b in zip(after, before, strict=True)] == [sent] * 3
    chain.close()
