"""Honest cost accounting: multiply-accumulates (MACs) of one action chunk, every matmul counted.

The MoDE paper's FLOP savings counted only the attention projections (its fused experts sat in an
unregistered dict). Here torch's FlopCounterMode sees every matmul the sampler actually runs (experts,
routers, attention scores, embeddings and the head), and ``analytic_chunk_macs`` states the same count in
closed form so a test can check that nothing is missed. Norms, activations and softmax are not matmuls and
are not counted (they are a small share; this is the usual convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count

from mode_policy.diffusion.samplers import model_evaluations
from mode_policy.nn.config import MoDEConfig
from mode_policy.nn.expert_cache import can_cache_experts


def _register_missing_formulas() -> None:
    """torch's counter has no formula for CPU attention or grouped GEMM: without these, both count as 0."""
    cpu_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_attention not in flop_registry:

        @register_flop_formula(cpu_attention)
        def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

    grouped_mm = torch.ops.aten._grouped_mm
    if grouped_mm not in flop_registry:

        @register_flop_formula(grouped_mm)
        def _grouped_mm_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
            # 2-D tokens (M, K) against 3-D expert weights (E, K, N): each token meets one expert.
            return 2 * a_shape[0] * a_shape[1] * b_shape[-1]


_register_missing_formulas()


@dataclass
class ChunkCost:
    """MACs to sample one action chunk for ``batch_size`` observations with ``model_evaluations`` calls."""

    macs: int
    batch_size: int
    model_evaluations: int
    by_operator: dict[str, int]

    @property
    def macs_per_sample(self) -> float:
        return self.macs / self.batch_size


def count_chunk_macs(
    denoiser: torch.nn.Module,
    sigmas: torch.Tensor,
    *,
    batch_size: int = 1,
    method: str = "ddim",
    use_cache: bool = True,
) -> ChunkCost:
    """Run the sampler once under torch's FlopCounterMode and return the MACs it performed.

    ``use_cache``: with the denoiser's sampling cache where it has one (``sampling_cache``: MoDE's
    expert cache, Mixture-of-Transformers' context cache).
    """
    config: MoDEConfig = denoiser.config
    reference = next(denoiser.parameters())
    make = {"device": reference.device, "dtype": reference.dtype}
    obs = torch.zeros(batch_size, config.num_obs_tokens, config.obs_dim, **make)
    goal = torch.zeros(batch_size, config.num_goal_tokens, config.goal_dim, **make)
    was_training = denoiser.training
    denoiser.eval()
    options = {"use_cache": use_cache} if denoiser.sampling_cache else {}  # the cache where there is one
    if use_cache and can_cache_experts(denoiser):  # outside the counter: paid once per schedule, not chunk
        denoiser.cache_experts(sigmas)
    counter = FlopCounterMode(display=False)
    with counter:
        denoiser.sample_actions(obs, goal, sigmas, method=method, **options)
    denoiser.train(was_training)
    by_operator = {str(op): flops // 2 for op, flops in counter.get_flop_counts()["Global"].items()}
    steps = len(sigmas) - 1
    return ChunkCost(
        counter.get_total_flops() // 2, batch_size, model_evaluations(method, steps), by_operator
    )


def analytic_chunk_macs(
    config: MoDEConfig, *, batch_size: int, model_evaluations: int, cached: bool
) -> dict[str, int]:
    """Closed-form MACs per chunk by part, for a batch that shares sigma (as inside a sampler).

    ``cached`` drops what the expert cache precomputes: phi(sigma) and the routers.
    """
    b, d, tokens = batch_size, config.width, config.sequence_length
    per_eval = {
        "embeddings": b
        * d
        * (
            config.num_goal_tokens * config.goal_dim
            + config.num_obs_tokens * config.obs_dim
            + config.chunk_size * config.action_dim
        ),
        "sigma_embedding": 0 if cached else d + d * d,
        "attention_projections": config.depth * b * tokens * 4 * d * d,
        "attention_scores": config.depth * b * 2 * tokens * tokens * d,
        "experts": config.depth * config.top_k * b * tokens * 3 * d * config.expert_hidden,
        "routers": 0
        if cached or config.is_dense
        else config.depth
        * (d * config.router_hidden_mult * d + config.router_hidden_mult * d * config.routed_experts),
        "head": b * config.chunk_size * d * config.action_dim,
    }
    return {part: macs * model_evaluations for part, macs in per_eval.items()}
