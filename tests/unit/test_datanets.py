"""The datanet store and `loraledger datanets`: content hashes, dedup, validation, JSONL/CSV import."""

from __future__ import annotations

import json

import pytest
from eth_utils import keccak, to_checksum_address

from loraledger.runtime.cli import main
from loraledger.runtime.datanets import ContributionRow, DatanetError, DatanetStore, ImportRejected, content_hash

ALICE, BOB = (to_checksum_address("0x" + c * 40) for c in "ab")


@pytest.fixture
def store(tmp_path):
    with DatanetStore(tmp_path / "d.db", max_text_bytes=100) as s:
        yield s


def test_create_add_and_read_back(store):
    d = store.create("legal", description="contracts", curator=ALICE.lower())
    result = store.add(d, [ContributionRow("a clause", ALICE.lower(), {"lang": "en"}), ContributionRow("b", BOB)])
    assert result.added == 2
    info = store.get("legal")
    assert (info.id, info.contributions, info.contributors, info.curator) == (d, 2, 2, ALICE)
    rows = store.contributions(d)
    assert rows[0].content_hash == "0x" + keccak(b"a clause").hex() == content_hash("a clause")
    assert rows[0].contributor == ALICE and rows[0].metadata == {"lang": "en"}
    assert [x.name for x in store.datanets()] == ["legal"]
    with pytest.raises(DatanetError, match="already exists"):
        store.create("legal")
    with pytest.raises(DatanetError, match="no datanet"):
        store.get(99)


def test_duplicates_are_rejected_or_skipped(store):
    d = store.create("x")
    store.add(d, [ContributionRow("same", ALICE)])
    with pytest.raises(ImportRejected, match="duplicate") as err:
        store.add(d, [ContributionRow("new", ALICE), ContributionRow("same", BOB)])
    assert err.value.errors[0].line == 2
    with pytest.raises(ImportRejected, match="line 1 of this input"):
        store.add(d, [ContributionRow("twice", ALICE), ContributionRow("twice", BOB)])
    assert store.get(d).contributions == 1  # nothing of a rejected input was added
    result = store.add(d, [ContributionRow("same", BOB), ContributionRow("fresh", BOB)], skip_duplicates=True)
    assert (result.added, result.skipped_duplicates) == (1, 1)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (ContributionRow("   ", ALICE), "empty text"),
        (ContributionRow("x" * 101, ALICE), "over the 100-byte limit"),
        (ContributionRow("ok", "0x1234"), "not an Ethereum address"),
        (ContributionRow("ok", "0x" + "0" * 40), "zero address"),
    ],
)
def test_bad_rows_are_rejected(store, row, message):
    d = store.create("x")
    with pytest.raises(ImportRejected, match=message):
        store.add(d, [row])


def test_jsonl_and_csv_import(store, tmp_path):
    d = store.create("x")
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(
        json.dumps({"text": "one", "contributor": ALICE, "metadata": {"src": "a"}})
        + "\n\n"
        + json.dumps({"text": "two"})
        + "\n"
    )
    assert store.import_file(d, jsonl, default_contributor=BOB).added == 2
    csv_file = tmp_path / "rows.csv"
    csv_file.write_text('text,contributor,source\n"three, with comma",' + ALICE + ",web\nfour," + BOB + ",book\n")
    assert store.import_file(d, csv_file).added == 2
    rows = store.contributions(d)
    assert [r.text for r in rows] == ["one", "two", "three, with comma", "four"]
    assert rows[1].contributor == BOB and rows[2].metadata == {"source": "web"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.jsonl", '{"text": "ok", "contributor": "%s"}\n{not json\n' % ALICE, "line 2: not valid JSON"),
        ("list.jsonl", "[1, 2]\n", "not a JSON object"),
        ("extra.jsonl", '{"txt": "typo"}\n', "unknown field"),
        ("nohead.csv", "body,contributor\nx,%s\n" % ALICE, "no 'text' column"),
        ("ragged.csv", "text,contributor\nx,%s,extra\n" % ALICE, "more fields"),
        ("rows.txt", "hello", "unknown file type"),
    ],
)
def test_malformed_files_are_rejected_with_clear_errors(store, tmp_path, name, content, message):
    d = store.create("x")
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatanetError, match=message):
        store.import_file(d, path)
    assert store.get(d).contributions == 0


def test_non_utf8_file_is_rejected(store, tmp_path):
    d = store.create("x")
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(ImportRejected, match="not UTF-8"):
        store.import_file(d, path, default_contributor=ALICE)


def test_cli_create_add_list_show(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["datanets", "create", "legal", "--store", db]) == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"clause {i}", "contributor": ALICE}) + "\n" for i in range(5)))
    assert main(["datanets", "add", "legal", str(rows), "--store", db, "--quiet"]) == 0
    assert "added 5 contribution(s)" in capsys.readouterr().out
    assert main(["datanets", "add", "1", str(rows), "--store", db, "--quiet"]) == 1
    assert "duplicate" in capsys.readouterr().err
    assert main(["datanets", "add", "1", "--text", "solo", "--contributor", BOB, "--store", db]) == 0
    assert main(["datanets", "list", "--store", db]) == 0
    out = capsys.readouterr().out
    assert "legal" in out and "6" in out
    assert main(["datanets", "show", "legal", "--json", "--store", db]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["contributions"] == 6 and shown["contributors"] == 2 and len(shown["sample"]) == 6
    assert main(["datanets", "show", "nope", "--store", db]) == 1
