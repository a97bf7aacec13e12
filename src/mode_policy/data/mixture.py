"""Several LeRobot datasets trained on as one: checked features, one task vocabulary, pooled stats.

views = with_keys([LeRobotDataset(a), LeRobotDataset(b)], rename={"observation.images.wrist":
                  "observation.images.gripper"}, drop=["observation.images.top"])
mixture = DatasetMixture(views, weights=[0.7, 0.3])   # fps and feature shapes checked, tasks merged
windows = MixtureDataset([ActionChunkDataset(d, ...) for d in mixture.datasets], mixture)
windows[i]   # dataset d's item with task_index in the merged vocabulary and dataset_index = d
open_datasets(["data/a", "data/b"], [0.7, 0.3], rename=..., drop=...)   # the same, from folders

- **Tasks**: the same instruction string is the same task; the merged vocabulary lists the tasks in order
  of first appearance over the datasets, in the order given (``mixture.tasks``; ``task_maps[d]`` maps
  dataset d's task_index into it).
- **Features** must agree: the same name with another shape, a camera in one dataset and a number in
  another, or another fps is refused naming both dataset roots and the field; a feature one dataset has
  and another lacks is refused unless renamed (``rename={old: new}``, applied to the datasets that have
  ``old``) or left out (``drop``), through ``DatasetView``, a light view over a dataset.
- **Stats**: ``mixture.stats`` pools each feature's stats with ``merge_stats`` weighted by the mixture
  weights (the sampled distribution; min and max of the union); ``mixture.dataset_stats`` keeps each
  dataset's own, by ``mixture.names`` (folder names, made unique).

Nothing here trains: the training layer draws from a ``MixtureDataset`` with its own sampler.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mode_policy.data.format import DEFAULT_FEATURES, feature_shape, is_numeric
from mode_policy.data.stats import merge_stats
from mode_policy.keys import ACTION_KEY, DATASET_INDEX_KEY, STATE_KEY, TASK_INDEX_KEY

_CAMERA_DTYPES = ("image", "video")
_WEIGHTS_HINT = "one weight per --dataset, in the same order, e.g. --dataset-weights 0.7,0.3"


def mixture_weights(weights: Any, count: int) -> np.ndarray:
    """``weights`` (one number per dataset, any positive scale) checked and normalised: (count,) float64
    summing to 1. A ValueError line says what to pass: one finite number >= 0 per dataset, not all 0."""
    try:
        values = np.asarray([float(w) for w in weights], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"--dataset-weights must be numbers, {_WEIGHTS_HINT}; got {weights!r}") from None
    if values.size != count:
        raise ValueError(
            f"--dataset-weights has {values.size} number(s) but {count} dataset(s) were given: pass "
            f"{_WEIGHTS_HINT}"
        )
    if not np.isfinite(values).all():
        raise ValueError(
            f"--dataset-weights must be finite numbers, got {values.tolist()}: pass {_WEIGHTS_HINT}"
        )
    if (values < 0).any():
        raise ValueError(
            f"--dataset-weights must be >= 0 (0 leaves a dataset out), got {values.tolist()}: pass "
            f"{_WEIGHTS_HINT}"
        )
    if values.sum() <= 0:
        raise ValueError(
            f"--dataset-weights are all 0: give at least one dataset a positive weight ({_WEIGHTS_HINT})"
        )
    return values / values.sum()


def merge_tasks(task_lists: Sequence[Sequence[str]]) -> tuple[list[str], list[np.ndarray]]:
    """(vocabulary, maps): the distinct instructions in order of first appearance over ``task_lists``, and
    per list a (len(list),) int64 array mapping its task_index to the vocabulary's."""
    vocabulary: dict[str, int] = {}
    maps = []
    for tasks in task_lists:
        maps.append(
            np.array([vocabulary.setdefault(task, len(vocabulary)) for task in tasks], dtype=np.int64)
        )
    return list(vocabulary), maps


def dataset_names(roots: Iterable[str | Path]) -> list[str]:
    """A unique name per dataset: its folder name, with ``-2``, ``-3`` ... for repeats."""
    names: list[str] = []
    for root in roots:
        base = Path(root).name or "dataset"
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def key_map(rename: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    """``["old=new", ...]`` (``--rename``, repeatable) or ``{old: new}`` -> ``{old: new}``, checked."""
    if rename is None:
        return {}
    if isinstance(rename, Mapping):
        pairs = list(rename.items())
    else:
        pairs = []
        for item in [rename] if isinstance(rename, str) else rename:
            old, sep, new = str(item).partition("=")
            if not sep:
                raise ValueError(f"--rename expects old=new (a feature key and its new name), got {item!r}")
            pairs.append((old, new))
    mapping: dict[str, str] = {}
    for old, new in pairs:
        old, new = str(old).strip(), str(new).strip()
        if not old or not new or old == new:
            raise ValueError(f"--rename expects old=new with two different feature keys, got {old!r}={new!r}")
        if old in mapping:
            raise ValueError(f"--rename gives {old!r} two new names ({mapping[old]!r} and {new!r}); pass one")
        mapping[old] = new
    return mapping


def _checked_keys(rename: Mapping[str, str], drop: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    drop = [drop] if isinstance(drop, str) else [str(key).strip() for key in drop]
    for key in [*rename, *rename.values(), *drop]:
        if key in DEFAULT_FEATURES:
            raise ValueError(
                f"{key!r} is one of the index columns every LeRobot dataset has "
                f"({', '.join(DEFAULT_FEATURES)}); --rename and --drop apply to the other features"
            )
    both = sorted(set(rename) & set(drop))
    if both:
        raise ValueError(f"{both[0]!r} is both renamed (--rename) and dropped (--drop); pass one of them")
    if len(set(drop)) != len(drop):
        raise ValueError(f"--drop names a feature twice: {drop}")
    return dict(rename), drop


class DatasetView:
    """A LeRobot dataset seen with some feature keys left out (``drop``) and others renamed (``rename``:
    {old: new}, applied after the drop; keys the dataset lacks are ignored).

    Has the dataset attributes the training windows and policy configs read: ``root``, ``fps``,
    ``features``, ``tasks``, ``episodes``, ``num_frames``, ``num_episodes``, ``stats``, ``column(name)``,
    ``images(key, cache_dir=...)`` and ``camera_keys``, all under the new names. Reads go to the dataset.
    """

    def __init__(
        self, dataset: Any, rename: Mapping[str, str] | None = None, drop: Iterable[str] = ()
    ) -> None:
        rename, drop = _checked_keys(key_map(rename), drop)
        self.dataset = dataset
        self.root = dataset.root
        self.fps = dataset.fps
        self.tasks = dataset.tasks
        self.episodes = dataset.episodes
        self.num_frames = dataset.num_frames
        self.num_episodes = len(dataset.episodes)
        self._source: dict[str, str] = {}  # new name -> the dataset's name
        for name in dataset.features:
            if name in drop:
                continue
            new = rename.get(name, name)
            if new in self._source:
                raise ValueError(
                    f"--rename {name}={new}: the dataset at {dataset.root} already has {new!r}; leave one of "
                    f"them out with --drop"
                )
            self._source[new] = name

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return {new: self.dataset.features[old] for new, old in self._source.items()}

    @property
    def stats(self) -> dict[str, Any]:
        stats = self.dataset.stats
        return {new: stats[old] for new, old in self._source.items() if old in stats}

    @property
    def camera_keys(self) -> list[str]:
        return [name for name, ft in self.features.items() if ft.get("dtype") in _CAMERA_DTYPES]

    def column(self, name: str) -> np.ndarray:
        return self.dataset.column(self._original(name))

    def images(self, key: str, *, cache_dir: str | Path | None = None) -> np.ndarray:
        return self.dataset.images(self._original(key), cache_dir=cache_dir)

    def _original(self, name: str) -> str:
        if name not in self._source:
            raise KeyError(
                f"no feature {name!r} in {self.root} (after --rename/--drop); features: "
                f"{sorted(self._source)}"
            )
        return self._source[name]

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"DatasetView({self.dataset!r}, features={sorted(self._source)})"


def with_keys(
    datasets: Sequence[Any],
    rename: Mapping[str, str] | Iterable[str] | None = None,
    drop: Iterable[str] | None = None,
) -> list[Any]:
    """``datasets`` as ``DatasetView``s with ``rename`` / ``drop`` applied (the datasets themselves when
    both are empty). Every renamed or dropped key must be a feature of at least one dataset."""
    rename, drop = _checked_keys(key_map(rename), drop or [])
    if not rename and not drop:
        return list(datasets)
    for flag, keys in (("--drop", drop), ("--rename", list(rename))):
        for key in keys:
            if not any(key in dataset.features for dataset in datasets):
                roots = ", ".join(str(dataset.root) for dataset in datasets)
                raise ValueError(
                    f"{flag} {key}: no dataset has a feature {key!r} ({roots}); check the spelling"
                )
    return [DatasetView(dataset, rename, drop) for dataset in datasets]


def open_datasets(
    roots: Sequence[str | Path],
    weights: Sequence[float] | None = None,
    rename: Mapping[str, str] | Iterable[str] | None = None,
    drop: Iterable[str] | None = None,
) -> Any:
    """The LeRobot datasets at ``roots`` with ``rename`` / ``drop`` applied: one dataset (a
    ``LeRobotDataset``, or a ``DatasetView`` when keys change) or, for several, a ``DatasetMixture``
    sampled with ``weights`` (default: each dataset's share of the frames)."""
    from mode_policy.data.lerobot import LeRobotDataset

    datasets = with_keys([LeRobotDataset(root) for root in roots], rename, drop)
    return datasets[0] if len(datasets) == 1 else DatasetMixture(datasets, weights)


def check_compatible(datasets: Sequence[Any]) -> None:
    """Refuse datasets that cannot be trained on together: another fps, or a feature another shape, a
    camera in one and a number in another, or present in one and absent from another (one line naming
    both roots and the field)."""
    first = datasets[0]
    for other in datasets[1:]:
        pair = f"the datasets at {first.root} and {other.root}"
        if other.fps != first.fps:
            raise ValueError(
                f"{pair} have different fps ({first.fps} and {other.fps}): their windows and chunks would "
                "span different times; resample one of them to the other's fps"
            )
        for name in {**first.features, **other.features}:
            mine, theirs = first.features.get(name), other.features.get(name)
            if mine is None or theirs is None:
                has, lacks = (first, other) if theirs is None else (other, first)
                raise ValueError(
                    f"feature {name!r} is in the dataset at {has.root} but not in {lacks.root}: map it onto "
                    f"a feature the other has with --rename {name}=<key>, or leave it out with --drop {name}"
                )
            if is_numeric(mine) != is_numeric(theirs):
                raise ValueError(
                    f"{pair} disagree on {name!r}: dtype {mine.get('dtype')} vs {theirs.get('dtype')}; "
                    f"rename one (--rename) or leave it out (--drop {name})"
                )
            if feature_shape(mine) != feature_shape(theirs):
                optional = "" if name in (STATE_KEY, ACTION_KEY) else f", or leave it out (--drop {name})"
                raise ValueError(
                    f"{pair} disagree on the shape of {name!r}: {list(feature_shape(mine))} vs "
                    f"{list(feature_shape(theirs))}; train on data with the same layout{optional}"
                )


def pooled_stats(stats: Sequence[Mapping[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """Each feature's stats over the mixture: ``merge_stats`` of the datasets' entries weighted by
    ``weights`` (features every dataset has stats for)."""
    common = [name for name in stats[0] if all(name in part for part in stats[1:])]
    return {name: merge_stats([part[name] for part in stats], weights) for name in common}


class DatasetMixture:
    """Datasets (``LeRobotDataset`` or ``DatasetView``) checked to train together (``check_compatible``).

    weights: the probability of drawing from each (normalised; default: proportional to its frames, as if
    the datasets were concatenated). Attributes: ``datasets``, ``names`` (unique folder names), ``roots``,
    ``weights`` (N,) float64, ``tasks`` (merged vocabulary), ``task_maps`` (per dataset, local task_index
    -> merged), ``features`` and ``fps`` (shared), ``stats`` (pooled, ``pooled_stats``), ``dataset_stats``
    ({name: that dataset's stats}), ``num_frames``; ``root`` is the first dataset's (for messages that
    name one folder: the datasets share their features).
    """

    def __init__(self, datasets: Sequence[Any], weights: Sequence[float] | None = None) -> None:
        if not datasets:
            raise ValueError("a dataset mixture needs at least one dataset (--dataset)")
        check_compatible(datasets)
        self.datasets = list(datasets)
        self.roots = [Path(dataset.root) for dataset in datasets]
        self.names = dataset_names(self.roots)
        sizes = [dataset.num_frames for dataset in datasets]
        self.weights = mixture_weights(sizes if weights is None else weights, len(datasets))
        for root, size, weight in zip(self.roots, sizes, self.weights, strict=True):
            if size < 1 and weight > 0:
                raise ValueError(
                    f"the dataset at {root} has no frames but weight {weight:g}; give it weight 0"
                )
        self.tasks, self.task_maps = merge_tasks([dataset.tasks for dataset in datasets])
        self.root = self.roots[0]
        self.fps = datasets[0].fps
        self.features = datasets[0].features
        self.num_frames = sum(sizes)
        self.dataset_stats = {name: dataset.stats for name, dataset in zip(self.names, datasets, strict=True)}
        self.stats = pooled_stats(list(self.dataset_stats.values()), self.weights)

    @property
    def camera_keys(self) -> list[str]:
        return [name for name, ft in self.features.items() if ft.get("dtype") in _CAMERA_DTYPES]

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}: {weight:.3g}" for name, weight in zip(self.names, self.weights, strict=True)
        )
        return f"DatasetMixture({parts}; frames={self.num_frames}, tasks={len(self.tasks)})"


class MixtureDataset(Dataset):
    """The training items of every dataset of ``mixture``, one after the other.

    parts: one map-style dataset per mixture dataset, in order (``ActionChunkDataset`` items). Global index
    ``i`` is item ``i - offsets[d]`` of ``parts[d]`` (``locate``). Items are the part's, with
    ``task_index`` (int64 scalar) remapped into ``mixture.tasks`` and ``dataset_index`` (int64 scalar, d)
    added; ``task`` (the instruction string) is unchanged. ``sizes`` (N,) and ``offsets`` (N,) int64.
    """

    def __init__(self, parts: Sequence[Dataset], mixture: DatasetMixture) -> None:
        if len(parts) != len(mixture.datasets):
            raise ValueError(
                f"MixtureDataset needs one part per dataset ({len(mixture.datasets)}), got {len(parts)}"
            )
        self.parts = list(parts)
        self.tasks = mixture.tasks
        self.task_maps = [torch.from_numpy(m) for m in mixture.task_maps]
        self.sizes = np.array([len(part) for part in parts], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset, local index) of global ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} mixture items")
        # The last dataset starting at or before index (an empty one shares its offset with the next).
        dataset = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return dataset, int(index - self.offsets[dataset])

    def __getitem__(self, index: int) -> dict[str, Any]:
        dataset, local = self.locate(index)
        item = dict(self.parts[dataset][local])
        item[TASK_INDEX_KEY] = self.task_maps[dataset][int(item[TASK_INDEX_KEY])].clone()
        item[DATASET_INDEX_KEY] = torch.tensor(dataset, dtype=torch.int64)
        return item
