"""Data: validated splits, datasets and their constructors, and built-in real datasets."""

from __future__ import annotations

import sys

from modelhopper.data import _datasets as datasets
from modelhopper.data._dataset import Dataset, Split
from modelhopper.data._encoded import BadRecordError
from modelhopper.data._streaming import StreamedSplit

# Registered so that `import modelhopper.data.datasets` works as well as attribute access.
sys.modules[f"{__name__}.datasets"] = datasets

__all__ = ["Split", "StreamedSplit", "Dataset", "BadRecordError", "datasets"]
