"""WordNet noun glosses: parsing, sampling, and the error when wordnet-base is missing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import modelhopper as mh
from modelhopper.data._wordnet import _parse_line

WORDNET = Path("/usr/share/wordnet/data.noun")
MISSING = "WordNet missing: sudo apt-get install wordnet-base (make data installs it)"


@pytest.fixture
def wordnet():
    if not WORDNET.is_file():
        if os.environ.get("MODELHOPPER_TEST_REQUIRE_DATA") == "1":
            pytest.fail(MISSING)
        pytest.skip(MISSING)


def test_parse_line_reads_lexfile_lemma_and_definition():
    line = (
        "02084071 05 n 02 dog 0 domestic_dog 0 001 @ 02083346 n 0000 | a member of the "
        'genus Canis; "the dog barked all night"  \n'
    )
    assert _parse_line(line) == (5, "dog: a member of the genus Canis")
    assert _parse_line("  1 This software and database is being provided\n") is None


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(mh.DataError, match="apt-get install wordnet-base"):
        mh.datasets.wordnet_noun_glosses(root=tmp_path)


def test_unknown_class_is_refused():
    with pytest.raises(mh.DataError, match=r"noun lexicographer files.*'noun.animals'"):
        mh.datasets.wordnet_noun_glosses(["noun.animals"])


def test_real_glosses_are_balanced_labelled_and_seeded(wordnet):
    classes = ("noun.animal", "noun.food")
    glosses = mh.datasets.wordnet_noun_glosses(classes, n_per_class=50, seed=1)
    assert glosses.classes == classes and len(glosses.texts) == 100
    assert np.bincount(glosses.y).tolist() == [50, 50]
    again = mh.datasets.wordnet_noun_glosses(classes, n_per_class=50, seed=1)
    other = mh.datasets.wordnet_noun_glosses(classes, n_per_class=50, seed=2)
    assert again.texts == glosses.texts and other.texts != glosses.texts
    animals = {t for t, y in zip(glosses.texts, glosses.y, strict=True) if y == 0}
    full = mh.datasets.wordnet_noun_glosses(classes)
    assert np.bincount(full.y).tolist() == [7509, 2573]  # noun synsets in WordNet 3.0
    assert animals <= {t for t, y in zip(full.texts, full.y, strict=True) if y == 0}
