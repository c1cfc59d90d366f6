"""The runtime's chain: the embedded dev chain it runs itself, or a JSON-RPC chain it was pointed at."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.contracts import Contracts, Deployments, deploy_contracts
from loraledger.sdk.chain.devchain import DEV_OPEN_PER_ACCOUNT
from loraledger.sdk.chain.provider import Chain, embedded_chain, rpc_chain

from ..config import ServeSettings

__all__ = ["RuntimeChain", "connect"]

logger = logging.getLogger(__name__)


@dataclass
class RuntimeChain:
    chain: Chain
    contracts: Contracts
    operator: LocalAccount
    embedded: bool

    @property
    def deployments(self) -> Deployments:
        return self.contracts.deployments

    def close(self) -> None:
        self.chain.close()


def connect(settings: ServeSettings) -> RuntimeChain:
    """Starts the embedded dev chain (contracts deployed, dev accounts funded; the operator is dev account 0
    unless a key is given) or connects to `settings.chain` with the contracts of `settings.deployments`."""
    operator: LocalAccount | None = None
    if settings.operator_key is not None:
        operator = Account.from_key(settings.operator_key.get_secret_value())
    if settings.embedded_chain:
        keys = dev_accounts()
        chain = embedded_chain(len(keys))
        contracts = deploy_contracts(
            chain, keys[0], fund=[k.address for k in keys], fund_amount=DEV_OPEN_PER_ACCOUNT
        )
        if operator is not None and operator.address != keys[0].address:
            chain.transfer_eth(keys[0], operator.address, 100 * 10**18)  # gas for its claims
        return RuntimeChain(chain, contracts, operator or keys[0], embedded=True)
    if settings.deployments is None:
        raise ValueError("a JSON-RPC chain needs --deployments (the file `loraledger chain` writes)")
    if operator is None:
        raise ValueError("a JSON-RPC chain needs --operator-key (or LORALEDGER_OPERATOR_KEY)")
    chain = rpc_chain(settings.chain)
    deployments = Deployments.load(settings.deployments)
    return RuntimeChain(chain, Contracts(chain, deployments), operator, embedded=False)
