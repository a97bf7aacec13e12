"""``export_onnx()``: a policy's whole action chunk as one ONNX graph, for ONNX Runtime on a robot computer.

export_onnx("runs/mt10", "mt10.onnx")                         # fp32, batch 1
export_onnx("runs/mt10", "mt10-int8.onnx", quantize="int8")   # int8 weights of the matmuls
policy = load_policy("mt10.onnx")                             # OnnxPolicy: select_action, eval, serve

The graph is the policy's chunk program (``mode_policy.policies.program``): normalisation in, for a
diffusion policy the sampler unrolled with each step's cached experts (every used expert stored once,
shared by all steps; no routers, no top-k), de-normalisation out. Inputs: the observation history, the
goal embedding and the initial noise, so that the output equals torch's for the same noise (checked at
export, within 1e-4 in fp32). The file's metadata holds the policy config, the inputs, the noise to
draw, and a table of the training tasks' embeddings, so that a robot passes an instruction (or its index)
and needs no language model.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mode_policy
from mode_policy.io import OutputExistsError, atomic_write
from mode_policy.policies.program import ACTION_OUTPUT, NOISE_INPUT, ChunkProgram
from mode_policy.policies.registry import load_policy
from mode_policy.runtime.onnx_ops import TRANSLATIONS, pack_attention

FORMAT = "mode_policy.chunk/1"
OPSET = 23
QUANTIZATIONS = ("int8", "int8-static")
TOLERANCE = 1e-4  # fp32 exports must match torch this closely
FOLD_LIMIT = 1024  # elements: the largest constant the exporter may compute ahead of time
META = "mode_policy."  # prefix of every metadata key we write


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote: the file, its size, how closely it matches torch, how long it took."""

    path: Path
    bytes: int
    weight_bytes: int  # the program's parameters and buffers: the weights the graph uses
    max_abs_diff: float  # ONNX Runtime vs torch on random inputs of the exported shapes
    seconds: float
    quantize: str | None


def export_onnx(
    policy: Any,
    out: str | Path,
    *,
    quantize: str | None = None,
    batch: int = 1,
    dynamic_batch: bool = False,
    task: str | None = None,
    calibration: Any = None,
    inference_dataset: str | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Export ``policy`` (a policy object, a run, a saved policy or a shipped name) to the ONNX file ``out``.

    quantize: None (fp32), "int8" (dynamic: int8 weights of every matmul, activations quantised at run
    time) or "int8-static" (QDQ, activation ranges calibrated on ``calibration``: a LeRobot dataset folder).
    batch: the batch size the graph is built for; dynamic_batch: any batch size instead. task: the
    instruction a goal-routed policy (task, sigma_goal routing) is exported for: its experts differ per
    task, so its file is one task's. inference_dataset: for a policy trained on a mixture with per-dataset
    stats, the dataset whose stats the graph normalises with (default: the policy's own choice, the
    mixture's first unless ``use_dataset_stats`` chose another). Refuses what cannot be exported, naming why.
    """
    started = time.perf_counter()
    out = _check_arguments(out, quantize, batch, calibration, overwrite)
    if isinstance(policy, (str, Path)):
        policy = load_policy(policy, device="cpu", inference_dataset=inference_dataset)
    elif inference_dataset is not None:
        policy.use_dataset_stats(inference_dataset)
    if not callable(getattr(policy, "chunk_program", None)):
        raise ValueError(
            f"a {type(policy).__name__} has no chunk program to export (an exported policy is exported "
            "already); export the policy it came from"
        )
    # Fused experts are the fastest fp32 graph; the int8 quantisers need each expert's matmul on its own.
    program = policy.chunk_program(task=task, fuse_experts=quantize is None)
    pack_attention(program)
    calibration = None if quantize != "int8-static" else _CalibrationReader(program, calibration)
    example = program.example_inputs(batch=2 if dynamic_batch else batch)
    with torch.no_grad():
        expected = program(*example).numpy()
    model = _to_onnx(program, example, dynamic_batch)
    if quantize:
        model = _quantize(model, quantize, calibration)
    _write_metadata(model, policy, program, quantize, "dynamic" if dynamic_batch else batch, task)
    actual = run_model(model, program.input_names, example)
    diff = float(np.abs(actual - expected).max())
    if quantize is None and not diff <= TOLERANCE:
        raise RuntimeError(
            f"the exported graph differs from torch by {diff:.2e} (more than {TOLERANCE}); this is a bug in "
            "the exporter, please report it with the policy's config.json"
        )
    import onnx

    atomic_write(out, lambda tmp: onnx.save(model, str(tmp)))
    weights = sum(t.numel() * t.element_size() for t in (*program.parameters(), *program.buffers()))
    return ExportReport(out, out.stat().st_size, weights, diff, time.perf_counter() - started, quantize)


def _check_arguments(out: Any, quantize: Any, batch: Any, calibration: Any, overwrite: bool) -> Path:
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(
            f"--quantize must be one of {list(QUANTIZATIONS)} (or left out for fp32), got {quantize!r}"
        )
    if quantize == "int8-static" and calibration is None:
        raise ValueError("--quantize int8-static calibrates activations on data: pass --calibration DATASET")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {batch!r}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"--out {out} must be an .onnx file path (e.g. policy.onnx)")
    if out.is_dir():
        raise OutputExistsError(f"--out {out} is a folder; pass the path of the .onnx file to write")
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"--out {out} already exists; choose a new path, or replace it with --overwrite"
        )
    return out


def _to_onnx(program: ChunkProgram, example: tuple[torch.Tensor, ...], dynamic_batch: bool) -> Any:
    """The program traced (torch.export) and translated to ONNX, without the exporter's debug info."""
    import warnings

    shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        shapes = ({0: batch} for _ in example)
        shapes = (tuple(shapes),)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes on its internals (torchvision ops ...) are not ours
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, example, dynamo=True, opset_version=OPSET, input_names=program.input_names,
            output_names=[ACTION_OUTPUT], dynamic_shapes=shapes, custom_translation_table=TRANSLATIONS,
            verbose=False, optimize=False,
        )  # fmt: skip
        _lean(onnx_program.model)
    exporter_log.setLevel(level)
    model = onnx_program.model_proto
    for node in model.graph.node:  # stack traces and FX names: most of the file's bytes beside the weights
        del node.metadata_props[:]
    del model.graph.value_info[:]
    return model


def _lean(model: Any) -> None:
    """The clean-up passes of onnxscript's ``optimize_ir`` without its pattern rewriter, whose matching
    grows with the graph far faster than the graph (minutes for a 10-step, 8-layer chunk) and finds nothing
    ONNX Runtime does not fuse itself. Constants are folded only when small (shapes, scalars): folding a
    step's concatenated experts into a new initializer would store each expert once per step."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import fold_constants_ir

    common.InlinePass()(model)
    for _ in range(2):
        fold_constants_ir(model, onnx_shape_inference=True, output_size_limit=FOLD_LIMIT)
        common.RemoveUnusedNodesPass()(model)
    ir.passes.Sequential(
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.NameFixPass(),
    )(model)


def _quantize(model: Any, mode: str, calibration: _CalibrationReader | None) -> Any:
    """int8 weights of the matmuls (onnxruntime.quantization), after folding the transposes of the
    weights into constants so that every matmul's weight is an initializer the quantiser can see."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        source, folded, quantized = (Path(tmp) / name for name in ("fp32.onnx", "folded.onnx", "int8.onnx"))
        onnx.save(model, str(source))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # ONNX ops only
        options.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        common = {"op_types_to_quantize": ["MatMul"], "weight_type": QuantType.QInt8}
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser warns on the root logger about its own options
        if mode == "int8":
            quantize_dynamic(str(folded), str(quantized), extra_options={"MatMulConstBOnly": True}, **common)
        else:
            quantize_static(
                str(folded), str(quantized), calibration, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QInt8, extra_options={"MatMulConstBOnly": True}, **common,
            )  # fmt: skip
        root.setLevel(level)
        return onnx.load(str(quantized))


class _CalibrationReader:
    """Feeds for static quantisation: states of a dataset's frames with their tasks' goals and fresh noise."""

    def __init__(self, program: ChunkProgram, dataset: Any, frames: int = 256, seed: int = 0) -> None:
        from mode_policy.data.lerobot import LeRobotDataset
        from mode_policy.data.windows import ActionChunkDataset
        from mode_policy.keys import STATE_KEY

        policy = program.policy
        data = dataset if isinstance(dataset, LeRobotDataset) else LeRobotDataset(dataset)
        keys = program.observation_keys
        windows = ActionChunkDataset(
            data, n_obs_steps=policy.config.n_obs_steps, chunk_size=policy.config.chunk_size,
            state_key=STATE_KEY if STATE_KEY in keys else None,
            image_keys=[k for k in keys if k != STATE_KEY],
        )  # fmt: skip
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randperm(len(windows), generator=generator)[:frames].tolist()
        shapes = program.input_shapes()
        self._feeds = []
        for row in rows:
            item = windows[row]
            for key in keys:
                if tuple(item[key].shape) != shapes[key][0]:
                    raise ValueError(
                        f"--calibration {dataset}: {key} has shape {tuple(item[key].shape)} per window, the "
                        f"policy takes {shapes[key][0]}; calibrate on the policy's own training data"
                    )
            observation = {key: item[key].unsqueeze(0) for key in keys}
            goal = policy._goal([item["task"]])
            noise = program.draw_noise(1, generator)
            values = program.inputs(observation, goal, noise)
            self._feeds.append({n: v.numpy() for n, v in zip(program.input_names, values, strict=True)})
        self._next = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._feeds)


def _write_metadata(model: Any, policy: Any, program: ChunkProgram, quantize: str | None, batch: Any,
                    task: str | None) -> None:  # fmt: skip
    """Everything a runtime needs beside the graph: the config, the inputs, the noise, the task table."""
    config = policy.config
    tasks = [task] if task is not None else list(config.tasks)
    embeddings = policy.language_encoder.encode(tasks).numpy().astype("<f4") if tasks else np.zeros((0, 0))
    inputs = [
        {"name": name, "shape": ["batch", *shape], "dtype": str(dtype).removeprefix("torch.")}
        for name, (shape, dtype) in program.input_shapes().items()
    ]
    noise = (
        None if program.noise is None else {"kind": program.noise.kind, "shape": list(program.noise.shape)}
    )
    values = {
        "format": FORMAT,
        "version": mode_policy.__version__,
        "policy": json.dumps(config.to_dict()),
        "inputs": json.dumps(inputs),
        "noise": json.dumps(noise),
        "tasks": json.dumps(tasks),
        "task_embeddings": base64.b64encode(embeddings.tobytes()).decode(),
        "quantize": quantize or "none",
        "batch": str(batch),
        # A mixture policy with per-dataset stats: whose stats the graph normalises with ("" otherwise).
        "inference_dataset": getattr(policy, "inference_dataset", None) or "",
    }
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META + key, value
    model.producer_name = "mode-policy"
    model.doc_string = (
        f"mode-policy {config.tag} policy: one action chunk per call ({NOISE_INPUT} drawn by the caller)"
    )


def run_model(model: Any, names: list[str], inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """One ONNX Runtime call of an in-memory model (for checks)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: v.numpy() for n, v in zip(names, inputs, strict=True)})[0]
