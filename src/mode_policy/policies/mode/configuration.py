"""MoDEPolicyConfig: everything that defines a MoDE policy (LeRobot's ``configuration_*.py`` style).

config = MoDEPolicyConfig(state_dim=39, action_dim=4, language_encoder="onehot", tasks=dataset.tasks)
config.save("run/config.json"); MoDEPolicyConfig.load("run/config.json")
config = MoDEPolicyConfig.for_dataset(dataset, {"denoiser.width": 64})   # sizes and tasks from the data

The denoiser's architecture sits in the nested ``denoiser``: the config of any registered denoiser kind
(``mode_policy.nn.registry``: a :class:`MoDEConfig` for MoDE and its routing family, a
``CNNDenoiserConfig`` for the CNN baseline). Its interface fields (``action_dim``, ``chunk_size``,
``obs_dim``, ``num_obs_tokens``, ``num_goal_tokens``, ``goal_dim``) are derived from the policy fields, so
they are set once, here; values given for them in ``denoiser`` are overwritten. ``goal_dim`` follows the
language encoder (384 for MiniLM, ``len(tasks)`` for one-hot, the checkpoint's projection size for CLIP,
filled in when the policy is built).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

from mode_policy.config_io import check_positive_int
from mode_policy.diffusion.noise_distributions import make_sigma_distribution
from mode_policy.diffusion.samplers import SAMPLERS
from mode_policy.diffusion.schedules import make_schedule
from mode_policy.keys import ACTION_KEY, STATE_KEY
from mode_policy.nn.config import INTERFACE_FIELDS, MoDEConfig
from mode_policy.nn.encoders.resnet import ARCHITECTURES, NORMS
from mode_policy.nn.encoders.vision import MIN_FEATURE_MAP, POOLS, feature_map_size, smallest_image_size
from mode_policy.nn.registry import DENOISERS, KIND_KEY, denoiser_config_from_dict
from mode_policy.policies.config import PolicyConfig, dataset_layout


def default_denoiser() -> MoDEConfig:
    """Small enough to train on a CPU in minutes on Meta-World states (see the class docstring)."""
    return MoDEConfig(width=128, depth=4, heads=4, num_experts=4, top_k=2)


@dataclass
class MoDEPolicyConfig(PolicyConfig):
    """A MoDE policy: observation/action layout, language conditioning, denoiser, training noise, sampler.

    Defaults target state-based Meta-World (39-d state, 4-d action in [-1, 1]) on a CPU: a width-128,
    4-layer denoiser with 4 experts (top-2), i.e. about 2.0M active of 3.6M parameters; a chunk of 10
    actions of which 5 are executed before replanning; 10 DDIM steps on an exponential schedule from 80
    to 0.05 (``num_inference_steps=5, sigma_min=1.0`` reproduces the MoDE release's evaluation setting).
    """

    describe: ClassVar[str] = "MoDE policy"

    # Layout, language and normalisation: the PolicyConfig fields (mode_policy.policies.config).
    # The denoiser's architecture, any registered kind; its interface fields are derived (module
    # docstring). A MoDEConfig covers MoDE and every routing variant (README "Routing variants").
    denoiser: Any = field(default_factory=default_denoiser)
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
        self._validate_vision()  # first: the shared checks read use_state
        super().validate()
        check_positive_int("MoDEPolicyConfig", "num_inference_steps", self.num_inference_steps)
        if not isinstance(self.use_expert_cache, bool):
            raise ValueError(
                f"MoDEPolicyConfig.use_expert_cache must be true or false, got {self.use_expert_cache!r}"
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
        if type(self.denoiser) not in {DENOISERS.get(kind).config_class for kind in DENOISERS.names()}:
            raise ValueError(
                f"MoDEPolicyConfig.denoiser must be the config of a registered denoiser kind "
                f'({", ".join(DENOISERS.names())}; or a dict of its fields with its "kind"), got '
                f"{type(self.denoiser).__name__}"
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

    # Derived --------------------------------------------------------------------------------------------
    @property
    def normalized_features(self) -> tuple[str, ...]:
        """Image-only policies (``use_state=False``) neither read nor normalise the state."""
        return (STATE_KEY, ACTION_KEY) if self.use_state else (ACTION_KEY,)

    @property
    def observation_keys(self) -> list[str]:
        """The state (when ``use_state``) and the cameras of ``image_keys``."""
        return ([STATE_KEY] if self.use_state else []) + list(self.image_keys)

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

    def sigma_distribution(self):
        """The training noise-level distribution (``.sample(shape, generator=..., device=...)``)."""
        return make_sigma_distribution(self.training_sigma_distribution, **self.training_sigma_params)

    def sampling_sigmas(self, **kwargs: Any):
        """The sampler schedule, shape (num_inference_steps + 1,), ending in 0."""
        return make_schedule(
            self.schedule, self.num_inference_steps, self.sigma_min, self.sigma_max, **kwargs
        )

    # Serialisation and overrides ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values["denoiser"] = self.denoiser.to_dict()  # with its "kind"
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoDEPolicyConfig:
        values = dict(values)
        if isinstance(values.get("denoiser"), dict):
            values["denoiser"] = _denoiser_from_dict(values["denoiser"])
        return super().from_dict(values)

    @classmethod
    def override_keys(cls) -> list[str]:
        """Policy fields, and ``denoiser.<field>`` of every denoiser kind; ``denoiser.kind=cnn`` swaps the
        MoDE transformer for the CNN baseline, whose fields (``denoiser.down_dims`` ...) then apply."""
        top = [name for name in super().override_keys() if name != "denoiser"]
        names = {f.name for kind in DENOISERS.names() for f in fields(DENOISERS.get(kind).config_class)}
        nested = [f"denoiser.{name}" for name in names - set(INTERFACE_FIELDS)]
        return top + sorted([*nested, f"denoiser.{KIND_KEY}"])

    @classmethod
    def for_dataset(cls, dataset: Any, overrides: Mapping[str, Any] | None = None) -> MoDEPolicyConfig:
        """Sizes, tasks and camera size from the dataset; ``denoiser.kind`` picks the denoiser."""
        overrides = dict(overrides or {})
        image_keys = overrides.get("image_keys") or []
        image_only = bool(image_keys) and overrides.get("use_state") is False
        values = cls().to_dict()
        values.update(dataset_layout(dataset, needs=(ACTION_KEY,) if image_only else (STATE_KEY, ACTION_KEY)))
        if image_keys:
            values["image_size"] = _camera_size(dataset, image_keys)
        kind = overrides.pop(f"denoiser.{KIND_KEY}", values["denoiser"][KIND_KEY])
        if kind != values["denoiser"][KIND_KEY]:  # another denoiser kind, from its own defaults
            if kind not in DENOISERS.names():
                raise ValueError(
                    f"denoiser.{KIND_KEY} must be one of the registered denoiser kinds "
                    f"({', '.join(DENOISERS.names())}), got {kind!r}"
                )
            values["denoiser"] = DENOISERS.get(kind).config_class().to_dict()
        for key, value in overrides.items():
            if key.startswith("denoiser."):
                values["denoiser"][key.removeprefix("denoiser.")] = value
            else:
                values[key] = value
        return cls.from_dict(values)


def _camera_size(dataset: Any, image_keys: Any) -> int | list[int]:
    """The frame size of the dataset's cameras: the simulator renders evaluation frames at that size."""
    cameras = [k for k, ft in dataset.features.items() if ft.get("dtype") in ("image", "video")]
    unknown = [k for k in image_keys if k not in cameras] if isinstance(image_keys, list) else image_keys
    if unknown:
        raise ValueError(
            f"image_keys {unknown} are not camera features of the dataset at {dataset.root}; its "
            f"cameras: {cameras}"
        )
    height, width = (int(d) for d in dataset.features[image_keys[0]]["shape"][:2])
    return height if height == width else [height, width]


def _denoiser_from_dict(values: dict[str, Any]) -> Any:
    try:
        return denoiser_config_from_dict(values)
    except ValueError as error:
        raise ValueError(f"MoDEPolicyConfig.denoiser: {error}") from None
