"""Adapter terms (loraledger.json) and call cost arithmetic."""

from __future__ import annotations

import json

import pytest

from loraledger.runtime.billing.pricing import DatanetShare, Prices, RevenueTerms, TermsError, load_terms


def test_cost_and_budgeted_output_tokens():
    p = Prices(input_wei=3, output_wei=7)
    assert p.cost(10, 4) == 58
    assert p.max_output_tokens(58, 10) == 4
    assert p.max_output_tokens(64, 10) == 4
    assert p.max_output_tokens(65, 10) == 5
    assert p.max_output_tokens(29, 10) == -1  # cannot pay the prompt
    assert Prices().free and not p.free
    assert Prices(5, 0).max_output_tokens(50, 10) == 2**31 - 1


def test_defaults_without_a_terms_file(tmp_path):
    assert load_terms(tmp_path, Prices(1, 2)).prices == Prices(1, 2)


def test_full_terms_file(tmp_path):
    owner = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
    (tmp_path / "loraledger.json").write_text(json.dumps({
        "pricePerInputToken": "1000000000000", "pricePerOutputToken": 5,
        "owner": owner, "datanets": [{"id": 1, "weightBps": 7000}, {"id": 2, "weightBps": 3000}],
        "revenuePolicy": {"ownerBps": 2000, "dataBps": 3000, "protocolBps": 500}, "description": "contracts law",
    }))  # fmt: skip
    terms = load_terms(tmp_path, Prices(9, 9))
    assert terms.prices == Prices(10**12, 5)
    assert terms.owner == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert terms.datanets == (DatanetShare(1, 7000), DatanetShare(2, 3000))
    assert terms.revenue == RevenueTerms(2000, 3000, 500)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not readable JSON"),
        ('{"pricePerInputToken": -1}', "pricePerInputToken"),
        ('{"pricePerInputToken": 1.5}', "not a float"),
        ('{"pricePerOutputToken": "12abc"}', "whole number"),
        ('{"pricePerOutputToken": %d}' % 2**128, "pricePerOutputToken"),
        ('{"owner": "0x1234"}', "not an address"),
        ('{"datanets": [{"id": 1, "weightBps": 5000}]}', "add up to 10000"),
        ('{"datanets": [{"id": 1, "weightBps": 5000}, {"id": 1, "weightBps": 5000}]}', "listed twice"),
        ('{"revenuePolicy": {"ownerBps": 6000, "dataBps": 0, "protocolBps": 5000}}', "above 10000"),
        ('{"revenuePolicy": {"ownerBps": 0, "dataBps": 100, "protocolBps": 0}}', "no datanets"),
        ('{"pricePerToken": 1}', "pricePerToken"),
    ],
)
def test_bad_terms_files_name_the_file_and_the_problem(tmp_path, content, problem):
    (tmp_path / "loraledger.json").write_text(content)
    with pytest.raises(TermsError, match=problem) as err:
        load_terms(tmp_path)
    assert str(tmp_path / "loraledger.json") in str(err.value)
