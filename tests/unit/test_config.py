"""`loraledger serve` settings: every option from the command line or a LORALEDGER_* variable, validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from loraledger.runtime.config import ServeSettings


def test_environment_fallbacks_and_command_line_precedence(monkeypatch):
    monkeypatch.setenv("LORALEDGER_MODEL", "/models/llama")
    monkeypatch.setenv("LORALEDGER_PORT", "9001")
    monkeypatch.setenv("LORALEDGER_OPERATOR_KEY", "0x" + "11" * 32)
    monkeypatch.setenv("LORALEDGER_DEFAULT_PRICE", "7")
    s = ServeSettings(port=9002)
    assert (s.model, s.port, s.default_price) == (Path("/models/llama"), 9002, 7)
    assert s.operator_key.get_secret_value() == "0x" + "11" * 32
    assert "11" * 32 not in repr(s)  # keys never reach logs
    assert s.embedded_chain and s.settle_batch_calls == 1
    rpc = ServeSettings(model=Path("m"), chain="http://127.0.0.1:8545")
    assert not rpc.embedded_chain and rpc.settle_batch_calls == 100


@pytest.mark.parametrize(
    ("field", "value"),
    [("chain", "ftp://nope"), ("device", "tpu"), ("port", 70000), ("default_price", -1), ("unknown_option", 1)],
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValidationError):
        ServeSettings(model=Path("m"), **{field: value})
