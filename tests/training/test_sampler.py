import itertools

import numpy as np
import pytest

from mode_policy.training.sampler import ResumableRandomSampler
from mode_policy.training.schedule import warmup_cosine


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def test_order_depends_only_on_seed_and_epoch():
    a = take(ResumableRandomSampler(10, batch_size=4, seed=1), 30)
    b = take(ResumableRandomSampler(10, batch_size=4, seed=1), 30)
    c = take(ResumableRandomSampler(10, batch_size=4, seed=2), 30)
    assert a == b and a != c
    # Each data epoch is a permutation of all samples, and epochs differ.
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:20]) == list(range(10))
    assert a[:10] != a[10:20]


def test_start_step_skips_exactly_the_consumed_batches():
    full = take(ResumableRandomSampler(7, batch_size=3, seed=0), 3 * 10)
    resumed = take(ResumableRandomSampler(7, batch_size=3, seed=0, start_step=4), 3 * 6)
    assert resumed == full[3 * 4 :]


def test_ranks_split_each_global_batch():
    single = take(ResumableRandomSampler(11, batch_size=4, seed=5), 4 * 6)
    rank0 = take(ResumableRandomSampler(11, batch_size=2, seed=5, rank=0, world_size=2), 2 * 6)
    rank1 = take(ResumableRandomSampler(11, batch_size=2, seed=5, rank=1, world_size=2), 2 * 6)
    for step in range(6):
        merged = rank0[2 * step : 2 * step + 2] + rank1[2 * step : 2 * step + 2]
        assert merged == single[4 * step : 4 * step + 4]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="empty"):
        ResumableRandomSampler(0, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="rank"):
        ResumableRandomSampler(5, batch_size=1, seed=0, rank=2, world_size=2)


def test_warmup_then_cosine():
    values = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_lr_ratio=0.1) for s in range(130)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[60] == pytest.approx(0.55)
    assert values[110] == pytest.approx(0.1) and values[129] == pytest.approx(0.1)
    assert np.all(np.diff(values[10:111]) <= 1e-12)
