"""Per-feature statistics in LeRobot's ``meta/stats.json`` format.

For every numeric feature: ``min``, ``max``, ``mean``, ``std`` with the feature's shape ((1,) for scalar
columns, (n,) for vectors), ``count`` of shape (1,), and the quantiles newer LeRobot versions add
(``q01`` .. ``q99``), which normalizers can use for robust ranges.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    stats = {
        "min": data.min(axis=0),
        "max": data.max(axis=0),
        "mean": data.mean(axis=0),
        "std": data.std(axis=0),
        "count": np.array([data.shape[0]], dtype=np.int64),
    }
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
