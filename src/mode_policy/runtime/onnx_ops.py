"""What makes a program's graph lean in ONNX: attention on (batch, tokens, width) tensors as one ONNX
``Attention`` node (opset 23), without the head split and merge of transposes around it.

``packed_attention(module)`` is an export-only stand-in for ``SelfAttention``: the same weights and the same
result, computed through the custom op ``mode_policy::attention``, which eager torch runs with
``scaled_dot_product_attention`` and the exporter writes as ``Attention(q_num_heads=...)`` on 3-D inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mode_policy.nn.attention import SelfAttention


@torch.library.custom_op("mode_policy::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """Multi-head attention on packed heads: q, k, v (B, T, heads * head_dim) -> (B, T, heads * head_dim)."""
    batch, tokens, dim = q.shape

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, tokens, heads, dim // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=causal)
    return out.transpose(1, 2).reshape(batch, tokens, dim)


@attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    return torch.empty_like(q)


def attention_to_onnx(q, k, v, heads: int, causal: bool):
    """The ONNX translation of ``mode_policy::attention`` (for ``torch.onnx.export``'s translation table)."""
    from onnxscript import opset23 as op

    out, _, _, _ = op.Attention(q, k, v, q_num_heads=heads, kv_num_heads=heads, is_causal=int(causal))
    return out


TRANSLATIONS = {torch.ops.mode_policy.attention.default: attention_to_onnx}


class PackedAttention(nn.Module):
    """``SelfAttention`` with packed heads; holds the original module (same parameters, same names)."""

    def __init__(self, original: SelfAttention) -> None:
        super().__init__()
        self.original = original

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.original
        batch, tokens, dim = x.shape
        q, k, v = a.qkv(x).split(dim, dim=-1)  # the columns of qkv are [q heads | k heads | v heads]
        q = a.q_norm(q.view(batch, tokens, a.heads, a.head_dim)).view(batch, tokens, dim)
        k = a.k_norm(k.view(batch, tokens, a.heads, a.head_dim)).view(batch, tokens, dim)
        return a.proj(torch.ops.mode_policy.attention(q, k, v, a.heads, a.causal))


def pack_attention(program: nn.Module) -> int:
    """Replace every SelfAttention inside ``program`` by its PackedAttention; returns how many."""
    swaps = [
        (parent, name, child)
        for parent in program.modules()
        for name, child in parent.named_children()
        if isinstance(child, SelfAttention)
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedAttention(child))
    return len(swaps)
