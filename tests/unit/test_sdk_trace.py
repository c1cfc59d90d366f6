"""The reasoning log: hash chain, JSONL files, tamper detection, and anchoring its Merkle root on chain."""

from __future__ import annotations

import json

import pytest
from eth_utils import keccak

from loraledger.sdk import Trace, TraceVerificationError, call_hash
from loraledger.sdk.merkle import verify as verify_proof
from loraledger.sdk.trace import ZERO_HASH, TraceEntry, canonical


def _trace() -> Trace:
    trace = Trace()
    trace.append("thought", {"text": "The user wants last month's churn; I should query the warehouse."})
    trace.append("tool_call", {"tool": "sql-expert", "args": {"question": "churn in May"}})
    trace.append("tool_result", {"rows": [["2026-05", 0.031]], "amount": str(10**30)})
    trace.append("thought", {"text": "Churn is 3.1%."})
    trace.append("answer", {"text": "3.1% of customers left in May.", "unicode": "é ✓ 日本"})
    return trace


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_append_chains_entries_and_moves_the_head():
    trace = Trace()
    assert trace.head == ZERO_HASH and len(trace) == 0
    first = trace.append("thought", {"text": "a"})
    second = trace.append("thought", {"text": "a"})
    assert first.prev == ZERO_HASH and second.prev == first.hash and trace.head == second.hash
    assert first.hash != second.hash  # same content, different position
    assert first.hash == keccak(canonical({"index": 0, "kind": "thought", "data": {"text": "a"}, "prev": "0x" + "00" * 32}))
    trace.verify()
    trace.verify(head=second.hash, count=2)


def test_canonical_json_is_rfc8785():
    assert canonical({"b": 1, "a": [True, None, "é"], "c": 1.5}) == '{"a":[true,null,"é"],"b":1,"c":1.5}'.encode()
    with pytest.raises(ValueError):
        Trace().append("thought", {"too_big": 2**60})  # amounts go in as strings
    with pytest.raises(ValueError):
        Trace().append("", {})


def test_append_copies_its_data():
    data = {"list": [1]}
    trace = Trace()
    trace.append("observation", data)
    data["list"].append(2)
    trace.verify()
    assert trace[0].data == {"list": [1]}


def test_save_and_load_round_trip(tmp_path):
    trace = _trace()
    path = tmp_path / "trace.jsonl"
    trace.save(path)
    assert len(path.read_text().splitlines()) == 5
    loaded = Trace.load(path)
    assert loaded.head == trace.head and [e.to_json() for e in loaded] == [e.to_json() for e in trace]
    loaded.append("thought", {"text": "continued after loading"})
    loaded.verify()


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ("edit", 2),
        ("edit_kind", 1),
        ("edit_with_rehash", 3),
        ("reorder", 1),
        ("insert", 2),
        ("delete", 2),
        ("delete_first", 0),
    ],
)
def test_tampering_is_caught_at_the_first_bad_entry(tmp_path, tamper, first_bad):
    path = tmp_path / "trace.jsonl"
    _trace().save(path)
    lines = _lines(path)
    if tamper == "edit":
        lines[2]["data"]["rows"][0][1] = 0.001
    elif tamper == "edit_kind":
        lines[1]["kind"] = "thought"
    elif tamper == "edit_with_rehash":
        # A forger who recomputes the edited entry's own hash still breaks the link to the next one.
        lines[2]["data"]["rows"][0][1] = 0.001
        entry = lines[2]
        prev = bytes.fromhex(entry["prev"][2:])
        entry["hash"] = "0x" + TraceEntry.digest(entry["index"], entry["kind"], entry["data"], prev).hex()
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "insert":
        lines.insert(2, {**lines[1], "data": {"text": "an inserted thought"}})
    elif tamper == "delete":
        del lines[2]
    elif tamper == "delete_first":
        del lines[0]
    _write(path, lines)
    with pytest.raises(TraceVerificationError) as info:
        Trace.load(path)
    assert info.value.index == first_bad
    assert f"entry {first_bad}" in str(info.value)


def test_cutting_the_tail_is_caught_against_a_known_head_or_count(tmp_path):
    trace = _trace()
    path = tmp_path / "trace.jsonl"
    trace.save(path)
    _write(path, _lines(path)[:-1])
    cut = Trace.load(path)  # still a valid chain on its own
    with pytest.raises(TraceVerificationError, match="head") as info:
        cut.verify(head=trace.head)
    assert info.value.index == 4
    with pytest.raises(TraceVerificationError, match="expected 5"):
        cut.verify(count=5)


def test_a_garbled_line_names_its_entry(tmp_path):
    path = tmp_path / "trace.jsonl"
    _trace().save(path)
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(TraceVerificationError) as info:
        Trace.load(path)
    assert info.value.index == 5


def test_merkle_root_and_proofs():
    trace = _trace()
    root = trace.root()
    for i, entry in enumerate(trace):
        assert verify_proof(root, entry.leaf(), trace.proof(i))
    assert trace.root(3) != root
    with pytest.raises(ValueError):
        Trace().root()


def test_call_hash_binds_request_and_trace_head():
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5}
    base = call_hash(request)
    assert base == keccak(canonical({"request": request, "traceHead": "0x" + "00" * 32}))
    assert call_hash(dict(reversed(list(request.items())))) == base  # canonical: key order does not matter
    assert call_hash({**request, "temperature": 0.6}) != base
    assert call_hash(request, b"\x01" * 32) != base


# ---------------------------------------------------------------------------------------------- on chain


def test_anchor_and_verify_a_saved_log(contracts, accounts, tmp_path):
    agent = accounts[1]
    trace = _trace()
    anchored = trace.anchor(contracts.anchor, agent)
    assert anchored.root == trace.root() and anchored.count == 5 and anchored.agent == agent.address
    path = tmp_path / "trace.jsonl"
    trace.save(path)

    on_chain = Trace.load(path).verify_anchor(contracts.anchor, agent.address)
    assert on_chain.count == 5 and on_chain.timestamp > 0

    # Another agent never anchored it.
    with pytest.raises(TraceVerificationError, match="never anchored"):
        Trace.load(path).verify_anchor(contracts.anchor, accounts[2].address)

    # Cut the tail: the chain still holds, the anchor does not.
    _write(path, _lines(path)[:-1])
    with pytest.raises(TraceVerificationError, match="never anchored"):
        Trace.load(path).verify_anchor(contracts.anchor, agent.address)


def test_an_anchored_prefix_verifies_as_the_log_grows(contracts, accounts):
    agent = accounts[1]
    trace = _trace()
    trace.anchor(contracts.anchor, agent)
    trace.append("thought", {"text": "one more"})
    trace.verify_anchor(contracts.anchor, agent.address, count=5)
    with pytest.raises(TraceVerificationError, match="never anchored"):
        trace.verify_anchor(contracts.anchor, agent.address)
    trace.anchor(contracts.anchor, agent)
    assert trace.verify_anchor(contracts.anchor, agent.address).count == 6
    assert contracts.anchor.anchor_count(agent.address) == 2


def test_an_edited_log_does_not_verify_against_its_anchor(contracts, accounts, tmp_path):
    agent = accounts[1]
    trace = _trace()
    trace.anchor(contracts.anchor, agent)
    # A forger rebuilds a whole valid chain with one entry changed: the chain verifies, the anchor does not.
    forged = Trace()
    for entry in trace:
        forged.append(entry.kind, {"text": "forged"} if entry.index == 3 else entry.data)
    forged.verify()
    with pytest.raises(TraceVerificationError, match="never anchored"):
        forged.verify_anchor(contracts.anchor, agent.address)
