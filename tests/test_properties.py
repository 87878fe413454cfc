"""Property-based tests (`hypothesis`): random architectures, shapes, padding patterns and generation options.

Every architecture option varies (cell, attention type and heads, style, input feeding, self-attention, bridge,
bidirectionality, depth, tied/untied head, shared/separate vocabulary, initial scale), and for each drawn model:

1. decoding through the cache, in chunks of any size, gives the teacher-forced logits;
2. padding (source or target) never changes a row's logits;
3. a batched `generate()` gives each row's unbatched result, where rows really finish at different steps;
4. this model's greedy and beam loops (`generation_s2s`) return what transformers' own loops return;
5. the fast paths (`config.fast_paths`) give the reference's logits, loss and gradients.

Tokens are compared exactly where the computation is the same up to float rounding, so a near-tie between two
tokens could flip an argmax: a generation that differs in fp32 is rerun in float64 (`_same_up_to_rounding`), where
the two computations must agree. Examples are derandomised (CI sees the same ones every run) and tiny.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from conftest import BOS, EOS, FIRST_REAL, PAD, VOCAB, make_model, random_ids
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import modeling_s2s.modeling_s2s
from modeling_s2s.configuration_s2s import ATTENTION_STYLES, ATTENTION_TYPES, BRIDGES, CELL_TYPES
from modeling_s2s.modeling_s2s import S2SDecoder

NO_DROPOUT = dict(dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0)
RTOL = 1e-5  # of the largest magnitude compared: the tolerance for float rounding between computation orders


def _settings(max_examples: int):
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def architectures(draw) -> dict:
    """Keyword arguments of a valid tiny `S2SConfig` (plus `seed`), covering every architecture option."""
    attention_type = draw(st.sampled_from(ATTENTION_TYPES))
    hidden_size = draw(st.sampled_from([8, 12, 16]))
    heads = draw(st.sampled_from([h for h in (2, 4) if hidden_size % h == 0])) if attention_type == "multihead" else 1
    bridge = draw(st.sampled_from(BRIDGES))
    encoder_layers = draw(st.integers(1, 2))
    decoder_layers = encoder_layers if bridge == "last" else draw(st.integers(1, 2))
    shared = draw(st.booleans())
    return dict(
        seed=draw(st.integers(0, 2**16)),
        cell_type=draw(st.sampled_from(CELL_TYPES)),
        attention_type=attention_type,
        attention_heads=heads,
        attention_learnable_scale=attention_type == "scaled_dot" and draw(st.booleans()),
        attention_style=draw(st.sampled_from(ATTENTION_STYLES)),
        input_feeding=draw(st.booleans()),
        decoder_self_attention=draw(st.booleans()),
        bridge=bridge,
        bidirectional_encoder=draw(st.booleans()),
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        hidden_size=hidden_size,
        embedding_size=draw(st.sampled_from([6, 8, hidden_size])),
        tie_word_embeddings=draw(st.booleans()),
        share_encoder_decoder_embeddings=shared,
        decoder_vocab_size=VOCAB if shared else draw(st.sampled_from([VOCAB, 17, 23])),
        # a larger scale spreads the logits, so that near-ties are rarer
        init_std=draw(st.sampled_from([0.3, 0.6, 1.0])),
    )


def _model(architecture: dict, **overrides):
    options = dict(architecture)
    return make_model(seed=options.pop("seed"), **options, **overrides)


def _sources(data, min_rows: int = 1, max_rows: int = 4):
    """A right-padded source batch (B, S) of random lengths and its mask."""
    lengths = data.draw(st.lists(st.integers(1, 7), min_size=min_rows, max_size=max_rows), label="source lengths")
    ids, mask = random_ids(lengths, seed=data.draw(st.integers(0, 1000)), eos=data.draw(st.booleans()))
    return ids, mask, lengths


def _targets(data, model, rows: int, min_length: int = 1, max_length: int = 6):
    """Decoder inputs (B, T) starting with `<s>`, right-padded to random lengths, and their mask."""
    lengths = data.draw(
        st.lists(st.integers(min_length, max_length), min_size=rows, max_size=rows), label="target lengths"
    )
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    ids = torch.randint(FIRST_REAL, model.config.decoder_vocab_size, (rows, max(lengths)), generator=generator)
    ids[:, 0] = BOS
    mask = (torch.arange(ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask, lengths


@st.composite
def generation_options(draw, num_beams: int, decoder_vocab_size: int) -> dict:
    """generate() keyword arguments: every row-local processor and beam setting, each present or not, plus an
    `</s>` bias after trigger tokens (`sequence_bias`) that makes rows end at different steps."""
    maybe = st.booleans()
    real_tokens = st.integers(FIRST_REAL, min(VOCAB, decoder_vocab_size) - 1)
    kwargs = dict(num_beams=num_beams, max_new_tokens=draw(st.integers(5, 10)))
    if draw(maybe):
        kwargs["repetition_penalty"] = draw(st.sampled_from([0.8, 1.3, 2.0]))
    if draw(maybe):
        kwargs["no_repeat_ngram_size"] = draw(st.integers(1, 3))
    if draw(maybe):
        kwargs["bad_words_ids"] = draw(st.lists(st.lists(real_tokens, min_size=1, max_size=2), min_size=1, max_size=3))
    if draw(maybe):
        kwargs["min_new_tokens"] = draw(st.integers(1, 4))
    if draw(maybe):
        kwargs["forced_eos_token_id"] = EOS
    if draw(maybe):
        kwargs["suppress_tokens"] = [PAD]
    # rows end at different steps: `</s>` gets a large bias right after a row makes one of a few trigger tokens
    # (and maybe a length penalty that grows with every step)
    triggers = draw(st.lists(real_tokens, min_size=2, max_size=5, unique=True))
    bias = draw(st.sampled_from([10.0, 4.0]))
    kwargs["sequence_bias"] = {(token, EOS): bias for token in triggers}
    if draw(maybe):
        kwargs["exponential_decay_length_penalty"] = (draw(st.integers(1, 3)), draw(st.sampled_from([1.3, 2.0])))
    if num_beams > 1:
        kwargs["length_penalty"] = draw(st.sampled_from([-1.0, 0.0, 0.7, 1.0, 2.0]))
        kwargs["early_stopping"] = draw(st.sampled_from([True, False, "never"]))
        kwargs["num_return_sequences"] = draw(st.integers(1, num_beams))
    return kwargs


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "", rtol: float = RTOL) -> None:
    """Equal up to `rtol` times the largest magnitude of `expected` (float rounding of another operation order)."""
    atol = rtol * max(1.0, float(expected.abs().max())) if expected.numel() else rtol
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


def _generate(model, ids, mask=None, **kwargs):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)


@contextlib.contextmanager
def _decoder_rows():
    """Records the rows of every decoder call (generate() makes one per step)."""
    rows = []
    original = S2SDecoder.forward

    def spy(self, input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return original(self, input_ids, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(S2SDecoder, "forward", spy)
        yield rows


def _transformers_generate(model, ids, mask, **kwargs):
    """generate() with transformers' own greedy/beam loops (this model's `generation_s2s` never chosen)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_s2s.modeling_s2s, "can_decode", lambda *args: False)
        return _generate(model, ids, mask, **kwargs)


def _shrank(rows: list[int]) -> bool:
    """Whether some rows left the batch while others went on (rows finished at different steps)."""
    return len(rows) > 2 and min(rows[1:]) < rows[0]


def _same_up_to_rounding(model, compare) -> None:
    """`compare(model)` returns a list of (what, actual, expected) token tensors that must be equal. Where they
    differ in fp32, a near-tie flipped by rounding is the only excuse: in float64 they must all be equal."""
    mismatches = [what for what, actual, expected in compare(model) if not torch.equal(actual, expected)]
    if not mismatches:
        return
    event("fp32 near-tie: rechecked in float64")
    for what, actual, expected in compare(copy.deepcopy(model).double()):
        assert torch.equal(actual, expected), f"{what} (float64): {actual.tolist()} != {expected.tolist()}"


def _ours_and_theirs_rows(model, ids, mask, kwargs):
    """Returns (ours, theirs, decoder rows per call in our run)."""
    with _decoder_rows() as rows:
        ours = _generate(model, ids, mask, **kwargs)
    return ours, _transformers_generate(model, ids, mask, **kwargs), list(rows)


# ---------------------------------------------------------------------------------------------------------------
# 1. Cache
# ---------------------------------------------------------------------------------------------------------------


@_settings(max_examples=60)
@given(architecture=architectures(), data=st.data())
def test_decoding_through_the_cache_in_chunks_gives_the_teacher_forced_logits(architecture, data):
    """Eval mode: feeding the decoder inputs through the recurrent cache in chunks of any sizes (one token at a
    time as generate() does, or several) gives the logits of one teacher-forced pass over the whole target; also
    with g decoder rows per source sentence (beams sharing one source memory) against the source repeated g times."""
    model = _model(architecture)
    ids, mask, _ = _sources(data)
    group = data.draw(st.integers(1, 2), label="decoder rows per source")
    decoder_input_ids, _, _ = _targets(data, model, ids.shape[0] * group, min_length=2, max_length=7)
    length = decoder_input_ids.shape[1]
    decoder_input_ids = decoder_input_ids.masked_fill(decoder_input_ids == PAD, FIRST_REAL)  # no padding here
    cuts = data.draw(st.lists(st.integers(1, length - 1), max_size=length - 1, unique=True), label="chunk starts")
    bounds = [0, *sorted(cuts), length]
    with torch.no_grad():
        full = model(input_ids=ids.repeat_interleave(group, 0), attention_mask=mask.repeat_interleave(group, 0),
                     decoder_input_ids=decoder_input_ids).logits
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        cache, chunks = None, []
        for start, end in zip(bounds[:-1], bounds[1:]):
            out = model(encoder_outputs=encoder_outputs, attention_mask=mask.repeat_interleave(group, 0),
                        decoder_input_ids=decoder_input_ids[:, start:end], cache=cache, use_cache=True)
            cache = out.cache
            chunks.append(out.logits)
    assert cache.seen_tokens == length
    _assert_close(torch.cat(chunks, dim=1), full, f"chunks {bounds}")


# ---------------------------------------------------------------------------------------------------------------
# 2. Padding
# ---------------------------------------------------------------------------------------------------------------


@_settings(max_examples=60)
@given(architecture=architectures(), data=st.data())
def test_a_row_of_a_padded_batch_gives_the_logits_of_that_sequence_alone(architecture, data):
    """Eval mode: in a batch right-padded in the source (attention_mask given or derived from the pad id) and in
    the target (decoder_attention_mask), each row's logits at its real target positions equal those of the row's
    unpadded source and target run alone."""
    model = _model(architecture)
    ids, mask, source_lengths = _sources(data)
    decoder_input_ids, decoder_mask, target_lengths = _targets(data, model, ids.shape[0])
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids,
                        decoder_attention_mask=decoder_mask).logits
        derived = model(input_ids=ids, decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_mask).logits
        assert torch.equal(batched, derived)
        for row, (source_length, target_length) in enumerate(zip(source_lengths, target_lengths)):
            alone = model(input_ids=ids[row : row + 1, :source_length],
                          decoder_input_ids=decoder_input_ids[row : row + 1, :target_length]).logits
            _assert_close(batched[row, :target_length], alone[0], f"row {row}")


# ---------------------------------------------------------------------------------------------------------------
# 3. Batched generation == each row alone
# ---------------------------------------------------------------------------------------------------------------


def _padded(alone: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """`alone` (r, n) followed by `fill` up to `width` (unchanged when n >= width)."""
    return torch.nn.functional.pad(alone, (0, max(width - alone.shape[-1], 0)), value=fill)


@_settings(max_examples=40)
@given(architecture=architectures(), num_beams=st.sampled_from([1, 1, 2, 3]), data=st.data())
def test_batched_generation_equals_each_row_alone_when_rows_finish_at_different_steps(architecture, num_beams, data):
    """generate() (greedy and beam search, random row-local options) on a right-padded batch gives, for each row,
    the sequences generate() gives for that row alone, followed only by transformers' fill value; every example
    has rows that finish (and leave the batch) while others go on."""
    model = _model(architecture)
    ids, mask, lengths = _sources(data, min_rows=2)
    kwargs = data.draw(generation_options(num_beams, model.config.decoder_vocab_size), label="generate kwargs")
    returned = kwargs.get("num_return_sequences", 1)
    # transformers pads finished greedy rows with the pad id, but fills beam search output with
    # `pad_token_id or eos_token_id[0]`, i.e. `</s>` when the pad id is 0 (so `conftest.assert_same_generation`,
    # which expects pad ids, only holds for beam search when no sentence ends before the others)
    fill = PAD if num_beams == 1 else (PAD or EOS)

    with _decoder_rows() as rows:
        batched_fp32 = _generate(model, ids, mask, **kwargs)
    assume(_shrank(rows))

    def compare(candidate):
        batched = batched_fp32 if candidate is model else _generate(candidate, ids, mask, **kwargs)
        batched = batched.view(len(lengths), returned, -1)
        return [
            (f"row {row}", batched[row], _padded(_generate(candidate, ids[row : row + 1, :length], **kwargs),
                                                 batched.shape[-1], fill))
            for row, length in enumerate(lengths)
        ]

    _same_up_to_rounding(model, compare)


# ---------------------------------------------------------------------------------------------------------------
# 4. This model's loops == transformers' loops
# ---------------------------------------------------------------------------------------------------------------


def _check_ours_equals_transformers(architecture, num_beams, data, counts):
    model = _model(architecture)
    ids, mask, _ = _sources(data, min_rows=2, max_rows=5)
    kwargs = data.draw(generation_options(num_beams, model.config.decoder_vocab_size), label="generate kwargs")
    kwargs["return_dict_in_generate"] = True
    if data.draw(st.booleans(), label="decoder prompt"):
        prompt = data.draw(st.lists(st.integers(FIRST_REAL, min(VOCAB, model.config.decoder_vocab_size) - 1),
                                    min_size=ids.shape[0], max_size=ids.shape[0]))
        kwargs["decoder_input_ids"] = torch.tensor([[BOS, token] for token in prompt])

    def compare(candidate):
        ours, theirs, rows = _ours_and_theirs_rows(candidate, ids, mask, kwargs)
        counts[1] += candidate is model and _shrank(rows)
        pairs = [("sequences", ours.sequences, theirs.sequences)]
        if num_beams > 1:
            pairs.append(("beam_indices", ours.beam_indices, theirs.beam_indices))
        return pairs

    counts[0] += 1
    _same_up_to_rounding(model, compare)


def _run_counting(inner) -> None:
    counts = [0, 0]  # examples run, examples in which rows left the batch while others went on
    inner(counts=counts)
    # at least a third of the examples (in practice most) must have rows leaving the batch at different steps
    assert counts[1] >= counts[0] // 3, counts


@_settings(max_examples=40)
@given(architecture=architectures(), data=st.data())
def _greedy_examples(architecture, data, counts):
    _check_ours_equals_transformers(architecture, 1, data, counts)


@_settings(max_examples=40)
@given(architecture=architectures(), num_beams=st.integers(2, 4), data=st.data())
def _beam_examples(architecture, num_beams, data, counts):
    _check_ours_equals_transformers(architecture, num_beams, data, counts)


def test_our_greedy_search_returns_transformers_sequences():
    """generate(num_beams=1) through `generation_s2s.greedy_search` (finished rows leave the batch) returns the
    sequences of transformers' greedy loop (`can_decode` patched to False), for random row-local options
    (repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens, forced_eos_token_id, ...), with
    and without a decoder prompt; at least a third of the examples have rows that leave the batch early."""
    _run_counting(_greedy_examples)


def test_our_beam_search_returns_transformers_sequences_and_beam_indices():
    """generate(num_beams=2..4, return_dict_in_generate=True) through `generation_s2s.beam_search` (settled
    sentences leave the batch, beams share one source memory) returns transformers' sequences and beam_indices,
    for random row-local options, length_penalty, early_stopping True/False/"never" and num_return_sequences
    ≤ num_beams; at least a third of the examples have sentences that leave the batch early."""
    _run_counting(_beam_examples)


# ---------------------------------------------------------------------------------------------------------------
# 5. Fast paths on == off
# ---------------------------------------------------------------------------------------------------------------


def _loss_logits_gradients(model, ids, mask, labels, fast: bool):
    model.config.fast_paths = fast
    try:
        model.train()
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
    finally:
        model.config.fast_paths = True
        model.eval()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), gradients


@_settings(max_examples=40)
@given(architecture=architectures(), label_smoothing=st.sampled_from([0.0, 0.1]), data=st.data())
def test_fast_paths_give_the_reference_loss_gradients_and_logits(architecture, label_smoothing, data):
    """`config.fast_paths` on vs off: in training mode (dropout 0) the same loss, every parameter's gradient and
    the logits up to each row's last label (labels right-padded with -100, with -100 inside rows too); in eval mode
    the same teacher-forced logits and the same logits decoding one token at a time through the cache."""
    model = _model(architecture, label_smoothing=label_smoothing, **NO_DROPOUT)
    ids, mask, _ = _sources(data)
    targets, target_mask, target_lengths = _targets(data, model, ids.shape[0], min_length=2, max_length=7)
    labels = torch.cat([targets[:, 1:], targets.new_full((targets.shape[0], 1), EOS)], dim=1)
    labels = labels.masked_fill(target_mask == 0, -100)
    ignored = data.draw(st.lists(st.tuples(st.integers(0, ids.shape[0] - 1), st.integers(0, labels.shape[1] - 1)),
                                 max_size=2), label="ignored labels")
    for row, position in ignored:
        labels[row, position] = -100
    assume(bool((labels != -100).any()))

    loss, logits, gradients = _loss_logits_gradients(model, ids, mask, labels, fast=True)
    ref_loss, ref_logits, ref_gradients = _loss_logits_gradients(model, ids, mask, labels, fast=False)
    _assert_close(loss, ref_loss, "loss")
    last = ((labels != -100) * torch.arange(1, labels.shape[1] + 1)).amax(dim=1)
    span = torch.arange(labels.shape[1])[None, :] < last[:, None]
    _assert_close(logits[span], ref_logits[span], "training logits")
    assert gradients.keys() == ref_gradients.keys()
    for name, gradient in gradients.items():
        _assert_close(gradient, ref_gradients[name], name, rtol=1e-4)

    def eval_logits(fast: bool):
        model.config.fast_paths = fast
        try:
            with torch.no_grad():
                full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=targets,
                             decoder_attention_mask=target_mask).logits
                cache, steps = None, []
                for t in range(targets.shape[1]):
                    out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=targets[:, t : t + 1],
                                cache=cache, use_cache=True)
                    cache = out.cache
                    steps.append(out.logits)
        finally:
            model.config.fast_paths = True
        return full, torch.cat(steps, dim=1)

    (full, stepped), (ref_full, ref_stepped) = eval_logits(True), eval_logits(False)
    real = target_mask.bool()
    _assert_close(full[real], ref_full[real], "eval logits")
    _assert_close(stepped, ref_stepped, "cached eval logits")
