"""Fine-tuning: a run that starts from a trained policy (``train(..., init_from=DIR, freeze=[...])``).

The new run's policy is the source's (its type and architecture, ``--set`` overrides on top) with the new
dataset's normalisation stats and tasks; its weights start as the source's. Instructions the source never
saw work with the language encoders (a new string is a new embedding); with the one-hot encoder, whose
goal vector has one entry per known task, new tasks are refused unless ``extend_tasks``: they are then
appended to the vocabulary and the goal projection's new input columns start at zero. ``freeze`` stops
the gradient of parameter groups the policy type names (``parameter_groups``; MoDE: router, experts,
attention, encoders). The exported policy's config records where it came from (``init_from``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from mode_policy.keys import ACTION_KEY
from mode_policy.policies.base import NORMALIZER_PREFIXES
from mode_policy.policies.config import DATASET_FIELDS, apply_overrides, dataset_layout, parse_overrides
from mode_policy.policies.folders import resolve_policy_dir
from mode_policy.policies.registry import load_policy


def source_policy(init_from: str | Path) -> Any:
    """The trained policy to start from; a folder that is not a policy is one clear error."""
    try:
        return load_policy(init_from, device="cpu")
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"--init-from {init_from}: {error}") from None


def finetune_config(
    source: Any, init_from: str | Path, dataset: Any, overrides: Any, *, extend_tasks: bool, freeze: list[str]
) -> Any:
    """The new run's policy config: the source's, fitted to ``dataset`` (same layout, its tasks)."""
    config_class = type(source.config)
    if not callable(getattr(type(source), "compute_loss", None)):
        raise ValueError(f"--init-from {init_from}: a {source.name} policy cannot be trained further")
    layout = dataset_layout(dataset, needs=(*source.config.observation_keys, ACTION_KEY))
    for name in DATASET_FIELDS:
        if name in layout and layout[name] != getattr(source.config, name):
            raise ValueError(
                f"the policy at {init_from} has {name}={getattr(source.config, name)}, the dataset at "
                f"{dataset.root} {layout[name]}: fine-tune on data with the same state and action layout"
            )
    values = source.config.to_dict()
    values["tasks"] = _tasks(source.config, layout["tasks"], extend_tasks)
    values["init_from"] = {
        "path": str(resolve_policy_dir(init_from)[0].resolve()),
        "policy_type": source.name,
        "weights_sha256": _weights_digest(source),
        "frozen": list(freeze),
    }
    return config_class.from_dict(
        apply_overrides(values, parse_overrides(overrides, config_class.override_keys()))
    )


def _tasks(config: Any, new: list[str], extend_tasks: bool) -> list[str]:
    if config.language_encoder != "onehot":
        return list(new)  # any instruction embeds: the fine-tuned policy knows the new data's tasks
    unknown = [task for task in new if task not in config.tasks]
    if unknown and not extend_tasks:
        raise ValueError(
            f"the policy's one-hot task encoder knows {len(config.tasks)} tasks, not {unknown}; pass "
            "--extend-tasks to append them (their goal weights start at zero), or fine-tune a policy with "
            "a language encoder"
        )
    return [*config.tasks, *unknown]  # the source's tasks keep their one-hot positions


def _weights_digest(policy: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(policy.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def load_initial_weights(policy: Any, source: Any) -> None:
    """Copy the source's weights into ``policy`` (built for the new data); the normaliser keeps the new
    dataset's stats (the source's, one set or per dataset, are left out). A one-hot vocabulary that grew adds
    zero input columns to the goal projection."""
    target = policy.state_dict()
    weights = {k: v for k, v in source.state_dict().items() if not k.startswith(NORMALIZER_PREFIXES)}
    missing = sorted(set(target) - set(weights) - {k for k in target if k.startswith(NORMALIZER_PREFIXES)})
    unexpected = sorted(set(weights) - set(target))
    grown = len(policy.config.tasks) - len(source.config.tasks)
    resized = []
    for name, tensor in weights.items():
        if name not in target or target[name].shape == tensor.shape:
            continue
        wanted = target[name].shape
        if grown > 0 and tensor.dim() == 2 and wanted == (tensor.shape[0], tensor.shape[1] + grown):
            weights[name] = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], grown)], dim=1)
        else:
            resized.append(f"{name} {tuple(tensor.shape)} -> {tuple(wanted)}")
    if missing or unexpected or resized:
        problems = "; ".join(
            f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("other shapes", resized))
            if names
        )
        raise ValueError(
            f"the weights of --init-from {policy.config.init_from['path']} do not fit the policy built for "
            f"this dataset ({problems}); leave out --set overrides that change the architecture"
        )
    policy.load_state_dict(weights, strict=False)


def freeze_groups(policy: Any, groups: list[str]) -> int:
    """Stop the gradient of the named parameter groups; returns how many parameters were frozen."""
    if not groups:
        return 0
    if not callable(getattr(policy, "parameter_groups", None)):
        raise ValueError(
            f"a {policy.name} policy names no parameter groups, so --freeze does not apply to it"
        )
    named = policy.parameter_groups()
    unknown = [group for group in groups if group not in named]
    if unknown:
        raise ValueError(f"unknown --freeze group(s) {unknown}; a {policy.name} policy has {sorted(named)}")
    frozen = 0
    for group in groups:
        for param in named[group]:
            if param.requires_grad:
                param.requires_grad_(False)
                frozen += param.numel()
    return frozen


def check_freeze_names(groups: Any) -> list[str]:
    """``"router,experts"`` or a list -> a list of names (their existence is checked on the policy)."""
    if groups is None:
        return []
    names = groups.split(",") if isinstance(groups, str) else list(groups)
    names = [str(name).strip() for name in names if str(name).strip()]
    if len(set(names)) != len(names):
        raise ValueError(f"--freeze names a group twice: {names}")
    return names
