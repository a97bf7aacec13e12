"""The quickstart's plan on a slow machine: it warns, says what to give it, and reports the steps it ran."""

import json

import pytest

from mode_policy.messages import ModePolicyWarning
from mode_policy.training import quickstart as quickstart_module


@pytest.fixture
def fake_pipeline(monkeypatch):
    """Collection, training and evaluation replaced by stubs; training "runs" 90% of the planned steps."""
    import mode_policy.envs.collect
    import mode_policy.evaluation.rollout
    import mode_policy.training.train

    planned = {}

    def train(data_dir, run_dir, *, steps, **kwargs):
        planned["steps"] = steps
        run_dir.mkdir(parents=True)
        (run_dir / "train_summary.json").write_text(json.dumps({"global_step": int(0.9 * steps)}))

    monkeypatch.setattr(mode_policy.envs.collect, "collect_demonstrations", lambda *a, **k: None)
    monkeypatch.setattr(mode_policy.training.train, "train", train)
    monkeypatch.setattr(mode_policy.evaluation.rollout, "evaluate", lambda *a, **k: {"mean_success": 0.5})
    return planned


@pytest.mark.parametrize(("rate", "warns"), [(1.0, True), (10.0, False)])
def test_a_slow_machine_is_warned_and_the_steps_run_are_reported(
    fake_pipeline, monkeypatch, tmp_path, rate, warns
):
    monkeypatch.setattr(quickstart_module, "_probe_steps_per_second", lambda *a: rate)
    with pytest.warns(ModePolicyWarning, match=r"--minutes \d+") if warns else _no_warning():
        results = quickstart_module.quickstart(10, tmp_path / "qs", progress=False)
    steps = fake_pipeline["steps"]
    assert (steps < quickstart_module.GOOD_STEPS) == warns
    kept = quickstart_module.EVAL_RESERVE_SECONDS + quickstart_module.STARTUP_SECONDS  # collection: ~0 s
    assert steps == pytest.approx(rate * (600 - kept), rel=0.01)  # all the rest of the budget trains
    timing = json.loads((tmp_path / "qs" / "quickstart.json").read_text())
    assert timing["planned_steps"] == steps and timing["train_steps"] == int(0.9 * steps)
    assert results["quickstart"] == timing


class _no_warning:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", ModePolicyWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
