"""A token-level suffix array in numpy: built by prefix doubling, queried by vectorized binary search.

The corpus is the training contributions laid end to end, each preceded by a separator (-1), so that no
match crosses a contribution's boundary: output tokens are never negative. Comparisons are plain
lexicographic order on the token values, the end of the corpus being smaller than every token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SEP", "SuffixArray", "build_suffix_array"]

SEP = -1
"""The separator in front of every contribution."""
_END = -2  # past the end of the corpus: smaller than SEP and every token
_QUERY_LOW = -3  # after a query's last token for a lower bound: smaller than anything in the corpus
_QUERY_HIGH = np.iinfo(np.int32).max  # ... for an upper bound: larger than any token


def build_suffix_array(corpus: np.ndarray) -> np.ndarray:
    """The suffix array of `corpus` (int32 [n]): positions [n] sorted by the suffix starting there.

    Prefix doubling: after round k every suffix is ranked by its first 2^k tokens, and each round is
    one argsort of (rank[i], rank[i + 2^k]) packed into an int64. Rounds stop once all ranks differ,
    so their number is log2 of the longest repeated substring, not of n.
    """
    n = int(corpus.shape[0])
    index_dtype = np.int32 if n < 2**31 - 1 else np.int64
    if n == 0:
        return np.zeros(0, dtype=index_dtype)
    # dense ranks from 1 (0 stands for "past the end")
    _, rank = np.unique(corpus, return_inverse=True)
    rank = rank.astype(np.int64) + 1
    sa = np.argsort(rank, kind="stable")
    k = 1
    while True:
        sorted_rank = rank[sa]
        if n == 1 or bool(np.all(sorted_rank[1:] != sorted_rank[:-1])):
            break
        second = np.zeros(n, dtype=np.int64)
        second[: n - k] = rank[k:]
        key = rank * (n + 2) + second
        sa = np.argsort(key, kind="stable")
        sorted_key = key[sa]
        new_sorted = np.empty(n, dtype=np.int64)
        new_sorted[0] = 1
        np.cumsum(sorted_key[1:] != sorted_key[:-1], out=new_sorted[1:])
        new_sorted[1:] += 1
        rank = np.empty(n, dtype=np.int64)
        rank[sa] = new_sorted
        k *= 2
        if k >= n:
            break
    return sa.astype(index_dtype)


class SuffixArray:
    """Longest matches, occurrence counts and occurrence positions of token sequences in a corpus.

    Every query is answered for many sequences at once: the binary searches run as numpy operations
    over all the queries, comparing a window of `window` tokens per step (a query longer than
    the window is compared over more steps only where the window is all equal).
    """

    def __init__(self, corpus: np.ndarray, sa: np.ndarray, *, max_query_tokens: int = 256):
        if corpus.ndim != 1 or sa.shape != corpus.shape:
            raise ValueError("corpus and suffix array must be 1-D and of the same length")
        self.corpus = corpus.astype(np.int32, copy=False)
        self.sa = sa
        self.max_query_tokens = max_query_tokens
        self.n = int(corpus.shape[0])
        # padded so that a window read from any suffix stays in bounds
        self._padded = np.concatenate([self.corpus, np.full(max_query_tokens + 1, _END, dtype=np.int32)])
        # first token of each suffix in SA order: narrows every search to one bucket before it starts
        self._first = self.corpus[sa] if self.n else np.zeros(0, dtype=np.int32)

    @classmethod
    def build(cls, corpus: np.ndarray, *, max_query_tokens: int = 256) -> SuffixArray:
        corpus = np.ascontiguousarray(corpus, dtype=np.int32)
        return cls(corpus, build_suffix_array(corpus), max_query_tokens=max_query_tokens)

    # ------------------------------------------------------------------ searches

    def _bounds(self, queries: np.ndarray, lengths: np.ndarray, upper: bool) -> np.ndarray:
        """For each query (int32 [Q, W], its first `lengths[q]` tokens meaningful), the first SA rank
        whose suffix is >= the query (lower) or > every suffix starting with it (upper)."""
        width = queries.shape[1]
        fill = _QUERY_HIGH if upper else _QUERY_LOW
        cols = np.arange(width)
        q = np.where(cols[None, :] < lengths[:, None], queries, fill).astype(np.int32)
        if np.any(lengths < 1):
            raise ValueError("queries must hold at least one token")
        # the answer lies in [lo, hi], the bucket of suffixes starting with the query's first token
        lo = np.searchsorted(self._first, q[:, 0], side="left").astype(np.int64)
        hi = np.searchsorted(self._first, q[:, 0], side="right").astype(np.int64)
        while True:
            active = np.nonzero(lo < hi)[0]
            if active.size == 0:
                break
            mid = (lo[active] + hi[active]) // 2
            less = self._suffix_less(self.sa[mid], q[active], upper)
            lo[active[less]] = mid[less] + 1
            hi[active[~less]] = mid[~less]
        return lo

    def _suffix_less(self, positions: np.ndarray, q: np.ndarray, upper: bool) -> np.ndarray:
        """Whether the suffix at each position sorts before its query (lower) or not after (upper)."""
        width = q.shape[1]
        out = np.zeros(positions.shape[0], dtype=bool)
        pending = np.arange(positions.shape[0])
        start, step = 0, 8
        while pending.size and start < width:
            stop = min(width, start + step)
            cols = np.arange(start, stop)
            window = self._padded[positions[pending, None] + cols[None, :]]
            qwin = q[pending, start:stop]
            diff = window != qwin
            has = diff.any(axis=1)
            first = diff.argmax(axis=1)
            idx = np.arange(pending.size)
            out[pending[has]] = (window[idx, first] < qwin[idx, first])[has]
            pending = pending[~has]
            start, step = stop, step * 4
        # equal over the whole window (a query exactly `width` long): the suffix starts with the query,
        # which is not below it for a lower bound and not above it for an upper bound
        out[pending] = upper
        return out

    def longest_matches(self, tokens: np.ndarray) -> np.ndarray:
        """For each position i of `tokens` (int [T]), the length of the longest prefix of tokens[i:]
        (at most `max_query_tokens`) that occurs in the corpus."""
        t = int(tokens.shape[0])
        if t == 0 or self.n == 0:
            return np.zeros(t, dtype=np.int64)
        width = min(self.max_query_tokens, t)
        queries, lengths = self._windows(tokens, width)
        pos = self._bounds(queries, lengths, upper=False)
        best = np.zeros(t, dtype=np.int64)
        for neighbour in (pos - 1, pos):
            ok = (neighbour >= 0) & (neighbour < self.n)
            starts = self.sa[np.clip(neighbour, 0, self.n - 1)]
            window = self._padded[starts[:, None] + np.arange(width)[None, :]]
            cols = np.arange(width)[None, :]
            same = (window == queries) & (cols < lengths[:, None])
            lcp = np.where(same.all(axis=1), lengths, (~same).argmax(axis=1))
            best = np.maximum(best, np.where(ok, lcp, 0))
        return best

    def ranges(self, tokens: np.ndarray, spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        """The SA rank range [lo, hi) of each span tokens[start:end]; hi - lo is its occurrence count."""
        if not spans:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        width = max(end - start for start, end in spans)
        queries = np.full((len(spans), width), _QUERY_LOW, dtype=np.int32)
        lengths = np.zeros(len(spans), dtype=np.int64)
        for k, (start, end) in enumerate(spans):
            queries[k, : end - start] = tokens[start:end]
            lengths[k] = end - start
        return self._bounds(queries, lengths, upper=False), self._bounds(queries, lengths, upper=True)

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """Corpus positions of the suffixes ranked lo..hi-1, sorted."""
        return np.sort(self.sa[lo:hi].astype(np.int64))

    @staticmethod
    def _windows(tokens: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        t = tokens.shape[0]
        padded = np.concatenate([tokens.astype(np.int32), np.full(width, _QUERY_LOW, dtype=np.int32)])
        idx = np.arange(t)[:, None] + np.arange(width)[None, :]
        lengths = np.minimum(width, t - np.arange(t)).astype(np.int64)
        return padded[idx], lengths
