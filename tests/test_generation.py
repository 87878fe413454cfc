"""`generate()`: the recurrent cache gives the same result as recomputing, padding and batching never change an
output, beam search keeps its cache consistent with the beams, and the generation options are honoured."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    BOS,
    EOS,
    FIRST_REAL,
    GRID,
    PAD,
    assert_same_generation,
    grid_id,
    make_model,
    needs_onednn_matmuls,
    random_ids,
)
from transformers import GenerationMixin, LogitsProcessor, LogitsProcessorList

import modeling_s2s.modeling_s2s
from modeling_s2s import S2SDecoderCache, S2SForConditionalGeneration
from modeling_s2s.modeling_s2s import AttentionMemory, PackedWeights, S2SDecoder

SOURCE_LENGTHS = [6, 3, 5]
ATOL = 1e-5


def _generate(model, ids, mask=None, **kwargs):
    kwargs.setdefault("num_beams", 1)
    kwargs.setdefault("max_new_tokens", 6)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)


def _teacher_forced_log_prob(model, ids, sequence):
    """Sum of log p(token) over the generated tokens of `sequence` (start token first), up to the first `</s>`."""
    generated = sequence[1:].tolist()
    if EOS in generated:
        generated = generated[: generated.index(EOS) + 1]
    decoder_input_ids = torch.tensor([[sequence[0].item(), *generated[:-1]]])
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=decoder_input_ids).logits[0]
    return logits.log_softmax(-1).gather(-1, torch.tensor(generated)[:, None]).sum()


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_cached_generation_equals_uncached(options):
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    for num_beams in (1, 3):
        cached = _generate(model, ids, mask, num_beams=num_beams, use_cache=True)
        uncached = _generate(model, ids, mask, num_beams=num_beams, use_cache=False)
        assert torch.equal(cached, uncached), (num_beams, cached, uncached)


@pytest.mark.parametrize("options", [GRID[2], GRID[6], GRID[7], GRID[12]], ids=grid_id)
@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_padded_generation_equals_each_sequence_alone(options, num_beams):
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    batched = _generate(model, ids, mask, num_beams=num_beams)
    derived_mask = _generate(model, ids, None, num_beams=num_beams)
    assert torch.equal(derived_mask, batched)
    for row, length in enumerate(SOURCE_LENGTHS):
        alone = _generate(model, ids[row : row + 1, :length], num_beams=num_beams)[0]
        assert_same_generation(batched[row], alone)


def test_generate_from_precomputed_encoder_outputs():
    model = make_model(**GRID[4])
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        from_encoder = model.generate(
            encoder_outputs=encoder_outputs, attention_mask=mask, num_beams=2, max_new_tokens=6
        )
    assert torch.equal(from_encoder, _generate(model, ids, mask, num_beams=2))


def _manual_greedy(model, ids, max_new_tokens):
    """Argmax decoding written by hand with the public forward and the recurrent cache."""
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=ids)
        tokens, cache = [BOS], None
        for _ in range(max_new_tokens):
            out = model(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=torch.tensor([[tokens[-1]]]),
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            tokens.append(int(out.logits[0, -1].argmax()))
            if tokens[-1] == EOS:
                break
    return torch.tensor(tokens)


@pytest.mark.parametrize("options", [GRID[0], GRID[9]], ids=grid_id)
def test_greedy_and_single_beam_equal_manual_argmax_decoding(options):
    model = make_model(**options)
    assert model.generation_config.num_beams > 1  # the default is beam search; num_beams=1 overrides it
    ids, mask = random_ids(SOURCE_LENGTHS)
    greedy = _generate(model, ids, mask, num_beams=1, max_new_tokens=8)
    explicit = _generate(model, ids, mask, num_beams=1, do_sample=False, max_new_tokens=8)
    assert torch.equal(greedy, explicit)
    for row, length in enumerate(SOURCE_LENGTHS):
        assert_same_generation(greedy[row], _manual_greedy(model, ids[row : row + 1, :length], 8))


@pytest.mark.parametrize("options", [GRID[1], GRID[7], GRID[15]], ids=grid_id)
def test_beam_scores_are_sorted_and_equal_teacher_forced_log_probs(options):
    """With length_penalty=0 a beam's score is the sum of its token log-probs. Recomputing it with a fresh
    teacher-forced pass only matches if beam search reordered the recurrent cache along with the beams."""
    model = make_model(**options)
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=4,
            num_return_sequences=4,
            max_new_tokens=7,
            length_penalty=0.0,
            return_dict_in_generate=True,
            output_scores=True,
        )
    assert out.sequences.shape[0] == 3 * 4
    scores = out.sequences_scores.view(3, 4)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all()), scores
    for index, sequence in enumerate(out.sequences):
        row = index // 4
        source = ids[row : row + 1, : SOURCE_LENGTHS[row]]
        expected = _teacher_forced_log_prob(model, source, sequence)
        torch.testing.assert_close(out.sequences_scores[index], expected, atol=1e-4, rtol=1e-4)
    # The returned beams of one example are distinct hypotheses.
    for row in range(3):
        assert len({tuple(s.tolist()) for s in out.sequences[row * 4 : row * 4 + 4]}) == 4


def test_beam_search_reorders_the_cache(monkeypatch):
    calls = []
    original = S2SDecoderCache.reorder_cache

    def spy(self, beam_idx):
        calls.append(beam_idx.clone())
        return original(self, beam_idx)

    monkeypatch.setattr(S2SDecoderCache, "reorder_cache", spy)
    model = make_model(**GRID[7])
    ids, mask = random_ids(SOURCE_LENGTHS)
    beam = _generate(model, ids, mask, num_beams=4, max_new_tokens=8)
    assert calls, "beam search never reordered the cache"
    identity = torch.arange(calls[0].numel())
    assert any(not torch.equal(idx, identity) for idx in calls), "no step moved a beam"
    # Beam search finds a different (at least as likely) hypothesis than greedy on this seeded model.
    greedy = _generate(model, ids, mask, num_beams=1, max_new_tokens=8)
    assert not torch.equal(beam, greedy)


def test_cache_reorder_expand_and_select():
    hidden = torch.arange(3 * 2 * 4, dtype=torch.float).view(3, 2, 4)
    cell = -hidden
    feed = torch.arange(3 * 4, dtype=torch.float).view(3, 4)
    self_memory = AttentionMemory(torch.randn(3, 1, 5, 4), torch.randn(3, 1, 5, 4))
    source_memory = AttentionMemory(torch.randn(3, 1, 6, 4), torch.randn(3, 1, 6, 4))
    cache = S2SDecoderCache(hidden, cell, feed, self_memory, source_memory, seen_tokens=5)
    order = torch.tensor([2, 0, 0])
    cache.reorder_cache(order)
    assert torch.equal(cache.hidden, hidden[order])
    assert torch.equal(cache.cell, cell[order])
    assert torch.equal(cache.input_feed, feed[order])
    assert torch.equal(cache.self_memory.keys, self_memory.keys[order])
    assert torch.equal(cache.self_memory.values, self_memory.values[order])
    # Beams only move within one example, whose beams share the same source: the source memory stays.
    assert cache.source_memory.keys is source_memory.keys
    assert cache.get_seq_length() == 5

    # Repeated rows (beams) of one sentence share its source row; selecting whole groups keeps sharing it ...
    cache = S2SDecoderCache(hidden, None, None, None, source_memory)
    cache.batch_repeat_interleave(2)
    assert torch.equal(cache.hidden, hidden.repeat_interleave(2, 0)) and cache.cell is None
    assert cache.source_memory.keys is source_memory.keys and cache.rows_per_source == 2
    cache.batch_select_indices(torch.tensor([4, 5, 0, 1]))
    assert torch.equal(cache.hidden, hidden[[2, 2, 0, 0]])
    assert torch.equal(cache.source_memory.values, source_memory.values[[2, 0]]) and cache.rows_per_source == 2
    # ... any other selection gives each row its own source row.
    cache.batch_select_indices(torch.tensor([1, 2]))
    assert torch.equal(cache.hidden, hidden[[2, 0]])
    assert torch.equal(cache.source_memory.values, source_memory.values[[2, 0]]) and cache.rows_per_source == 1
    with pytest.raises(ValueError, match="crop"):
        cache.crop(2)


@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_outputs_per_step_attentions_and_scores(num_beams):
    model = make_model(**GRID[12])  # multi-head (2) attention with decoder self-attention
    heads = model.config.attention_heads
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            num_beams=num_beams,
            max_new_tokens=5,
            min_new_tokens=5,
            return_dict_in_generate=True,
            output_scores=True,
            output_attentions=True,
        )
    steps = out.sequences.shape[1] - 1
    assert steps == 5
    assert len(out.scores) == steps and len(out.cross_attentions) == steps
    rows = 3 * num_beams
    beam_mask = mask.repeat_interleave(num_beams, dim=0).bool()
    for t, (scores, cross, self_attn) in enumerate(
        zip(out.scores, out.cross_attentions, out.decoder_attentions)
    ):
        assert scores.shape == (rows, model.config.decoder_vocab_size)
        (layer,) = cross
        assert layer.shape == (rows, heads, 1, ids.shape[1])
        assert bool((layer[~beam_mask[:, None, None, :].expand_as(layer)] == 0).all())
        torch.testing.assert_close(layer.sum(-1), torch.ones(rows, heads, 1), atol=ATOL, rtol=0)
        # Step t attends over the t + 1 decoder positions seen so far, never a future one.
        (self_layer,) = self_attn
        assert self_layer.shape == (rows, heads, 1, t + 1)
        torch.testing.assert_close(self_layer.sum(-1), torch.ones(rows, heads, 1), atol=ATOL, rtol=0)
    if num_beams == 1:
        picked = torch.stack([s.argmax(-1) for s in out.scores], dim=1)
        assert torch.equal(picked, out.sequences[:, 1:])


def test_sampling_is_seeded_reproducible_and_top_k_one_is_greedy():
    model = make_model(**GRID[3])
    ids, mask = random_ids(SOURCE_LENGTHS)
    options = dict(do_sample=True, top_k=8, top_p=0.9, temperature=0.7, max_new_tokens=8, num_beams=1)
    torch.manual_seed(123)
    first = _generate(model, ids, mask, **options)
    torch.manual_seed(123)
    second = _generate(model, ids, mask, **options)
    assert torch.equal(first, second)
    assert bool(((first >= 0) & (first < model.config.decoder_vocab_size)).all())
    assert bool((first[:, 0] == BOS).all())
    torch.manual_seed(0)
    top_one = _generate(model, ids, mask, do_sample=True, top_k=1, max_new_tokens=8)
    assert torch.equal(top_one, _generate(model, ids, mask, max_new_tokens=8))
    torch.manual_seed(7)
    beam_sample = _generate(model, ids, mask, do_sample=True, num_beams=2, max_new_tokens=8)
    torch.manual_seed(7)
    assert torch.equal(
        beam_sample, _generate(model, ids, mask, do_sample=True, num_beams=2, max_new_tokens=8)
    )


@pytest.mark.parametrize("num_beams", [1, 3])
def test_no_repeat_ngram_size_is_respected(num_beams):
    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    size = 2
    out = _generate(
        model, ids, mask, num_beams=num_beams, max_new_tokens=12, min_new_tokens=12, no_repeat_ngram_size=size
    )
    assert out.shape[1] == 13
    for row in out.tolist():
        ngrams = [tuple(row[i : i + size]) for i in range(len(row) - size + 1)]
        assert len(ngrams) == len(set(ngrams)), row


def test_min_and_max_new_tokens_are_respected():
    model = make_model(**GRID[5])
    ids, mask = random_ids(SOURCE_LENGTHS)
    exact = _generate(model, ids, mask, max_new_tokens=5, min_new_tokens=5)
    assert exact.shape == (3, 6)
    assert not bool((exact[:, 1:] == EOS).any())
    longest = _generate(model, ids, mask, max_new_tokens=4, num_beams=3)
    assert longest.shape[1] <= 5

    # Make the model's first greedy choice the end-of-sequence token: it then stops after one token, unless
    # min_new_tokens forbids ending that early. (The untrained model may favour <pad>: suppress it.)
    source = ids[:1, : SOURCE_LENGTHS[0]]
    first_token = int(_generate(model, source, max_new_tokens=1, suppress_tokens=[PAD])[0, 1])
    assert first_token != PAD
    stopped = _generate(model, source, eos_token_id=first_token, max_new_tokens=6, suppress_tokens=[PAD])
    assert stopped.tolist() == [[BOS, first_token]]
    held = _generate(
        model, source, eos_token_id=first_token, min_new_tokens=4, max_new_tokens=6, suppress_tokens=[PAD]
    )
    assert held.shape[1] >= 5
    assert first_token not in held[0, 1:5].tolist()


class _StaggeredEos(LogitsProcessor):
    """Sentence s ends with its (s + 2)-th generated token: `</s>` is forced there and forbidden before
    (`num_beams` rows per sentence)."""

    def __init__(self, num_beams: int = 1):
        self.num_beams = num_beams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[1]  # start token included: this step makes token number `generated`
        scores = scores.clone()
        sentence = torch.arange(scores.shape[0]) // self.num_beams
        scores[:, EOS] = torch.where(sentence + 2 == generated, 1e4, float("-inf"))
        return scores


def _ours_and_transformers(monkeypatch, model, ids, mask, **kwargs):
    """generate() as this model runs it, then with transformers' own `_sample` and `_beam_search`, both seeded
    alike; also the decoder's row count per call in each run."""
    decoded_rows = []
    original_forward = S2SDecoder.forward

    def spy(self, input_ids, *args, **kw):
        decoded_rows.append(input_ids.shape[0])
        return original_forward(self, input_ids, *args, **kw)

    monkeypatch.setattr(S2SDecoder, "forward", spy)
    torch.manual_seed(3)
    ours = _generate(model, ids, mask, **kwargs)
    our_rows = list(decoded_rows)
    decoded_rows.clear()
    with monkeypatch.context() as patch:
        for loop in ("_sample", "_beam_search"):
            patch.setattr(S2SForConditionalGeneration, loop, getattr(GenerationMixin, loop))
        torch.manual_seed(3)
        theirs = _generate(model, ids, mask, **kwargs)
    return ours, theirs, our_rows, list(decoded_rows)


def _generate_with_and_without_pruning(monkeypatch, model, ids, mask, **kwargs):
    processors = LogitsProcessorList([_StaggeredEos(kwargs.get("num_beams", 1))])
    return _ours_and_transformers(
        monkeypatch, model, ids, mask, logits_processor=processors, max_new_tokens=9, **kwargs
    )


@pytest.mark.parametrize("options", [GRID[0], GRID[7], GRID[12], GRID[15]], ids=grid_id)
@pytest.mark.parametrize("do_sample", [False, True])
def test_finished_rows_leave_the_batch_without_changing_any_output(monkeypatch, options, do_sample):
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5, 4, 2])
    pruned, full, pruned_rows, full_rows = _generate_with_and_without_pruning(
        monkeypatch, model, ids, mask, do_sample=do_sample
    )
    assert torch.equal(pruned, full)
    assert [bool((row == EOS).any()) for row in pruned] == [True] * 5
    # Row r emits </s> as token r + 2, so the decoder runs on 5, 5, 4, 3, 2, 1 rows instead of 6 x 5.
    assert full_rows == [5] * 6
    assert pruned_rows == [5, 5, 4, 3, 2, 1]


@pytest.mark.parametrize("options", [GRID[0], GRID[7], GRID[12], GRID[15]], ids=grid_id)
@pytest.mark.parametrize("early_stopping", [True, False])
def test_settled_sentences_leave_beam_search_without_changing_any_output(monkeypatch, options, early_stopping):
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5, 4])
    kwargs = dict(num_beams=3, early_stopping=early_stopping, return_dict_in_generate=True, output_scores=True)
    pruned, full, pruned_rows, full_rows = _generate_with_and_without_pruning(monkeypatch, model, ids, mask, **kwargs)
    assert torch.equal(pruned.sequences, full.sequences)
    assert torch.allclose(pruned.sequences_scores, full.sequences_scores)
    assert torch.equal(pruned.beam_indices, full.beam_indices)
    # With early stopping, sentence s settles when its 3 beams all end with token s + 2.
    if early_stopping:
        assert full_rows == [12] * 5
        assert pruned_rows == [12, 12, 9, 6, 3]
    else:
        assert sum(pruned_rows) < sum(full_rows)


# Built-in processors only (each judges a row by its own tokens): the length penalty on `</s>` grows at a different
# pace per row, so rows end at different steps.
ROW_LOCAL_OPTIONS = dict(
    max_new_tokens=12,
    exponential_decay_length_penalty=(2, 1.6),
    repetition_penalty=1.3,
    no_repeat_ngram_size=3,
    suppress_tokens=[PAD],
)


@pytest.mark.parametrize("options", [GRID[0], GRID[7], GRID[12], GRID[15]], ids=grid_id)
def test_greedy_search_runs_only_unfinished_rows_and_matches_transformers(monkeypatch, options):
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5, 4, 2, 6, 5, 3])
    ours, theirs, our_rows, their_rows = _ours_and_transformers(
        monkeypatch, model, ids, mask, **ROW_LOCAL_OPTIONS
    )
    assert torch.equal(ours, theirs)
    ends = [row.tolist().index(EOS) if EOS in row.tolist() else len(row) for row in ours]
    assert len(set(ends)) > 1  # rows really end at different steps ...
    # ... and each step decodes only the rows still running: after step n, those whose </s> comes later.
    assert our_rows == [len(ends)] + [sum(end > step for end in ends) for step in range(1, len(our_rows))]
    assert their_rows == [len(ends)] * len(their_rows)


def test_greedy_search_continues_a_decoder_prompt_and_returns_a_dict(monkeypatch):
    model = make_model(**GRID[4])
    ids, mask = random_ids([6, 3, 5, 4])
    prompt = torch.tensor([[BOS, FIRST_REAL], [BOS, FIRST_REAL + 1], [BOS, FIRST_REAL], [BOS, FIRST_REAL + 2]])
    kwargs = dict(ROW_LOCAL_OPTIONS, decoder_input_ids=prompt, return_dict_in_generate=True)
    ours, theirs, our_rows, _ = _ours_and_transformers(monkeypatch, model, ids, mask, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.sequences[:, :2], prompt)
    assert isinstance(ours.cache, S2SDecoderCache)


def test_a_processor_that_keeps_state_per_batch_row_gets_transformers_loop(monkeypatch):
    """`encoder_repetition_penalty` keeps the source ids per batch row, so every row stays in transformers'
    loop (only the decoder state of finished rows is dropped); the result is transformers' own."""
    model = make_model(**GRID[0])
    ids, mask = random_ids([6, 3, 5, 4, 2, 6])
    kwargs = dict(ROW_LOCAL_OPTIONS, encoder_repetition_penalty=1.5)
    ours, theirs, our_rows, _ = _ours_and_transformers(monkeypatch, model, ids, mask, **kwargs)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("options", GRID, ids=grid_id)
def test_beams_share_one_source_memory_per_sentence_and_decode_as_with_a_copy_per_beam(monkeypatch, options):
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5])
    kwargs = dict(num_beams=3, max_new_tokens=7, return_dict_in_generate=True, output_scores=False)
    created = []  # (decoder rows, source memory rows) of each new cache
    original_init_cache = S2SDecoder.init_cache

    def spy(self, *args, **kw):
        cache = original_init_cache(self, *args, **kw)
        created.append((cache.hidden.shape[0], cache.source_memory.keys.shape[0]))
        return cache

    monkeypatch.setattr(S2SDecoder, "init_cache", spy)
    shared = _generate(model, ids, mask, **kwargs)
    assert created == [(9, 3)]
    with monkeypatch.context() as patch:  # transformers' loop: encoder outputs repeated per beam
        patch.setattr(S2SForConditionalGeneration, "_beam_search", GenerationMixin._beam_search)
        copied = _generate(model, ids, mask, **kwargs)
    assert created == [(9, 3), (9, 9)]
    assert torch.equal(shared.sequences, copied.sequences)
    assert torch.equal(shared.beam_indices, copied.beam_indices)


def test_decoder_rows_must_be_a_multiple_of_the_encoder_rows():
    model = make_model(**GRID[0])
    ids, mask = random_ids([6, 3, 5])
    encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
    with pytest.raises(ValueError, match="got 4 rows for encoder outputs of 3 sentences"):
        model(encoder_outputs=encoder_outputs, decoder_input_ids=torch.full((4, 1), BOS))


class _EosAfterPromptToken(LogitsProcessor):
    """Row-local staggered ends: a row whose decoder prompt is [<s>, FIRST_REAL + n] ends with its (n + 2)-th
    generated token (`</s>` forced there, forbidden before). It reads only the row's own tokens."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        making = input_ids.shape[1] - 1  # generated tokens after this step (the prompt has 2)
        ends_at = input_ids[:, 1] - FIRST_REAL + 2
        scores = scores.clone()
        scores[:, EOS] = torch.where(ends_at == making, 1e4, float("-inf"))
        return scores


@pytest.mark.parametrize("options", [GRID[0], GRID[3], GRID[7], GRID[12], GRID[15]], ids=grid_id)
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_search_runs_only_unsettled_sentences_and_matches_transformers(monkeypatch, options, early_stopping):
    monkeypatch.setattr(
        modeling_s2s.modeling_s2s, "_ROW_LOCAL_PROCESSORS",
        (*modeling_s2s.modeling_s2s._ROW_LOCAL_PROCESSORS, _EosAfterPromptToken),
    )
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5, 4, 2, 6])
    ends = [2, 0, 4, 1, 5, 3]  # sentence s ends with generated token ends[s] + 2
    prompt = torch.tensor([[BOS, FIRST_REAL + n] for n in ends])
    kwargs = dict(
        num_beams=3, num_return_sequences=2, early_stopping=early_stopping, length_penalty=0.7, max_new_tokens=12,
        repetition_penalty=1.3, no_repeat_ngram_size=3, decoder_input_ids=prompt,
        logits_processor=LogitsProcessorList([_EosAfterPromptToken()]),
    )
    ours, theirs, our_rows, their_rows = _ours_and_transformers(
        monkeypatch, model, ids, mask, return_dict_in_generate=True, **kwargs
    )
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.equal(ours.beam_indices, theirs.beam_indices)
    assert [row.tolist().index(EOS) - 1 for row in ours.sequences[::2]] == [n + 2 for n in ends]
    # Call 1 decodes the prompts; call c > 1 makes generated token c, for the beams of sentences not ended yet.
    assert our_rows == [18] + [3 * sum(n + 2 >= call for n in ends) for call in range(2, 8)]
    assert their_rows == [18] * 7


def test_beam_search_that_reaches_max_length_matches_transformers(monkeypatch):
    model = make_model(**GRID[2])
    ids, mask = random_ids([6, 3, 5])
    kwargs = dict(num_beams=4, max_new_tokens=3, suppress_tokens=[PAD, EOS])  # no hypothesis can end early
    ours, theirs, our_rows, _ = _ours_and_transformers(
        monkeypatch, model, ids, mask, return_dict_in_generate=True, **kwargs
    )
    assert torch.equal(ours.sequences, theirs.sequences) and ours.sequences.shape == (3, 4)
    assert torch.equal(ours.beam_indices, theirs.beam_indices)
    assert our_rows == [12, 12, 12]


def test_per_step_outputs_keep_every_row(monkeypatch):
    model = make_model(**GRID[7])
    ids, mask = random_ids([6, 3, 5])
    kwargs = dict(return_dict_in_generate=True, output_attentions=True, output_scores=True)
    pruned, full, pruned_rows, full_rows = _generate_with_and_without_pruning(monkeypatch, model, ids, mask, **kwargs)
    assert pruned_rows == full_rows
    assert torch.equal(pruned.sequences, full.sequences)
    assert all(step[0].shape[0] == 3 for step in pruned.cross_attentions)


def test_dropping_finished_rows_keeps_the_state_of_the_others():
    hidden = torch.arange(4 * 1 * 3, dtype=torch.float).view(4, 1, 3)
    source_memory = AttentionMemory(torch.randn(4, 1, 5, 3), torch.randn(4, 1, 5, 3))
    cache = S2SDecoderCache(hidden, -hidden, hidden[:, 0], None, source_memory)
    cache.drop_finished_rows(torch.tensor([False, False, False, False]))
    assert cache.active_rows is None and cache.hidden is hidden
    cache.drop_finished_rows(torch.tensor([False, True, False, False]))
    assert cache.active_rows.tolist() == [0, 2, 3]
    cache.drop_finished_rows(torch.tensor([True, True, False, False]))  # indices stay those of the whole batch
    assert cache.active_rows.tolist() == [2, 3]
    assert torch.equal(cache.hidden, hidden[[2, 3]]) and torch.equal(cache.cell, -hidden[[2, 3]])
    assert torch.equal(cache.input_feed, hidden[[2, 3], 0])
    assert torch.equal(cache.source_memory.keys, source_memory.keys[[2, 3]])
    # Beam indices still refer to the whole batch: rows 2 and 3 swap states.
    cache.reorder_cache(torch.tensor([1, 0, 3, 2]))
    assert torch.equal(cache.hidden, hidden[[3, 2]]) and torch.equal(cache.cell, -hidden[[3, 2]])
    assert cache.active_rows.tolist() == [2, 3]


def test_rows_that_left_get_pad_certain_logits_at_every_later_step():
    """Dropped rows get pad-certain logits at every later step (not the logits of their last step), and the rows
    still active get the same logits as in a cache that never dropped any."""
    model = make_model(**GRID[0])
    ids, mask = random_ids([4, 2, 3])
    steps = torch.tensor([[FIRST_REAL], [FIRST_REAL + 1], [FIRST_REAL + 2]])
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        start = torch.full((3, 1), BOS)
        kept = model(encoder_outputs=encoder_outputs, decoder_input_ids=start, use_cache=True).cache
        cache = model(encoder_outputs=encoder_outputs, decoder_input_ids=start, use_cache=True).cache
        results = []
        for finished in ([False, True, False], [True, True, False], [True, True, True]):
            cache.drop_finished_rows(torch.tensor(finished))
            pruned = model(encoder_outputs=encoder_outputs, decoder_input_ids=steps, cache=cache).logits
            full = model(encoder_outputs=encoder_outputs, decoder_input_ids=steps, cache=kept).logits
            results.append((finished, pruned.clone(), full))
    for finished, pruned, full in results:
        for row, done in enumerate(finished):
            if done:
                assert pruned[row, 0].argmax().item() == PAD
                assert pruned[row, 0].softmax(-1)[PAD].item() == 1.0
            else:
                torch.testing.assert_close(pruned[row], full[row])


def test_forward_with_every_row_finished_makes_pad_certain():
    model = make_model(**GRID[0])
    ids, mask = random_ids([4, 2])
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        start = torch.full((2, 1), BOS)
        cache = model(encoder_outputs=encoder_outputs, decoder_input_ids=start, use_cache=True).cache
        cache.drop_finished_rows(torch.tensor([True, True]))
        logits = model(encoder_outputs=encoder_outputs, decoder_input_ids=start, cache=cache).logits
    assert logits.shape == (2, 1, model.config.decoder_vocab_size)
    assert torch.equal(logits.argmax(-1), torch.full((2, 1), PAD))
    assert torch.equal(logits.softmax(-1)[..., PAD], torch.ones(2, 1))
    with pytest.raises(ValueError, match="dropped finished rows"):
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=start, cache=cache)


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
    assert len(caches) == 1 and caches[0].packed_weights is not None
    layers = range(model.config.decoder_layers)
    rnn_names = [f"rnn.{i}" for i in layers] if options["cell_type"] == "lstm" else [
        f"rnn.{i}.{part}" for i in layers for part in ("ih", "hh")
    ]
    assert set(caches[0].packed_weights._weights) >= {"combine", "lm_head", *rnn_names}
    monkeypatch.setattr(S2SDecoder, "_can_pack_weights", lambda self: False)
    plain, plain_caches = _generate_capturing_caches(monkeypatch, model, ids, mask, num_beams=num_beams)
    assert plain_caches[0].packed_weights is None
    assert torch.equal(packed.sequences, plain.sequences)
    for packed_scores, plain_scores in zip(packed.scores, plain.scores, strict=True):
        torch.testing.assert_close(packed_scores, plain_scores, atol=ATOL, rtol=0)


def _scores_with_and_without_packing(monkeypatch, model, ids, mask):
    kwargs = dict(num_beams=2, output_scores=True, return_dict_in_generate=True)
    packed = _generate(model, ids, mask, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(S2SDecoder, "_can_pack_weights", lambda self: False)
        plain = _generate(model, ids, mask, **kwargs)
    assert torch.equal(packed.sequences, plain.sequences)
    for packed_scores, plain_scores in zip(packed.scores, plain.scores, strict=True):
        torch.testing.assert_close(packed_scores, plain_scores, atol=ATOL, rtol=0)
    return torch.cat([step_scores.flatten() for step_scores in packed.scores])


@needs_onednn_matmuls
def test_reordered_weights_are_reused_by_later_generate_calls_until_a_weight_changes(monkeypatch):
    """Reordering is most of a one-sentence generate() call's overhead, so later calls reuse the reordered weights
    while every parameter behind them is unchanged. An in-place update (as an optimizer step makes), a write
    through `.data` (which PyTorch's version counter does not see) or `load_state_dict` makes the next call
    reorder again, and its scores then equal plain matmuls over the new weights."""
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
    import io

    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    expected = _generate(model, ids, mask, num_beams=2)  # leaves reordered weights on the decoder
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    assert torch.equal(_generate(reloaded, ids, mask, num_beams=2), expected)


@needs_onednn_matmuls
def test_weights_are_packed_for_fp32_on_cpu_outside_autocast():
    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
    decoder = model.get_decoder()
    cache = decoder.init_cache(encoder_outputs, mask)
    with torch.no_grad():
        decoding = decoder._packed_weights(cache, 1)
        assert decoding is not None and decoder._packed_weights(cache, 1) is decoding  # kept for every step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert decoder._packed_weights(cache, 1) is None  # autocast picks the matmul precision itself
    # With gradients on, every call reorders afresh (an optimizer step may have changed the weights since), and
    # only when the call's step loop reuses the weights.
    training = decoder._packed_weights(cache, 5)
    assert training is not None and training is not decoding and decoder._packed_weights(cache, 5) is not training
    assert decoder._packed_weights(cache, 1) is None
    with torch.no_grad():
        assert make_model(**GRID[0]).to(torch.bfloat16).get_decoder()._packed_weights(cache, 1) is None


@needs_onednn_matmuls
def test_a_copied_cache_rebuilds_its_packed_weights():
    import copy

    model = make_model(**GRID[0])
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.full((3, 1), BOS), use_cache=True)
        cache = out.cache
        assert cache.packed_weights._weights  # used by that first step
        copied = copy.deepcopy(cache)
        assert copied.packed_weights is not None and not copied.packed_weights._weights
        step = torch.full((3, 1), FIRST_REAL)
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=step, cache=cache,
                         use_cache=True).logits
        again = model(input_ids=ids, attention_mask=mask, decoder_input_ids=step, cache=copied,
                      use_cache=True).logits
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
