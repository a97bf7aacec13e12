"""What every policy shares: the receding-horizon action queue, eval-mode sampling, the saved layout, the
language encoder and normaliser set-up, and the checks of its observations (``mode_policy.policies.inputs``).

A subclass sets ``config`` (with ``n_obs_steps``, ``n_action_steps``, ``state_dim``), says which features it
reads (``observation_keys``), calls ``_language_encoder``, ``_init_normalization`` and ``_init_queues`` in
its ``__init__``, and provides ``predict_action_chunk(obs, generator=...)``.
Saved policies are a directory of config.json (written last: a directory with one is complete),
model.safetensors and stats.json.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
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
from mode_policy.keys import STATE_KEY, TASK_KEY
from mode_policy.nn.encoders.language import LanguageEncoder, make_language_encoder
from mode_policy.policies.inputs import image_input, state_input
from mode_policy.policies.normalizer import Normalizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"


class ChunkingPolicy(nn.Module):
    """Base class of MoDEPolicy and VDDPolicy (``name`` is used in messages)."""

    name = "policy"

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
        self,
        dataset_stats: Mapping[str, Mapping[str, Any]] | None,
        mapping: Mapping[str, str],
        shapes: Mapping[str, int],
    ) -> None:
        """The Normalizer of the features in ``mapping``, and their stats kept JSON-ready (numpy arrays ->
        lists) as ``dataset_stats``, which save_pretrained writes to stats.json."""
        self.dataset_stats = None if dataset_stats is None else {
            feature: {name: np.asarray(value).tolist() for name, value in dataset_stats[feature].items()}
            for feature in mapping
            if feature in dataset_stats
        }  # fmt: skip
        self.normalizer = Normalizer(dataset_stats, mapping, shapes=shapes)

    def _init_queues(self, n_obs_steps: int) -> None:
        self._obs_queue: collections.deque[dict[str, torch.Tensor]] = collections.deque(maxlen=n_obs_steps)
        self._action_queue: collections.deque[torch.Tensor] = collections.deque()

    @property
    def observation_keys(self) -> list[str]:
        """The observation features this policy reads (``observation.state``, camera keys)."""
        raise NotImplementedError

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
        self, obs: Mapping[str, Any], *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One environment step: (B, action_dim) in the data's units.

        obs: the current step's observation (``observation.state`` (B, state_dim), cameras) and ``task``.
        Keeps the last n_obs_steps observations (after ``reset`` the first one fills the history) and a
        queue of actions: when the queue is empty a chunk is predicted and its first n_action_steps
        actions are queued, so the model runs once every n_action_steps calls. Call ``reset()`` at every
        episode start.
        """
        config = self.config
        current = self._observation(obs, history=False)  # {key: (B, ...)}
        size = next(iter(current.values())).shape[0]
        if self._obs_queue:
            previous = next(iter(self._obs_queue[-1].values())).shape[0]
            if previous != size:
                raise ValueError(
                    f"batch size changed from {previous} to {size} within an episode; call policy.reset() "
                    "before starting new episodes"
                )
        if not self._obs_queue:
            self._obs_queue.extend([current] * config.n_obs_steps)
        else:
            self._obs_queue.append(current)
        if not self._action_queue:
            # (B, n_obs_steps, ...) per key
            history = {key: torch.stack([o[key] for o in self._obs_queue], dim=1) for key in current}
            chunk = self.predict_action_chunk({**history, TASK_KEY: obs.get(TASK_KEY)}, generator=generator)
            self._action_queue.extend(chunk[:, : config.n_action_steps].unbind(dim=1))
        return self._action_queue.popleft()

    def reset(self) -> None:
        """Forget the observation history and the queued actions (call at every episode start)."""
        self._obs_queue.clear()
        self._action_queue.clear()

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
        atomic_write_text(directory / STATS_FILE, json.dumps(self.dataset_stats or {}, indent=2) + "\n")
        self.config.save(directory / CONFIG_FILE)  # last: a directory with a config.json is complete
        return directory

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
        if not isinstance(stats, dict) or not all(isinstance(v, dict) for v in stats.values()):
            raise CorruptFileError(
                f"{directory / STATS_FILE} must map each feature to its stats; "
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
