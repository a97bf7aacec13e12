"""The MoE layer: dispatch against a naive reference, routing rules and the router losses."""

import pytest
import torch

from mode_policy.nn.moe.dispatch import dispatch_to_experts
from mode_policy.nn.moe.experts import GroupedSwiGLU, SelectedExperts, grouped_gemm_dtype, swiglu
from mode_policy.nn.moe.layer import CachedRoute, MoELayer, load_balance_loss
from mode_policy.nn.moe.router import select_experts
from tests.conftest import tiny_config


def naive_moe(tokens, expert_ids, expert_weights, experts):
    """Token by token, expert by expert: the obviously-correct reference."""
    out = torch.zeros_like(tokens)
    for n in range(tokens.shape[0]):
        for slot in range(expert_ids.shape[1]):
            e = expert_ids[n, slot].item()
            out[n] += expert_weights[n, slot] * (swiglu(tokens[n] @ experts.w_in[e]) @ experts.w_out[e])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dispatch_matches_naive_reference(dtype):
    experts = GroupedSwiGLU(num_experts=5, dim=8, hidden=16).to(dtype)
    tokens = torch.randn(23, 8, dtype=dtype)
    logits = torch.randn(23, 5, dtype=dtype)
    routing = select_experts(logits, 2, sample=False)
    out, tokens_per_expert = dispatch_to_experts(tokens, routing.expert_ids, routing.expert_weights, experts)
    expected = naive_moe(tokens, routing.expert_ids, routing.expert_weights, experts)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, atol=tolerance, rtol=tolerance)
    assert tokens_per_expert.sum().item() == 23 * 2
    assert torch.equal(tokens_per_expert, torch.bincount(routing.expert_ids.reshape(-1), minlength=5))


@pytest.mark.parametrize(
    "device, dtype, capability, dims, expected",
    [
        ("cpu", torch.float32, None, (8, 32, 16), torch.float32),
        ("cpu", torch.float64, None, (8, 32, 16), None),  # no grouped kernel for float64
        ("cpu", torch.bfloat16, None, (8, 32, 16), None),  # CPU autocast: the looped matmuls
        ("cuda", torch.bfloat16, (9, 0), (8, 32, 16), torch.bfloat16),
        ("cuda", torch.bfloat16, (7, 5), (8, 32, 16), None),  # torch documents SM >= 80
        ("cuda", torch.float32, (9, 0), (8, 32, 16), None),  # CUDA's grouped GEMM takes bfloat16
        ("cuda", torch.bfloat16, (9, 0), (4, 32, 16), None),  # rows of 8 bytes: not 16-byte aligned
        ("mps", torch.float32, None, (8, 32, 16), None),
    ],
)
def test_grouped_gemm_is_chosen_by_device_and_dtype(monkeypatch, device, dtype, capability, dims, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert grouped_gemm_dtype(torch.device(device), dtype, dims) == expected


def test_dispatch_under_cpu_autocast_takes_the_fallback_and_agrees():
    experts = GroupedSwiGLU(num_experts=4, dim=8, hidden=16)
    tokens = torch.randn(19, 8)
    routing = select_experts(torch.randn(19, 4), 2, sample=False)
    expected, _ = dispatch_to_experts(tokens, routing.expert_ids, routing.expert_weights, experts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = dispatch_to_experts(tokens, routing.expert_ids, routing.expert_weights, experts)
    assert out.dtype == tokens.dtype
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.05)


def test_dispatch_gradients_match_naive_reference():
    experts = GroupedSwiGLU(num_experts=4, dim=8, hidden=16)
    tokens = torch.randn(17, 8, requires_grad=True)
    routing = select_experts(torch.randn(17, 4), 2, sample=False)
    out, _ = dispatch_to_experts(tokens, routing.expert_ids, routing.expert_weights, experts)
    out.sum().backward()
    grads = (tokens.grad.clone(), experts.w_in.grad.clone(), experts.w_out.grad.clone())
    tokens.grad = experts.w_in.grad = experts.w_out.grad = None
    naive_moe(tokens, routing.expert_ids, routing.expert_weights, experts).sum().backward()
    for got, expected in zip(grads, (tokens.grad, experts.w_in.grad, experts.w_out.grad), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_selected_experts_are_renormalised_top_k():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    routing = select_experts(logits, 2, sample=False)
    assert routing.expert_ids.tolist() == [[1, 3]]
    probs = logits.softmax(-1)[0]
    expected = torch.stack([probs[1], probs[3]]) / (probs[1] + probs[3])
    torch.testing.assert_close(routing.expert_weights[0], expected)


def test_stochastic_selection_draws_distinct_experts_reproducibly():
    logits = torch.zeros(1000, 4)
    first = select_experts(logits, 2, sample=True, generator=torch.Generator().manual_seed(3)).expert_ids
    again = select_experts(logits, 2, sample=True, generator=torch.Generator().manual_seed(3)).expert_ids
    assert torch.equal(first, again)
    assert (first[:, 0] != first[:, 1]).all()  # without replacement
    counts = torch.bincount(first.reshape(-1), minlength=4).float() / first.numel()
    assert (counts - 0.25).abs().max() < 0.03  # uniform router -> uniform draws (2000 draws, SE ~0.01)


def test_load_balance_loss_is_one_at_uniform_and_larger_when_collapsed():
    uniform_probs = torch.full((64, 4), 0.25)
    uniform_counts = torch.full((4,), 32)
    assert load_balance_loss(uniform_probs, uniform_counts).item() == pytest.approx(1.0)
    collapsed_probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]]).expand(64, 4)
    collapsed_counts = torch.tensor([64, 0, 0, 0])
    assert load_balance_loss(collapsed_probs, collapsed_counts).item() > 3.5  # -> E = 4 at full collapse


def test_layer_stats_report_uniform_routing_as_one():
    layer = MoELayer(tiny_config(num_experts=4, top_k=2))
    for parameter in layer.router.net[-1].parameters():
        torch.nn.init.zeros_(parameter)  # constant logits: a uniform router
    layer.train()
    _, stats = layer(torch.randn(50, 7, 32), torch.randn(50, 32), need_stats=True)
    assert stats.load_balance_loss.item() == pytest.approx(1.0, abs=0.05)  # sampled counts, ~700 draws
    assert stats.expert_fraction.shape == (4,)
    assert stats.expert_fraction.sum().item() == pytest.approx(1.0)


def test_eval_routing_depends_on_sigma_only():
    layer = MoELayer(tiny_config(num_experts=4, top_k=2)).eval()
    sigma_embedding = torch.randn(1, 32)
    routing = layer.route_rows(sigma_embedding)
    # Different token contents, same sigma: the same experts and weights for every token.
    for _ in range(3):
        tokens = torch.randn(3, 9, 32) * 10
        out, _ = layer(tokens, sigma_embedding)
        expected = sum(
            w * layer.experts.forward_expert(tokens.reshape(-1, 32), e)
            for e, w in zip(routing.expert_ids[0].tolist(), routing.expert_weights[0], strict=True)
        )
        torch.testing.assert_close(out.reshape(-1, 32), expected, atol=1e-5, rtol=1e-5)
    # Per-sample sigmas: each sample follows its own sigma's routing, not its tokens.
    per_sample = torch.randn(3, 32)
    tokens = torch.randn(3, 9, 32)
    out, _ = layer(tokens, per_sample)
    for b in range(3):
        alone, _ = layer(tokens[b : b + 1], per_sample[b : b + 1])
        torch.testing.assert_close(out[b], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("num_experts", "top_k"), [(3, 2), (4, 2), (6, 3), (8, 4), (5, 5)])
def test_shared_expert_works_for_any_expert_count(num_experts, top_k):
    config = tiny_config(num_experts=num_experts, top_k=top_k, shared_expert=True)
    layer = MoELayer(config).to(torch.float64).eval()
    assert layer.experts.num_experts == num_experts - 1
    tokens = torch.randn(2, 5, 32, dtype=torch.float64)
    sigma_embedding = torch.randn(1, 32, dtype=torch.float64)
    out, _ = layer(tokens, sigma_embedding)
    routing = layer.route_rows(sigma_embedding)
    assert routing.expert_ids.shape == (1, top_k - 1)
    flat = tokens.reshape(-1, 32)
    expected = layer.shared_expert(flat) + sum(
        w * layer.experts.forward_expert(flat, e)
        for e, w in zip(routing.expert_ids[0].tolist(), routing.expert_weights[0], strict=True)
    )
    torch.testing.assert_close(out.reshape(-1, 32), expected)


def test_token_routing_uses_each_tokens_content():
    layer = MoELayer(tiny_config(router_input="token")).eval()
    tokens = torch.randn(1, 40, 32)
    logits = layer.router(tokens.reshape(-1, 32))
    ids = logits.topk(2, dim=-1).indices
    assert len({tuple(row) for row in ids.tolist()}) > 1  # not one routing for all tokens
    out, _ = layer(tokens, torch.randn(1, 32))
    routing = select_experts(logits, 2, sample=False)
    expected, _ = dispatch_to_experts(
        tokens.reshape(-1, 32), routing.expert_ids, routing.expert_weights, layer.experts
    )
    torch.testing.assert_close(out.reshape(-1, 32), expected)


@pytest.mark.parametrize(
    ("expert_ids", "strided"),
    [((3, 0), True), ((1, 2), True), ((4, 0, 2), True), ((0, 1, 3), False), ((2,), False)],
)
def test_cached_route_runs_its_experts_as_one_strided_batch(expert_ids, strided):
    experts = GroupedSwiGLU(5, 16, 24).to(torch.float64)
    weights = tuple(float(w) for w in torch.rand(len(expert_ids), dtype=torch.float64))
    route = CachedRoute(expert_ids, weights)
    flat = torch.randn(7, 16, dtype=torch.float64)
    expected = sum(w * experts.forward_expert(flat, e) for e, w in zip(expert_ids, weights, strict=True))
    assert (route.strided is not None) == strided
    if strided:  # a slice of the stacked weights, in slice order, with the gate weights following it
        experts_slice, slice_weights = route.strided
        assert sorted(range(5)[experts_slice]) == sorted(expert_ids)
        assert slice_weights == tuple(weights[expert_ids.index(e)] for e in range(5)[experts_slice])
        assert experts.w_in[experts_slice].data_ptr() == experts.w_in[min(expert_ids)].data_ptr()  # a view
    out, _ = route.run(experts, flat)
    torch.testing.assert_close(out, expected)
    kept = SelectedExperts(experts, list(expert_ids))  # a program's copies: the per-expert path
    torch.testing.assert_close(route.run(kept, flat)[0], expected)
