"""Present evaluation results: a terminal table, and results.json + results.md written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mode_policy.io import atomic_write_text


def _rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for task, entry in results["per_task"].items():
        low, high = entry["ci95"]
        steps = entry.get("mean_steps_to_success")
        rows.append((
            task,
            f"{entry['success_rate']:.2f} ({entry['successes']}/{entry['episodes']})",
            f"[{low:.2f}, {high:.2f}]",
            "-" if steps is None else f"{steps:.0f}",
        ))  # fmt: skip
    low, high = results["mean_ci95"]
    rows.append(("MEAN", f"{results['mean_success']:.3f}", f"[{low:.2f}, {high:.2f}]", ""))
    return rows


HEADER = ("task", "success", "95% CI", "steps")
RESULT_FILES = ("results.json", "results.md")


def format_table(results: dict[str, Any]) -> str:
    """Fixed-width table of per-task success with Wilson intervals, the mean, and the timing line."""
    rows = _rows(results)
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(4)]

    def line(row: tuple) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()

    rule = "-" * len(line(HEADER))
    body = [line(HEADER), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])]
    return "\n".join([*body, _footer(results)])


def _footer(results: dict[str, Any]) -> str:
    inference = results.get("inference", {})
    return (
        f"{results.get('suite', '?')}: {results.get('episodes_per_task')} episodes/task, seed "
        f"{results.get('seed')}, {results.get('eval_seconds')} s; mean CI: {results.get('mean_ci_method')}; "
        f"policy {inference.get('ms_per_chunk_batch1_median')} ms/chunk at batch 1, "
        f"{inference.get('ms_per_chunk_batched_mean')} ms per batched call (mean batch "
        f"{inference.get('mean_batch_size')}), expert cache "
        f"{ {True: 'on', False: 'off'}.get(results.get('use_expert_cache'), 'n/a') }"
    )


def format_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Evaluation: {results.get('suite')} ({results.get('policy')})",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    return "\n".join([*lines, "", _footer(results), ""])


def write_results(results: dict[str, Any], out_dir: str | Path) -> Path:
    """results.json and results.md in ``out_dir``, each written atomically; returns ``out_dir``."""
    out_dir = Path(out_dir)
    json_file, markdown_file = RESULT_FILES
    atomic_write_text(out_dir / json_file, json.dumps(results, indent=2) + "\n")
    atomic_write_text(out_dir / markdown_file, format_markdown(results))
    return out_dir


def machine_description() -> str:
    """The CPU as results should name it, e.g. "AMD EPYC, 2 cores, AVX-512": timings differ ~2x between the
    machines this project runs on (AVX-512 or AVX2 only), so every recorded figure says which it came from."""
    import os
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the platform's name is all there is
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return ", ".join(part for part in (model, f"{os.cpu_count()} cores", vector) if part)
