"""Shared fixtures: one chain test suite run against the embedded EVM and a real anvil node on loopback."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraledger.sdk.chain.accounts import dev_accounts
from loraledger.sdk.chain.artifacts import artifact_from_json
from loraledger.sdk.chain.contracts import Contracts, deploy_contracts
from loraledger.sdk.chain.provider import Chain, anvil_chain, embedded_chain, find_anvil

REPO = Path(__file__).resolve().parents[1]
TEST_ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

BACKENDS = [
    pytest.param("embedded", id="embedded"),
    pytest.param("anvil", id="anvil", marks=[pytest.mark.anvil, pytest.mark.integration]),
]


def _start(backend: str) -> Chain:
    if backend == "embedded":
        return embedded_chain()
    binary = find_anvil(REPO)
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("anvil is not installed (make test installs it with npm)")
        pytest.skip("anvil is not installed: run `npm ci`")
    return anvil_chain(binary=binary)


@pytest.fixture(scope="session", params=BACKENDS)
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    """A dev chain (embedded or anvil) shared by the session; tests isolate through `contracts`."""
    c = _start(request.param)
    yield c
    c.close()


@pytest.fixture(scope="session")
def accounts():
    """The ten dev accounts: 0 deploys and operates, the others play payers, owners and contributors."""
    return dev_accounts()


@pytest.fixture(scope="session")
def deployed(chain: Chain, accounts) -> Contracts:
    return deploy_contracts(chain, accounts[0], fund=[a.address for a in accounts])


@pytest.fixture
def contracts(chain: Chain, deployed: Contracts) -> Iterator[Contracts]:
    """The deployed contracts, with the chain rolled back to the deployment after the test."""
    snapshot = chain.dev.snapshot()
    yield deployed
    chain.dev.revert(snapshot)


def load_test_artifact(name: str):
    """A test-only contract compiled from contracts/test (see contracts/script/build.py)."""
    return artifact_from_json(json.loads((TEST_ARTIFACTS / f"{name}.json").read_text()))


class Payments:
    """Test helper over the deployed contracts: open channels and sign vouchers as a payer would."""

    def __init__(self, contracts: Contracts):
        self.contracts = contracts
        self._salt = 0

    def open(self, payer, session, payee, amount: int, *, withdraw_delay_s: int = 3600, salt: bytes | None = None):
        """Approves and opens a channel; returns (channel id, config)."""
        from loraledger.sdk.vouchers import ChannelConfig

        if salt is None:
            self._salt += 1
            salt = self._salt.to_bytes(32, "big")
        config = ChannelConfig(
            payer.address, session.address, payee.address, self.contracts.token.address, withdraw_delay_s, salt
        )
        self.contracts.token.approve(payer, self.contracts.channels.address, amount)
        return self.contracts.channels.open(payer, config, amount), config

    def voucher(self, session, channel_id: bytes, cumulative: int, *, claim: int | None = None, call_hash=None):
        """A Claim of `claim` (default: the whole voucher) under a voucher for `cumulative`, signed by `session`."""
        from loraledger.sdk.chain.contracts import Claim
        from loraledger.sdk.vouchers import Voucher, sign_voucher

        call_hash = call_hash or os.urandom(32)
        voucher = Voucher(channel_id, cumulative, call_hash)
        signature = sign_voucher(session, self.contracts.channels.domain, voucher)
        return Claim(channel_id, cumulative, cumulative if claim is None else claim, call_hash, signature)


@pytest.fixture
def payments(contracts: Contracts) -> Payments:
    return Payments(contracts)
