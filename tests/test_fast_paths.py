"""The fast paths (`modeling_s2s/fast_paths.py`, `config.fast_paths`) give the reference model's results: the same
outputs, losses and gradients with the switch on and off, in fp32, under bf16 autocast and with bf16 weights; each
path really runs where it applies, and falls back to the reference where it does not."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import (
    BOS,
    FIRST_REAL,
    GRID,
    decoder_vocab,
    grid_id,
    make_model,
    needs_onednn_int8,
    needs_onednn_matmuls,
    random_ids,
)

import modeling_s2s.modeling_s2s
from modeling_s2s import fast_paths
from modeling_s2s.fast_paths import PackedWeights
from modeling_s2s.modeling_s2s import ReferenceStep, S2SDecoder

SOURCE_LENGTHS = [7, 3, 5]
ATOL = 1e-5
NO_DROPOUT = dict(dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0)


def _decoder_inputs(model, batch: int, length: int, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_REAL, decoder_vocab(model), (batch, length), generator=generator)
    ids[:, 0] = BOS
    return ids


def _labels(model):
    labels = _decoder_inputs(model, 3, 7)[:, 1:]
    labels[0, 2:] = -100  # rows of lengths 2, 6, 4
    labels[2, 4:] = -100
    labels[1, 1] = -100  # an ignored label inside a row: its position is still computed
    return labels


def _loss_and_gradients(model, ids, mask, labels, fast: bool, training: bool = True):
    model.config.fast_paths = fast
    model.train(training)
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    model.config.fast_paths = True
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), gradients


def _assert_same_gradients(gradients, expected, atol=1e-5, rtol=1e-4):
    assert gradients.keys() == expected.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, expected[name], atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_training_with_fast_paths_gives_the_reference_loss_and_gradients(options):
    """Training mode, fp32: loss and every gradient equal the reference's; the output layer ran only inside the
    label spans (logits after a row's last label are 0)."""
    model = make_model(**options, **NO_DROPOUT)
    ids, mask = random_ids(SOURCE_LENGTHS)
    labels = _labels(model)
    loss, logits, gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
    ref_loss, ref_logits, ref_gradients = _loss_and_gradients(model, ids, mask, labels, fast=False)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    span = torch.arange(6)[None, :] < torch.tensor([2, 6, 4])[:, None]
    torch.testing.assert_close(logits[span], ref_logits[span], atol=ATOL, rtol=0)
    assert bool((logits[~span] == 0).all()) and not bool((ref_logits[~span] == 0).all())
    _assert_same_gradients(gradients, ref_gradients)


@pytest.mark.parametrize("options", [GRID[0], GRID[3], GRID[4], GRID[7]], ids=grid_id)
def test_training_under_bf16_autocast_and_with_bf16_weights_matches_the_reference(options):
    model = make_model(**options, **NO_DROPOUT)
    ids, mask = random_ids(SOURCE_LENGTHS)
    labels = _labels(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
        ref_loss, _, ref_gradients = _loss_and_gradients(model, ids, mask, labels, fast=False)
    torch.testing.assert_close(loss, ref_loss, atol=2e-2, rtol=1e-2)
    _assert_same_gradients(gradients, ref_gradients, atol=5e-2, rtol=5e-2)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    loss, _, _ = _loss_and_gradients(bf16, ids, mask, labels, fast=True)
    ref_loss, _, _ = _loss_and_gradients(bf16, ids, mask, labels, fast=False)
    torch.testing.assert_close(loss, ref_loss, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_cached_decoding_with_fast_paths_gives_the_reference_logits(options):
    """Eval mode, step by step through the cache (as generate() decodes): logits equal the reference's."""
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, 3, 5)

    def stepwise(fast: bool):
        model.config.fast_paths = fast
        logits, cache = [], None
        with torch.no_grad():
            for t in range(decoder_input_ids.shape[1]):
                out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids[:, t : t + 1],
                            cache=cache, use_cache=True)
                logits.append(out.logits)
                cache = out.cache
        model.config.fast_paths = True
        return torch.cat(logits, dim=1)

    torch.testing.assert_close(stepwise(True), stepwise(False), atol=ATOL, rtol=0)


def _encode_with_gradients(model, ids, mask):
    encoder = model.get_encoder()
    out = encoder(input_ids=ids, attention_mask=mask)
    loss = out.last_hidden_state.pow(2).sum() + out.final_hidden.pow(2).sum()
    if out.final_cell is not None:
        loss = loss + out.final_cell.pow(2).sum()
    return out, torch.autograd.grad(loss, [*encoder.rnn.parameters(), encoder.embed_tokens.weight])


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_cpu_encoder_runs_each_source_length_apart_with_the_results_and_gradients_of_packing(monkeypatch, options):
    """On CPU a batch with a few distinct source lengths runs the RNN once per length (oneDNN's fused kernel)
    instead of as a packed sequence: outputs, zero padding, final states and gradients are packing's."""
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5, 3, 6, 2, 5])
    calls = []
    original = fast_paths.encoder_rnn
    monkeypatch.setattr(modeling_s2s.modeling_s2s, "encoder_rnn", lambda *a: calls.append(1) or original(*a))
    grouped, grouped_grads = _encode_with_gradients(model, ids, mask)
    assert calls == [1]
    monkeypatch.setattr(fast_paths, "MAX_LENGTH_GROUPS", 3)  # 4 lengths: the fast path declines ...
    assert fast_paths.encoder_rnn(model.get_encoder().rnn, torch.zeros(7, 6, 8), mask.sum(1)) is None
    model.config.fast_paths = False  # ... and the reference packs
    packed, packed_grads = _encode_with_gradients(model, ids, mask)
    assert torch.equal(grouped.last_hidden_state[mask == 0], torch.zeros_like(grouped.last_hidden_state[mask == 0]))
    for name in ("last_hidden_state", "final_hidden", "final_cell"):
        expected, actual = getattr(packed, name), getattr(grouped, name)
        if expected is None:
            assert actual is None
            continue
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)
    for grouped_grad, packed_grad in zip(grouped_grads, packed_grads, strict=True):
        torch.testing.assert_close(grouped_grad, packed_grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("options", [GRID[0], GRID[1], GRID[3], GRID[4]], ids=grid_id)
def test_stepping_the_rnn_module_equals_the_reference_cell(monkeypatch, options):
    """The path a quantised decoder RNN takes (calling `decoder.rnn` one position at a time) computes the same
    as the reference cell built from the RNN's float weights."""
    model = make_model(**options)
    model.config.fast_paths = False
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, len(SOURCE_LENGTHS), 6)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        monkeypatch.setattr(ReferenceStep, "rnn", lambda self, t, extra, hidden, cell: self._run_module(
            torch.cat([self.embeddings[:, t], *extra], dim=-1), hidden, cell))
        module_stepped = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(module_stepped, reference, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# oneDNN matmuls with reordered weights
# ---------------------------------------------------------------------------------------------------------------


def _without_onednn(monkeypatch):
    monkeypatch.setattr(fast_paths, "onednn_dtype", lambda weight: None)


@needs_onednn_matmuls
@pytest.mark.parametrize("options", [GRID[0], GRID[4], GRID[10], GRID[15]], ids=grid_id)
def test_training_through_onednn_gives_the_loss_and_gradients_of_plain_matmuls(monkeypatch, options):
    """An LSTM decoder with input feeding runs its per-step matmuls through oneDNN with reordered weights in
    training too (`PackedWeights`, fp32 on CPU); loss and gradients equal those of `F.linear`."""
    model = make_model(**options, **NO_DROPOUT)
    ids, mask = random_ids(SOURCE_LENGTHS)
    labels = _labels(model)
    used = []
    original_linear = PackedWeights.linear
    monkeypatch.setattr(PackedWeights, "linear", lambda self, name, *a, **k: used.append(name) or original_linear(
        self, name, *a, **k))
    loss, _, gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
    assert {"rnn.0.recurrent", "combine"} <= set(used)
    _without_onednn(monkeypatch)
    used.clear()
    plain_loss, _, plain_gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
    assert not used
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=1e-6)
    _assert_same_gradients(gradients, plain_gradients)


def _generate(model, ids, mask, **kwargs):
    kwargs.setdefault("max_new_tokens", 6)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)


def _generate_capturing_caches(monkeypatch, model, ids, mask, **kwargs):
    caches = []
    original_init_cache = S2SDecoder.init_cache

    def spy(self, *args, **kw):
        caches.append(original_init_cache(self, *args, **kw))
        return caches[-1]

    monkeypatch.setattr(S2SDecoder, "init_cache", spy)
    output = _generate(model, ids, mask, output_scores=True, return_dict_in_generate=True, **kwargs)
    monkeypatch.setattr(S2SDecoder, "init_cache", original_init_cache)
    return output, caches


@needs_onednn_matmuls
@pytest.mark.parametrize("options", [GRID[0], GRID[3], GRID[5], GRID[8], GRID[10]], ids=grid_id)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_packed_weights_decode_like_plain_matmuls(monkeypatch, options, num_beams):
    """fp32 decoding on CPU reorders the decoder's and output layer's weights for oneDNN (LSTM layers with
    [W_ih | W_hh] merged); sequences equal, and scores match, plain `F.linear` decoding."""
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    packed, caches = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=num_beams)
    weights = fast_paths._weights_of_cache.get(caches[0])
    assert len(caches) == 1 and weights is not None
    layers = range(model.config.decoder_layers)
    rnn_names = [f"rnn.{i}" for i in layers] if options["cell_type"] == "lstm" else [
        f"rnn.{i}.{part}" for i in layers for part in ("ih", "hh")
    ]
    assert set(weights._weights) >= {"combine", "lm_head", *rnn_names}
    _without_onednn(monkeypatch)
    plain, plain_caches = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=num_beams)
    assert fast_paths._weights_of_cache.get(plain_caches[0]) is None
    assert torch.equal(packed.sequences, plain.sequences)
    for packed_scores, plain_scores in zip(packed.scores, plain.scores, strict=True):
        torch.testing.assert_close(packed_scores, plain_scores, atol=ATOL, rtol=0)


def _scores_with_and_without_packing(monkeypatch, model, ids, mask):
    kwargs = dict(num_beams=2, output_scores=True, return_dict_in_generate=True)
    packed = _generate(model, ids, mask, **kwargs)
    with monkeypatch.context() as patch:
        _without_onednn(patch)
        plain = _generate(model, ids, mask, **kwargs)
    assert torch.equal(packed.sequences, plain.sequences)
    for packed_scores, plain_scores in zip(packed.scores, plain.scores, strict=True):
        torch.testing.assert_close(packed_scores, plain_scores, atol=ATOL, rtol=0)
    return torch.cat([step_scores.flatten() for step_scores in packed.scores])


@needs_onednn_matmuls
def test_reordered_weights_are_reused_by_later_generate_calls_until_a_weight_changes(monkeypatch):
    """Later calls reuse the reordered weights while every parameter behind them is unchanged. An in-place update
    (as an optimizer step makes), a write through `.data` (which PyTorch's version counter does not see) or
    `load_state_dict` makes the next call reorder again, and its scores then equal plain matmuls."""
    model = make_model(**GRID[0])  # LSTM: the merged [W_ih | W_hh] is derived from two parameters
    decoder = model.get_decoder()
    ids, mask = random_ids(SOURCE_LENGTHS)
    reordered = []
    original_reordered = PackedWeights.reordered

    def spy(self, name, weight):
        if name not in self._reordered:
            reordered.append(name)
        return original_reordered(self, name, weight)

    monkeypatch.setattr(PackedWeights, "reordered", spy)
    first = _generate(model, ids, mask, num_beams=2)
    assert {"rnn.0", "combine", "lm_head"} <= set(reordered)
    reordered.clear()
    assert torch.equal(_generate(model, ids, mask, num_beams=2), first) and reordered == []

    def modify_in_place():
        with torch.no_grad():
            decoder.rnn.weight_hh_l0.mul_(1.5)

    def write_through_data():
        decoder.combine.weight.data.add_(0.05)

    def load_a_state_dict():
        model.load_state_dict({name: value * 0.9 for name, value in model.state_dict().items()})

    scores = _scores_with_and_without_packing(monkeypatch, model, ids, mask)
    for change in (modify_in_place, write_through_data, load_a_state_dict):
        change()
        reordered.clear()
        new_scores = _scores_with_and_without_packing(monkeypatch, model, ids, mask)
        assert reordered, change.__name__
        changed = new_scores.shape != scores.shape or not torch.allclose(new_scores, scores, atol=1e-4)
        assert changed, change.__name__  # the change mattered
        scores = new_scores


@needs_onednn_matmuls
def test_a_pickled_model_decodes_as_before():
    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    expected = _generate(model, ids, mask, num_beams=2)  # leaves reordered weights beside the decoder
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert torch.equal(_generate(reloaded, ids, mask, num_beams=2), expected)


@needs_onednn_matmuls
@pytest.mark.parametrize("native_bf16", [True, False], ids=["native-bf16", "no-native-bf16"])
def test_weights_are_packed_in_the_precision_the_matmuls_run_in(monkeypatch, native_bf16):
    """fp32 outside autocast; bf16 under bf16 autocast and for bf16 weights only on CPUs with native bf16
    (elsewhere plain matmuls: oneDNN would emulate bf16); never under fp16 autocast."""
    if native_bf16 and not fast_paths._cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    monkeypatch.setattr(fast_paths, "_cpu_has_native_bf16", lambda: native_bf16)
    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
    decoder = model.get_decoder()
    cache = decoder.init_cache(encoder_outputs, mask)
    bf16 = torch.bfloat16 if native_bf16 else None
    with torch.no_grad():
        decoding = fast_paths._packed_weights(decoder, cache, 1)
        assert decoding.dtype == torch.float32 and fast_paths._packed_weights(decoder, cache, 1) is decoding
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = fast_paths._packed_weights(decoder, cache, 1)
            assert getattr(under_autocast, "dtype", None) == bf16
        with torch.autocast("cpu", dtype=torch.float16):
            assert fast_paths._packed_weights(decoder, cache, 1) is None
        assert fast_paths._packed_weights(decoder, cache, 1).dtype == torch.float32  # not the autocast one
    # With gradients on, every call reorders afresh (an optimizer step may have changed the weights since), and
    # only when the call's step loop reuses the weights.
    training = fast_paths._packed_weights(decoder, cache, 5)
    assert training is not None and training is not decoding
    assert fast_paths._packed_weights(decoder, cache, 5) is not training
    assert fast_paths._packed_weights(decoder, cache, 1) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert getattr(fast_paths._packed_weights(decoder, cache, 5), "dtype", None) == bf16
    bf16_decoder = make_model(**GRID[0]).to(torch.bfloat16).get_decoder()
    with torch.no_grad():
        assert getattr(fast_paths._packed_weights(bf16_decoder, cache, 1), "dtype", None) == bf16


@needs_onednn_matmuls
@pytest.mark.parametrize("options", [GRID[0], GRID[4], GRID[10], GRID[15]], ids=grid_id)
def test_bf16_training_through_onednn_gives_the_loss_and_gradients_of_plain_bf16_matmuls(monkeypatch, options):
    """Under bf16 autocast on a CPU with native bf16, the per-step matmuls run through bf16 reordered weights and
    the weight gradients of all steps in one bf16 matmul; loss and gradients match autocast's `F.linear` to bf16
    precision (and the plain path is what runs on other CPUs)."""
    if not fast_paths._cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    model = make_model(**options, **NO_DROPOUT)
    ids, mask = random_ids(SOURCE_LENGTHS)
    labels = _labels(model)
    used = []
    original_linear = PackedWeights.linear
    monkeypatch.setattr(PackedWeights, "linear", lambda self, name, *a, **k: used.append((name, self.dtype)) or
                        original_linear(self, name, *a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
        assert ("rnn.0.recurrent", torch.bfloat16) in used and ("combine", torch.bfloat16) in used
        monkeypatch.setattr(fast_paths, "_cpu_has_native_bf16", lambda: False)
        used.clear()
        plain_loss, _, plain_gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
    assert not used
    assert all(gradient.dtype == torch.float32 for gradient in gradients.values())
    torch.testing.assert_close(loss, plain_loss, atol=2e-2, rtol=1e-2)
    _assert_same_gradients(gradients, plain_gradients, atol=5e-2, rtol=5e-2)


@needs_onednn_matmuls
@pytest.mark.parametrize("precision", ["autocast", "weights"])
def test_bf16_decoding_through_onednn_matches_plain_bf16_matmuls(monkeypatch, precision):
    """bf16 decoding (bf16 autocast, or bf16 weights) through bf16 reordered weights gives the scores of plain
    bf16 matmuls to bf16 precision."""
    if not fast_paths._cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16 / AMX)")
    model = make_model(**GRID[0])
    if precision == "weights":
        model = model.to(torch.bfloat16)
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
        packed, caches = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=1)
        assert fast_paths._weights_of_cache[caches[0]].dtype == torch.bfloat16
        monkeypatch.setattr(fast_paths, "_cpu_has_native_bf16", lambda: False)
        plain, plain_caches = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=1)
        assert fast_paths._weights_of_cache.get(plain_caches[0]) is None
    for packed_scores, plain_scores in zip(packed.scores, plain.scores, strict=False):
        assert packed_scores.dtype == plain_scores.dtype
        torch.testing.assert_close(packed_scores.float(), plain_scores.float(), atol=5e-2, rtol=2e-2)


@needs_onednn_matmuls
def test_a_copied_cache_rebuilds_its_packed_weights():
    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.full((3, 1), BOS), use_cache=True)
        cache = out.cache
        assert fast_paths._weights_of_cache[cache]._weights  # used by that first step
        copied = copy.deepcopy(cache)
        assert fast_paths._weights_of_cache.get(copied) is None
        step = torch.full((3, 1), FIRST_REAL)
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=step, cache=cache,
                         use_cache=True).logits
        again = model(input_ids=ids, attention_mask=mask, decoder_input_ids=step, cache=copied,
                      use_cache=True).logits
    torch.testing.assert_close(again, expected, atol=0, rtol=0)


def test_cpu_encoder_cuts_a_batch_padded_past_its_longest_row():
    """Every row of the same length, padded further (fixed-length padding): one RNN call over the real length,
    the outputs and final states of the reference's packed run."""
    model = make_model(**GRID[0])
    ids, mask = random_ids([4, 4, 4])
    ids = torch.cat([ids, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.long)], dim=1)
    encoder = model.get_encoder()
    embeddings = encoder.embed_tokens(ids)
    assert fast_paths.encoder_rnn(encoder.rnn, embeddings, mask.sum(1)) is not None
    with torch.no_grad():
        fast = encoder(input_ids=ids, attention_mask=mask)
        model.config.fast_paths = False
        reference = encoder(input_ids=ids, attention_mask=mask)
    for name in ("last_hidden_state", "final_hidden", "final_cell"):
        torch.testing.assert_close(getattr(fast, name), getattr(reference, name), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# int8 decoding (config.int8_decoding)
# ---------------------------------------------------------------------------------------------------------------


@needs_onednn_int8
@pytest.mark.parametrize("rows", [1, 2, 37])
@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_int8_linear_is_the_fp32_matmul_to_int8_precision(rows, activation):
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(300, 96, generator=generator) * 0.1
    bias = torch.randn(300, generator=generator)
    x = torch.randn(rows, 96, generator=generator)
    linear = torch.nn.functional.linear(x, weight, bias)
    expected = torch.tanh(linear) if activation == "tanh" else linear
    quantized = fast_paths.quantize_weight(weight)
    assert quantized.scales.shape == (300,)
    output = fast_paths.int8_linear(x, quantized, bias, activation)
    assert output.shape == expected.shape and output.dtype == torch.float32
    assert not torch.equal(output, expected)  # really int8 ...
    error = (output - expected).abs().max() / linear.abs().max()  # tanh shrinks differences
    assert error < 0.03, error  # ... within int8's resolution (1/127 of the largest input and weight)
    # a row's result does not depend on the other rows (each row has its own input scale), even beside a row a
    # hundred times larger; alone, it goes through the two-row kernel
    beside_a_larger_row = torch.cat([x[:1], 100 * x[-1:]])
    in_a_batch = fast_paths.int8_linear(beside_a_larger_row, quantized, bias, activation)[:1]
    torch.testing.assert_close(fast_paths.int8_linear(x[:1], quantized, bias, activation), in_a_batch)
    # all-zero inputs give the bias (no division by a zero scale)
    zeros = fast_paths.int8_linear(torch.zeros(rows, 96), quantized, bias)
    torch.testing.assert_close(zeros, bias.expand(rows, -1))
    with pytest.raises(ValueError, match="activation 'relu' is not one of 'none', 'tanh'"):
        fast_paths.int8_linear(x, quantized, bias, "relu")


def _int8_and_fp32_scores(monkeypatch, model, ids, mask, num_beams):
    model.config.int8_decoding = True
    int8, caches = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=num_beams)
    model.config.int8_decoding = False
    fp32, _ = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=num_beams)
    return int8, fp32, fast_paths._weights_of_cache.get(caches[0])


@needs_onednn_int8
@pytest.mark.parametrize("options", [GRID[0], GRID[3], GRID[5], GRID[15]], ids=grid_id)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_int8_decoding_quantises_the_decoder_and_output_layer_and_stays_close_to_fp32(
    monkeypatch, options, num_beams
):
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    used = []
    original = fast_paths.int8_linear
    monkeypatch.setattr(fast_paths, "int8_linear", lambda x, weight, *a: used.append(weight) or original(x, weight, *a))
    int8, fp32, weights = _int8_and_fp32_scores(monkeypatch, model, ids, mask, num_beams)
    assert weights is not None and weights.dtype == torch.int8
    assert {"combine", "lm_head"} <= set(weights._weights) and used
    assert all(isinstance(weight, fast_paths.Int8Weight) for weight in weights._reordered.values())
    first_int8, first_fp32 = int8.scores[0], fp32.scores[0]  # the same prefix in both: comparable scores
    assert not torch.equal(first_int8, first_fp32)
    finite = first_fp32.isfinite()
    similarity = torch.nn.functional.cosine_similarity(first_int8[finite], first_fp32[finite], dim=0)
    assert similarity > 0.999, similarity


@needs_onednn_int8
@pytest.mark.parametrize("num_beams", [1, 3])
def test_int8_decoding_of_a_sentence_does_not_depend_on_its_batch(num_beams):
    """Each row's inputs have their own int8 scale: every sentence's scores alone are those of its rows in the
    batch, up to float rounding (a scale per batch would quantise them differently)."""
    model = make_model(**GRID[0], **NO_DROPOUT)
    model.config.int8_decoding = True
    ids, mask = random_ids(SOURCE_LENGTHS)
    batch = _generate(model, ids, mask, num_beams=num_beams, output_scores=True, return_dict_in_generate=True)
    for row, length in enumerate(mask.sum(dim=1).tolist()):
        alone = _generate(model, ids[row : row + 1, :length], mask[row : row + 1, :length], num_beams=num_beams,
                          output_scores=True, return_dict_in_generate=True)
        rows = slice(row * num_beams, (row + 1) * num_beams)
        torch.testing.assert_close(alone.scores[0], batch.scores[0][rows], atol=1e-4, rtol=1e-4)


@needs_onednn_int8
def test_int8_decoding_falls_back_to_the_weights_precision_where_it_does_not_apply(monkeypatch):
    """No oneDNN int8 on this CPU, bf16 weights, fast paths off, or training: int8_decoding changes nothing."""
    model = make_model(**GRID[0], **NO_DROPOUT)
    ids, mask = random_ids(SOURCE_LENGTHS)
    assert fast_paths.int8_decoding_applies(model)
    with monkeypatch.context() as patch:
        patch.setattr(fast_paths, "_cpu_has_onednn_int8", lambda: False)
        assert not fast_paths.int8_decoding_applies(model)
        int8, fp32, weights = _int8_and_fp32_scores(monkeypatch, model, ids, mask, 1)
    assert weights.dtype == torch.float32
    assert torch.equal(int8.sequences, fp32.sequences)
    for int8_scores, fp32_scores in zip(int8.scores, fp32.scores, strict=True):
        assert torch.equal(int8_scores, fp32_scores)
    model.config.fast_paths = False
    assert not fast_paths.int8_decoding_applies(model)
    int8, fp32, weights = _int8_and_fp32_scores(monkeypatch, model, ids, mask, 1)
    assert weights is None and all(torch.equal(a, b) for a, b in zip(int8.scores, fp32.scores, strict=True))
    model.config.fast_paths = True
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    assert not fast_paths.int8_decoding_applies(bf16_model)
    _, _, weights = _int8_and_fp32_scores(monkeypatch, bf16_model, ids, mask, 1)
    assert weights is None or weights.dtype == torch.bfloat16
    labels = _labels(model)
    model.config.int8_decoding = True
    int8_loss, _, int8_gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
    model.config.int8_decoding = False
    loss, _, gradients = _loss_and_gradients(model, ids, mask, labels, fast=True)
    assert torch.equal(int8_loss, loss)
    _assert_same_gradients(int8_gradients, gradients, atol=0, rtol=0)
