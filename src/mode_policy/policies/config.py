"""PolicyConfig: the fields every chunking policy type shares, saved as config.json with its type tag.

A policy type's config subclasses it (``@dataclass class MyPolicyConfig(PolicyConfig)``) and gets: the
observation/action layout and receding horizon (state_dim, action_dim, n_obs_steps, chunk_size,
n_action_steps), language conditioning, normalisation, their validation (``validate``, which subclasses
extend), JSON with the registry tag, ``for_dataset`` (sizes and tasks from a dataset, then ``--set``
overrides) and ``override_keys``. The registration (``@register_policy``) sets the tag.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from mode_policy.config_io import TaggedConfig, check_positive_int
from mode_policy.keys import ACTION_KEY, IMAGE_KEY_PREFIX, STATE_KEY
from mode_policy.nn.encoders.language import LANGUAGE_ENCODERS, known_embedding_dim
from mode_policy.policies.normalizer import NORMALIZATION_MODES


def default_normalization() -> dict[str, str]:
    return {STATE_KEY: "mean_std", ACTION_KEY: "min_max"}


# Fields a dataset decides (``for_dataset``); a ``--set`` of them could only build a policy that cannot
# read the data.
DATASET_FIELDS = ("state_dim", "action_dim")


@dataclass
class PolicyConfig(TaggedConfig):
    """What a policy reads and writes, and how it replans (a chunk every ``n_action_steps`` steps)."""

    tag_key: ClassVar[str] = "policy_type"  # config.json says which policy type reads it
    default_tag: ClassVar[str] = "mode"  # MoDE policies were saved before the tag existed
    config_file_hint: ClassVar[str] = "save_pretrained()"

    # Observation and action layout.
    state_dim: int = 39
    action_dim: int = 4
    n_obs_steps: int = 1  # observations in the history, one token each
    chunk_size: int = 10  # actions predicted per model call
    n_action_steps: int = 5  # of which executed before predicting again (receding horizon)
    # Language conditioning: "minilm" (offline all-MiniLM-L6-v2), "onehot" (needs tasks), "clip" (needs path).
    language_encoder: str = "minilm"
    language_encoder_path: str | None = None
    tasks: list[str] = field(default_factory=list)
    # Normalisation per feature: "mean_std", "min_max" (to [-1, 1]) or "identity".
    normalization_mapping: dict[str, str] = field(default_factory=default_normalization)
    # Clamp actions to the data range before unnormalising (applies when actions are "min_max").
    clip_sample: bool = True
    # Where a fine-tuned policy started (mode_policy.training.finetune): path, policy_type, weights_sha256,
    # frozen groups; None for a policy trained from scratch.
    init_from: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def file_owner(cls) -> str:
        return cls.__name__.removesuffix("Config")  # MoDEPolicyConfig's file is MoDEPolicy's config.json

    @property
    def owner(self) -> str:
        return type(self).__name__

    def validate(self) -> None:
        """Check the shared fields; messages name the field and the fix. Subclasses call it first."""
        for name in ("state_dim", "action_dim", "n_obs_steps", "chunk_size", "n_action_steps"):
            check_positive_int(self.owner, name, getattr(self, name))
        if self.n_action_steps > self.chunk_size:
            raise ValueError(
                f"{self.owner}.n_action_steps ({self.n_action_steps}) cannot exceed chunk_size "
                f"({self.chunk_size}): the policy executes actions from one predicted chunk before "
                "predicting the next; lower n_action_steps or raise chunk_size"
            )
        validate_language(self.owner, self.language_encoder, self.tasks, self.language_encoder_path)
        validate_normalization(self.owner, self.normalization_mapping, self.normalized_features)
        if not isinstance(self.clip_sample, bool):
            raise ValueError(f"{self.owner}.clip_sample must be true or false, got {self.clip_sample!r}")
        if self.init_from is not None and not isinstance(self.init_from, dict):
            raise ValueError(f"{self.owner}.init_from must be null or an object, got {self.init_from!r}")

    # Derived ------------------------------------------------------------------------------------------
    @property
    def normalized_features(self) -> tuple[str, ...]:
        """The features the policy normalises (a mode is needed for each)."""
        return (STATE_KEY, ACTION_KEY)

    @property
    def observation_keys(self) -> list[str]:
        """The observation features the policy reads (the state; a policy with cameras adds their keys)."""
        return [STATE_KEY]

    @property
    def cameras(self) -> list[str]:
        """Simulator camera names of the camera keys read (``observation.images.<camera>``)."""
        return [
            k.removeprefix(IMAGE_KEY_PREFIX) for k in self.observation_keys if k.startswith(IMAGE_KEY_PREFIX)
        ]

    @property
    def goal_dim(self) -> int | None:
        """Size of the instruction embedding, when known without loading the encoder."""
        return known_embedding_dim(self.language_encoder, self.tasks, self.language_encoder_path)

    # From a dataset, with overrides --------------------------------------------------------------------
    @classmethod
    def override_keys(cls) -> list[str]:
        """Every key ``--set`` accepts for this policy type."""
        return sorted(f.name for f in fields(cls) if f.name not in (*DATASET_FIELDS, "init_from"))

    @classmethod
    def for_dataset(cls, dataset: Any, overrides: Mapping[str, Any] | None = None) -> PolicyConfig:
        """The config for a LeRobot dataset: sizes and task list from the data, then ``overrides``
        (``{"field": value}``, ``"a.b"`` for a nested field)."""
        values = cls().to_dict()
        values.update(dataset_layout(dataset))
        return cls.from_dict(apply_overrides(values, overrides))


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``values`` (a config's dict) with ``{"field": value}`` set in place, ``"a.b"`` for a nested field."""
    for key, value in (overrides or {}).items():
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return values


def dataset_layout(dataset: Any, needs: tuple[str, ...] = (STATE_KEY, ACTION_KEY)) -> dict[str, Any]:
    """state_dim (when the dataset has states), action_dim and tasks of a LeRobot dataset, after checking
    that it holds the features ``needs`` names."""
    for feature in needs:
        if feature not in dataset.features:
            raise ValueError(
                f"the dataset at {dataset.root} has no {feature!r} feature (found "
                f"{sorted(dataset.features)}); the policy reads {' and '.join(needs)}"
            )
    layout = {"action_dim": int(dataset.features[ACTION_KEY]["shape"][0]), "tasks": list(dataset.tasks)}
    if STATE_KEY in dataset.features:
        layout["state_dim"] = int(dataset.features[STATE_KEY]["shape"][0])
    return layout


def parse_overrides(items: Iterable[str] | Mapping[str, Any] | None, valid: list[str]) -> dict[str, Any]:
    """``["a=1", "denoiser.width=64"]`` -> ``{"a": 1, "denoiser.width": 64}``, keys checked against ``valid``.

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
    unknown = sorted(k for k in pairs if k not in valid)
    if unknown:
        raise ValueError(f"unknown policy config key(s) {unknown}; valid keys: {', '.join(valid)}")
    return pairs


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def validate_language(owner: str, encoder: Any, tasks: Any, path: Any) -> None:
    """Check a language-encoder choice: its name, the task list it may need, a CLIP path."""
    if encoder not in LANGUAGE_ENCODERS:
        raise ValueError(
            f"{owner}.language_encoder must be one of {list(LANGUAGE_ENCODERS)}, got {encoder!r}"
        )
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{owner}.tasks must be a list of task strings (e.g. dataset.tasks)")
    if encoder == "onehot":
        if not tasks:
            raise ValueError(
                f"{owner}.language_encoder='onehot' needs tasks=[...] (the instructions, in task_index "
                "order, e.g. dataset.tasks)"
            )
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"{owner}.tasks must be distinct for the one-hot encoder")
    if encoder == "clip" and not path:
        raise ValueError(
            f"{owner}.language_encoder='clip' needs language_encoder_path=<local directory with CLIP text "
            "weights and tokenizer>"
        )


def validate_normalization(owner: str, mapping: Any, features: tuple[str, ...]) -> None:
    """Check a {feature: mode} normalisation mapping: a mode for each of ``features``, all modes known."""
    if not isinstance(mapping, dict):
        raise ValueError(f"{owner}.normalization_mapping must be a dict {{feature: mode}}")
    for feature in features:
        if feature not in mapping:
            raise ValueError(
                f"{owner}.normalization_mapping needs a mode for {feature!r} "
                f"(one of {list(NORMALIZATION_MODES)})"
            )
    for feature, mode in mapping.items():
        if mode not in NORMALIZATION_MODES:
            raise ValueError(
                f"{owner}.normalization_mapping[{feature!r}] must be one of {list(NORMALIZATION_MODES)}, "
                f"got {mode!r}"
            )
