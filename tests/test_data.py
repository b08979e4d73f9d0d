import numpy as np
import pytest

from ttbench.data.digits import Digits, split_indices
from ttbench.data.task import sample_positions, sample_task


def test_digits_split_is_disjoint_stratified_and_complete():
    d = Digits()
    labels = np.concatenate([d.source()[1].numpy(), d.labels()])
    assert len(labels) == 1797
    src, tgt = split_indices(d._labels, 0.5, 0)
    assert np.intersect1d(src, tgt).size == 0
    assert src.size + tgt.size == 1797
    for c in range(10):
        n_c = (d._labels == c).sum()
        assert abs((d._labels[src] == c).sum() - n_c / 2) <= 0.5


def test_digits_are_standardised_on_the_source_part():
    x, _ = Digits().source()
    assert x.shape[1:] == (1, 8, 8)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3


def test_task_is_deterministic_per_seed_and_balanced():
    d = Digits()
    a, b, c = (sample_task(d, 5, 20, s) for s in (3, 3, 4))
    assert a.classes == b.classes and np.array_equal(a.positions, b.positions)
    assert (a.x == b.x).all()
    assert a.classes != c.classes or not np.array_equal(a.positions, c.positions)
    assert np.bincount(a.y.numpy()).tolist() == [20] * 5
    # task labels name the dataset classes in order
    assert np.array_equal(np.array(a.classes)[a.y.numpy()], d.labels()[a.positions])


def test_task_takes_all_images_when_fewer_than_n():
    labels = np.array([0] * 3 + [1] * 10 + [2] * 10)
    classes, positions, y = sample_positions(labels, 3, 5, seed=0)
    assert classes == (0, 1, 2)
    assert np.bincount(y).tolist() == [3, 5, 5]
    assert len(set(positions)) == len(positions)


@pytest.mark.parametrize(
    ("k", "n", "said"),
    [
        (0, 5, r"k must be in 1\.\.3, got 0"),
        (4, 5, r"k must be in 1\.\.3, got 4"),
        (2, 0, "n must be >= 1"),
    ],
)
def test_bad_task_sizes(k, n, said):
    with pytest.raises(ValueError, match=said):
        sample_positions(np.array([0, 0, 1, 1, 2, 2]), k, n, seed=0)
