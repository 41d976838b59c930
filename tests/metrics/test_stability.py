"""G-STD / L-STD follow CCSR's definitions: population std over runs, then a mean over images."""

from __future__ import annotations

import numpy as np
import pytest

from stablesr.metrics.stability import global_std, local_std, local_std_image, mean_over_runs


def test_global_std_hand_computed():
    # image 0 runs {1, 3} -> std 1; image 1 runs {2, 2} -> std 0; image 2 runs {0, 4} -> std 2
    values = np.array([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])
    assert global_std(values) == pytest.approx(1.0, abs=1e-15)
    assert mean_over_runs(values) == pytest.approx(2.0, abs=1e-15)


def test_global_std_is_population_std_not_sample_std():
    values = np.array([[10.0, 11.0, 12.0]])
    assert global_std(values) == pytest.approx(np.sqrt(2.0 / 3.0), abs=1e-15)
    assert global_std(values) != pytest.approx(1.0)  # ddof = 1 would give exactly 1


def test_local_std_image_two_runs():
    runs = np.zeros((2, 3, 4, 3))
    runs[1] = 0.5  # every pixel differs by 0.5 between the two runs -> std 0.25 everywhere
    assert local_std_image(runs) == pytest.approx(0.25, abs=1e-15)
    runs[1, 0, 0, 0] = 0.0  # one value agrees now -> mean std drops by 0.25 / 36
    assert local_std_image(runs) == pytest.approx(0.25 - 0.25 / 36, abs=1e-15)


def test_local_std_identical_runs_is_zero_and_set_mean():
    same = np.repeat(np.random.default_rng(0).random((1, 5, 5, 3)), 4, axis=0)
    assert local_std_image(same) == 0.0
    assert local_std([0.1, 0.3]) == pytest.approx(0.2)


def test_shapes_checked():
    with pytest.raises(ValueError, match="images, runs"):
        global_std(np.zeros(3))
    with pytest.raises(ValueError, match="runs, H, W, C"):
        local_std_image(np.zeros((2, 3, 3)))
