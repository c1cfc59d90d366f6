"""An adapter's attribution index: its training contributions as tokens, and span attribution over them.

On disk (the `attribution/` folder of an adapter): `tokens.npy` (the corpus, int32), `suffix_array.npy`,
`doc_starts.npy` (where each contribution's separator sits) and `index.json` (the contributions'
datanets, contributors and content hashes, and the datanets' weights). Arrays are loaded with
pickling off: adapter folders are data, never code.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from eth_utils import to_checksum_address

from .backends import InfiniGramBackend, MatchBackend, NumpyBackend, infini_gram_available
from .record import BPS, AttributionRecord, Span, combine_datanets
from .suffix_array import SEP, SuffixArray, build_suffix_array

logger = logging.getLogger(__name__)

__all__ = ["AttributionIndex", "Backend", "Contribution", "DatanetShare", "SpanParams"]

INDEX_VERSION = 1
Backend = Literal["numpy", "infini-gram", "auto"]


@dataclass(frozen=True)
class Contribution:
    """One training contribution as the index knows it."""

    datanet: int  # local datanet id (the store's)
    contributor: str
    content_hash: str  # 0x-hex keccak256 of the text, as registered on chain


@dataclass(frozen=True)
class DatanetShare:
    """A datanet an adapter was trained on and its part of the data share."""

    id: int  # local store id
    weight_bps: int
    chain_id: int | None = None  # DatanetRegistry id once registered

    @property
    def record_id(self) -> int:
        """The id attribution records and settlement use: the on-chain id when there is one."""
        return self.id if self.chain_id is None else self.chain_id


@dataclass(frozen=True)
class SpanParams:
    """Span matching settings; recorded in every record, so a verifier can recompute it."""

    min_span_tokens: int = 8  # shorter matches are coincidence, not drawing on a contribution
    max_span_count: int = 64  # a span found more often than this is a common n-gram: ignored
    max_query_tokens: int = 256  # longest span looked for (longer matches are cut into several)
    max_spans_listed: int = 64  # record size bounds; scoring uses every span
    max_contributions_listed: int = 8

    def to_json(self) -> dict[str, int]:
        return {
            "minSpanTokens": self.min_span_tokens,
            "maxSpanCount": self.max_span_count,
            "maxQueryTokens": self.max_query_tokens,
        }


class AttributionIndex:
    """Span attribution of outputs against one adapter's training contributions."""

    def __init__(
        self,
        corpus: np.ndarray,
        doc_starts: np.ndarray,
        contributions: Sequence[Contribution],
        datanets: Sequence[DatanetShare],
        backend: MatchBackend,
        params: SpanParams,
    ):
        if len(contributions) != len(doc_starts):
            raise ValueError("one contribution per document start")
        if sum(d.weight_bps for d in datanets) != BPS:
            raise ValueError("datanet weights must sum to 10,000 bps")
        known = {d.id for d in datanets}
        if any(c.datanet not in known for c in contributions):
            raise ValueError("a contribution's datanet is not among the index's datanets")
        self.corpus = corpus
        self.doc_starts = doc_starts
        self.contributions = list(contributions)
        self.datanets = list(datanets)
        self.backend = backend
        self.params = params
        self._record_id = {d.id: d.record_id for d in datanets}
        lengths = np.diff(np.append(doc_starts, corpus.shape[0])) - 1
        self.data_shares: dict[int, dict[str, int]] = {}
        for c, n in zip(self.contributions, lengths.tolist()):
            shares = self.data_shares.setdefault(self._record_id[c.datanet], {})
            shares[c.contributor] = shares.get(c.contributor, 0) + n

    # ------------------------------------------------------------------ building and loading

    @staticmethod
    def layout(token_lists: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """The corpus (SEP before each contribution) and each contribution's SEP position."""
        parts, starts, pos = [], [], 0
        for ids in token_lists:
            arr = np.asarray(ids, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= 2**31 - 1):
                raise ValueError("token ids must be in [0, 2^31 - 1)")
            starts.append(pos)
            parts.append(np.array([SEP], dtype=np.int32))
            parts.append(arr.astype(np.int32))
            pos += 1 + arr.size
        corpus = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        return corpus, np.asarray(starts, dtype=np.int64)

    @classmethod
    def build(
        cls,
        documents: Sequence[tuple[Contribution, Sequence[int]]],
        datanets: Sequence[DatanetShare],
        params: SpanParams | None = None,
    ) -> AttributionIndex:
        """Indexes `documents` ((contribution, token ids) pairs) with the numpy suffix array."""
        params = params or SpanParams()
        corpus, doc_starts = cls.layout(ids for _, ids in documents)
        t0 = time.perf_counter()
        sa = SuffixArray(corpus, build_suffix_array(corpus), max_query_tokens=params.max_query_tokens)
        logger.info("indexed %d tokens in %.2f s", corpus.shape[0], time.perf_counter() - t0)
        return cls(corpus, doc_starts, [c for c, _ in documents], datanets, NumpyBackend(sa, doc_starts), params)

    def save(self, directory: Path | str) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not isinstance(self.backend, NumpyBackend):
            raise TypeError("save an index built with the numpy backend")
        np.save(directory / "tokens.npy", self.corpus)
        np.save(directory / "suffix_array.npy", self.backend.sa.sa)
        np.save(directory / "doc_starts.npy", self.doc_starts)
        meta = {
            "version": INDEX_VERSION,
            "params": asdict(self.params),
            "datanets": [asdict(d) for d in self.datanets],
            "contributions": [[c.datanet, c.contributor, c.content_hash] for c in self.contributions],
        }
        (directory / "index.json").write_text(json.dumps(meta) + "\n")

    @classmethod
    def load(
        cls, directory: Path | str, *, backend: Backend = "numpy", params: SpanParams | None = None
    ) -> AttributionIndex:
        """Loads a saved index. `backend`: "numpy", "infini-gram" (built next to the index on first use;
        raises InfiniGramUnavailable where the package is missing) or "auto" (infini-gram where it imports).
        `params` default to those the index was saved with."""
        directory = Path(directory)
        meta = json.loads((directory / "index.json").read_text())
        if meta.get("version") != INDEX_VERSION:
            raise ValueError(f"unsupported attribution index version {meta.get('version')!r} in {directory}")
        params = params or SpanParams(**meta["params"])
        corpus = np.load(directory / "tokens.npy", allow_pickle=False)
        doc_starts = np.load(directory / "doc_starts.npy", allow_pickle=False)
        contributions = [Contribution(int(d), to_checksum_address(a), h) for d, a, h in meta["contributions"]]
        datanets = [DatanetShare(**d) for d in meta["datanets"]]
        if backend == "auto":
            backend = "infini-gram" if infini_gram_available() else "numpy"
        engine: MatchBackend
        if backend == "infini-gram":
            engine = InfiniGramBackend.build(
                corpus, doc_starts, directory / "infini-gram", max_query_tokens=params.max_query_tokens
            )
        elif backend == "numpy":
            sa = np.load(directory / "suffix_array.npy", allow_pickle=False)
            if sa.shape != corpus.shape:
                raise ValueError(f"suffix array and tokens disagree in {directory}")
            engine = NumpyBackend(SuffixArray(corpus, sa, max_query_tokens=params.max_query_tokens), doc_starts)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        return cls(corpus, doc_starts, contributions, datanets, engine, params)

    def with_chain_ids(self, chain_ids: dict[int, int]) -> AttributionIndex:
        """A copy whose datanets carry their on-chain ids ({local id: chain id})."""
        datanets = [replace(d, chain_id=chain_ids.get(d.id, d.chain_id)) for d in self.datanets]
        return AttributionIndex(self.corpus, self.doc_starts, self.contributions, datanets, self.backend, self.params)

    # ------------------------------------------------------------------ attribution

    def attribute(self, token_ids: Sequence[int], *, adapter: str) -> AttributionRecord:
        """The attribution record of one output (its generated token ids) of `adapter`.

        Spans: at each output position the longest run found verbatim in a contribution; runs inside an
        earlier one are dropped, runs under `min_span_tokens` or found more than `max_span_count` times
        ignored. A span of length L found `count` times among N contributions scores
        L·log2(1 + N/count), shared equally by the distinct contributions holding it; each contributor
        sums its contributions' scores within its datanet. Deterministic: integer scores only reach
        the weights.
        """
        p = self.params
        tokens = np.asarray(list(token_ids), dtype=np.int64)
        if tokens.size and tokens.min() < 0:
            raise ValueError("token ids must be non-negative")
        spans: list[tuple[int, int]] = []
        if tokens.size and self.contributions:
            lengths = self.backend.longest_matches(tokens).tolist()
            reach = 0
            for i, n in enumerate(lengths):
                if n >= p.min_span_tokens and i + n > reach:
                    spans.append((i, i + n))
                    reach = i + n
        n_docs = len(self.contributions)
        scored: list[Span] = []
        scores: dict[int, dict[str, int]] = {}
        for (start, end), occ in zip(spans, self.backend.occurrences(tokens, spans, p.max_span_count)):
            if occ.contributions is None or occ.count == 0:
                continue
            score_milli = round((end - start) * math.log2(1 + n_docs / occ.count) * 1000)
            docs = occ.contributions.tolist()
            share = score_milli * 1000 // len(docs)
            for d in docs:
                c = self.contributions[d]
                per = scores.setdefault(self._record_id[c.datanet], {})
                per[c.contributor] = per.get(c.contributor, 0) + share
            listed = tuple(self.contributions[d].content_hash for d in docs[: p.max_contributions_listed])
            scored.append(Span(start, end, occ.count, score_milli, listed))
        kept = sorted(scored, key=lambda s: (-s.score_milli, s.start))[: p.max_spans_listed]
        kept.sort(key=lambda s: s.start)
        datanets, contributors = combine_datanets(
            [(d.record_id, d.weight_bps) for d in self.datanets], scores, self.data_shares
        )
        return AttributionRecord(
            adapter=adapter,
            method="spans" if scored else "data-share",
            output_tokens=int(tokens.size),
            params=p.to_json(),
            spans=tuple(kept),
            datanets=datanets,
            contributors=contributors,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "tokens": int(self.corpus.shape[0]),
            "contributions": len(self.contributions),
            "datanets": [asdict(d) for d in self.datanets],
            "backend": type(self.backend).__name__,
        }
