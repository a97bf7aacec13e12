"""End-to-end training: export and reload, exact resume, divergence stop, override errors."""

import json

import lightning as L
import pytest
import torch

from mode_policy.training.module import TrainingDivergedError
from mode_policy.training.train import train
from tests.training.conftest import TASKS, train_kwargs


class Interrupted(Exception):
    pass


class RecordLosses(L.Callback):
    """Per-step training loss; optionally raises after step ``stop_at`` (a simulated crash)."""

    def __init__(self, stop_at=None):
        self.losses = {}
        self.stop_at = stop_at

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = outputs["loss"].item()
        if trainer.global_step == self.stop_at:
            raise Interrupted


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_export_reload_and_evaluate(tiny_dataset, tmp_path):
    from mode_policy.evaluation import evaluate
    from mode_policy.policies.mode.modeling import MoDEPolicy

    run = train(tiny_dataset, tmp_path / "run", **train_kwargs())
    for name in ("policy/config.json", "policy/model.safetensors", "checkpoints/last.ckpt", "metrics.csv",
                 "learning_curve.png", "train_config.json", "train_summary.json"):  # fmt: skip
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] == 20 and summary["steps_per_second"] > 0
    # The export holds the EMA weights (the checkpoint's state_dict under Lightning's WeightAveraging).
    policy = MoDEPolicy.from_pretrained(run / "policy")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ema = {k.removeprefix("policy."): v for k, v in checkpoint["state_dict"].items()}
    assert _states_equal(policy.state_dict(), ema)
    assert not _states_equal(
        ema, {k.removeprefix("policy."): v for k, v in checkpoint["current_model_state"].items()}
    )
    # Normalisation stats come from the dataset and travel with the policy.
    assert json.loads((run / "policy" / "stats.json").read_text())["action"]["max"]
    results = evaluate(run, tasks=TASKS, episodes_per_task=1, seed=0, num_workers=2, max_episode_steps=60,
                       progress=False)  # fmt: skip
    assert set(results["per_task"]) == set(TASKS)
    assert (run / "eval" / "mt10-seed0" / "results.json").is_file()


def test_resume_continues_exactly(tiny_dataset, tmp_path):
    straight = RecordLosses()
    train(tiny_dataset, tmp_path / "a", extra_callbacks=[straight], **train_kwargs())
    crashed = RecordLosses(stop_at=12)  # last checkpoint at step 10: steps 11-12 are redone
    with pytest.raises(Interrupted):
        train(tiny_dataset, tmp_path / "b", extra_callbacks=[crashed], **train_kwargs())
    resumed = RecordLosses()
    train(tiny_dataset, tmp_path / "b", resume=True, extra_callbacks=[resumed], progress=False)
    assert sorted(resumed.losses) == list(range(11, 21))
    assert all(resumed.losses[s] == straight.losses[s] for s in resumed.losses)  # bitwise
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 20
    assert _states_equal(a["state_dict"], b["state_dict"])  # EMA weights
    assert _states_equal(a["current_model_state"], b["current_model_state"])  # raw weights
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(),
                                b["optimizer_states"][0]["state"].values(), strict=True):  # fmt: skip
        assert _states_equal(state_a, state_b)


def test_resume_refuses_conflicting_settings(tiny_dataset, tmp_path):
    train(tiny_dataset, tmp_path / "run", **train_kwargs(steps=5))
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_dataset, tmp_path / "run", resume=True, steps=10, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="already at step 5"):
        train(tiny_dataset, tmp_path / "run", resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_dataset, tmp_path / "run", **train_kwargs(steps=5))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    from mode_policy.policies.mode.modeling import MoDEPolicy

    original = MoDEPolicy.compute_loss
    calls = {"n": 0}

    def poisoned(self, batch, **kwargs):
        calls["n"] += 1
        loss, logs = original(self, batch, **kwargs)
        return (loss * float("nan"), logs) if calls["n"] == 8 else (loss, logs)

    monkeypatch.setattr(MoDEPolicy, "compute_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"step 8: loss is nan.*last good checkpoint.*--resume"):
        train(tiny_dataset, tmp_path / "run", **train_kwargs())
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5
    assert all(
        torch.isfinite(v).all() for v in checkpoint["current_model_state"].values() if v.is_floating_point()
    )
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp*"))


def test_bad_override_key_lists_valid_keys(tiny_dataset, tmp_path, capsys):
    from mode_policy.cli import main

    with pytest.raises(
        ValueError, match=r"unknown policy config key\(s\) \['denoiser.widht'\].*denoiser.width"
    ):
        train(tiny_dataset, tmp_path / "run", **train_kwargs(policy_overrides=["denoiser.widht=8"]))
    assert (
        main(["train", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "r"), "--set", "bogus=1"]) == 2
    )
    assert "valid keys" in capsys.readouterr().err
    with pytest.raises(ValueError, match="key=value"):
        train(tiny_dataset, tmp_path / "run", **train_kwargs(policy_overrides=["nonsense"]))


def test_validation_loss_is_taken_from_the_ema_weights_on_fixed_noise(tiny_dataset, tmp_path):
    import csv

    from torch.utils.data import DataLoader

    from mode_policy.data.lerobot import LeRobotDataset
    from mode_policy.policies.mode.modeling import MoDEPolicy
    from mode_policy.training.train import _windows

    run = train(tiny_dataset, tmp_path / "run", val_dataset=tiny_dataset, val_every=5, **train_kwargs())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    values = {int(row["step"]): float(row["val_diffusion"]) for row in rows if row["val_diffusion"]}
    assert sorted(values) == [5, 10, 15, 20]
    # The last value is the exported (EMA) policy's loss on the first windows with generators seeded 0, 1...
    policy = MoDEPolicy.from_pretrained(run / "policy").eval()
    windows = _windows(policy.config, LeRobotDataset(tiny_dataset))
    batches = DataLoader(torch.utils.data.Subset(windows, range(min(len(windows), 1024))), batch_size=256)
    with torch.no_grad():
        losses = [
            float(policy.compute_loss(batch, generator=torch.Generator().manual_seed(i))[1]["diffusion"])
            for i, batch in enumerate(batches)
        ]
    assert values[20] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert len(set(values.values())) == 4  # the weights moved between evaluations


def test_a_validation_set_that_does_not_exist_is_refused_before_training(tiny_dataset, tmp_path):
    from mode_policy.data.errors import DatasetError

    with pytest.raises(DatasetError, match="no such dataset folder"):
        train(tiny_dataset, tmp_path / "run", val_dataset=tmp_path / "nothing", **train_kwargs())
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ValueError, match="--val-every"):
        train(tiny_dataset, tmp_path / "run2", val_dataset=tiny_dataset, val_every=0, **train_kwargs())


def test_the_schedule_is_fitted_to_a_time_budget(tiny_dataset, tmp_path):
    """A plan far too short for the budget is stretched: more steps run, and the cosine still ends at its
    floor on the last step (not cut off mid-decay, not flat at the floor for the extra steps)."""
    import csv

    from mode_policy.training.callbacks import FitScheduleToBudget

    ticks = iter(range(10_000))  # a clock that advances 0.1 s per reading (once per 5 steps): 50 steps/s
    budget = FitScheduleToBudget(2.0, every=5, reserve_seconds=0.0, clock=lambda: 0.1 * next(ticks))
    run = train(
        tiny_dataset, tmp_path / "run", **train_kwargs(steps=10, lr=1e-3, min_lr_ratio=0.1, log_every=1),
        extra_callbacks=[budget],
    )  # fmt: skip
    steps = json.loads((run / "train_summary.json").read_text())["global_step"]
    assert len(budget.plans) >= 2 and steps == budget.plans[-1][1] > 50
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    lr = {int(row["step"]): float(row["lr"]) for row in rows if row.get("lr")}
    # The logged lr of a step is the one it was taken with: the floor is only reached after the last one.
    assert lr[steps] < 0.2e-3 and lr[steps // 2] > 0.3e-3
    with pytest.raises(ValueError, match="must be positive"):
        FitScheduleToBudget(0)
