"""The data a training run reads: one LeRobot dataset, or a mixture of several (``--dataset`` given more
than once), with feature keys renamed or dropped; the stats its policy normalises with; its items.

data = requested_data(["data/a", "data/b"], [0.7, 0.3], "pooled", ["observation.images.wrist=..."], [])
dataset = open_data(data)        # a LeRobotDataset, a DatasetView or a DatasetMixture; fills the weights
stats = policy_stats(dataset, data["normalization"])   # {feature: stats} or PerDatasetStats
items = training_items(dataset, windows_of)            # ActionChunkDataset or MixtureDataset

One dataset trains exactly as it always did (no mixture, its own stats, ``ResumableRandomSampler``). A
mixture's weights default to each dataset's share of the frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mode_policy.data.mixture import DatasetMixture, MixtureDataset, key_map, mixture_weights, open_datasets
from mode_policy.policies.normalizer import PER_DATASET, PerDatasetStats

NORMALIZATIONS = ("pooled", PER_DATASET)


def requested_data(
    datasets: str | Path | Sequence[str | Path],
    weights: Sequence[float] | None = None,
    normalization: str | None = None,
    rename: Mapping[str, str] | Iterable[str] | None = None,
    drop: Iterable[str] | None = None,
) -> dict[str, Any]:
    """The data fields of ``TrainSettings`` (``TrainSettings.data()``) as given to ``train()``, checked:
    ``datasets`` a list of folders (one path: a list of one), ``rename`` ``{old: new}``, ``drop`` a list;
    None where not given (a resumed run then takes its own)."""
    roots = [datasets] if isinstance(datasets, (str, Path)) else list(datasets or [])
    if not roots:
        raise ValueError("give at least one training dataset (--dataset DIR, repeated for a mixture)")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if weights is not None:
        mixture_weights(weights, len(roots))  # the checks, before any dataset is read
    if normalization == PER_DATASET and len(roots) < 2:
        raise ValueError(
            "--normalization per-dataset needs a mixture (--dataset given two or more times); one dataset is "
            "normalised with its own stats"
        )
    drop = [drop] if isinstance(drop, str) else list(drop or [])
    return {
        "datasets": [str(root) for root in roots],
        "dataset_weights": None if weights is None else [float(w) for w in weights],
        "normalization": normalization,
        "rename": key_map(rename),
        "drop": drop,
    }


def open_data(data: dict[str, Any]) -> Any:
    """The training data of ``data`` (``requested_data``, or a resumed run's): one dataset (with rename /
    drop, a ``DatasetView``) or a ``DatasetMixture``; for a mixture ``data["dataset_weights"]`` is set to
    the normalised weights it samples with."""
    dataset = open_datasets(data["datasets"], data["dataset_weights"], data["rename"], data["drop"])
    if isinstance(dataset, DatasetMixture):
        data["dataset_weights"] = dataset.weights.tolist()
    return dataset


def policy_stats(dataset: Any, normalization: str | None) -> Any:
    """What the policy normalises with: one set of stats (a dataset's own, a mixture's pooled ones), or, for
    ``"per-dataset"``, each mixture dataset's by name (``PerDatasetStats``; the first at inference)."""
    if normalization == PER_DATASET:
        return PerDatasetStats(dict(dataset.dataset_stats))
    return dataset.stats


def training_items(dataset: Any, windows: Callable[[Any], Any]) -> Any:
    """The training items: ``windows(dataset)`` for one dataset, a ``MixtureDataset`` of each mixture
    dataset's windows (task_index in the merged vocabulary, dataset_index added) for a mixture."""
    if not isinstance(dataset, DatasetMixture):
        return windows(dataset)
    return MixtureDataset([windows(part) for part in dataset.datasets], dataset)


def sampling_weights(dataset: Any) -> list[float] | None:
    """A mixture's weights (``MixtureSampler``), None for one dataset (``ResumableRandomSampler``)."""
    return dataset.weights.tolist() if isinstance(dataset, DatasetMixture) else None


def where(dataset: Any) -> str:
    """The folder(s) of the training data, for messages."""
    return " + ".join(str(root) for root in getattr(dataset, "roots", [dataset.root]))
