"""Policies by type: ``@register_policy("name")`` on a ChunkingPolicy subclass; config.json's
``"policy_type"`` names the type that reads it.

policy = load_policy("runs/mt10")           # a run, a save_pretrained folder or a shipped name
cls = get_policy_class("vdd")               # unknown names list the known ones

A config.json without a type (every MoDE policy saved before types existed, the shipped
``mt10-mode-small`` among them) loads as ``"mode"``. Other packages add policy types through the
``mode_policy.policies`` entry point group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mode_policy.config_io import read_config_json
from mode_policy.policies.config import PolicyConfig
from mode_policy.policies.folders import EXPORTED_SUFFIX, POLICY_CONFIG, resolve_policy_dir
from mode_policy.registry import Registry

POLICIES: Registry = Registry(
    "policy type",
    builtins=("mode_policy.policies.mode.modeling", "mode_policy.policies.vdd.modeling"),
    entry_point_group="mode_policy.policies",
)
register_policy = POLICIES.register
TYPE_KEY = PolicyConfig.tag_key
DEFAULT_TYPE = PolicyConfig.default_tag  # what a config.json without a type is
EXPORTED_TYPE = "onnx"  # what an exported .onnx file is (mode_policy.runtime, by entry point)


def get_policy_class(name: str) -> type:
    """The policy class registered as ``name``; an unknown name raises ValueError listing the known ones."""
    return POLICIES.get(name)


def policy_config_from_dict(values: dict[str, Any]) -> PolicyConfig:
    """The config of whichever policy type ``values["policy_type"]`` names (``"mode"`` when absent)."""
    name = values.get(TYPE_KEY, DEFAULT_TYPE)
    if not isinstance(name, str):
        raise ValueError(f"{TYPE_KEY!r} must be the name of a policy type, got {name!r}")
    return get_policy_class(name).config_class.from_dict(values)


def policy_type_of(policy_dir: str | Path) -> str:
    """The type a saved policy's config.json names (``"mode"`` when it names none); an exported file's
    type is ``"onnx"``."""
    if Path(policy_dir).suffix == EXPORTED_SUFFIX:
        return EXPORTED_TYPE
    path = Path(policy_dir) / POLICY_CONFIG
    name = read_config_json(path, "the policy", "save_pretrained()").get(TYPE_KEY, DEFAULT_TYPE)
    if not isinstance(name, str):
        raise ValueError(f"{path}: {TYPE_KEY!r} must be the name of a policy type, got {name!r}")
    return name


def load_policy(
    policy: str | Path, *, device: str | None = None, inference_dataset: str | None = None, **kwargs: Any
) -> Any:
    """The policy saved at ``policy`` (a run, a ``save_pretrained`` folder or a shipped name), in eval mode,
    on ``device`` (the GPU when there is one); ``kwargs`` go to the class's ``from_pretrained``.
    inference_dataset: for a policy trained on a mixture with per-dataset stats, the training dataset whose
    stats it normalises with (``use_dataset_stats``; default: the one saved, the mixture's first)."""
    import torch

    policy_dir, _ = resolve_policy_dir(policy)
    name = policy_type_of(policy_dir)
    if name not in POLICIES.names():
        where = policy_dir if policy_dir.is_file() else policy_dir / POLICY_CONFIG
        raise ValueError(
            f"{where} has {TYPE_KEY} {name!r}, which this install cannot load; known policy types: "
            f"{', '.join(POLICIES.names())}"
        )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = get_policy_class(name).from_pretrained(policy_dir, device=device, **kwargs)
    return loaded if inference_dataset is None else loaded.use_dataset_stats(inference_dataset)


def load_policy_and_run(
    policy: Any, device: str | None = None, inference_dataset: str | None = None
) -> tuple[Any, Path | None, Path | None]:
    """(policy in eval mode, its save_pretrained folder or None, its run folder or None) for a policy object
    (passed through), a run, a ``save_pretrained`` folder or a shipped name; ``inference_dataset`` as
    ``load_policy``'s."""
    if hasattr(policy, "predict_action_chunk"):
        if inference_dataset is not None:
            policy.use_dataset_stats(inference_dataset)
        return policy.eval(), None, None
    policy_dir, run_dir = resolve_policy_dir(policy)
    return load_policy(policy_dir, device=device, inference_dataset=inference_dataset), policy_dir, run_dir
