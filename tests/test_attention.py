"""The standalone `S2SAttention` layer (Keras-like call), checked against hand-written formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_s2s import S2SAttention

ALL_TYPES = ["dot", "general", "concat", "additive", "scaled_dot", "multihead"]
ATOL = 1e-5


def _layer(attention_type, query_size=8, key_size=8, seed=0, **kwargs) -> S2SAttention:
    torch.manual_seed(seed)
    heads = kwargs.pop("num_heads", 2 if attention_type == "multihead" else 1)
    layer = S2SAttention(attention_type, query_size, key_size, num_heads=heads, dropout=0.4, **kwargs)
    for parameter in layer.parameters():  # default init is fine, but make the scores clearly non-uniform
        torch.nn.init.normal_(parameter, std=0.5)
    return layer.eval()  # dropout 0.4 must be inactive in eval mode


def _inputs(batch=2, queries=3, keys=5, query_size=8, key_size=8, value_size=None, seed=1):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, queries, query_size, generator=generator)
    key = torch.randn(batch, keys, key_size, generator=generator)
    value = torch.randn(batch, keys, value_size or key_size, generator=generator)
    return query, key, value


def _reference(scores, value, value_mask=None):
    """softmax over keys (masked keys excluded) and the weighted sum of values. scores: (B, T, S)."""
    if value_mask is not None:
        scores = scores.masked_fill(~value_mask.bool()[:, None, :], float("-inf"))
    weights = scores.softmax(-1)
    return weights @ value, weights


def _reference_scores(layer: S2SAttention, query, key):
    kind = layer.attention_type
    if kind == "dot":
        return query @ key.transpose(1, 2)
    if kind == "general":
        weight = layer.query_proj.weight  # (key_size, query_size): score = q^T W^T... written as q (W^T) k
        return torch.einsum("btq,kq,bsk->bts", query, weight, key)
    if kind == "scaled_dot":
        return query @ key.transpose(1, 2) / math.sqrt(key.shape[-1])
    if kind == "concat":
        # v^T tanh(W [q; k]) with one matrix W over the concatenation
        weight = torch.cat([layer.query_proj.weight, layer.key_proj.weight], dim=1)  # (A, Dq + Dk)
        pairs = torch.cat(
            [
                query[:, :, None, :].expand(-1, -1, key.shape[1], -1),
                key[:, None, :, :].expand(-1, query.shape[1], -1, -1),
            ],
            dim=-1,
        )
        return (torch.tanh(pairs @ weight.T) @ layer.score_proj.weight.T).squeeze(-1)
    if kind == "additive":
        hidden = torch.tanh(
            (query @ layer.query_proj.weight.T + layer.query_proj.bias)[:, :, None, :]
            + (key @ layer.key_proj.weight.T)[:, None, :, :]
        )
        return (hidden @ layer.score_proj.weight.T).squeeze(-1)
    raise AssertionError(kind)


@pytest.mark.parametrize("attention_type", ["dot", "general", "scaled_dot", "concat", "additive"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_single_head_scores_match_formula(attention_type, with_mask):
    layer = _layer(attention_type)
    query, key, value = _inputs(value_size=8)
    value_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]) if with_mask else None
    context, weights = layer(query, value, key=key, value_mask=value_mask, return_attention_scores=True)
    expected_context, expected_weights = _reference(_reference_scores(layer, query, key), value, value_mask)
    assert weights.shape == (2, 1, 3, 5)
    assert context.shape == (2, 3, 8)
    torch.testing.assert_close(weights[:, 0], expected_weights, atol=ATOL, rtol=0)
    torch.testing.assert_close(context, expected_context, atol=ATOL, rtol=0)


def test_multihead_matches_torch_multihead_attention():
    layer = _layer("multihead", num_heads=4)
    query, key, value = _inputs()
    reference = torch.nn.MultiheadAttention(8, num_heads=4, bias=False, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat([layer.query_proj.weight, layer.key_proj.weight, layer.value_proj.weight])
        )
        reference.out_proj.weight.copy_(layer.out_proj.weight)
    value_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    context, weights = layer(query, value, key=key, value_mask=value_mask, return_attention_scores=True)
    expected, expected_weights = reference(
        query, key, value, key_padding_mask=~value_mask.bool(), average_attn_weights=False
    )
    assert weights.shape == (2, 4, 3, 5)
    torch.testing.assert_close(weights, expected_weights, atol=ATOL, rtol=0)
    torch.testing.assert_close(context, expected, atol=ATOL, rtol=0)


def test_scaled_dot_learnable_scale_starts_at_inverse_sqrt_d_and_is_trained():
    fixed = S2SAttention("scaled_dot", 8, 8)
    learned = S2SAttention("scaled_dot", 8, 8, learnable_scale=True)
    assert not list(fixed.parameters())
    assert isinstance(learned.scale, torch.nn.Parameter)
    assert learned.scale.item() == pytest.approx(1 / math.sqrt(8))
    query, key, value = _inputs()
    torch.testing.assert_close(learned(query, value, key=key), fixed(query, value, key=key))
    learned(query, value, key=key).pow(2).sum().backward()
    assert learned.scale.grad is not None and learned.scale.grad.abs().item() > 0
    with torch.no_grad():
        learned.scale.fill_(2.0)
    expected, _ = _reference(2.0 * query @ key.transpose(1, 2), value)
    torch.testing.assert_close(learned(query, value, key=key), expected, atol=ATOL, rtol=0)


def test_key_defaults_to_value_and_value_size_may_differ():
    layer = _layer("general", query_size=6, key_size=8)
    query, key, value = _inputs(query_size=6, key_size=8, value_size=8)
    torch.testing.assert_close(layer(query, value), layer(query, value, key=value))
    # value of another width: the weights come from the keys, the context has the value width
    wide_layer = _layer("general", query_size=6, key_size=8, value_size=5)
    _, _, wide_value = _inputs(value_size=5)
    context, weights = wide_layer(query, wide_value, key=key, return_attention_scores=True)
    assert wide_layer.output_size == 5 and context.shape == (2, 3, 5)
    torch.testing.assert_close(context, weights[:, 0] @ wide_value, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attention_type", ALL_TYPES)
def test_value_mask_gives_exactly_zero_weight_and_equals_truncation(attention_type):
    layer = _layer(attention_type)
    query, key, value = _inputs()
    value_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    context, weights = layer(query, value, key=key, value_mask=value_mask, return_attention_scores=True)
    assert bool((weights[1, :, :, 2:] == 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=ATOL, rtol=0)
    # Padded keys have no influence: same as attending over the real keys only.
    alone, alone_weights = layer(query[1:], value[1:, :2], key=key[1:, :2], return_attention_scores=True)
    torch.testing.assert_close(context[1:], alone, atol=ATOL, rtol=0)
    torch.testing.assert_close(weights[1:, :, :, :2], alone_weights, atol=ATOL, rtol=0)
    # ...whatever the padded values are.
    noisy_value, noisy_key = value.clone(), key.clone()
    noisy_value[1, 2:] += 100.0
    noisy_key[1, 2:] -= 100.0
    noisy = layer(query, noisy_value, key=noisy_key, value_mask=value_mask)
    torch.testing.assert_close(noisy, context, atol=ATOL, rtol=0)


@pytest.mark.parametrize("attention_type", ["dot", "multihead"])
def test_query_mask_zeroes_padded_query_rows_only(attention_type):
    layer = _layer(attention_type)
    query, key, value = _inputs()
    query_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    masked = layer(query, value, key=key, query_mask=query_mask)
    unmasked = layer(query, value, key=key)
    assert bool((masked[1, 1:] == 0).all())
    torch.testing.assert_close(masked[0], unmasked[0])
    torch.testing.assert_close(masked[1, 0], unmasked[1, 0])
    assert unmasked[1, 1:].abs().sum() > 0


@pytest.mark.parametrize("attention_type", ALL_TYPES)
def test_causal_self_attention_sees_only_the_past(attention_type):
    layer = _layer(attention_type)
    sequence, _, _ = _inputs(queries=5)
    context, weights = layer(sequence, sequence, causal=True, return_attention_scores=True)
    upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
    assert bool((weights[..., upper] == 0).all())
    assert bool((weights[..., ~upper] > 0).all())
    # Position t equals attending from t over the prefix 0..t alone: the future never leaks in.
    for t in range(5):
        prefix = sequence[:, : t + 1]
        alone = layer(sequence[:, t : t + 1], prefix)
        torch.testing.assert_close(context[:, t : t + 1], alone, atol=ATOL, rtol=0)


def test_causal_with_fewer_queries_than_keys_aligns_queries_to_the_end():
    # T=2 new queries over S=4 positions (2 earlier + 2 new): query t sees positions <= S - T + t.
    layer = _layer("dot")
    memory, _, _ = _inputs(queries=4)
    _, weights = layer(memory[:, 2:], memory, causal=True, return_attention_scores=True)
    assert bool((weights[..., 0, 3] == 0).all())
    assert bool((weights[..., 0, :3] > 0).all())
    assert bool((weights[..., 1, :] > 0).all())


@pytest.mark.parametrize("attention_type", ALL_TYPES)
def test_return_attention_scores_shapes_and_prepared_memory_stepwise(attention_type):
    layer = _layer(attention_type)
    query, key, value = _inputs()
    context = layer(query, value, key=key)
    context2, weights = layer(query, value, key=key, return_attention_scores=True)
    heads = layer.num_heads
    assert isinstance(context, torch.Tensor) and context.shape == (2, 3, layer.output_size)
    assert weights.shape == (2, heads, 3, 5)
    torch.testing.assert_close(context, context2)
    # Keys projected once (prepare_memory) and queried one step at a time give the full result.
    memory = layer.prepare_memory(key, value)
    steps = [layer.attend(query[:, t : t + 1], memory)[0] for t in range(3)]
    torch.testing.assert_close(torch.cat(steps, dim=1), context, atol=ATOL, rtol=0)


def test_dropout_is_active_in_training_mode_only():
    layer = _layer("dot")
    query, key, value = _inputs()
    evaluated = layer(query, value, key=key)
    torch.testing.assert_close(evaluated, layer(query, value, key=key))
    layer.train()
    torch.manual_seed(0)
    assert not torch.allclose(layer(query, value, key=key), evaluated)


@pytest.mark.parametrize(
    ("args", "kwargs", "named"),
    [
        (("dot", 8, 6), {}, ["dot", "8", "6"]),
        (("scaled_dot", 4, 10), {}, ["scaled_dot", "4", "10"]),
        (("multihead", 12, 12), {"num_heads": 5}, ["num_heads", "5", "12"]),
        (("general", 8, 8), {"num_heads": 2}, ["num_heads", "2"]),
        (("cosine", 8, 8), {}, ["attention_type", "cosine"]),
    ],
)
def test_bad_construction_raises_naming_the_value(args, kwargs, named):
    with pytest.raises(ValueError) as info:
        S2SAttention(*args, **kwargs)
    for fragment in named:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_gradients_reach_every_parameter():
    for attention_type in ["general", "concat", "additive", "multihead"]:
        layer = _layer(attention_type).train()
        query, key, value = _inputs()
        F.mse_loss(layer(query, value, key=key), torch.zeros(2, 3, layer.output_size)).backward()
        for name, parameter in layer.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, (attention_type, name)
