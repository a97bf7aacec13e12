import pytest

from mode_policy.evaluation.report import format_markdown, format_table
from mode_policy.evaluation.stats import summarize, wilson_interval


def test_wilson_matches_reference_values():
    # Reference: statsmodels proportion_confint(method="wilson").
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_summary_mean_and_pooled_interval():
    summary = summarize({"a": [True] * 10, "b": [True] * 5 + [False] * 5})
    assert summary["per_task"]["a"]["success_rate"] == 1.0
    assert summary["mean_success"] == pytest.approx(0.75)
    assert summary["mean_ci95"] == pytest.approx(list(wilson_interval(15, 20)))
    assert "pooled" in summary["mean_ci_method"]
    summary.update(suite="mt10", episodes_per_task=10, seed=0, inference={})
    table = format_table(summary)
    assert "MEAN" in table and "0.750" in table and "[0.72, 1.00]" in table
    assert format_markdown(summary).count("|") > 10
