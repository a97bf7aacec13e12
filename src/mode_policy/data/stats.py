"""Per-feature statistics in LeRobot's ``meta/stats.json`` format.

For every numeric feature: ``min``, ``max``, ``mean``, ``std`` with the feature's shape ((1,) for scalar
columns, (n,) for vectors), ``count`` of shape (1,), and the quantiles newer LeRobot versions add
(``q01`` .. ``q99``), which normalizers can use for robust ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

QUANTILES: dict[str, float] = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}

Stats = dict[str, dict[str, np.ndarray]]


class _HasColumns(Protocol):
    features: Mapping[str, Mapping[str, Any]]

    def column(self, name: str) -> np.ndarray: ...


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Stats over the first axis of ``values`` ((rows,) or (rows, n)), computed in float64."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]  # LeRobot keeps scalar stats as shape (1,)
    if data.shape[0] == 0:
        raise ValueError("cannot compute stats of an empty column")
    stats = column_summary(data)
    quantiles = np.quantile(data, list(QUANTILES.values()), axis=0)
    stats.update(dict(zip(QUANTILES, quantiles, strict=True)))
    return stats


def compute_stats(
    source: _HasColumns | Mapping[str, np.ndarray], features: Mapping[str, Any] | None = None
) -> Stats:
    """Stats for every numeric feature of a loaded dataset, or for a mapping ``{feature: (rows, ...) array}``.

    With a dataset, ``features`` defaults to its numeric features (state, action, and the index columns,
    as LeRobot does); with a mapping, to all its keys.
    """
    if isinstance(source, Mapping):
        names = list(features) if features is not None else list(source)
        return {name: feature_stats(source[name]) for name in names}
    from mode_policy.data.format import is_numeric

    feats = features if features is not None else source.features
    return {name: feature_stats(source.column(name)) for name, ft in feats.items() if is_numeric(ft)}


def merge_stats(
    parts: Sequence[Mapping[str, Any]], weights: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """One feature's stats over the union of ``parts`` (each a stats entry: min, max, mean, std, count, ...).

    weights: how much each part counts in the mean, std and quantiles; default its ``count`` (the stats of
    all frames together, exact for mean and std); mixture weights give the stats of the sampled
    distribution. min and max are those of the union. Quantiles are the weighted mean of the parts'
    quantiles, an approximation (LeRobot's ``aggregate_stats`` does the same). ``count`` is the total.
    """
    if not parts:
        raise ValueError("merge_stats needs at least one stats entry")
    counts = np.array([float(np.asarray(part["count"]).reshape(-1)[0]) for part in parts])
    share = counts if weights is None else np.asarray(weights, dtype=np.float64)
    if share.shape != counts.shape or (share < 0).any() or share.sum() <= 0:
        raise ValueError(
            f"merge_stats weights must be {len(parts)} non-negative numbers, not all 0; got {weights}"
        )
    share = share / share.sum()
    mean = sum(w * np.asarray(part["mean"], np.float64) for w, part in zip(share, parts, strict=True))
    # E[x^2] of the mixture minus its mean squared: the parallel-variance formula, per dimension.
    second = sum(
        w * (np.asarray(part["std"], np.float64) ** 2 + np.asarray(part["mean"], np.float64) ** 2)
        for w, part in zip(share, parts, strict=True)
    )
    merged = {
        "min": np.min([np.asarray(part["min"], np.float64) for part in parts], axis=0),
        "max": np.max([np.asarray(part["max"], np.float64) for part in parts], axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(second - mean**2, 0.0)),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for key in QUANTILES:
        if all(key in part for part in parts):
            merged[key] = sum(
                w * np.asarray(part[key], np.float64) for w, part in zip(share, parts, strict=True)
            )
    return merged


REQUIRED_STATS = ("min", "max", "mean", "std")


def column_summary(values: np.ndarray, block_rows: int = 16384) -> dict[str, np.ndarray]:
    """min, max, mean, std (per dimension, float64) and count of ``values`` (rows, ...): what
    :func:`check_stats` compares stats.json with. Summaries of row blocks combine with :func:`merge_stats`.

    Works through ``block_rows`` rows at a time in float64 (each block's mean and squared deviations,
    combined with the parallel-variance formula): no float64 copy of the whole column, which made this
    the slowest part of opening a large dataset."""
    data = np.asarray(values).reshape(len(values), -1)
    rows = len(data)
    if rows == 0:
        raise ValueError("column_summary needs at least one row")
    counts, means, squares = [], [], []
    for start in range(0, rows, block_rows):
        block = data[start : start + block_rows].astype(np.float64)
        mean = block.mean(axis=0)
        deviation = block - mean
        counts.append(len(block))
        means.append(mean)
        squares.append(np.einsum("ij,ij->j", deviation, deviation))
    count = np.asarray(counts, dtype=np.float64)[:, None]
    block_means = np.stack(means)
    mean = (count * block_means).sum(axis=0) / rows
    second = np.stack(squares).sum(axis=0) + (count * (block_means - mean) ** 2).sum(axis=0)
    return {
        "min": data.min(axis=0).astype(np.float64),
        "max": data.max(axis=0).astype(np.float64),
        "mean": mean,
        "std": np.sqrt(second / rows),
        "count": np.array([rows], dtype=np.int64),
    }


def check_stats(stats: Mapping[str, Any], values: np.ndarray | Mapping[str, Any]) -> str | None:
    """Why ``stats`` (one feature's entry of stats.json) do not describe the data, or None.

    values: the data (rows, ...), or their :func:`column_summary`. Checked: the four stats a normaliser may
    use are present, finite and of the feature's shape; the [min, max] range covers the data (a narrower
    range would keep a policy from ever reaching the data's extremes); a zero std only where the data never
    vary; the mean inside the data's range.
    """
    if not isinstance(values, Mapping):
        if len(values) == 0:
            return None
        values = column_summary(values)
    low, high = np.asarray(values["min"]).reshape(-1), np.asarray(values["max"]).reshape(-1)
    data_mean, data_std = np.asarray(values["mean"]).reshape(-1), np.asarray(values["std"]).reshape(-1)
    width = low.size
    arrays = {}
    for key in REQUIRED_STATS:
        if key not in stats:
            return f"lacks {key!r} (it has {sorted(stats)})"
        try:
            array = np.asarray(stats[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return f"{key!r} is not a list of numbers"
        if array.size != width:
            return f"{key!r} has {array.size} values, the data {width} per frame"
        if not np.isfinite(array).all():
            return f"{key!r} holds NaN or inf"
        arrays[key] = array
    tolerance = 1e-6 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
    checks = (
        (arrays["min"] > low + tolerance, "min", low, "is above the data's minimum"),
        (arrays["max"] < high - tolerance, "max", high, "is below the data's maximum"),
        (arrays["std"] < 0, "std", data_std, "is negative"),
        (
            (arrays["std"] <= 1e-12) & (high - low > tolerance),
            "std",
            data_std,
            "is 0 where the data vary",
        ),
        (
            (arrays["mean"] < low - tolerance) | (arrays["mean"] > high + tolerance),
            "mean",
            data_mean,
            "lies outside the data's range",
        ),
    )
    for bad, key, actual, what in checks:
        if bad.any():
            dim = int(np.flatnonzero(bad)[0])
            return f"{key!r} of dimension {dim} {what} ({arrays[key][dim]:.6g} vs {actual[dim]:.6g})"
    return None


def constant_dimensions(stats: Mapping[str, Any]) -> list[int]:
    """Dimensions whose min equals their max: a feature that never varies in the data."""
    low = np.asarray(stats["min"], dtype=np.float64).reshape(-1)
    high = np.asarray(stats["max"], dtype=np.float64).reshape(-1)
    return [int(d) for d in np.flatnonzero(high - low <= 0)]


def stats_to_json(stats: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """Plain lists for ``json.dump`` (LeRobot's serialize_dict)."""
    return {
        feature: {key: np.asarray(value).tolist() for key, value in values.items()}
        for feature, values in stats.items()
    }


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    """Numpy arrays back from ``stats.json`` (LeRobot's cast_stats_to_numpy)."""
    return {
        feature: {key: np.asarray(value) for key, value in values.items()} for feature, values in data.items()
    }
