"""Fine-tuning (--init-from, --freeze, --extend-tasks): weights carried over, frozen groups fixed,
provenance recorded, and every misuse refused with one clear message."""

import json

import pytest
import torch

from mode_policy.cli import main
from mode_policy.data.lerobot import LeRobotDataset
from mode_policy.policies import MoDEPolicy, MoDEPolicyConfig
from mode_policy.training.finetune import load_initial_weights
from mode_policy.training.train import train
from tests.training.conftest import TINY_POLICY, train_kwargs


@pytest.fixture(scope="module")
def pretrained(tiny_dataset, tmp_path_factory):
    return train(tiny_dataset, tmp_path_factory.mktemp("pretrain") / "run", **train_kwargs())


def _groups(policy, names):
    groups = policy.parameter_groups()
    return {name: [p.detach().clone() for p in groups[name]] for name in names}


def test_fine_tuning_starts_from_the_policy_and_keeps_frozen_groups_fixed(pretrained, tiny_dataset, tmp_path):
    run = train(tiny_dataset, tmp_path / "tuned", init_from=pretrained, freeze="router,experts",
                **train_kwargs(policy_overrides=None, steps=10, seed=4))  # fmt: skip
    source = MoDEPolicy.from_pretrained(pretrained / "policy")
    tuned = MoDEPolicy.from_pretrained(run / "policy")
    before, after = (
        _groups(source, ["router", "experts", "attention"]),
        _groups(tuned, ["router", "experts", "attention"]),
    )
    for name in ("router", "experts"):  # frozen: bit for bit the pretrained weights
        assert all(torch.equal(a, b) for a, b in zip(before[name], after[name], strict=True)), name
    assert not all(torch.equal(a, b) for a, b in zip(before["attention"], after["attention"], strict=True))
    saved = json.loads((run / "policy" / "config.json").read_text())["init_from"]
    assert saved["path"] == str((pretrained / "policy").resolve()) and saved["policy_type"] == "mode"
    assert saved["frozen"] == ["router", "experts"] and len(saved["weights_sha256"]) == 16
    settings = json.loads((run / "train_config.json").read_text())
    assert settings["init_from"] == str(pretrained) and settings["freeze"] == ["router", "experts"]
    assert (
        tuned.config.denoiser == source.config.denoiser
    )  # the architecture is the source's, no --set needed


def test_a_resumed_fine_tuning_run_keeps_its_frozen_groups_and_refuses_others(
    pretrained, tiny_dataset, tmp_path
):
    train(tiny_dataset, tmp_path / "tuned", init_from=pretrained, freeze="router",
          **train_kwargs(policy_overrides=None, steps=10))  # fmt: skip
    with pytest.raises(ValueError, match="resume without them"):
        train(tiny_dataset, tmp_path / "tuned", resume=True, freeze="experts",
              **train_kwargs(policy_overrides=None, steps=20))  # fmt: skip
    run = train(
        tiny_dataset, tmp_path / "tuned", resume=True, **train_kwargs(policy_overrides=None, steps=20)
    )
    source = MoDEPolicy.from_pretrained(pretrained / "policy")
    tuned = MoDEPolicy.from_pretrained(run / "policy")  # the resumed steps kept the router frozen too
    before, after = _groups(source, ["router"])["router"], _groups(tuned, ["router"])["router"]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def _one_hot_source(tasks, tmp_path, state_dim=39):
    torch.manual_seed(0)
    config = MoDEPolicyConfig.from_dict({
        "state_dim": state_dim, "language_encoder": "onehot", "tasks": tasks,
        "denoiser": {"width": 32, "depth": 2, "heads": 2, "num_experts": 4, "top_k": 2},
    })  # fmt: skip
    stats = {key: {"mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n, "max": [1.0] * n}
             for key, n in (("observation.state", state_dim), ("action", 4))}  # fmt: skip
    return MoDEPolicy(config, stats).save_pretrained(tmp_path / "source")


def test_new_one_hot_tasks_need_extend_tasks_and_start_from_zero_goal_weights(tiny_dataset, tmp_path):
    tasks = list(LeRobotDataset(tiny_dataset).tasks)
    source_dir = _one_hot_source(tasks[:1], tmp_path)
    with pytest.raises(ValueError, match="--extend-tasks"):
        train(tiny_dataset, tmp_path / "refused", init_from=source_dir, **train_kwargs(policy_overrides=None))
    run = train(tiny_dataset, tmp_path / "extended", init_from=source_dir, extend_tasks=True,
                **train_kwargs(policy_overrides=None, steps=2))  # fmt: skip
    tuned = MoDEPolicy.from_pretrained(run / "policy")
    assert tuned.config.tasks == tasks  # the source's task first, in its one-hot position
    # At the start, the new task's goal column is zero and the old one is the source's.
    source = MoDEPolicy.from_pretrained(source_dir)
    fresh = MoDEPolicy(tuned.config, source.dataset_stats)
    load_initial_weights(fresh, source)
    weight = fresh.denoiser.network.goal_proj.weight
    assert torch.equal(weight[:, 0], source.denoiser.network.goal_proj.weight[:, 0])
    assert torch.count_nonzero(weight[:, 1]) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"freeze": "router"}, "go with --init-from"),
        ({"init_from": "no/such/policy"}, "--init-from no/such/policy"),
        ({"init_from": "PRETRAINED", "freeze": "router,wheels"}, r"unknown --freeze group\(s\) \['wheels'\]"),
        ({"init_from": "PRETRAINED", "freeze": "router,router"}, "twice"),
        ({"init_from": "SMALL_STATE"}, "state_dim=5"),
        ({"init_from": "PRETRAINED", "policy_overrides": ["denoiser.width=64"]}, "do not fit"),
    ],
)  # fmt: skip
def test_misuse_is_refused_before_training(kwargs, match, pretrained, tiny_dataset, tmp_path):
    if kwargs.get("init_from") == "PRETRAINED":
        kwargs["init_from"] = pretrained
    elif kwargs.get("init_from") == "SMALL_STATE":
        kwargs["init_from"] = _one_hot_source(list(LeRobotDataset(tiny_dataset).tasks), tmp_path, state_dim=5)
    options = train_kwargs(policy_overrides=kwargs.pop("policy_overrides", None))
    with pytest.raises(ValueError, match=match):
        train(tiny_dataset, tmp_path / "run", **options, **kwargs)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cli_refuses_a_folder_that_is_not_a_policy_in_one_line(tiny_dataset, tmp_path, capsys):
    code = main(["train", "--dataset", str(tiny_dataset), "--out", str(tmp_path / "run"), "--init-from",
                 str(tmp_path), "--steps", "2", *[f"--set={item}" for item in TINY_POLICY]])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--init-from" in err, err
