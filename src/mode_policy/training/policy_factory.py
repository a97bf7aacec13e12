"""Build a MoDE policy config for a dataset, with ``key=value`` overrides from the command line.

overrides = parse_overrides(["denoiser.width=64", "n_action_steps=4", "language_encoder=onehot"])
config = policy_config_for(dataset, overrides)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.nn.cnn.config import CNNDenoiserConfig
from mode_policy.nn.config import INTERFACE_FIELDS, MoDEConfig
from mode_policy.policies.configuration_mode import MoDEPolicyConfig

# Derived from the dataset (and, for the denoiser, from the policy fields): overriding them would only
# produce a policy that cannot read the data.
DERIVED_KEYS = ("state_dim", "action_dim")
DERIVED_DENOISER_KEYS = INTERFACE_FIELDS


def valid_override_keys() -> list[str]:
    """Every key ``--set`` accepts: policy fields, and ``denoiser.<field>`` for the architecture.

    ``denoiser.kind=cnn`` swaps the MoDE transformer for the CNN Diffusion Policy baseline, whose fields
    (``denoiser.down_dims`` ...) then apply.
    """
    top = [f.name for f in fields(MoDEPolicyConfig) if f.name not in (*DERIVED_KEYS, "denoiser")]
    denoiser_fields = {f.name for f in (*fields(MoDEConfig), *fields(CNNDenoiserConfig))}
    nested = [f"denoiser.{name}" for name in denoiser_fields - set(DERIVED_DENOISER_KEYS)]
    return sorted(top) + sorted([*nested, "denoiser.kind"])


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["a=1", "denoiser.width=64"]`` -> ``{"a": 1, "denoiser.width": 64}``, keys checked.

    Values are read as JSON when they parse (numbers, true/false, null, lists, objects), else kept as
    strings, so ``language_encoder=onehot`` needs no quotes.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        pairs = dict(items)
    else:
        pairs = {}
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set expects key=value, got {item!r}")
            pairs[key.strip()] = _parse_value(raw.strip())
    valid = valid_override_keys()
    unknown = sorted(k for k in pairs if k not in valid)
    if unknown:
        raise ValueError(f"unknown policy config key(s) {unknown}; valid keys: {', '.join(valid)}")
    return pairs


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def policy_config_for(dataset: Any, overrides: Mapping[str, Any] | None = None) -> MoDEPolicyConfig:
    """The policy config for a LeRobot dataset: sizes and task list from the data, then the overrides."""
    overrides = parse_overrides(overrides)
    image_keys = overrides.get("image_keys") or []
    needed = (ACTION_KEY,) if image_keys and overrides.get("use_state") is False else (STATE_KEY, ACTION_KEY)
    for feature in needed:
        if feature not in dataset.features:
            raise ValueError(
                f"the dataset at {dataset.root} has no {feature!r} feature (found "
                f"{sorted(dataset.features)}); a MoDE policy trains on state observations and actions"
            )
    values = MoDEPolicyConfig().to_dict()
    values.update(
        action_dim=int(dataset.features[ACTION_KEY]["shape"][0]),
        tasks=list(dataset.tasks),
    )
    if STATE_KEY in dataset.features:
        values["state_dim"] = int(dataset.features[STATE_KEY]["shape"][0])
    if image_keys:
        cameras = [k for k, ft in dataset.features.items() if ft.get("dtype") in ("image", "video")]
        unknown = [k for k in image_keys if k not in cameras] if isinstance(image_keys, list) else image_keys
        if unknown:
            raise ValueError(
                f"image_keys {unknown} are not camera features of the dataset at {dataset.root}; its "
                f"cameras: {cameras}"
            )
        # The simulator renders evaluation frames at the size the policy was trained on.
        height, width = (int(d) for d in dataset.features[image_keys[0]]["shape"][:2])
        values["image_size"] = height if height == width else [height, width]
    kind = overrides.pop("denoiser.kind", "mode")
    if kind not in ("mode", "cnn"):
        raise ValueError(f"denoiser.kind must be 'mode' (the transformer family) or 'cnn', got {kind!r}")
    if kind == "cnn":
        values["denoiser"] = CNNDenoiserConfig().to_dict()
    for key, value in overrides.items():
        if key.startswith("denoiser."):
            values["denoiser"][key.removeprefix("denoiser.")] = value
        else:
            values[key] = value
    return MoDEPolicyConfig.from_dict(values)
