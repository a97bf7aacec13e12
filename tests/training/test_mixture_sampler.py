"""MixtureSampler: weighted draws per dataset, seeded, disjoint per rank, exactly resumable."""

import itertools

import numpy as np
import pytest

from mode_policy.training.sampler import MixtureSampler

SIZES = [50, 20, 30]  # global indices 0-49, 50-69, 70-99


def take(sampler, count):
    return list(itertools.islice(iter(sampler), count))


def dataset_of(indices):
    return np.searchsorted(np.cumsum(SIZES), np.asarray(indices), side="right")


def test_empirical_shares_match_the_weights_within_one_percent():
    weights = [0.7, 0.2, 0.1]
    draws = take(MixtureSampler(SIZES, weights, batch_size=100, seed=0), 100_000)
    shares = np.bincount(dataset_of(draws), minlength=3) / len(draws)
    assert np.abs(shares - weights).max() < 0.01, shares
    # Weights are normalised: any positive scale means the same shares.
    assert MixtureSampler(SIZES, [7, 2, 1], batch_size=1, seed=0).weights == pytest.approx(weights)


def test_each_dataset_gives_its_windows_without_replacement_inside_its_epochs():
    """After M draws from a dataset of n windows every window was drawn floor(M/n) or ceil(M/n) times."""
    draws = np.asarray(take(MixtureSampler(SIZES, [1, 1, 1], batch_size=8, seed=4), 8 * 200))
    for d, (start, size) in enumerate(zip([0, 50, 70], SIZES, strict=True)):
        mine = draws[dataset_of(draws) == d] - start
        times = np.bincount(mine, minlength=size)
        assert times.min() >= len(mine) // size and times.max() <= -(-len(mine) // size), times


def test_order_is_a_function_of_the_seed():
    a = take(MixtureSampler(SIZES, [0.5, 0.3, 0.2], batch_size=6, seed=1), 60)
    b = take(MixtureSampler(SIZES, [0.5, 0.3, 0.2], batch_size=6, seed=1), 60)
    c = take(MixtureSampler(SIZES, [0.5, 0.3, 0.2], batch_size=6, seed=2), 60)
    assert a == b and a != c


@pytest.mark.parametrize("start", [1, 7, MixtureSampler.BLOCK - 1, MixtureSampler.BLOCK + 3])
def test_a_sampler_started_at_step_t_yields_the_batches_of_an_uninterrupted_one(start):
    batch = 5
    steps = start + 6
    full = take(MixtureSampler(SIZES, [0.6, 0.3, 0.1], batch_size=batch, seed=9), batch * steps)
    resumed = take(MixtureSampler(SIZES, [0.6, 0.3, 0.1], batch_size=batch, seed=9, start_step=start), 30)
    assert resumed == full[batch * start : batch * start + 30]


def test_ranks_take_disjoint_blocks_of_each_global_batch():
    big = [400, 300, 300]  # large enough that no dataset wraps an epoch inside one global batch
    world, batch, steps = 3, 4, 20
    single = take(
        MixtureSampler(big, [0.5, 0.25, 0.25], batch_size=world * batch, seed=5), world * batch * steps
    )
    ranks = [
        take(
            MixtureSampler(big, [0.5, 0.25, 0.25], batch_size=batch, seed=5, rank=r, world_size=world),
            batch * steps,
        )
        for r in range(world)
    ]
    for step in range(steps):
        merged = list(
            itertools.chain.from_iterable(rank[batch * step : batch * (step + 1)] for rank in ranks)
        )
        assert merged == single[world * batch * step : world * batch * (step + 1)]
        assert len(set(merged)) == world * batch  # no window twice in one global batch


def test_a_zero_weight_dataset_is_never_drawn():
    draws = take(MixtureSampler(SIZES, [1, 0, 1], batch_size=16, seed=0), 16 * 50)
    assert 1 not in set(dataset_of(draws).tolist())
    take(MixtureSampler([5, 0], [1, 0], batch_size=4, seed=0), 8)  # an empty dataset is fine at weight 0


@pytest.mark.parametrize(
    "weights, match",
    [
        ([0.5, 0.5], r"2 number\(s\) but 3 dataset\(s\).*--dataset-weights 0.7,0.3"),
        ([0.5, -0.1, 0.6], r">= 0"),
        ([0, 0, 0], r"all 0"),
        ([1, float("nan"), 1], r"finite"),
        ([1, float("inf"), 1], r"finite"),
        (["a", 1, 1], r"must be numbers"),
    ],
)
def test_bad_weights_are_one_clear_line(weights, match):
    with pytest.raises(ValueError, match=match) as error:
        MixtureSampler(SIZES, weights, batch_size=4, seed=0)
    assert "\n" not in str(error.value)


def test_a_weighted_dataset_without_windows_is_refused():
    with pytest.raises(ValueError, match="no windows"):
        MixtureSampler([5, 0], [1, 1], batch_size=4, seed=0)
