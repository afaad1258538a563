"""Representations: per-MST transforms of raw data, materialised once per shard and shared."""

from modelhopper.representations._representation import Representation
from modelhopper.representations._store import (
    Features,
    FeatureStore,
    MaterialiseBudget,
    Tier,
    shard_fingerprint,
)

__all__ = [
    "Features",
    "FeatureStore",
    "MaterialiseBudget",
    "Representation",
    "Tier",
    "shard_fingerprint",
]
