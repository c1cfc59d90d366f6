"""Proof of Attribution: which training contributions a call's output drew on, and what each contributor is owed.

The runtime's finish path calls `AttributionService.attribute(adapter_id, token_ids)` and puts
`record.hash` in the receipt's attributionHash; the settler turns many calls into cumulative
per-contributor amounts with `contributor_amounts` and posts `epoch_roots(...)`.
"""

from .backends import InfiniGramUnavailable, infini_gram_available
from .index import AttributionIndex, Contribution, DatanetShare, SpanParams
from .record import AttributionRecord, ContributorWeight, DatanetWeight, Span, apportion
from .service import ATTRIBUTION_DIR, AttributionService, NoAttributionIndex
from .settle import AttributedCall, EpochRoot, attribution_root, contributor_amounts, epoch_roots

__all__ = [
    "ATTRIBUTION_DIR",
    "AttributedCall",
    "AttributionIndex",
    "AttributionRecord",
    "AttributionService",
    "Contribution",
    "ContributorWeight",
    "DatanetShare",
    "DatanetWeight",
    "EpochRoot",
    "InfiniGramUnavailable",
    "NoAttributionIndex",
    "Span",
    "SpanParams",
    "apportion",
    "attribution_root",
    "contributor_amounts",
    "epoch_roots",
    "infini_gram_available",
]
