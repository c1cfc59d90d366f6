"""Exact-match backends for span attribution: the numpy suffix array, and infini-gram where its wheel installs.

Both answer the same two questions over the same corpus (contributions laid end to end, each after a
separator) and must give the same answers: the longest match at every output position, and for a
span its occurrence count and the contributions holding it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .suffix_array import SuffixArray

logger = logging.getLogger(__name__)

__all__ = [
    "InfiniGramBackend",
    "InfiniGramUnavailable",
    "MatchBackend",
    "NumpyBackend",
    "Occurrences",
    "infini_gram_available",
]


@dataclass(frozen=True)
class Occurrences:
    """How often a span occurs, and (when at most the cap asked for) the sorted distinct contributions holding it."""

    count: int
    contributions: np.ndarray | None  # int64 contribution indices; None when count is over the cap


class MatchBackend(ABC):
    """Exact matching of output token sequences against the training contributions."""

    max_query_tokens: int

    @abstractmethod
    def longest_matches(self, tokens: np.ndarray) -> np.ndarray:
        """int64 [T]: for each position i, the longest prefix of tokens[i:] (capped at `max_query_tokens`)
        found in some contribution."""

    @abstractmethod
    def occurrences(self, tokens: np.ndarray, spans: Sequence[tuple[int, int]], max_count: int) -> list[Occurrences]:
        """For each span tokens[start:end], its occurrence count and, where count <= max_count, its contributions."""


class NumpyBackend(MatchBackend):
    """The numpy suffix array; always available."""

    def __init__(self, sa: SuffixArray, doc_starts: np.ndarray):
        self.sa = sa
        self.doc_starts = doc_starts
        self.max_query_tokens = sa.max_query_tokens

    def longest_matches(self, tokens: np.ndarray) -> np.ndarray:
        return self.sa.longest_matches(tokens)

    def occurrences(self, tokens: np.ndarray, spans: Sequence[tuple[int, int]], max_count: int) -> list[Occurrences]:
        lo, hi = self.sa.ranges(tokens, spans)
        out = []
        for a, b in zip(lo.tolist(), hi.tolist()):
            count = b - a
            if count > max_count:
                out.append(Occurrences(count, None))
                continue
            docs = np.searchsorted(self.doc_starts, self.sa.positions(a, b), side="right") - 1
            out.append(Occurrences(count, np.unique(docs)))
        return out


class InfiniGramUnavailable(RuntimeError):
    """The infini-gram package is not installed (or not importable) on this machine."""


def infini_gram_available() -> bool:
    try:
        import infini_gram.engine  # noqa: F401
    except Exception:  # any failure to import the compiled engine means "not here"
        return False
    return True


class InfiniGramBackend(MatchBackend):
    """infini-gram's engine over an index built from the same corpus (token files written here, its
    `rust_indexing` building the suffix array; none of its hub tokenizers are used)."""

    def __init__(self, index_dir: Path, *, token_dtype: str, max_query_tokens: int):
        try:
            from infini_gram.engine import InfiniGramEngine
        except Exception as exc:
            raise InfiniGramUnavailable(f"infini-gram cannot be imported: {exc}") from exc
        self.token_dtype = token_dtype
        self.max_query_tokens = max_query_tokens
        self.engine = InfiniGramEngine(
            index_dir=str(index_dir), eos_token_id=0, vocab_size=_TOKEN_MAX[token_dtype], token_dtype=token_dtype
        )

    @classmethod
    def build(
        cls, corpus: np.ndarray, doc_starts: np.ndarray, index_dir: Path, *, max_query_tokens: int
    ) -> InfiniGramBackend:
        """Writes infini-gram's token files for `corpus` (SEP before each contribution) into `index_dir`
        and builds its suffix array there, unless already built."""
        if not infini_gram_available():
            raise InfiniGramUnavailable("the infini-gram package is not installed")
        top = int(corpus.max(initial=0))
        token_dtype = "u16" if top < _TOKEN_MAX["u16"] else "u32"
        if top >= _TOKEN_MAX["u32"]:
            raise ValueError("token ids too large for infini-gram")
        index_dir = Path(index_dir)
        if not (index_dir / "table.0").is_file():
            index_dir.mkdir(parents=True, exist_ok=True)
            np_dtype = np.uint16 if token_dtype == "u16" else np.uint32
            data = np.where(corpus < 0, _TOKEN_MAX[token_dtype], corpus).astype(np_dtype)
            (index_dir / "tokenized.0").write_bytes(data.tobytes())
            offsets = (doc_starts.astype(np.uint64) * np.dtype(np_dtype).itemsize).astype(np.uint64)
            (index_dir / "offset.0").write_bytes(offsets.tobytes())
            with tempfile.TemporaryDirectory() as empty:
                # --cpus 1: two indexing processes on a tiny corpus have written a corrupt table
                cmd = [
                    sys.executable, "-m", "infini_gram.indexing",
                    "--data_dir", empty, "--save_dir", str(index_dir.resolve()),
                    "--token_dtype", token_dtype, "--cpus", "1", "--mem", "1", "--ulimit", "1024",
                ]  # fmt: skip
                result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0 or not (index_dir / "table.0").is_file():
                shutil.rmtree(index_dir, ignore_errors=True)
                raise RuntimeError(f"infini-gram indexing failed: {result.stdout[-500:]} {result.stderr[-500:]}")
        return cls(index_dir, token_dtype=token_dtype, max_query_tokens=max_query_tokens)

    def _ids(self, tokens: np.ndarray) -> list[int]:
        ids = [int(t) for t in tokens]
        if ids and max(ids) >= _TOKEN_MAX[self.token_dtype]:
            raise ValueError("a token id is out of the index's range")
        return ids

    def longest_matches(self, tokens: np.ndarray) -> np.ndarray:
        t = int(tokens.shape[0])
        if t == 0:
            return np.zeros(0, dtype=np.int64)
        rs = self.engine.creativity(self._ids(tokens))["rs"]
        lengths = np.asarray(rs, dtype=np.int64) - np.arange(t)
        return np.minimum(lengths, self.max_query_tokens)

    def occurrences(self, tokens: np.ndarray, spans: Sequence[tuple[int, int]], max_count: int) -> list[Occurrences]:
        out = []
        for start, end in spans:
            found = self.engine.find(self._ids(tokens[start:end]))
            count = int(found["cnt"])
            if count > max_count:
                out.append(Occurrences(count, None))
                continue
            docs = []
            for shard, (lo, hi) in enumerate(found["segment_by_shard"]):
                for rank in range(lo, hi):
                    docs.append(self.engine.get_doc_by_rank(s=shard, rank=rank, max_disp_len=1)["doc_ix"])
            out.append(Occurrences(count, np.unique(np.asarray(docs, dtype=np.int64))))
        return out


_TOKEN_MAX = {"u16": 2**16 - 1, "u32": 2**32 - 1}
