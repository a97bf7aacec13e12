"""Mixture-of-experts layer: a router, a dispatch step and grouped SwiGLU experts (torchtitan's split)."""

from mode_policy.nn.moe.experts import GroupedSwiGLU, SwiGLU
from mode_policy.nn.moe.layer import MoELayer, RouterStats
from mode_policy.nn.moe.router import Router, Routing, select_experts

__all__ = ["GroupedSwiGLU", "MoELayer", "Router", "RouterStats", "Routing", "SwiGLU", "select_experts"]
