"""WordNet noun glosses labelled by lexicographer file: a real labelled text set.

Read from the Debian package wordnet-base (``/usr/share/wordnet/data.noun``).
Each noun synset becomes one example, ``"lemma: definition"``, labelled by its
lexicographer file (``noun.animal``, ``noun.food``, ...), the synset's
supersense assigned by WordNet's lexicographers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelhopper.errors import DataError

__all__ = ["NOUN_LEXNAMES", "TextSet", "wordnet_noun_glosses"]

_SYSTEM_DIR = Path("/usr/share/wordnet")
_INSTALL = "sudo apt-get install wordnet-base"

# lex_filenum -> name, as in WordNet's lexnames(5WN) (the package ships no lexnames file).
NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact",
    7: "noun.attribute", 8: "noun.body", 9: "noun.cognition", 10: "noun.communication",
    11: "noun.event", 12: "noun.feeling", 13: "noun.food", 14: "noun.group",
    15: "noun.location", 16: "noun.motive", 17: "noun.object", 18: "noun.person",
    19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process",
    23: "noun.quantity", 24: "noun.relation", 25: "noun.shape", 26: "noun.state",
    27: "noun.substance", 28: "noun.time",
}  # fmt: skip


@dataclass(frozen=True)
class TextSet:
    """Texts with integer labels ``0..len(classes)-1``; ``classes`` names them."""

    texts: list[str]
    y: np.ndarray
    classes: tuple[str, ...]


def _data_file(root: str | os.PathLike[str] | None) -> Path:
    directory = Path(root) if root is not None else _SYSTEM_DIR
    path = directory / "data.noun"
    if not path.is_file():
        raise DataError(
            f"WordNet noun data not found at {str(path)!r}; install the Debian package "
            f"with `{_INSTALL}` (or pass root= a folder holding WordNet's data.noun)"
        )
    return path


def _parse_line(line: str) -> tuple[int, str] | None:
    """(lex_filenum, "lemma: definition") of one data.noun line; None for header lines."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    lex_filenum = int(parts[1])
    lemma = parts[4].replace("_", " ")
    definition = gloss.split(";", 1)[0].strip()
    return lex_filenum, f"{lemma}: {definition}"


def wordnet_noun_glosses(
    classes: Sequence[str] = ("noun.animal", "noun.food", "noun.plant", "noun.body"),
    *,
    n_per_class: int | None = None,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
) -> TextSet:
    """Noun glosses of the lexicographer files ``classes``, shuffled with ``seed``.

    ``n_per_class`` keeps a seeded sample of that many per class (all by default;
    a class with fewer keeps all of its own). ``root`` defaults to /usr/share/wordnet.
    """
    known = set(NOUN_LEXNAMES.values())
    unknown = [c for c in classes if c not in known]
    if unknown or not classes:
        raise DataError(
            f"classes must be noun lexicographer files such as 'noun.animal', got "
            f"{list(classes)!r}; known: {sorted(known)}"
        )
    wanted = {number: name for number, name in NOUN_LEXNAMES.items() if name in classes}
    label_of = {name: i for i, name in enumerate(classes)}
    by_class: dict[int, list[str]] = {i: [] for i in range(len(classes))}
    with _data_file(root).open(encoding="utf-8") as lines:
        for line in lines:
            parsed = _parse_line(line)
            if parsed is not None and parsed[0] in wanted:
                by_class[label_of[wanted[parsed[0]]]].append(parsed[1])
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    for label, items in by_class.items():
        chosen = rng.permutation(len(items))[:n_per_class]
        texts.extend(items[i] for i in sorted(chosen))
        labels.extend([label] * len(chosen))
    order = rng.permutation(len(texts))
    return TextSet([texts[i] for i in order], np.asarray(labels, np.int64)[order], tuple(classes))
