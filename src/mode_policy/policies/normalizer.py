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
"""

from __future__ import annotations

from collections.abc import Mapping
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
