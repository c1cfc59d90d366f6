"""Span attribution: suffix array, scoring, fallback, determinism, backends agreeing, and settlement amounts."""

from __future__ import annotations

import numpy as np
import pytest

from loraledger.runtime.attribution import (
    AttributedCall,
    AttributionIndex,
    AttributionRecord,
    AttributionService,
    Contribution,
    DatanetShare,
    NoAttributionIndex,
    SpanParams,
    apportion,
    attribution_root,
    contributor_amounts,
    epoch_roots,
    infini_gram_available,
)
from loraledger.runtime.attribution.suffix_array import SuffixArray
from loraledger.sdk.merkle import contributor_leaf, verify
from eth_utils import to_checksum_address

ALICE, BOB, CAROL, DAVE = (to_checksum_address("0x" + c * 40) for c in "abcd")


def _corpus(rng: np.random.Generator, n_docs: int = 40, vocab: int = 500, length: int = 60):
    return [rng.integers(0, vocab, size=length).tolist() for _ in range(n_docs)]


def _index(docs, contributors, datanets=None, params=None) -> AttributionIndex:
    datanets = datanets or [DatanetShare(1, 10_000)]
    contributions = [
        Contribution(d, who, "0x" + f"{i:064x}") for i, (who, d) in enumerate(contributors)
    ]
    return AttributionIndex.build(list(zip(contributions, docs)), datanets, params or SpanParams(min_span_tokens=6))


@pytest.fixture
def simple():
    rng = np.random.default_rng(7)
    docs = _corpus(rng)
    who = [(ALICE, 1) if i < 10 else (BOB, 1) if i < 30 else (CAROL, 1) for i in range(len(docs))]
    return docs, who, _index(docs, who)


# ------------------------------------------------------------------ suffix array


def test_suffix_array_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(25):
        vocab = int(rng.integers(2, 5))
        docs = [rng.integers(0, vocab, size=int(rng.integers(1, 10))).tolist() for _ in range(int(rng.integers(1, 6)))]
        corpus, _ = AttributionIndex.layout(docs)
        sa = SuffixArray.build(corpus, max_query_tokens=12)
        suffixes = [tuple(corpus[i:].tolist()) for i in range(len(corpus))]
        assert [suffixes[i] for i in sa.sa] == sorted(suffixes)
        out = rng.integers(0, vocab, size=int(rng.integers(1, 16))).astype(np.int32)
        flat = corpus.tolist()

        def occurrences(seq):
            return sum(flat[i : i + len(seq)] == list(seq) for i in range(len(flat) - len(seq) + 1))

        longest = sa.longest_matches(out)
        for i in range(len(out)):
            n = 0
            while i + n < len(out) and n < 12 and occurrences(out[i : i + n + 1].tolist()):
                n += 1
            assert longest[i] == n
        spans = [(i, i + int(longest[i])) for i in range(len(out)) if longest[i]]
        lo, hi = sa.ranges(out, spans)
        for (s, e), a, b in zip(spans, lo, hi):
            assert b - a == occurrences(out[s:e].tolist())


# ------------------------------------------------------------------ attribution


def test_reproduced_contribution_gets_the_largest_weight(simple):
    docs, who, index = simple
    output = [3, 1, 4] + docs[35][5:45] + [2, 7]  # Carol's text, inside unrelated tokens
    record = index.attribute(output, adapter="legal-v1")
    assert record.method == "spans"
    weights = {c.address: c.weight_bps for c in record.contributors}
    assert max(weights, key=weights.get) == CAROL
    assert sum(weights.values()) == 10_000
    assert record.spans and record.spans[0].end - record.spans[0].start >= 40
    assert "0x" + f"{35:064x}" in record.spans[0].contributions


def test_unrelated_output_falls_back_to_data_shares(simple):
    docs, who, index = simple
    record = index.attribute([600 + i for i in range(50)], adapter="legal-v1")  # tokens no contribution has
    assert record.method == "data-share" and record.spans == ()
    weights = {c.address: c.weight_bps for c in record.contributors}
    # 10, 20 and 10 contributions of 60 tokens each
    assert weights == {ALICE: 2500, BOB: 5000, CAROL: 2500}
    assert record.datanets[0].method == "data-share"


def test_short_and_common_spans_are_ignored():
    rng = np.random.default_rng(3)
    boiler = list(range(900, 912))  # a 12-token phrase in every contribution
    docs = [boiler + rng.integers(0, 500, size=30).tolist() for _ in range(20)]
    who = [(ALICE if i % 2 else BOB, 1) for i in range(20)]
    index = _index(docs, who, params=SpanParams(min_span_tokens=6, max_span_count=8))
    assert index.attribute(boiler + [999], adapter="a").method == "data-share"
    assert index.attribute(docs[3][12:17], adapter="a").method == "data-share"  # 5 tokens < min 6
    assert index.attribute(docs[3][12:20], adapter="a").method == "spans"


def test_attribution_is_deterministic_and_survives_save_and_load(simple, tmp_path):
    docs, who, index = simple
    output = docs[4][:30] + docs[20][10:50]
    first = index.attribute(output, adapter="x")
    assert index.attribute(output, adapter="x").hash == first.hash
    index.save(tmp_path / "idx")
    loaded = AttributionIndex.load(tmp_path / "idx")
    again = loaded.attribute(output, adapter="x")
    assert again.to_json() == first.to_json() and again.hash == first.hash
    assert AttributionRecord.from_json(first.to_json()).hash == first.hash
    assert len(first.hash) == 32
    assert index.attribute(output, adapter="y").hash != first.hash


def test_weights_follow_the_datanet_weights():
    rng = np.random.default_rng(5)
    docs = _corpus(rng, n_docs=20)
    who = [(ALICE, 1) for _ in range(10)] + [(BOB, 2)] * 5 + [(CAROL, 2)] * 5
    index = _index(docs, who, datanets=[DatanetShare(1, 7000, chain_id=11), DatanetShare(2, 3000, chain_id=12)])
    record = index.attribute(docs[3][:50], adapter="a")  # drew on datanet 1 only
    by = record.weights_by_datanet()
    assert by[11] == {ALICE: 7000}
    assert by[12] == {BOB: 1500, CAROL: 1500}  # datanet 2 by its data shares
    assert [(d.datanet, d.method) for d in record.datanets] == [(11, "spans"), (12, "data-share")]


@pytest.mark.skipif(not infini_gram_available(), reason="infini-gram is not installed")
def test_numpy_and_infini_gram_backends_agree(tmp_path):
    rng = np.random.default_rng(11)
    docs = _corpus(rng, n_docs=60, vocab=50, length=40)  # small vocabulary: many repeated n-grams
    who = [((ALICE, BOB, CAROL, DAVE)[i % 4], 1) for i in range(len(docs))]
    _index(docs, who, params=SpanParams(min_span_tokens=3, max_span_count=6)).save(tmp_path / "idx")
    params = SpanParams(min_span_tokens=3, max_span_count=6)
    numpy_index = AttributionIndex.load(tmp_path / "idx", backend="numpy", params=params)
    ig_index = AttributionIndex.load(tmp_path / "idx", backend="infini-gram", params=params)
    outputs = [docs[5][:30] + docs[9][4:20], rng.integers(0, 50, size=80).tolist(), docs[0], [49] * 10]
    for output in outputs:
        tokens = np.asarray(output)
        assert numpy_index.backend.longest_matches(tokens).tolist() == ig_index.backend.longest_matches(tokens).tolist()
        a, b = numpy_index.attribute(output, adapter="x"), ig_index.attribute(output, adapter="x")
        assert a.to_json() == b.to_json()


def test_service_loads_each_adapter_index(simple, tmp_path):
    docs, who, index = simple
    index.save(tmp_path / "legal-v1" / "attribution")
    service = AttributionService(tmp_path, params=SpanParams(min_span_tokens=6))
    record = service.attribute("legal-v1", docs[12][:40])
    assert record.adapter == "legal-v1" and record.method == "spans"
    with pytest.raises(NoAttributionIndex):
        service.attribute("nope", [1, 2])
    with pytest.raises(ValueError):
        service.attribute("../x", [1])


# ------------------------------------------------------------------ settlement


def test_apportion_is_exact_and_deterministic():
    assert apportion(10_000, {"a": 1, "b": 1, "c": 1}) == {"a": 3334, "b": 3333, "c": 3333}
    assert apportion(7, {"b": 1, "a": 1}) == {"a": 4, "b": 3}
    assert apportion(0, {"a": 1}) == {}
    with pytest.raises(ValueError):
        apportion(5, {"a": 0})


def test_contributor_amounts_never_exceed_the_contract_funding():
    rng = np.random.default_rng(2)
    docs = _corpus(rng, n_docs=12)
    who = [((ALICE, BOB, CAROL)[i % 3], 1 + (i % 2)) for i in range(12)]
    index = _index(docs, who, datanets=[DatanetShare(1, 3333, chain_id=1), DatanetShare(2, 6667, chain_id=2)])
    records = [index.attribute(docs[i][:40], adapter="a") for i in range(12)]
    amounts = [int(x) for x in rng.integers(1, 10**6, size=12)]
    data_bps = 2500
    calls = [AttributedCall(a, data_bps, r) for a, r in zip(amounts, records)]
    cumulative = contributor_amounts(calls)
    # what PaymentChannels funds when all calls are claimed at once
    data = sum(amounts) * data_bps // 10_000
    funded = {1: data * 3333 // 10_000}
    funded[2] = data - funded[1]
    for datanet, per in cumulative.items():
        assert 0 < sum(per.values()) <= funded[datanet]
        assert funded[datanet] - sum(per.values()) <= 2 * len(calls)  # dust only
    # cumulative amounts only grow
    more = contributor_amounts(calls[:3], previous=cumulative)
    for datanet, per in cumulative.items():
        assert all(more[datanet][a] >= v for a, v in per.items())


def test_epoch_roots_prove_each_contributor():
    cumulative = {4: {ALICE: 120, BOB: 30}, 5: {CAROL: 7}, 6: {}}
    roots = epoch_roots(cumulative)
    assert set(roots) == {4, 5}
    assert roots[4].total == 150
    amount, proof = roots[4].proof(BOB)
    assert amount == 30 and verify(roots[4].root, contributor_leaf(4, BOB, 30), proof)
    assert attribution_root([]) == b"\x00" * 32
    assert len(attribution_root([b"\x01" * 32, b"\x02" * 32])) == 32
