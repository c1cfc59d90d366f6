"""The standard development accounts (anvil's and hardhat's mnemonic) used by every dev chain."""

from __future__ import annotations

from functools import cache

from eth_account import Account
from eth_account.signers.local import LocalAccount

DEV_MNEMONIC = "test test test test test test test test test test test junk"
"""Public test mnemonic: never hold real funds with these keys."""

DEV_ACCOUNT_COUNT = 10
DEV_HD_PATH = "m/44'/60'/0'/0"


@cache
def dev_accounts(count: int = DEV_ACCOUNT_COUNT) -> tuple[LocalAccount, ...]:
    """Returns the first `count` accounts of DEV_MNEMONIC on the path m/44'/60'/0'/0/i."""
    if count < 1:
        raise ValueError("count must be at least 1")
    Account.enable_unaudited_hdwallet_features()
    return tuple(
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"{DEV_HD_PATH}/{i}") for i in range(count)
    )
