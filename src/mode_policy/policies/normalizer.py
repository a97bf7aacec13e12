"""Feature normalisation from dataset statistics, kept as buffers so it saves with the model weights.

normalizer = Normalizer(dataset.stats, {"observation.state": "mean_std", "action": "min_max"})
state = normalizer.normalize("observation.state", raw_state)     # (..., state_dim), zero mean, unit std
action = normalizer.unnormalize("action", model_action)          # [-1, 1] -> the dataset's [min, max]

Modes (Diffusion Policy / LeRobot convention):
- ``"mean_std"``: (x - mean) / std.
- ``"min_max"``: maps [min, max] affinely onto [-1, 1]; the diffusion model then works in a known range.
- ``"identity"``: untouched.
A dimension that never varies in the data (std or max - min below ``eps``, e.g. a constant coordinate of
a Meta-World observation) gets scale 1 instead of 1/eps: dividing by ~0 would turn the smallest change at
evaluation time into a huge input. Such a dimension normalises to ``x - mean`` (``x - centre`` for min_max).

A policy trained on a dataset mixture with per-dataset normalisation keeps every dataset's stats
(``PerDatasetStats``, ``DatasetNormalizers``): in training each sample is normalised with its own dataset's
(``DatasetNormalizers.for_samples(dataset_index)``); at inference with one chosen dataset's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

NORMALIZATION_MODES = ("mean_std", "min_max", "identity")
_REQUIRED = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "identity": ()}


class Normalizer(nn.Module):
    """Per-feature affine normalisation: ``normalized = (x - offset) * inv_scale``.

    stats: LeRobot's stats.json layout ``{feature: {"mean", "std", "min", "max": list | np.ndarray}}``;
    may be None when the buffers are loaded afterwards (``shapes`` then gives each feature's size).
    modes: ``{feature: "mean_std" | "min_max" | "identity"}``; only these features are normalised.
    shapes: optional ``{feature: size}``; when given, stats of another size are rejected.
    """

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Any]] | None,
        modes: Mapping[str, str],
        *,
        shapes: Mapping[str, int] | None = None,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"Normalizer eps must be > 0, got {eps}")
        self.modes = dict(modes)
        self.eps = eps
        self.features = nn.ModuleDict()
        self._names: dict[str, str] = {}  # feature -> ModuleDict key ('.' is not allowed in module names)
        self._verified: set[str] = set()
        for feature, mode in self.modes.items():
            if mode not in NORMALIZATION_MODES:
                raise ValueError(
                    f"unknown normalization mode {mode!r} for {feature!r}; valid: {list(NORMALIZATION_MODES)}"
                )
            if mode == "identity":
                continue
            size = None if shapes is None else shapes.get(feature)
            if stats is None:
                if size is None:
                    raise ValueError(
                        f"Normalizer without stats needs shapes[{feature!r}] to size its buffers; pass the "
                        "dataset stats (dataset.stats) or shapes={...}"
                    )
                offset, scale = torch.full((size,), float("nan")), torch.full((size,), float("nan"))
            else:
                offset, scale = _affine(feature, mode, stats, size, eps)
            key = feature.replace(".", "__")
            self._names[feature] = key
            self.features[key] = _FeatureStats(offset, scale)
        # Loading new buffers (from_pretrained, load_state_dict) must re-run the "stats present" check.
        # A module-level function, not a lambda: the policy must stay picklable (ddp_spawn, deepcopy).
        self.register_load_state_dict_post_hook(_forget_verification)

    def normalize(self, feature: str, x: torch.Tensor) -> torch.Tensor:
        """x: (..., size) raw -> (..., size) normalised."""
        stats = self._stats(feature)
        if stats is None:
            return x
        return (x - stats.offset.to(x.dtype)) / stats.scale.to(x.dtype)

    def unnormalize(self, feature: str, x: torch.Tensor) -> torch.Tensor:
        """x: (..., size) normalised -> (..., size) in the data's units."""
        stats = self._stats(feature)
        if stats is None:
            return x
        return x * stats.scale.to(x.dtype) + stats.offset.to(x.dtype)

    def size(self, feature: str) -> int | None:
        """Feature size held by the buffers (None for identity features)."""
        stats = self._stats(feature, verify=False)
        return None if stats is None else stats.offset.numel()

    def _stats(self, feature: str, verify: bool = True) -> _FeatureStats | None:
        if feature not in self.modes:
            raise KeyError(f"Normalizer has no mode for {feature!r}; it normalises {sorted(self.modes)}")
        if self.modes[feature] == "identity":
            return None
        stats = self.features[self._names[feature]]
        if verify and feature not in self._verified:
            # Checked once per feature (a host sync), again after buffers are reloaded.
            if not bool(torch.isfinite(stats.offset).all() and torch.isfinite(stats.scale).all()):
                raise RuntimeError(
                    f"Normalizer has no statistics for {feature!r}: build the policy with "
                    "dataset_stats=dataset.stats, or load a trained one with from_pretrained"
                )
            self._verified.add(feature)
        return stats

    def extra_repr(self) -> str:
        return f"modes={self.modes}, eps={self.eps}"


class _FeatureStats(nn.Module):
    def __init__(self, offset: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("offset", offset.float())  # (size,)
        self.register_buffer("scale", scale.float())  # (size,), the data range that maps to unit range


def _affine(
    feature: str, mode: str, stats: Mapping[str, Mapping[str, Any]], size: int | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale) with normalized = (x - offset) / scale, from the stats a mode needs."""
    if feature not in stats:
        raise KeyError(
            f"dataset stats have no entry for {feature!r} (needed for {mode!r} normalization); found "
            f"{sorted(stats)}. Recompute them with mode_policy.data.stats.compute_stats"
        )
    values = {}
    for name in _REQUIRED[mode]:
        if name not in stats[feature]:
            raise KeyError(
                f"dataset stats for {feature!r} lack {name!r} (needed for {mode!r} normalization); "
                f"found {sorted(stats[feature])}"
            )
        array = np.asarray(stats[feature][name], dtype=np.float64).reshape(-1)
        if size is not None and array.size != size:
            raise ValueError(
                f"dataset stats {feature!r}/{name!r} have {array.size} values but the policy expects {size}; "
                "do the stats belong to this dataset and config?"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"dataset stats {feature!r}/{name!r} contain NaN or inf")
        values[name] = torch.from_numpy(array)
    if mode == "mean_std":
        offset, scale = values["mean"], values["std"]
        if (scale < 0).any():
            raise ValueError(f"dataset stats {feature!r}/'std' has negative values")
    else:
        low, high = values["min"], values["max"]
        if (high < low).any():
            raise ValueError(f"dataset stats {feature!r} have max < min in some dimension")
        offset, scale = (high + low) / 2, (high - low) / 2
    # Constant dimensions: scale 1 (see the module docstring). For min_max, eps guards the full range.
    threshold = eps if mode == "mean_std" else eps / 2
    scale = torch.where(scale < threshold, torch.ones_like(scale), scale)
    return offset.float(), scale.float()


def _forget_verification(module: Normalizer, incompatible_keys) -> None:
    module._verified.clear()


# Per-dataset normalisation (a policy trained on a dataset mixture with normalization="per-dataset") -------
PER_DATASET = "per-dataset"  # stats.json's "normalization" when it holds the stats of several datasets


@dataclass
class PerDatasetStats:
    """The stats of every dataset of a training mixture, and the one a policy normalises with at inference.

    datasets: ``{name: stats}`` (LeRobot stats.json layout each) in the mixture's order: a batch's
    ``dataset_index`` d picks the d-th. inference: the name used when a batch does not say which dataset
    its samples come from (inference, validation); default the first. In stats.json:
    ``{"normalization": "per-dataset", "inference_dataset": name, "datasets": {name: stats}}``.
    """

    datasets: dict[str, Mapping[str, Mapping[str, Any]]]
    inference: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.datasets, Mapping) or not self.datasets:
            raise ValueError("per-dataset stats need the stats of at least one dataset, by name")
        if not all(isinstance(name, str) and isinstance(s, Mapping) for name, s in self.datasets.items()):
            raise ValueError("per-dataset stats map each dataset name to its stats {feature: {stat: values}}")
        self.datasets = dict(self.datasets)
        if self.inference is None:
            self.inference = next(iter(self.datasets))
        check_dataset_name(self.inference, list(self.datasets))

    def to_json(self) -> dict[str, Any]:
        """stats.json's content (numbers as lists)."""
        return {
            "normalization": PER_DATASET,
            "inference_dataset": self.inference,
            "datasets": {name: json_ready(stats) for name, stats in self.datasets.items()},
        }

    @staticmethod
    def in_json(values: Mapping[str, Any]) -> bool:
        """Whether a stats.json holds per-dataset stats (else it is one set: ``{feature: stats}``)."""
        return values.get("normalization") == PER_DATASET

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> PerDatasetStats:
        datasets = values.get("datasets")
        if not isinstance(datasets, Mapping) or not all(isinstance(v, Mapping) for v in datasets.values()):
            raise ValueError("'datasets' must map each dataset name to its stats")
        return cls(dict(datasets), values.get("inference_dataset"))


def check_dataset_name(name: Any, names: list[str]) -> None:
    """ValueError unless ``name`` is one of the training datasets ``names``."""
    if name not in names:
        raise ValueError(f"unknown dataset {name!r}: the policy holds the stats of {names}; pass one of them")


class DatasetNormalizers(nn.Module):
    """One ``Normalizer`` per training dataset (``names`` in the mixture's order), for per-sample stats.

    ``for_samples(dataset_index)`` gives what normalises a batch whose row ``b`` comes from dataset
    ``dataset_index[b]``. Buffers: ``per_dataset.<d>.features.<feature>.{offset,scale}`` (size,).
    """

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Mapping[str, Any]]],
        modes: Mapping[str, str],
        *,
        shapes: Mapping[str, int] | None = None,
        eps: float = 1e-4,
    ) -> None:
        super().__init__()
        self.names = list(stats)
        self.per_dataset = nn.ModuleList(
            [Normalizer(s, modes, shapes=shapes, eps=eps) for s in stats.values()]
        )

    def index(self, name: str) -> int:
        check_dataset_name(name, self.names)
        return self.names.index(name)

    def for_samples(self, dataset_index: torch.Tensor) -> PerSampleNormalizer:
        """dataset_index: (B,) integers in [0, len(names))."""
        index = torch.as_tensor(dataset_index).reshape(-1)
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"batch['dataset_index'] must hold integers, got dtype {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self.names)):
            raise ValueError(
                f"batch['dataset_index'] holds {sorted(set(index.tolist()))} but the policy has the stats of "
                f"{len(self.names)} datasets ({self.names})"
            )
        return PerSampleNormalizer(self, index.long())

    def extra_repr(self) -> str:
        return f"names={self.names}"


class PerSampleNormalizer:
    """``normalize`` / ``unnormalize`` of a batch with each row's own dataset's stats (``DatasetNormalizers
    .for_samples``); tensors are (B, ..., size) with B = len(dataset_index)."""

    def __init__(self, normalizers: DatasetNormalizers, dataset_index: torch.Tensor) -> None:
        self.normalizers = normalizers
        self.dataset_index = dataset_index

    def normalize(self, feature: str, x: torch.Tensor) -> torch.Tensor:
        affine = self._affine(feature, x)
        return x if affine is None else (x - affine[0]) / affine[1]

    def unnormalize(self, feature: str, x: torch.Tensor) -> torch.Tensor:
        affine = self._affine(feature, x)
        return x if affine is None else x * affine[1] + affine[0]

    def _affine(self, feature: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(offset, scale) of each row, shaped (B, 1, ..., size) like ``x``; None for identity features."""
        per_dataset = [normalizer._stats(feature) for normalizer in self.normalizers.per_dataset]
        if per_dataset[0] is None:
            return None
        if x.dim() < 2 or x.shape[0] != self.dataset_index.numel():
            raise ValueError(
                f"{feature!r} has shape {tuple(x.shape)}, but the batch's dataset_index gives "
                f"{self.dataset_index.numel()} rows: per-dataset stats need (B, ..., size)"
            )
        index = self.dataset_index.to(x.device)
        shape = (x.shape[0], *([1] * (x.dim() - 2)), x.shape[-1])
        offset = torch.stack([s.offset for s in per_dataset])[index].reshape(shape).to(x.dtype)
        scale = torch.stack([s.scale for s in per_dataset])[index].reshape(shape).to(x.dtype)
        return offset, scale


def json_ready(
    stats: Mapping[str, Mapping[str, Any]], features: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """``stats`` (of ``features`` where given, those present) with numpy arrays as lists, for stats.json."""
    names = list(stats) if features is None else [feature for feature in features if feature in stats]
    return {
        feature: {name: np.asarray(value).tolist() for name, value in stats[feature].items()}
        for feature in names
    }
