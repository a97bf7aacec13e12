"""Expert usage: which experts each layer uses at each sampler step, measured by running the sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from mode_policy.nn.denoiser import MoDEDenoiser
from mode_policy.nn.moe.layer import MoELayer


def routed_layers(denoiser: torch.nn.Module) -> list[MoELayer]:
    """The MoE layers of a denoiser that route between experts (none for a dense model or the CNN)."""
    return [m for m in denoiser.modules() if isinstance(m, MoELayer) and m.experts is not None]


@torch.no_grad()
def expert_usage(
    denoiser: MoDEDenoiser,
    obs: torch.Tensor,
    goal: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    method: str = "ddim",
    seed: int = 0,
) -> torch.Tensor:
    """(model evaluations, routed layers, routed experts): the share of gate weight each expert received.

    Runs the sampler once, uncached, so that every routing variant (token routing included) is measured
    the same way; rows sum to 1. A dense model has no routed layers (the middle dimension is 0).
    """
    layers = routed_layers(denoiser)
    was_training = denoiser.training
    denoiser.eval()
    for layer in layers:
        layer.usage_log = []
    try:
        denoiser.sample_actions(
            obs, goal, sigmas, method=method, generator=torch.Generator().manual_seed(seed), use_cache=False
        )
        logs = [torch.stack(layer.usage_log) for layer in layers]  # each (evaluations, experts)
    finally:
        for layer in layers:
            layer.usage_log = None
        denoiser.train(was_training)
    if not logs:
        return torch.zeros(len(sigmas) - 1, 0, 0)
    return torch.stack(logs, dim=1).float()


def plot_expert_usage(
    usage: torch.Tensor, sigmas: torch.Tensor, path: str | Path, *, title: str = "expert usage"
) -> Path:
    """Save one heatmap per layer (sampler step x expert, labelled with sigma) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mode_policy.io import atomic_write

    evaluations, layers, experts = usage.shape
    if layers == 0:
        raise ValueError("this model has no routed experts (a dense model): there is no expert usage to plot")
    columns = min(layers, 4)
    rows = (layers + columns - 1) // columns
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(2.6 * columns + 1.2, (0.25 * evaluations + 1.0) * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    labels = [f"{s:.3g}" for s in sigmas[:evaluations].tolist()] if len(sigmas) >= evaluations else None
    image = None
    for layer in range(rows * columns):
        axis = axes[layer // columns][layer % columns]
        if layer >= layers:
            axis.axis("off")
            continue
        image = axis.imshow(usage[:, layer].numpy(), aspect="auto", vmin=0, vmax=1, cmap="viridis")
        axis.set_title(f"layer {layer}", fontsize=9)
        axis.set_xticks(range(experts))
        axis.set_xlabel("expert", fontsize=8)
        if layer % columns == 0:
            axis.set_ylabel("step (sigma)", fontsize=8)
            axis.set_yticks(range(evaluations))
            axis.set_yticklabels(labels or range(evaluations), fontsize=6)
        else:
            axis.set_yticks([])
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of gate weight")
    figure.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return path
