"""What every policy shares: the receding horizon (``select_action``), eval-mode sampling, the saved layout
(``save_pretrained`` / ``from_pretrained`` with the stats check), the language encoder and normaliser
set-up, and the checks of its observations (``mode_policy.policies.inputs``).

A policy type is a subclass registered with ``@register_policy("name")`` (``mode_policy.policies.registry``)
whose ``config_class`` is a PolicyConfig subclass. Its ``__init__(config, dataset_stats=None, *,
language_encoder=None)`` calls ``super().__init__(config)``, ``_init_language(language_encoder)`` and
``_init_normalization(dataset_stats)``; it provides
``predict_action_chunk(obs, *, generator=None)`` and, to be trained by ``mode-policy train``,
``compute_loss(batch) -> (loss, logs)``. docs/ARCHITECTURE.md walks through an example.
Saved policies are a directory of config.json (written last: a directory with one is complete),
model.safetensors and stats.json.

Normalisation stats come in two forms. One set (``{feature: stats}``: one dataset's, or a dataset mixture's
pooled stats) is the ``normalizer``. Per-dataset stats (``PerDatasetStats``: a mixture trained with
``normalization="per-dataset"``) keep every training dataset's in ``dataset_normalizers``: ``compute_loss``
normalises each sample with its own dataset's (``batch_normalizer(batch)``, by ``batch["dataset_index"]``)
and inference uses one dataset's, copied into ``normalizer`` (``inference_dataset``, the first by default;
``use_dataset_stats(name)`` or ``from_pretrained(dir, inference_dataset=name)`` picks another). Only policy
types whose ``compute_loss`` normalises through ``batch_normalizer`` (``supports_per_dataset_stats``) take
per-dataset stats; the others refuse them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from mode_policy.io import (
    CorruptFileError,
    atomic_write,
    atomic_write_text,
    load_safetensors,
    read_json,
    state_dict_mismatch,
)
from mode_policy.keys import ACTION_KEY, DATASET_INDEX_KEY, STATE_KEY, TASK_KEY
from mode_policy.nn.encoders.language import LanguageEncoder, make_language_encoder
from mode_policy.policies.config import PolicyConfig
from mode_policy.policies.inputs import image_input, state_input
from mode_policy.policies.normalizer import (
    PER_DATASET,
    DatasetNormalizers,
    Normalizer,
    PerDatasetStats,
    PerSampleNormalizer,
    json_ready,
)
from mode_policy.policies.queue import RecedingHorizon

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"
# State-dict prefixes of the normalisation buffers (the data's, not learned: fine-tuning leaves them out).
NORMALIZER_PREFIXES = ("normalizer.", "dataset_normalizers.")


class ChunkingPolicy(nn.Module):
    """Base class of every policy type (MoDEPolicy, VDDPolicy, ...); ``name`` is its registry name."""

    name: ClassVar[str] = "policy"
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    made_by: ClassVar[str] = "mode-policy train"  # how a user makes one (for messages)
    # Whether compute_loss normalises through batch_normalizer(batch), so that per-dataset stats apply.
    supports_per_dataset_stats: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig) -> None:
        """Validate and keep ``config``; subclasses then call ``_init_language`` and ``_init_normalization``
        as they need them, and build their model."""
        super().__init__()
        config.validate()
        self.config = config
        self._horizon: RecedingHorizon | None = None  # select_action's state, made on first use

    def _init_language(self, encoder: LanguageEncoder | None) -> None:
        """``language_encoder``: ``encoder`` (one shared with another policy) or one built from the config."""
        self.language_encoder = self._language_encoder(self.config, encoder)

    @staticmethod
    def _language_encoder(config: Any, encoder: LanguageEncoder | None) -> LanguageEncoder:
        """``encoder`` (one shared with another policy) or a new one built from ``config``; either way its
        embedding size must be the one ``config`` implies (``config.goal_dim``, None when unknown)."""
        if encoder is None:
            encoder = make_language_encoder(config.language_encoder, tasks=config.tasks,
                                            path=config.language_encoder_path)  # fmt: skip
        if config.goal_dim is not None and config.goal_dim != encoder.dim:
            raise ValueError(
                f"the language encoder gives {encoder.dim}-d embeddings but config "
                f"language_encoder={config.language_encoder!r} implies {config.goal_dim}"
            )
        return encoder

    def _init_normalization(
        self, dataset_stats: Mapping[str, Mapping[str, Any]] | PerDatasetStats | None
    ) -> None:
        """The Normalizer of ``config.normalized_features``, and their stats kept JSON-ready (numpy arrays
        -> lists) as ``dataset_stats``, which save_pretrained writes to stats.json.

        dataset_stats: one set ``{feature: stats}``, or ``PerDatasetStats`` (types with
        ``supports_per_dataset_stats`` only): then ``dataset_normalizers`` holds every dataset's and
        ``normalizer`` / ``dataset_stats`` are those of ``inference_dataset``."""
        config = self.config
        mapping = {feature: config.normalization_mapping[feature] for feature in config.normalized_features}
        shapes = {STATE_KEY: config.state_dim, ACTION_KEY: config.action_dim}
        self.per_dataset_stats: dict[str, dict] | None = None
        self.inference_dataset: str | None = None
        if isinstance(dataset_stats, PerDatasetStats):
            if not self.supports_per_dataset_stats:
                raise ValueError(
                    f"a {self.name} policy cannot normalise each dataset of a mixture with its own stats "
                    "(its compute_loss reads one set); train it with --normalization pooled"
                )
            self.dataset_normalizers = DatasetNormalizers(dataset_stats.datasets, mapping, shapes=shapes)
            self.per_dataset_stats = {
                name: json_ready(stats, mapping) for name, stats in dataset_stats.datasets.items()
            }
            self.inference_dataset = dataset_stats.inference
            dataset_stats = dataset_stats.datasets[dataset_stats.inference]
        self.dataset_stats = None if dataset_stats is None else json_ready(dataset_stats, mapping)
        self.normalizer = Normalizer(dataset_stats, mapping, shapes=shapes)

    @property
    def normalization(self) -> str:
        """``"per-dataset"`` (the stats of every training dataset, ``per_dataset_stats``) or ``"single"``
        (one set: one dataset's, or a mixture's pooled stats)."""
        return PER_DATASET if self.per_dataset_stats is not None else "single"

    def batch_normalizer(self, batch: Mapping[str, Any]) -> Normalizer | PerSampleNormalizer:
        """What normalises a training batch: with per-dataset stats and ``batch["dataset_index"]`` (B,), each
        row with its own dataset's stats; otherwise ``normalizer`` (one set, or the inference dataset's for a
        batch that does not say where its rows come from, e.g. a validation set)."""
        index = batch.get(DATASET_INDEX_KEY)
        if self.per_dataset_stats is None or index is None:
            return self.normalizer
        return self.dataset_normalizers.for_samples(torch.as_tensor(index, device=self.device))

    def use_dataset_stats(self, name: str) -> ChunkingPolicy:
        """Normalise with the stats of training dataset ``name`` from now on (a policy with per-dataset stats:
        inference, export, save_pretrained); forgets queued actions. Returns the policy."""
        if self.per_dataset_stats is None:
            raise ValueError(
                f"this {self.name} policy holds one set of normalisation stats (it was not trained with "
                "--normalization per-dataset), so there is no dataset to choose"
            )
        chosen = self.dataset_normalizers.per_dataset[self.dataset_normalizers.index(name)]
        self.normalizer.load_state_dict(chosen.state_dict())
        self.dataset_stats = self.per_dataset_stats[name]
        self.inference_dataset = name
        self.reset()
        return self

    @property
    def observation_keys(self) -> list[str]:
        """The observation features this policy reads (``config.observation_keys``)."""
        return self.config.observation_keys

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def check_observation(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The inputs ``predict_action_chunk`` would take from ``obs``, checked: {key: (B, n_obs_steps, ...)};
        ValueError (KeyError for a missing key) naming the problem. A server checks each request with it."""
        return self._observation(obs, history=True)

    def _observation(self, obs: Mapping[str, Any], *, history: bool) -> dict[str, torch.Tensor]:
        """Each feature of ``observation_keys``, checked, on the policy's device: with ``history`` the
        n_obs_steps of ``predict_action_chunk`` ((B, T, ...)), else one env step ((B, ...))."""
        config = self.config
        values = {}
        for key in self.observation_keys:
            if key == STATE_KEY:
                value = state_input(obs, config.n_obs_steps, config.state_dim, history=history)
                values[key] = value.to(device=self.device, dtype=self.dtype)
            else:
                value = image_input(obs, key, config.n_obs_steps, config.image_hw, history=history)
                values[key] = value.to(self.device)
        sizes = {key: value.shape[0] for key, value in values.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"the observation's features disagree on the batch size: {sizes}")
        return values

    def _goal(self, tasks: list[str]) -> torch.Tensor:
        """(B,) instructions -> (B, goal_dim) embeddings on the policy's device."""
        return self.language_encoder.encode(tasks).to(device=self.device, dtype=self.dtype)

    def _to_data_units(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised actions (B, chunk_size, action_dim) -> the data's units, clamped to the data range
        first when actions are min_max normalised (a value outside is extrapolation past every demo)."""
        if self.config.clip_sample and self.config.normalization_mapping[ACTION_KEY] == "min_max":
            actions = actions.clamp(-1.0, 1.0)
        return self.normalizer.unnormalize(ACTION_KEY, actions)

    def _checked_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """The chunk the policy returns; NaN or inf (inputs far outside the training data) is refused."""
        if not bool(torch.isfinite(actions).all()):
            raise ValueError(
                "the policy produced NaN or inf actions for this observation; check that the inputs lie in "
                "the range of the training data (units, scaling)"
            )
        return actions

    @torch.no_grad()
    def select_action(
        self, obs: Mapping[str, Any], *, generator: torch.Generator | None = None, **options: Any
    ) -> torch.Tensor:
        """One environment step: (B, action_dim) in the data's units.

        obs: the current step's observation (``observation.state`` (B, state_dim), cameras) and ``task``.
        Keeps the last n_obs_steps observations (after ``reset`` the first one fills the history) and a
        queue of actions (``mode_policy.policies.queue``): when the queue is empty a chunk is predicted
        (``options`` go to ``predict_action_chunk``) and its first n_action_steps actions are queued, so
        the model runs once every n_action_steps calls. Call ``reset()`` at every episode start.
        """
        if self._horizon is None:
            self._horizon = RecedingHorizon(self.config.n_obs_steps, self.config.n_action_steps)
        self._horizon.observe(self._observation(obs, history=False))
        if self._horizon.needs_chunk:
            history = {**self._horizon.history(), TASK_KEY: obs.get(TASK_KEY)}
            self._horizon.queue(self.predict_action_chunk(history, generator=generator, **options))
        return self._horizon.pop()

    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at every episode start)."""
        if self._horizon is not None:
            self._horizon.reset()

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    # Saving and loading ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write model.safetensors (network + normaliser buffers), stats.json, then config.json, atomically.

        A frozen language encoder's weights are not saved: it is rebuilt from the config's name.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        atomic_write(
            directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"})
        )
        atomic_write_text(directory / STATS_FILE, json.dumps(self._stats_json(), indent=2) + "\n")
        self.config.save(directory / CONFIG_FILE)  # last: a directory with a config.json is complete
        return directory

    def _stats_json(self) -> dict[str, Any]:
        """stats.json: one set ``{feature: stats}``, or per-dataset stats (``PerDatasetStats.to_json``)."""
        if self.per_dataset_stats is None:
            return self.dataset_stats or {}
        return PerDatasetStats(self.per_dataset_stats, self.inference_dataset).to_json()

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        device: str | torch.device = "cpu",
        language_encoder: LanguageEncoder | None = None,
        inference_dataset: str | None = None,
    ) -> ChunkingPolicy:
        """Rebuild a policy written by ``save_pretrained``, in eval mode, on ``device``.

        Its stats.json and the normaliser saved in model.safetensors must agree: a folder whose files come
        from different saves is refused. inference_dataset: for a policy with per-dataset stats, the
        training dataset whose stats it normalises with (default: the one saved, the first unless
        ``use_dataset_stats`` chose another).
        """
        directory, stats = cls._read_saved(directory)
        config = cls.config_class.load(directory / CONFIG_FILE)
        try:
            if PerDatasetStats.in_json(stats):
                stats = PerDatasetStats.from_json(stats)
            policy = cls(config, stats or None, language_encoder=language_encoder)
        except (KeyError, ValueError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise ValueError(
                f"{directory / STATS_FILE} does not fit {directory / CONFIG_FILE}: {message}"
            ) from None
        buffers = {k: v.clone() for k, v in policy.state_dict().items() if k.startswith(NORMALIZER_PREFIXES)}
        expected = buffers if stats else {}
        policy._load_weights(directory)
        loaded = policy.state_dict()
        for key, value in expected.items():
            if not torch.allclose(value, loaded[key], rtol=1e-5, atol=1e-6, equal_nan=True):
                raise ValueError(
                    f"{directory / STATS_FILE} disagrees with the normaliser saved in "
                    f"{directory / WEIGHTS_FILE} ({key}); was one of them replaced after saving?"
                )
        if inference_dataset is not None:
            policy.use_dataset_stats(inference_dataset)
        return policy.to(device).eval()

    @classmethod
    def _read_saved(cls, directory: str | Path) -> tuple[Path, dict]:
        """(directory, stats) of a saved policy, after checking its three files are there."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"no policy directory at {directory}; pass a directory written by save_pretrained"
            )
        for name in (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory} has no {name}; a saved {cls.__name__} holds {CONFIG_FILE}, {WEIGHTS_FILE} "
                    f"and {STATS_FILE} (written by {cls.__name__}.save_pretrained)"
                )
        stats = read_json(directory / STATS_FILE, fix=_RESAVE.format(name=cls.__name__))
        per_dataset = isinstance(stats, dict) and PerDatasetStats.in_json(stats)
        if not isinstance(stats, dict) or not (
            per_dataset or all(isinstance(v, dict) for v in stats.values())
        ):
            raise CorruptFileError(
                f"{directory / STATS_FILE} must map each feature to its stats (or hold per-dataset stats); "
                + _RESAVE.format(name=cls.__name__)
            )
        return directory, stats

    def _load_weights(self, directory: Path) -> None:
        """Load model.safetensors, refusing missing, unexpected or resized tensors by name."""
        weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
        weights = load_safetensors(weights_path, fix=_RESAVE.format(name=type(self).__name__))
        mismatch = state_dict_mismatch(self.state_dict(), weights)
        if mismatch:
            raise ValueError(
                f"{weights_path} does not match {config_path} ({mismatch}); was config.json edited after "
                "saving?"
            )
        self.load_state_dict(weights)


_RESAVE = "the policy folder is damaged: restore it, or save the policy again ({name}.save_pretrained)"
