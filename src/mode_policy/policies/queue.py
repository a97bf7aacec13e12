"""The receding horizon of a batch of episodes: their observation history and their queued actions.

Every chunking policy executes ``n_action_steps`` actions of each predicted chunk before predicting again,
from a history of the last ``n_obs_steps`` observations (the first observation of an episode fills the
whole history). ``select_action`` and the evaluation rollouts both keep that state here, so they replan
at the same steps from the same histories.

horizon = RecedingHorizon(n_obs_steps=2, n_action_steps=5)
horizon.observe({"observation.state": state})           # (B, state_dim) of this step
if horizon.needs_chunk:
    horizon.queue(policy.predict_action_chunk({**horizon.history(), "task": tasks}))
action = horizon.pop()                                  # (B, action_dim)
horizon.keep(rows)                                      # drop the episodes that ended
"""

from __future__ import annotations

import torch


class RecedingHorizon:
    """Batched per-episode state; rows are episodes and may be dropped as episodes end."""

    def __init__(self, n_obs_steps: int, n_action_steps: int) -> None:
        self.n_obs_steps = n_obs_steps
        self.n_action_steps = n_action_steps
        self._history: list[dict[str, torch.Tensor]] = []  # the last n_obs_steps observations, oldest first
        self._actions: list[torch.Tensor] = []  # queued (B, action_dim) actions, next first

    @property
    def batch_size(self) -> int | None:
        return next(iter(self._history[-1].values())).shape[0] if self._history else None

    @property
    def needs_chunk(self) -> bool:
        return not self._actions

    def observe(self, observation: dict[str, torch.Tensor]) -> None:
        """This step's observation, {key: (B, ...)}; the first one of an episode fills the history."""
        size = next(iter(observation.values())).shape[0]
        if self._history and size != self.batch_size:
            raise ValueError(
                f"batch size changed from {self.batch_size} to {size} within an episode; call policy.reset() "
                "before starting new episodes"
            )
        if not self._history:
            self._history = [observation] * self.n_obs_steps
        else:
            self._history = [*self._history[1:], observation]

    def history(self) -> dict[str, torch.Tensor]:
        """{key: (B, n_obs_steps, ...)}: what ``predict_action_chunk`` takes."""
        return {key: torch.stack([step[key] for step in self._history], dim=1) for key in self._history[-1]}

    def queue(self, chunk: torch.Tensor) -> None:
        """Queue the first ``n_action_steps`` actions of a predicted chunk (B, chunk_size, action_dim)."""
        self._actions = list(chunk[:, : self.n_action_steps].unbind(dim=1))

    def pop(self) -> torch.Tensor:
        """The next action of every row: (B, action_dim)."""
        return self._actions.pop(0)

    def keep(self, rows: torch.Tensor | list[int]) -> None:
        """Keep only ``rows`` (in their order): the episodes still running."""
        index = torch.as_tensor(rows, dtype=torch.long)
        self._history = [{k: v[index.to(v.device)] for k, v in step.items()} for step in self._history]
        self._actions = [action[index.to(action.device)] for action in self._actions]

    def reset(self) -> None:
        self._history, self._actions = [], []
