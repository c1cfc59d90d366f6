"""The SQLite ledger: reservations, receipts, idempotency, crash recovery and settlement batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from loraledger.runtime.billing.ledger import (
    CallState,
    ChannelBusy,
    IdempotencyConflict,
    Ledger,
    LedgerError,
    StaleVoucher,
)

CH1, CH2 = "0x" + "11" * 32, "0x" + "22" * 32
ADAPTER_A, ADAPTER_B = "0x" + "aa" * 32, "0x" + "bb" * 32


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger(tmp_path / "ledger.sqlite")
    yield led
    led.close()


def reserve(ledger: Ledger, call_id: str, channel: str = CH1, *, voucher: int, budget: int, key: str | None = None,
            adapter_id: str = ADAPTER_A):
    return ledger.reserve(
        call_id=call_id, idempotency_key=key or f"key-{call_id}", request_hash="0xreq", channel_id=channel,
        adapter="a", adapter_id=adapter_id, voucher_amount=voucher, voucher_call_hash="0x" + "01" * 32,
        voucher_signature="0xsig-" + call_id, budget=budget,
    )  # fmt: skip


def charge(ledger: Ledger, call_id: str, amount: int, cumulative: int):
    return ledger.charge(
        call_id, amount=amount, input_tokens=3, output_tokens=5,
        receipt={"amount": str(amount), "cumulativeAmount": str(cumulative)}, receipt_signature="0xrs",
        attribution={"method": "data_shares"}, response={"id": call_id},
    )  # fmt: skip


def test_reserve_charge_moves_the_channel_total(ledger):
    call = reserve(ledger, "c1", voucher=100, budget=100)
    assert call.state is CallState.RESERVED
    assert ledger.channel(CH1).reserved_call_id == "c1"
    done = charge(ledger, "c1", 60, 60)
    assert (done.state, done.amount, done.cumulative, done.response) == (CallState.CHARGED, 60, 60, {"id": "c1"})
    assert ledger.channel(CH1) == type(ledger.channel(CH1))(CH1, 60, 0, None)
    # The next voucher must raise the total above 60 and cover its budget.
    with pytest.raises(StaleVoucher) as stale:
        reserve(ledger, "c2", voucher=60, budget=1)
    assert stale.value.charged == 60
    with pytest.raises(StaleVoucher):
        reserve(ledger, "c2", voucher=100, budget=41)
    reserve(ledger, "c2", voucher=100, budget=40)
    charge(ledger, "c2", 40, 100)
    assert ledger.totals().charged_amount == 100


def test_amounts_beyond_64_bits_are_exact(ledger):
    big = 3 * 10**30  # uint128 range; SQLite integers stop at 2**63
    reserve(ledger, "c1", voucher=big, budget=big)
    charge(ledger, "c1", big - 7, big - 7)
    assert ledger.channel(CH1).charged == big - 7
    assert ledger.unsettled_amount() == big - 7


def test_one_reservation_in_flight_per_channel(ledger):
    reserve(ledger, "c1", voucher=10, budget=10)
    with pytest.raises(ChannelBusy):
        reserve(ledger, "c2", voucher=20, budget=10)
    reserve(ledger, "c3", CH2, voucher=10, budget=10)  # another lane is free
    ledger.release("c1", "engine error")
    assert ledger.call("c1").state is CallState.RELEASED
    reserve(ledger, "c2", voucher=10, budget=10)


def test_a_charge_must_match_its_reservation(ledger):
    reserve(ledger, "c1", voucher=10, budget=10)
    with pytest.raises(LedgerError, match="budget"):
        charge(ledger, "c1", 11, 11)
    with pytest.raises(LedgerError, match="does not match"):
        charge(ledger, "c1", 5, 6)
    assert ledger.call("c1").state is CallState.RESERVED  # refused charges changed nothing
    charge(ledger, "c1", 5, 5)
    with pytest.raises(LedgerError, match="no open reservation"):
        charge(ledger, "c1", 5, 10)
    assert ledger.channel(CH1).charged == 5


def test_idempotency_keys(ledger):
    reserve(ledger, "c1", voucher=10, budget=10, key="k")
    with pytest.raises(IdempotencyConflict):
        reserve(ledger, "c2", CH2, voucher=10, budget=10, key="k")
    assert ledger.call_by_key("k").call_id == "c1"
    # A released call charged nothing: a retry with its key gets a fresh reservation.
    ledger.release("c1", "client went away")
    reserve(ledger, "c3", voucher=10, budget=10, key="k")
    assert ledger.call_by_key("k").call_id == "c3"
    assert ledger.call("c1").state is CallState.RELEASED
    charge(ledger, "c3", 4, 4)
    with pytest.raises(IdempotencyConflict):
        reserve(ledger, "c4", voucher=20, budget=10, key="k")


def test_settlement_batches_claim_the_latest_cumulative_and_split_revenue_by_adapter(ledger):
    reserve(ledger, "a1", CH1, voucher=10, budget=10)
    charge(ledger, "a1", 7, 7)
    reserve(ledger, "b1", CH2, voucher=5, budget=5, adapter_id=ADAPTER_B)
    charge(ledger, "b1", 5, 5)
    reserve(ledger, "a2", CH1, voucher=20, budget=13, adapter_id=ADAPTER_B)
    charge(ledger, "a2", 3, 10)
    reserve(ledger, "a3", CH1, voucher=30, budget=20)  # in flight: not in the batch
    batch = ledger.open_settlement()
    assert batch.claims == {CH1: (10, 20, "0x" + "01" * 32, "0xsig-a2"), CH2: (5, 5, "0x" + "01" * 32, "0xsig-b1")}
    assert batch.revenue == {ADAPTER_A: 7, ADAPTER_B: 8}
    assert batch.total == 15 == sum(amount - 0 for amount, *_ in batch.claims.values())
    assert ledger.open_settlement().id == batch.id  # pending: resumed, not duplicated
    ledger.settlement_failed(batch.id, "rpc down")
    assert ledger.open_settlement().attempts == 1
    ledger.settle(batch.id, "0xtx")
    assert ledger.settlement_of("a2") == (batch.id, "0xtx", "settled")
    assert ledger.unsettled_amount() == 0
    charge(ledger, "a3", 2, 12)
    nxt = ledger.open_settlement()
    assert nxt.claims == {CH1: (12, 30, "0x" + "01" * 32, "0xsig-a3")} and nxt.revenue == {ADAPTER_A: 2}
    assert ledger.unsettled_amount(CH1) == 2


_CRASHER = textwrap.dedent(
    """
    import sys
    from loraledger.runtime.billing.ledger import Ledger
    ledger = Ledger(sys.argv[1])
    i = 0
    while True:
        call = f"c{i}"
        ledger.reserve(call_id=call, idempotency_key=call, request_hash="h", channel_id="0x01", adapter="a",
                       adapter_id="0x00", voucher_amount=(i + 1) * 10, voucher_call_hash="0x", voucher_signature="0x",
                       budget=10)
        if i == 3:
            print("ready", flush=True)
        ledger.charge(call, amount=10, input_tokens=1, output_tokens=1,
                      receipt={"amount": "10", "cumulativeAmount": str((i + 1) * 10)}, receipt_signature="0x",
                      attribution={}, response={})
        i += 1
    """
)


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing_and_charges_nothing_without_a_receipt(tmp_path):
    path = tmp_path / "ledger.sqlite"
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(path)], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.1 * round_)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ledger = Ledger(path)
        ledger.recover()
        totals = ledger.totals()
        assert totals.reserved_calls == 0
        assert totals.charged_calls >= 4
        # The channel's total is exactly the sum of its receipts: charge() is atomic across the two tables.
        assert ledger.channel("0x01").charged == totals.charged_amount == 10 * totals.charged_calls
        assert ledger.channel("0x01").reserved_call_id is None
        ledger.close()
        if round_ < 2:  # the next round starts numbering afresh; give it a fresh channel history
            path.unlink()
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
