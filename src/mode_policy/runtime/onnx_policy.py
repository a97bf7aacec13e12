"""OnnxPolicy: an exported policy (``export_onnx``) run by ONNX Runtime, with the policies' interface.

policy = OnnxPolicy.from_pretrained("mt10.onnx")        # or load_policy("mt10.onnx")
policy.reset()
action = policy.select_action({"observation.state": state, "task": "open the drawer"})   # (1, action_dim)

``predict_action_chunk`` checks its inputs as every policy does, looks the instruction up in the file's
table of task embeddings (or takes ``task_index``; no language model is loaded), draws the noise exactly
as the torch policy would for the same generator, and runs the graph. ``mode-policy eval --policy
model.onnx`` evaluates it; the type is registered as ``"onnx"`` through the package's entry point.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mode_policy.io import CorruptFileError
from mode_policy.keys import TASK_INDEX_KEY, TASK_KEY
from mode_policy.policies.base import ChunkingPolicy
from mode_policy.policies.inputs import instructions
from mode_policy.policies.program import GOAL_INPUT, NOISE_INPUT, TASK_INDEX_INPUT, NoiseSpec
from mode_policy.policies.registry import policy_config_from_dict, register_policy
from mode_policy.runtime.export import FORMAT, META

THREADS = 2  # intra-op threads: what this library's 2-core target machines have


@register_policy("onnx")
class OnnxPolicy(ChunkingPolicy):
    """An exported chunk program in an ONNX Runtime session; ``config`` is the exported policy's config."""

    made_by = "mode-policy export --policy RUN --out model.onnx"

    def __init__(
        self, path: str | Path, *, threads: int = THREADS, providers: list[str] | None = None
    ) -> None:
        self.path = Path(path)
        session, meta = _open(self.path, threads, providers)
        super().__init__(policy_config_from_dict(json.loads(meta["policy"])))  # no encoder, no normaliser:
        self.session = session  # both live in the graph and in the task table
        self.input_names = [spec["name"] for spec in json.loads(meta["inputs"])]
        noise = json.loads(meta["noise"])
        self.noise = None if noise is None else NoiseSpec(noise["kind"], tuple(noise["shape"]))
        self.tasks = json.loads(meta["tasks"])
        table = np.frombuffer(base64.b64decode(meta["task_embeddings"]), dtype="<f4")
        self.task_embeddings = table.reshape(len(self.tasks), -1)
        self.quantize = meta.get("quantize", "none")
        self.batch_size = None if meta.get("batch", "dynamic") == "dynamic" else int(meta["batch"])
        self.inference_dataset = meta.get("inference_dataset") or None  # a per-dataset mixture policy's

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | None = None, **options: Any) -> OnnxPolicy:
        """Open an exported file; ``device`` "cuda" asks ONNX Runtime for its CUDA provider."""
        providers = (
            ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else None
        )
        return cls(path, providers=providers, **options)

    def use_dataset_stats(self, name: str) -> OnnxPolicy:
        """Refused: the normalisation is part of the graph."""
        exported = f" ({self.inference_dataset}'s)" if self.inference_dataset else ""
        raise ValueError(
            f"{self.path} normalises with the stats it was exported with{exported}; to use {name}'s, export "
            f"the policy again with --inference-dataset {name}"
        )

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs and outputs cross to and from ONNX Runtime on the host

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @torch.no_grad()
    def predict_action_chunk(
        self,
        obs: Mapping[str, Any],
        *,
        generator: torch.Generator | None = None,
        noise: Any = None,
    ) -> torch.Tensor:
        """A chunk of actions in the data's units, (B, chunk_size, action_dim): one graph call.

        obs: the observation history as for the torch policy, and ``task`` (instruction strings from the
        file's table) or ``task_index`` (B,) ints into it. ``generator`` draws the noise as the torch
        policy would (the same generator gives the same actions, up to float rounding); ``noise``
        (B, *noise_spec.shape) gives it instead (a server draws each request's own).
        """
        observation = self._observation(obs, history=True)  # checked, (B, n_obs_steps, ...)
        batch = next(iter(observation.values())).shape[0]
        feeds = {key: _as_input(value) for key, value in observation.items()}
        rows = self._task_rows(obs, batch)  # (B,) into the file's task table
        if TASK_INDEX_INPUT in self.input_names:  # the experts differ per task: the graph takes the index
            feeds[TASK_INDEX_INPUT] = rows.astype(np.int64)
        else:
            feeds[GOAL_INPUT] = self.task_embeddings[rows]  # (B, goal_dim)
        if self.noise is not None:
            feeds[NOISE_INPUT] = self._noise(noise, batch, generator)
        return self._checked_actions(torch.from_numpy(self._run(feeds, batch)))

    @property
    def noise_spec(self) -> NoiseSpec | None:
        """The random numbers one chunk takes per row (None: the graph is deterministic)."""
        return self.noise

    def _noise(self, noise: Any, batch: int, generator: torch.Generator | None) -> np.ndarray:
        if noise is None:
            return self.noise.draw(batch, generator, "cpu", torch.float32).numpy()
        given = np.asarray(noise.detach().cpu() if isinstance(noise, torch.Tensor) else noise, np.float32)
        expected = (batch, *self.noise.shape)
        if given.shape != expected or not np.isfinite(given).all():
            raise ValueError(
                f"noise must be finite with shape {expected} (batch, *noise_spec.shape), got {given.shape}"
            )
        return given

    def _run(self, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
        """The graph on ``feeds``; a graph built for a fixed batch size takes a larger batch in pieces (the
        last one padded by repeating its last row), so the same rows give the same actions either way."""
        feeds = {name: feeds[name] for name in self.input_names}
        size = self.batch_size or batch
        if size == batch:
            return self.session.run(None, feeds)[0]
        pieces = []
        for start in range(0, batch, size):
            rows = np.minimum(np.arange(start, start + size), batch - 1)
            pieces.append(self.session.run(None, {name: value[rows] for name, value in feeds.items()})[0])
        return np.concatenate(pieces)[:batch]

    def _task_rows(self, obs: Mapping[str, Any], batch: int) -> np.ndarray:
        """(B,) rows of the file's task table: ``task_index`` checked, or the instructions looked up."""
        if obs.get(TASK_INDEX_KEY) is not None:
            index = (
                np.broadcast_to(np.asarray(obs[TASK_INDEX_KEY]), (batch,))
                if np.ndim(obs[TASK_INDEX_KEY]) < 2
                else None
            )
            if (
                index is None
                or index.dtype.kind not in "iu"
                or not ((index >= 0) & (index < len(self.tasks))).all()
            ):
                raise ValueError(
                    f"{TASK_INDEX_KEY!r} must be {batch} integer(s) in [0, {len(self.tasks)}) (the exported "
                    f"tasks), got {np.asarray(obs[TASK_INDEX_KEY]).tolist()}"
                )
            return index
        rows = []
        for text in instructions(obs, batch):
            if text not in self.tasks:
                shown = ", ".join(repr(t) for t in self.tasks[:5]) + (" ..." if len(self.tasks) > 5 else "")
                raise ValueError(
                    f"unknown task {text!r}: this exported policy knows {len(self.tasks)} task(s) ({shown}); "
                    f"pass one of them as {TASK_KEY!r}, or its position as {TASK_INDEX_KEY!r}"
                )
            rows.append(self.tasks.index(text))
        return np.asarray(rows)

    def save_pretrained(self, directory: str | Path) -> Path:
        raise NotImplementedError("an exported policy is its .onnx file; copy the file")


def _as_input(value: torch.Tensor) -> np.ndarray:
    """A checked observation as the graph takes it: states float32, camera frames uint8 (float frames in
    [0, 1] are rounded to it)."""
    if value.dim() == 5 and value.is_floating_point():
        value = (value * 255).round().to(torch.uint8)
    return value.numpy()


def _open(path: Path, threads: int, providers: list[str] | None) -> tuple[Any, dict[str, str]]:
    """An ONNX Runtime session of ``path`` and our metadata; refuses files that are not our exports."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            "exported policies run on ONNX Runtime: pip install 'mode-policy[deploy]'"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"no exported policy at {path}; write one with `mode-policy export`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # EXTENDED: the ONNX Runtime fusions that help these graphs; ALL adds layout changes meant for convs.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    available = ort.get_available_providers()
    chosen = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or [
        "CPUExecutionProvider"
    ]
    try:
        session = ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as error:  # ONNX Runtime's InvalidProtobuf, Fail, ... on a damaged or foreign file
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise CorruptFileError(
            f"{path} is not a readable ONNX model ({reason}); export the policy again"
        ) from None
    meta = {
        key.removeprefix(META): value
        for key, value in session.get_modelmeta().custom_metadata_map.items()
        if key.startswith(META)
    }
    if meta.get("format") != FORMAT:
        raise CorruptFileError(
            f"{path} is an ONNX model but not a mode-policy export (format {meta.get('format')!r}, expected "
            f"{FORMAT!r}); write one with `mode-policy export`"
        )
    return session, meta
