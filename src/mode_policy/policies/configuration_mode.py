"""MoDEPolicyConfig: everything that defines a MoDE policy (LeRobot's ``configuration_*.py`` style).

config = MoDEPolicyConfig(state_dim=39, action_dim=4, language_encoder="onehot", tasks=dataset.tasks)
config.save("run/config.json"); MoDEPolicyConfig.load("run/config.json")

The denoiser's architecture sits in the nested ``denoiser`` (a :class:`MoDEConfig`). Its interface fields
(``action_dim``, ``chunk_size``, ``obs_dim``, ``num_obs_tokens``, ``num_goal_tokens``, ``goal_dim``) are
derived from the policy fields, so they are set once, here; values given for them in ``denoiser`` are
overwritten. ``goal_dim`` follows the language encoder (384 for MiniLM, ``len(tasks)`` for one-hot, the
checkpoint's projection size for CLIP, filled in when the policy is built).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mode_policy.config_io import (
    JSONConfig,
    check_field_types,
    check_known_keys,
    check_positive_int,
    read_config_json,
)
from mode_policy.diffusion.noise_distributions import make_sigma_distribution
from mode_policy.diffusion.samplers import SAMPLERS
from mode_policy.diffusion.schedules import make_schedule
from mode_policy.keys import ACTION_KEY, IMAGE_KEY_PREFIX, STATE_KEY
from mode_policy.nn.cnn.config import CNNDenoiserConfig
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.encoders.language import LANGUAGE_ENCODERS, known_embedding_dim
from mode_policy.nn.encoders.resnet import ARCHITECTURES, NORMS
from mode_policy.nn.encoders.vision import MIN_FEATURE_MAP, POOLS, feature_map_size, smallest_image_size
from mode_policy.policies.normalizer import NORMALIZATION_MODES


def default_denoiser() -> MoDEConfig:
    """Small enough to train on a CPU in minutes on Meta-World states (see the class docstring)."""
    return MoDEConfig(width=128, depth=4, heads=4, num_experts=4, top_k=2)


def default_normalization() -> dict[str, str]:
    return {STATE_KEY: "mean_std", ACTION_KEY: "min_max"}


@dataclass
class MoDEPolicyConfig(JSONConfig):
    """A MoDE policy: observation/action layout, language conditioning, denoiser, training noise, sampler.

    Defaults target state-based Meta-World (39-d state, 4-d action in [-1, 1]) on a CPU: a width-128,
    4-layer denoiser with 4 experts (top-2), i.e. about 2.0M active of 3.6M parameters; a chunk of 10
    actions of which 5 are executed before replanning; 10 DDIM steps on an exponential schedule from 80
    to 0.05 (``num_inference_steps=5, sigma_min=1.0`` reproduces the MoDE release's evaluation setting).
    """

    # Observation and action layout.
    state_dim: int = 39
    action_dim: int = 4
    n_obs_steps: int = 1  # states in the observation history, one token each
    chunk_size: int = 10  # actions predicted per model call
    n_action_steps: int = 5  # of which executed before predicting again (receding horizon)
    # Language conditioning: "minilm" (offline all-MiniLM-L6-v2), "onehot" (needs tasks), "clip" (needs path).
    language_encoder: str = "minilm"
    language_encoder_path: str | None = None
    tasks: list[str] = field(default_factory=list)
    # Normalisation per feature: "mean_std", "min_max" (to [-1, 1]) or "identity".
    normalization_mapping: dict[str, str] = field(default_factory=default_normalization)
    # Clamp sampled actions to the data range before unnormalising (applies when actions are "min_max").
    clip_sample: bool = True
    # The denoiser's architecture; its interface fields are derived (module docstring). A MoDEConfig covers
    # MoDE and every routing variant (README "Routing variants"); a CNNDenoiserConfig is the CNN baseline.
    denoiser: MoDEConfig | CNNDenoiserConfig = field(default_factory=default_denoiser)
    # Training noise levels: "loglogistic" (MoDE) or "lognormal" (EDM), with optional parameters.
    training_sigma_distribution: str = "loglogistic"
    training_sigma_params: dict[str, float] = field(default_factory=dict)
    # Sampling.
    num_inference_steps: int = 10
    sigma_min: float = 0.05
    sigma_max: float = 80.0
    schedule: str = "exponential"
    sampler: str = "ddim"
    use_expert_cache: bool = True
    # Vision (README "Images"). image_keys: camera features (e.g. "observation.images.corner"), each one
    # observation token per step from a FiLM-ResNet conditioned on the instruction; empty = state only.
    image_keys: list[str] = field(default_factory=list)
    use_state: bool = True  # also a state token per step (required when there are no image_keys)
    image_size: int | list[int] = 96  # (H, W) or square side the simulator renders at evaluation time
    vision_backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50
    vision_norm: str = "batch"  # batch | group
    vision_pool: str = "spatial_softmax"  # spatial_softmax | avg
    vision_shared: bool = False  # one encoder for every camera instead of one per camera
    vision_feature_dim: int = 128  # size of each camera token (the denoiser's obs_dim with images)
    vision_num_keypoints: int = 32  # spatial-softmax keypoints
    vision_film: bool = True  # FiLM after every ResNet stage, conditioned on the goal embedding
    vision_pretrained_path: str | None = None  # local safetensors of torchvision ImageNet weights
    image_shift: int = 4  # random-shift augmentation (pad, then random crop) in training; 0 disables

    def __post_init__(self) -> None:
        if isinstance(self.denoiser, dict):
            self.denoiser = _denoiser_from_dict(self.denoiser)
        self.validate()

    def validate(self) -> None:
        """Check every field (messages name the fix) and re-derive the denoiser's interface fields.

        Runs on construction; the policy runs it again, so fields edited afterwards are checked too.
        """
        for name in ("state_dim", "action_dim", "n_obs_steps", "chunk_size", "n_action_steps"):
            check_positive_int("MoDEPolicyConfig", name, getattr(self, name))
        check_positive_int("MoDEPolicyConfig", "num_inference_steps", self.num_inference_steps)
        if self.n_action_steps > self.chunk_size:
            raise ValueError(
                f"MoDEPolicyConfig.n_action_steps ({self.n_action_steps}) cannot exceed chunk_size "
                f"({self.chunk_size}): the policy executes actions from one predicted chunk before "
                "predicting the next; lower n_action_steps or raise chunk_size"
            )
        self._validate_language()
        self._validate_vision()
        self._validate_normalization()
        for name in ("clip_sample", "use_expert_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"MoDEPolicyConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if not isinstance(self.training_sigma_params, dict):
            raise ValueError(
                "MoDEPolicyConfig.training_sigma_params must be a dict of distribution parameters"
            )
        try:
            self.sigma_distribution()
        except (ValueError, TypeError) as error:
            raise ValueError(f"MoDEPolicyConfig training sigma distribution: {error}") from None
        if self.sampler not in SAMPLERS:
            raise ValueError(
                f"MoDEPolicyConfig.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}"
            )
        try:
            self.sampling_sigmas()
        except ValueError as error:
            raise ValueError(
                f"MoDEPolicyConfig sampling schedule (schedule, num_inference_steps, sigma_min, sigma_max): "
                f"{error}"
            ) from None
        if not isinstance(self.denoiser, (MoDEConfig, CNNDenoiserConfig)):
            raise ValueError(
                f"MoDEPolicyConfig.denoiser must be a MoDEConfig or a CNNDenoiserConfig (or a dict of its "
                f'fields, with "kind": "cnn" for the CNN), got {type(self.denoiser).__name__}'
            )
        self.denoiser = replace(
            self.denoiser,
            action_dim=self.action_dim,
            chunk_size=self.chunk_size,
            obs_dim=self.obs_token_dim,
            num_obs_tokens=self.n_obs_steps * self.tokens_per_step,
            num_goal_tokens=1,
            goal_dim=self.goal_dim or self.denoiser.goal_dim,
        )

    def _validate_language(self) -> None:
        validate_language("MoDEPolicyConfig", self.language_encoder, self.tasks, self.language_encoder_path)

    def _validate_vision(self) -> None:
        keys = self.image_keys
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(
                "MoDEPolicyConfig.image_keys must be a list of camera feature names, e.g. "
                '["observation.images.corner"]'
            )
        if len(set(keys)) != len(keys):
            raise ValueError(f"MoDEPolicyConfig.image_keys repeats a camera: {keys}")
        if not isinstance(self.use_state, bool):
            raise ValueError(f"MoDEPolicyConfig.use_state must be true or false, got {self.use_state!r}")
        if not keys and not self.use_state:
            raise ValueError(
                "MoDEPolicyConfig.use_state=False needs image_keys: a policy must observe something"
            )
        size = self.image_size
        sizes = [size] if isinstance(size, int) else size
        if (
            not isinstance(sizes, list)
            or len(sizes) not in (1, 2)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in sizes)
        ):
            raise ValueError(
                f"MoDEPolicyConfig.image_size must be an int or [H, W] of ints >= 8, got {size!r}"
            )
        for name, value, choices in (
            ("vision_backbone", self.vision_backbone, sorted(ARCHITECTURES)),
            ("vision_norm", self.vision_norm, list(NORMS)),
            ("vision_pool", self.vision_pool, list(POOLS)),
        ):
            if value not in choices:
                raise ValueError(f"MoDEPolicyConfig.{name} must be one of {choices}, got {value!r}")
        cells = feature_map_size(min(self.image_hw))
        if keys and cells < MIN_FEATURE_MAP[self.vision_pool]:
            raise ValueError(
                f"MoDEPolicyConfig.image_size {size!r} is too small for the image encoder: the ResNet's "
                f"last feature map would be {cells}x{cells}, on which {self.vision_pool} pooling cannot tell "
                f"images apart; use images of at least {smallest_image_size(self.vision_pool)} px (collect "
                "with a larger --image-size)"
                + (", or vision_pool=avg" if self.vision_pool == "spatial_softmax" else "")
            )
        for name in ("vision_feature_dim", "vision_num_keypoints"):
            check_positive_int("MoDEPolicyConfig", name, getattr(self, name))
        for name in ("vision_shared", "vision_film"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"MoDEPolicyConfig.{name} must be true or false, got {getattr(self, name)!r}"
                )
        if (
            not isinstance(self.image_shift, int)
            or isinstance(self.image_shift, bool)
            or self.image_shift < 0
        ):
            raise ValueError(
                f"MoDEPolicyConfig.image_shift must be an integer >= 0, got {self.image_shift!r}"
            )

    def _validate_normalization(self) -> None:
        features = (STATE_KEY, ACTION_KEY) if self.use_state else (ACTION_KEY,)
        validate_normalization("MoDEPolicyConfig", self.normalization_mapping, features)

    # Derived --------------------------------------------------------------------------------------------
    @property
    def tokens_per_step(self) -> int:
        """Observation tokens per history step: one per camera, plus one for the state."""
        return len(self.image_keys) + int(self.use_state) if self.image_keys else 1

    @property
    def obs_token_dim(self) -> int:
        """Size of every observation token: the state size (state only) or ``vision_feature_dim``."""
        return self.vision_feature_dim if self.image_keys else self.state_dim

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.image_size
        if isinstance(size, int):
            return size, size
        return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])

    @property
    def cameras(self) -> list[str]:
        """Simulator camera names: the image keys without the ``observation.images.`` prefix."""
        return [k.removeprefix(IMAGE_KEY_PREFIX) for k in self.image_keys]

    @property
    def goal_dim(self) -> int | None:
        """Size of the instruction embedding, when known without loading the encoder."""
        return known_embedding_dim(self.language_encoder, self.tasks, self.language_encoder_path)

    def sigma_distribution(self):
        """The training noise-level distribution (``.sample(shape, generator=..., device=...)``)."""
        return make_sigma_distribution(self.training_sigma_distribution, **self.training_sigma_params)

    def sampling_sigmas(self, **kwargs: Any):
        """The sampler schedule, shape (num_inference_steps + 1,), ending in 0."""
        return make_schedule(
            self.schedule, self.num_inference_steps, self.sigma_min, self.sigma_max, **kwargs
        )

    # Serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["denoiser"] = self.denoiser.to_dict()  # the CNN's adds its "kind" marker
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoDEPolicyConfig:
        check_known_keys(cls, values)
        check_field_types(cls, values)
        values = dict(values)
        if isinstance(values.get("denoiser"), dict):
            values["denoiser"] = _denoiser_from_dict(values["denoiser"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> MoDEPolicyConfig:
        values = read_config_json(path, "MoDEPolicy", "save_pretrained()")
        try:
            return cls.from_dict(values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def _denoiser_from_dict(values: dict[str, Any]) -> MoDEConfig | CNNDenoiserConfig:
    try:
        if values.get("kind") == "cnn":
            return CNNDenoiserConfig.from_dict(values)
        return MoDEConfig.from_dict(values)
    except ValueError as error:
        raise ValueError(f"MoDEPolicyConfig.denoiser: {error}") from None


# Shared with the configs of policies that read what a MoDE policy reads (the VDD student).
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
