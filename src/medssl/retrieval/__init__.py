"""Retrieval: a faiss index of image or sentence embeddings (`index.py`) and its scores (`metrics.py`).

Floor 2: imports errors, numpy and faiss only, so evaluation, the CLI and a service can all use it.
"""

from medssl.retrieval.index import Hits, Index, check_embeddings, default_nlist
from medssl.retrieval.metrics import (
    NO_FINDING,
    average_precision,
    chance_precision,
    label_set,
    label_sets,
    precision_at_k,
    recall_at_k,
    relevance,
    retrieval_scores,
)

__all__ = ["NO_FINDING", "Hits", "Index", "average_precision", "chance_precision", "check_embeddings",
           "default_nlist", "label_set", "label_sets", "precision_at_k", "recall_at_k", "relevance",
           "retrieval_scores"]
