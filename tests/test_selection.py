"""Byzantine selections: the original DETOX strategies and seeded random sets."""

import pytest

from byzshield.design.bounds import distorted_files
from byzshield.design.placements import detox, mols
from byzshield.design.selection import detox_selection, random_selection


def test_detox_strategies_of_the_original():
    p = detox(15, 3)
    assert detox_selection(p, 5, "worst") == [0, 1, 3, 4, 6]
    assert detox_selection(p, 5, "benign") == [0, 3, 6, 9, 12]
    assert detox_selection(p, 4, "whole_group") == [0, 1, 2, 3]
    assert distorted_files(p, detox_selection(p, 5, "benign")) == []
    with pytest.raises(ValueError, match="worst, benign or whole_group"):
        detox_selection(p, 2, "bogus")
    with pytest.raises(ValueError, match="DETOX group placement"):
        detox_selection(mols(5, 3), 2)


def test_random_selection_is_seeded_and_per_step():
    a = random_selection(15, 4, seed=1)
    assert a == random_selection(15, 4, seed=1) and len(set(a)) == 4
    steps = {tuple(random_selection(15, 4, seed=1, step=t)) for t in range(20)}
    assert len(steps) > 1
    with pytest.raises(ValueError):
        random_selection(15, 16, seed=0)
