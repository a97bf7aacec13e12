"""The routing family's conversions: dense baselines of matching size, task-model extraction, stage splits.

Every variant is a ``MoDEConfig`` choice of the same denoiser (README "Routing variants"); these functions
build one variant from another without copying model code.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.denoiser import MoDEDenoiser


def dense_config_like(config: MoDEConfig, match: str = "active") -> MoDEConfig:
    """A dense transformer of the same shape whose one SwiGLU per layer matches the MoE's size.

    match="active": hidden = top_k experts' hidden (the compute of one token); match="total": all experts'
    hidden (the parameter count). Routers are not matched (they are ~1/16 of an expert at width 256).
    """
    if match not in ("active", "total"):
        raise ValueError(f"match must be 'active' or 'total', got {match!r}")
    experts = config.top_k if match == "active" else config.num_experts
    return replace(
        config,
        num_experts=1,
        top_k=1,
        shared_expert=False,
        router_input="sigma",
        stage_boundaries=None,
        expert_hidden_mult=config.expert_hidden_mult * experts,
    )


@torch.no_grad()
def extract_task_model(denoiser: MoDEDenoiser, goal: torch.Tensor) -> MoDEDenoiser:
    """A dense model holding only the experts that a task-routed model uses for ``goal``.

    goal: one task's goal embedding, (goal_dim,) or (goal_tokens, goal_dim). The result runs the same
    computation as ``denoiser`` for that goal (each layer keeps its k experts with constant weights) and
    has depth x (num_experts - top_k) fewer experts and no routers.
    """
    config = denoiser.config
    if config.router_input != "task":
        hint = (
            " (its experts change with sigma, so a per-task model would keep them all; use the expert cache, "
            "which is keyed per (goal, step))"
            if config.router_input == "sigma_goal"
            else ""
        )
        raise ValueError(
            f"extract_task_model needs a task-routed model (router_input='task'), got "
            f"router_input={config.router_input!r}{hint}"
        )
    network = denoiser.network
    reference = network.head.weight
    goal = goal.to(reference.device, reference.dtype)
    goal = goal.reshape(1, config.num_goal_tokens, config.goal_dim)
    goal_feature = network.goal_proj(goal).mean(dim=1)  # (1, D)
    task_config = replace(config, router_input="fixed", num_experts=config.top_k)
    task_model = MoDEDenoiser(task_config).to(device=reference.device, dtype=reference.dtype)
    state = {
        name: tensor
        for name, tensor in denoiser.state_dict().items()
        if ".moe.router." not in name and ".moe.experts." not in name
    }
    for layer, block in enumerate(network.blocks):
        routing = block.moe.route_rows(goal_feature)
        ids = routing.expert_ids[0]
        prefix = f"network.blocks.{layer}.moe."
        state[prefix + "experts.w_in"] = block.moe.experts.w_in[ids]
        state[prefix + "experts.w_out"] = block.moe.experts.w_out[ids]
        state[prefix + "fixed_weights"] = routing.expert_weights[0]
    task_model.load_state_dict(state, strict=True)
    return task_model.train(denoiser.training)


@torch.no_grad()
def split_into_stages(denoiser: MoDEDenoiser, stage_boundaries: list[float]) -> MoDEDenoiser:
    """eDiff-I's trick: copy a trained dense model's MLP into one expert per noise stage, then fine-tune.

    At the split the stage model computes exactly what the dense one does; fine-tuning lets each stage's
    experts specialise on their sigma range.
    """
    config = denoiser.config
    if not config.is_dense or config.shared_expert:
        raise ValueError(
            "split_into_stages starts from a dense model (num_experts=1); train one with "
            "mode_policy.nn.variants.dense_config_like(config) first"
        )
    stages = len(stage_boundaries) + 1
    stage_config = replace(
        config, router_input="stage", stage_boundaries=list(stage_boundaries), num_experts=stages, top_k=1
    )
    reference = denoiser.network.head.weight
    stage_model = MoDEDenoiser(stage_config).to(device=reference.device, dtype=reference.dtype)
    state = {name: t for name, t in denoiser.state_dict().items() if ".moe.dense." not in name}
    for layer, block in enumerate(denoiser.network.blocks):
        prefix = f"network.blocks.{layer}.moe."
        # nn.Linear stores (out, in); grouped experts store (in, out) per expert.
        w_in, w_out = block.moe.dense.w_in.weight.T, block.moe.dense.w_out.weight.T
        state[prefix + "experts.w_in"] = w_in.unsqueeze(0).repeat(stages, 1, 1)
        state[prefix + "experts.w_out"] = w_out.unsqueeze(0).repeat(stages, 1, 1)
    stage_model.load_state_dict(state, strict=True)
    return stage_model.train(denoiser.training)
