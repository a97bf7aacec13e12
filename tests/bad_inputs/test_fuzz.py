"""Fuzz: random truncations and byte flips of a dataset's and a saved policy's files, fed to ``train`` and
``eval``. Every run must end in one of two ways: it succeeds (the damage was harmless, e.g. a flipped bit
inside a weight), or it exits with code 2 and one error line, never a traceback or a hang.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.bad_inputs.fixtures import TINY_POLICY, copy, write_dataset, write_policy
from tests.bad_inputs.test_cli import run_cli

DATASET_CASES = 100
POLICY_CASES = 100
SECONDS_PER_CASE = 60  # a generous bound: most cases end in well under a second


def damage(path, rng: np.random.Generator) -> str:
    """Truncate ``path`` at a random length, or flip 1 to 8 random bytes; returns what was done."""
    data = bytearray(path.read_bytes())
    if rng.random() < 0.5 or not data:
        cut = int(rng.integers(0, max(1, len(data))))
        path.write_bytes(bytes(data[:cut]))
        return f"truncated {path.name} to {cut} of {len(data)} bytes"
    positions = rng.integers(0, len(data), int(rng.integers(1, 9)))
    for position in positions:
        data[position] ^= int(rng.integers(1, 256))
    path.write_bytes(bytes(data))
    return f"flipped {len(positions)} byte(s) of {path.name} at {sorted(positions.tolist())[:4]}"


def _assert_ends_well(code: int, output: str, what: str) -> str:
    assert "Traceback" not in output, f"{what}\n{output}"
    if code == 0:
        return "ok"
    errors = [line for line in output.splitlines() if ": error: " in line]
    assert code == 2 and len(errors) == 1, f"{what}: exit {code}\n{output}"
    return "refused"


def _fuzz(source, files, cases, argv_for, tmp_path, capsys, seed) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    outcomes = {"ok": 0, "refused": 0}
    for index in range(cases):
        target = copy(source, tmp_path / f"case{index}")
        what = damage(target / files[int(rng.integers(len(files)))], rng)
        began = time.perf_counter()
        code, output = run_cli(argv_for(target, tmp_path / f"out{index}"), capsys)
        assert time.perf_counter() - began < SECONDS_PER_CASE, what
        outcomes[_assert_ends_well(code, output, what)] += 1
    return outcomes


@pytest.mark.slow
def test_fuzzed_dataset_files_train_or_fail_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_dataset(tmp_path / "valid", episodes_per_task=1, length=8)
    files = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    assert len(files) == 5  # info, stats, tasks, episodes, data

    def argv(data, out):
        return ["train", "--dataset", data, "--out", out, "--steps", "1", "--batch-size", "2", *TINY_POLICY]

    outcomes = _fuzz(source, files, DATASET_CASES, argv, tmp_path, capsys, seed=11)
    assert outcomes["refused"] > DATASET_CASES / 2, outcomes  # most damage must be noticed


@pytest.mark.slow
def test_fuzzed_policy_files_evaluate_or_fail_in_one_line(tmp_path, capsys, monkeypatch):
    pytest.importorskip("metaworld")
    monkeypatch.chdir(tmp_path)
    source = write_policy(tmp_path / "valid")
    files = ["config.json", "model.safetensors", "stats.json"]

    def argv(policy, out):
        return ["eval", "--policy", policy, "--out", out, "--tasks", "reach", "--episodes-per-task", "1",
                "--workers", "1", "--max-episode-steps", "3"]  # fmt: skip

    outcomes = _fuzz(source, files, POLICY_CASES, argv, tmp_path, capsys, seed=12)
    assert outcomes["refused"] > POLICY_CASES / 2, outcomes
