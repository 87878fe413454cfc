"""Forward pass: cached step-by-step decoding equals the full teacher-forced pass, padding never changes a
result, attention weights are proper distributions, the loss is the token-averaged cross-entropy, and bad
inputs raise errors naming the bad value."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    BOS,
    EOS,
    FIRST_REAL,
    GRID,
    PAD,
    VOCAB,
    decoder_vocab,
    grid_id,
    make_model,
    random_ids,
)
from torch import nn
from transformers import DataCollatorForSeq2Seq

from modeling_s2s import S2SDecoderCache, S2SEncoderOutput, S2SModel
from modeling_s2s.modeling_s2s import shift_tokens_right

ATOL = 1e-5
SOURCE_LENGTHS = [7, 3, 5]


def _decoder_inputs(model, batch: int, length: int, seed: int = 5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_REAL, decoder_vocab(model), (batch, length), generator=generator)
    ids[:, 0] = BOS
    return ids


def _step_by_step(model, encoder_outputs, decoder_input_ids, chunks=None):
    """Logits from cached incremental decoding, feeding `chunks` tokens at a time (default: one)."""
    length = decoder_input_ids.shape[1]
    bounds = chunks or [1] * length
    cache, logits, start = None, [], 0
    for size in bounds:
        out = model(
            encoder_outputs=encoder_outputs,
            decoder_input_ids=decoder_input_ids[:, start : start + size],
            cache=cache,
            use_cache=True,
        )
        assert isinstance(out.cache, S2SDecoderCache)
        cache = out.cache
        logits.append(out.logits)
        start += size
    assert start == length and cache.get_seq_length() == length
    return torch.cat(logits, dim=1)


def test_grid_covers_every_option_twice():
    def variant(options):
        if options["attention_type"] == "scaled_dot" and options.get("attention_learnable_scale"):
            return "scaled_dot+learnable_scale"
        return options["attention_type"]

    counts = Counter()
    for options in GRID:
        counts.update(
            [
                ("attention", variant(options)),
                ("cell", options["cell_type"]),
                ("input_feeding", options["input_feeding"]),
                ("style", options["attention_style"]),
                ("self_attention", options["decoder_self_attention"]),
                ("bridge", options["bridge"]),
                ("bidirectional", options["bidirectional_encoder"]),
                ("encoder_layers", options.get("encoder_layers", 1)),
                ("decoder_layers", options.get("decoder_layers", 1)),
                ("shared_vocab", "decoder_vocab_size" not in options),
                ("tied", options.get("tie_word_embeddings", True)),
            ]
        )
    expected = {
        "attention": [
            "dot",
            "general",
            "concat",
            "additive",
            "scaled_dot",
            "scaled_dot+learnable_scale",
            "multihead",
        ],
        "cell": ["lstm", "gru"],
        "input_feeding": [True, False],
        "style": ["luong", "bahdanau"],
        "self_attention": [True, False],
        "bridge": ["zero", "last", "mean", "linear"],
        "bidirectional": [True, False],
        "encoder_layers": [1, 2],
        "decoder_layers": [1, 2],
        "shared_vocab": [True, False],
        "tied": [True, False],
    }
    for axis, values in expected.items():
        for value in values:
            assert counts[(axis, value)] >= 2, (axis, value)
    assert {options.get("attention_heads") for options in GRID} >= {2, 4}


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_step_by_step_equals_full_forward(options):
    model = make_model(**options)
    assert model.config.dropout > 0 and model.config.embedding_dropout > 0 and not model.training
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, len(SOURCE_LENGTHS), 6)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        assert full.shape == (3, 6, decoder_vocab(model))
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        stepped = _step_by_step(model, encoder_outputs, decoder_input_ids)
        chunked = _step_by_step(model, encoder_outputs, decoder_input_ids, chunks=[2, 1, 3])
        # Eval mode is deterministic although dropout is configured.
        again = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(stepped, full, atol=ATOL, rtol=0)
    torch.testing.assert_close(chunked, full, atol=ATOL, rtol=0)
    torch.testing.assert_close(again, full, atol=0, rtol=0)
    # The configured dropout really is active in training mode (so eval mode is what disabled it).
    model.train()
    with torch.no_grad():
        trained = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
    assert not torch.allclose(trained, full, atol=ATOL)


def test_cache_passed_under_its_pre_5_24_name_past_key_values_still_continues_decoding():
    """transformers 5.24 renamed `past_key_values` to `cache`; code written against the old name keeps working."""
    model = make_model(attention_type="general", input_feeding=True)
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, len(SOURCE_LENGTHS), 3)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        first = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids[:, :2], use_cache=True)
        rest = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids[:, 2:],
                     past_key_values=first.cache, use_cache=True)
    assert rest.cache is first.cache and rest.cache.get_seq_length() == 3
    torch.testing.assert_close(rest.logits, full[:, 2:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_padding_never_changes_a_row(options):
    """Each row of a right-padded batch (source and target) gives the logits of that sequence alone."""
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    target_lengths = [3, 6, 4]
    decoder_input_ids = _decoder_inputs(model, 3, max(target_lengths))
    decoder_mask = torch.zeros_like(decoder_input_ids)
    for row, length in enumerate(target_lengths):
        decoder_input_ids[row, length:] = PAD
        decoder_mask[row, :length] = 1
    with torch.no_grad():
        batched = model(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_mask,
        ).logits
        for row, (source_length, target_length) in enumerate(zip(SOURCE_LENGTHS, target_lengths)):
            alone = model(
                input_ids=ids[row : row + 1, :source_length],
                decoder_input_ids=decoder_input_ids[row : row + 1, :target_length],
            ).logits
            torch.testing.assert_close(batched[row : row + 1, :target_length], alone, atol=ATOL, rtol=0)


def test_decoder_attention_mask_must_match_the_decoder_inputs():
    model = make_model()
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, 3, 4)
    with pytest.raises(ValueError, match=r"`decoder_attention_mask` has shape \(3, 5\).*\(3, 4\)"):
        model(input_ids=ids, decoder_input_ids=decoder_input_ids, decoder_attention_mask=torch.ones(3, 5))


@pytest.mark.parametrize("options", GRID[:4], ids=grid_id)
def test_mask_from_pad_token_equals_explicit_mask(options):
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, 3, 4)
    with torch.no_grad():
        explicit = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        derived = model(input_ids=ids, decoder_input_ids=decoder_input_ids)
        encoder_outputs = model.get_encoder()(input_ids=ids)
    torch.testing.assert_close(derived.logits, explicit.logits, atol=0, rtol=0)
    assert torch.equal(encoder_outputs.attention_mask, mask)
    # The encoder outputs are zero at padded positions.
    assert bool((encoder_outputs.last_hidden_state[mask == 0] == 0).all())


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_cross_attention_is_a_distribution_over_real_source_tokens(options):
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, 3, 5)
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids, output_attentions=True
        )
    (cross,) = out.cross_attentions
    heads = model.config.attention_heads
    assert cross.shape == (3, heads, 5, ids.shape[1])
    real = mask.bool()[:, None, None, :].expand_as(cross)
    assert bool((cross[~real] == 0).all())
    torch.testing.assert_close(cross.sum(-1), torch.ones(3, heads, 5), atol=ATOL, rtol=0)
    assert bool((cross[real] > 0).all())
    if options["decoder_self_attention"]:
        (self_weights,) = out.decoder_attentions
        assert self_weights.shape == (3, heads, 5, 5)
        upper = torch.ones(5, 5, dtype=torch.bool).triu(1)
        assert bool((self_weights[..., upper] == 0).all())
        torch.testing.assert_close(self_weights.sum(-1), torch.ones(3, heads, 5), atol=ATOL, rtol=0)
    else:
        assert out.decoder_attentions is None


@pytest.mark.parametrize("options", [GRID[0], GRID[2], GRID[4], GRID[9]], ids=grid_id)
def test_every_parameter_gets_a_gradient(options):
    model = make_model(**options).train()
    ids, mask = random_ids(SOURCE_LENGTHS)
    labels = _decoder_inputs(model, 3, 5)[:, 1:]
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_base_model_outputs_and_tuple_return():
    torch.manual_seed(0)
    model = make_model(model_class=S2SModel, decoder_self_attention=True)
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, 3, 4)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=decoder_input_ids,
            output_hidden_states=True,
            use_cache=True,
        )
        as_tuple = model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids, return_dict=False
        )
    hidden = model.config.hidden_size
    assert out.last_hidden_state.shape == (3, 4, hidden)
    assert out.encoder_last_hidden_state.shape == (3, ids.shape[1], hidden)
    assert isinstance(out.cache, S2SDecoderCache)
    assert out.decoder_hidden_states[-1].shape == (3, 4, hidden)
    assert out.encoder_hidden_states[0].shape == (3, ids.shape[1], model.config.embedding_size)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)


def test_inputs_embeds_equal_input_ids():
    model = make_model()
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, 3, 4)
    with torch.no_grad():
        from_ids = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        embeds = model.get_input_embeddings()(ids)
        from_embeds = model(
            inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids
        ).logits
    torch.testing.assert_close(from_embeds, from_ids, atol=ATOL, rtol=0)


# --- loss -------------------------------------------------------------------------------------------------


def _manual_cross_entropy_sum(logits, labels, smoothing=0.0):
    log_probs = logits.log_softmax(-1)
    keep = labels != -100
    picked = log_probs[keep].gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
    nll = -picked
    uniform = -log_probs[keep].mean(-1)
    return ((1 - smoothing) * nll + smoothing * uniform).sum(), int(keep.sum())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_is_token_average_over_non_ignored_labels(smoothing):
    model = make_model(label_smoothing=smoothing, input_feeding=False)
    ids, mask = random_ids(SOURCE_LENGTHS)
    labels = _decoder_inputs(model, 3, 5)[:, 1:]
    labels[0, 2:] = -100
    labels[2, 3:] = -100
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        # decoder inputs are the labels shifted right, -100 replaced by the pad id
        shifted = model(
            input_ids=ids, attention_mask=mask, decoder_input_ids=shift_tokens_right(labels, PAD, BOS)
        ).logits
    torch.testing.assert_close(out.logits, shifted)
    total, count = _manual_cross_entropy_sum(out.logits, labels, smoothing)
    assert count == 12 - 2 - 1
    torch.testing.assert_close(out.loss, total / count, atol=1e-6, rtol=1e-6)
    # Trainer passes the token count of the whole (accumulated) batch: the summed loss is divided by it.
    with torch.no_grad():
        scaled = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(40))
    torch.testing.assert_close(scaled.loss, total / 40, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        scaled_int = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=25)
    torch.testing.assert_close(scaled_int.loss, total / 25, atol=1e-6, rtol=1e-6)


def test_shift_tokens_right():
    labels = torch.tensor([[5, 6, 7, 2], [8, 2, -100, -100]])
    assert shift_tokens_right(labels, PAD, BOS).tolist() == [[BOS, 5, 6, 7], [BOS, 8, 2, PAD]]
    assert labels.tolist() == [[5, 6, 7, 2], [8, 2, -100, -100]]  # not modified in place


def test_collator_builds_decoder_inputs_and_loss_matches_manual_cross_entropy(digit_tokenizer):
    model = make_model(vocab_size=len(digit_tokenizer))
    collator = DataCollatorForSeq2Seq(digit_tokenizer, model=model)
    sources, targets = ["31415", "27", "9926"], ["51413", "72", "6299"]
    features = [
        {"input_ids": digit_tokenizer(s)["input_ids"], "labels": digit_tokenizer(text_target=t)["input_ids"]}
        for s, t in zip(sources, targets)
    ]
    batch = collator(features)
    assert batch["labels"].tolist()[1] == [FIRST_REAL + 7, FIRST_REAL + 2, EOS, -100, -100, -100]
    assert batch["input_ids"][1].tolist() == [FIRST_REAL + 2, FIRST_REAL + 7, EOS, PAD, PAD, PAD]
    expected_decoder = [[BOS] + row[:-1] for row in batch["labels"].tolist()]
    expected_decoder = [[PAD if token == -100 else token for token in row] for row in expected_decoder]
    assert batch["decoder_input_ids"].tolist() == expected_decoder
    with torch.no_grad():
        out = model(**batch)
    total, count = _manual_cross_entropy_sum(out.logits, batch["labels"])
    assert count == sum(len(t) + 1 for t in targets)
    torch.testing.assert_close(out.loss, total / count, atol=1e-6, rtol=1e-6)


# --- errors -----------------------------------------------------------------------------------------------


def _error(call, *fragments, error=ValueError):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_out_of_vocabulary_and_negative_token_ids_raise():
    model = make_model(share_encoder_decoder_embeddings=False, decoder_vocab_size=23)
    ids, mask = random_ids([4, 4])
    decoder_input_ids = torch.tensor([[BOS, 5], [BOS, 6]])

    too_big = ids.clone()
    too_big[1, 0] = VOCAB
    _error(lambda: model(input_ids=too_big, decoder_input_ids=decoder_input_ids), "input_ids", str(VOCAB))
    negative = ids.clone()
    negative[0, 1] = -4
    _error(lambda: model(input_ids=negative, decoder_input_ids=decoder_input_ids), "input_ids", "-4")

    # The decoder vocabulary is the target one: 22 is valid there (but not in the source), 23 is not.
    model(input_ids=ids, decoder_input_ids=torch.tensor([[BOS, 22], [BOS, 6]]))
    _error(
        lambda: model(input_ids=ids, decoder_input_ids=torch.tensor([[BOS, 23], [BOS, 6]])),
        "decoder_input_ids",
        "23",
    )
    _error(
        lambda: model(input_ids=ids, decoder_input_ids=torch.tensor([[BOS, -7], [BOS, 6]])),
        "decoder_input_ids",
        "-7",
    )

    labels = torch.tensor([[5, 2, -100], [5, 6, 2]])
    model(input_ids=ids, labels=labels)  # -100 is the ignore index
    _error(lambda: model(input_ids=ids, labels=torch.tensor([[5, 2, -1], [5, 6, 2]])), "labels", "-1")
    _error(lambda: model(input_ids=ids, labels=torch.tensor([[5, 2, 23], [5, 6, 2]])), "labels", "23")


def test_empty_and_all_padding_inputs_raise():
    model = make_model()
    decoder_input_ids = torch.tensor([[BOS], [BOS]])
    empty = torch.zeros((2, 0), dtype=torch.long)
    _error(
        lambda: model(input_ids=empty, decoder_input_ids=decoder_input_ids), "input_ids", "empty", "(2, 0)"
    )
    ids, _ = random_ids([3, 3])
    _error(lambda: model(input_ids=ids, decoder_input_ids=empty), "decoder_input_ids", "empty")
    padded = ids.clone()
    padded[1] = PAD
    _error(lambda: model(input_ids=padded, decoder_input_ids=decoder_input_ids), "Row 1", "padding")
    _error(lambda: model.generate(padded, max_new_tokens=2, num_beams=1), "Row 1", "padding")


def test_bad_attention_masks_raise():
    model = make_model()
    ids, mask = random_ids([5, 3])
    decoder_input_ids = torch.tensor([[BOS], [BOS]])
    _error(
        lambda: model(input_ids=ids, attention_mask=mask[:, :4], decoder_input_ids=decoder_input_ids),
        "attention_mask",
        "(2, 4)",
        "(2, 5)",
    )
    left_padded = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    _error(
        lambda: model(input_ids=ids, attention_mask=left_padded, decoder_input_ids=decoder_input_ids),
        "attention_mask",
        "right-padded",
    )


def test_missing_decoder_inputs_and_tuple_encoder_outputs_raise():
    base = make_model(model_class=S2SModel)
    ids, mask = random_ids([4, 2])
    _error(lambda: base(input_ids=ids, attention_mask=mask), "decoder_input_ids")
    model = make_model()
    _error(lambda: model(input_ids=ids, attention_mask=mask), "decoder_input_ids")
    encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
    assert isinstance(encoder_outputs, S2SEncoderOutput)
    _error(
        lambda: model(
            encoder_outputs=encoder_outputs.to_tuple(), decoder_input_ids=torch.tensor([[BOS], [BOS]])
        ),
        "encoder_outputs",
        "tuple",
    )
    _error(lambda: model.get_encoder()(), "input_ids", "inputs_embeds")
    _error(
        lambda: model(
            input_ids=ids,
            labels=torch.tensor([[5, 2], [5, 2]]),
            decoder_input_ids=torch.tensor([[BOS], [BOS]]),
        ),
        "labels",
        "(2, 2)",
    )


@pytest.mark.parametrize("options", [GRID[0], GRID[3]], ids=grid_id)
def test_dynamic_int8_quantisation_reaches_the_decoder_rnn(options):
    from torch.ao.quantization import quantize_dynamic

    model = make_model(**options)
    quantized = quantize_dynamic(copy.deepcopy(model), {nn.LSTM, nn.GRU, nn.Linear}, dtype=torch.qint8)
    assert not hasattr(quantized.model.decoder.rnn, "weight_ih_l0")  # replaced by a quantised module
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, len(SOURCE_LENGTHS), 6)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        int8_logits = quantized(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        generated = quantized.generate(input_ids=ids, attention_mask=mask, num_beams=3, max_new_tokens=5)
    assert not torch.equal(int8_logits, logits)  # really computed in int8 ...
    similarity = F.cosine_similarity(int8_logits.flatten(), logits.flatten(), dim=0)
    assert similarity > 0.99, similarity  # ... and close to fp32
    assert generated.shape[0] == len(SOURCE_LENGTHS) and generated.shape[1] <= 6


@pytest.mark.parametrize("options", [GRID[0], GRID[1], GRID[6]], ids=grid_id)
def test_inputs_embeds_and_decoder_inputs_embeds_equal_the_ids(options):
    """Like Bart and Marian, the model takes embeddings instead of ids on either side (prompt tuning and other
    embedding-space methods need it): the same logits and loss as the ids they embed."""
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(model, len(SOURCE_LENGTHS), 5)
    labels = decoder_input_ids.roll(-1, dims=1)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids, labels=labels)
        embedded = model(
            inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask,
            decoder_inputs_embeds=model.model.get_decoder_input_embeddings()(decoder_input_ids), labels=labels,
        )
    torch.testing.assert_close(embedded.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(embedded.loss, expected.loss, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="exactly one of `decoder_input_ids` or `decoder_inputs_embeds`"):
        model(input_ids=ids, decoder_input_ids=decoder_input_ids,
              decoder_inputs_embeds=model.model.get_decoder_input_embeddings()(decoder_input_ids))
