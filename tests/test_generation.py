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
    random_ids,
)
from transformers import LogitsProcessor, LogitsProcessorList

import modeling_s2s.modeling_s2s
from modeling_s2s import S2SDecoderCache, generation_s2s
from modeling_s2s.modeling_s2s import AttentionMemory, S2SDecoder

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
    """generate() as this model runs it, then with transformers' own loops (`generation_s2s` never chosen), both
    seeded alike; also the decoder's row count per call in each run."""
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
        patch.setattr(modeling_s2s.modeling_s2s, "can_decode", lambda *args: False)
        torch.manual_seed(3)
        theirs = _generate(model, ids, mask, **kwargs)
    return ours, theirs, our_rows, list(decoded_rows)


def _generate_with_and_without_pruning(monkeypatch, model, ids, mask, **kwargs):
    processors = LogitsProcessorList([_StaggeredEos(kwargs.get("num_beams", 1))])
    return _ours_and_transformers(
        monkeypatch, model, ids, mask, logits_processor=processors, max_new_tokens=9, **kwargs
    )


@pytest.mark.parametrize("options", [GRID[0], GRID[7], GRID[12], GRID[15]], ids=grid_id)
@pytest.mark.parametrize("kwargs", [dict(do_sample=False), dict(do_sample=True), dict(num_beams=3)],
                         ids=["greedy", "sample", "beam"])
def test_a_processor_that_reads_batch_positions_keeps_every_row_in_transformers_loop(monkeypatch, options, kwargs):
    """A processor that is not row-local (`_StaggeredEos` reads each row's batch position) could see other rows
    after finished ones leave; such calls run transformers' own loop over every row, with its result."""
    model = make_model(**options)
    ids, mask = random_ids([6, 3, 5, 4, 2])
    ours, theirs, our_rows, their_rows = _generate_with_and_without_pruning(monkeypatch, model, ids, mask, **kwargs)
    assert torch.equal(ours, theirs)
    assert our_rows == their_rows and len(set(our_rows)) == 1


@pytest.mark.parametrize("early_stopping", [True, False])
def test_per_step_scores_run_transformers_beam_search(monkeypatch, early_stopping):
    model = make_model(**GRID[7])
    ids, mask = random_ids([6, 3, 5, 4])
    kwargs = dict(num_beams=3, early_stopping=early_stopping, return_dict_in_generate=True, output_scores=True,
                  max_new_tokens=9)
    ours, theirs, our_rows, their_rows = _ours_and_transformers(monkeypatch, model, ids, mask, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    assert torch.allclose(ours.sequences_scores, theirs.sequences_scores)
    assert our_rows == their_rows


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
        patch.setattr(modeling_s2s.modeling_s2s, "can_decode", lambda *args: False)
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
        generation_s2s, "ROW_LOCAL_PROCESSORS", (*generation_s2s.ROW_LOCAL_PROCESSORS, _EosAfterPromptToken)
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


# Each of transformers' row-local processors alone, with no other processor around it: the lean loops run (their
# decoder calls shrink or not, the spy says they ran) and return transformers' sequences.
EACH_ROW_LOCAL_OPTION = {
    "repetition_penalty": dict(repetition_penalty=1.5),
    "no_repeat_ngram_size": dict(no_repeat_ngram_size=2),
    "bad_words_ids": dict(bad_words_ids=[[FIRST_REAL], [FIRST_REAL + 1, FIRST_REAL + 2]]),
    "min_length": dict(min_length=6),
    "min_new_tokens": dict(min_new_tokens=4),
    "forced_bos_eos": dict(forced_bos_token_id=FIRST_REAL + 3, forced_eos_token_id=EOS),
    "suppress_tokens": dict(suppress_tokens=[PAD], begin_suppress_tokens=[EOS]),
    "exponential_decay_length_penalty": dict(exponential_decay_length_penalty=(2, 1.6)),
    "max_time": dict(max_time=60.0),
    "renormalize_logits": dict(renormalize_logits=True, remove_invalid_values=True),
}


@pytest.mark.parametrize("option", EACH_ROW_LOCAL_OPTION, ids=list(EACH_ROW_LOCAL_OPTION))
@pytest.mark.parametrize("num_beams", [1, 3])
def test_every_row_local_processor_runs_the_lean_loops_with_transformers_result(monkeypatch, option, num_beams):
    model = make_model(**GRID[7])
    ids, mask = random_ids([6, 3, 5, 4, 2])
    searches = []
    for name in ("greedy_search", "beam_search"):
        original = getattr(generation_s2s, name)
        monkeypatch.setattr(generation_s2s, name, lambda *a, _f=original, _n=name, **k: searches.append(_n) or _f(*a, **k))
    kwargs = dict(EACH_ROW_LOCAL_OPTION[option], num_beams=num_beams, max_new_tokens=10,
                  return_dict_in_generate=True)
    ours, theirs, _, _ = _ours_and_transformers(monkeypatch, model, ids, mask, **kwargs)
    assert searches == ["greedy_search" if num_beams == 1 else "beam_search"]
    assert torch.equal(ours.sequences, theirs.sequences)
    if num_beams > 1:
        assert torch.equal(ours.beam_indices, theirs.beam_indices)


def test_beam_search_with_repetition_penalty_alone_decodes():
    """The lean beam loop once crashed on the tensor a repetition penalty returns ("view size is not compatible")."""
    model = make_model(**GRID[0])
    ids, mask = random_ids([6, 3])
    out = _generate(model, ids, mask, num_beams=2, repetition_penalty=1.5)
    assert out.shape[0] == 2


def test_num_beams_must_be_a_positive_integer():
    model = make_model(**GRID[0])
    ids, mask = random_ids([6, 3])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"`num_beams`={bad!r} must be a positive integer"):
            _generate(model, ids, mask, num_beams=bad)


def test_max_new_tokens_alone_gives_no_warning_about_max_length():
    """The model's generation config sets `max_length`; a call asking for `max_new_tokens` does not make
    transformers warn that both were set, and the model keeps its default afterwards."""
    import logging

    model = make_model(**GRID[0])
    ids, mask = random_ids([6, 3])
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        out = _generate(model, ids, mask, max_new_tokens=4, min_new_tokens=4)
        with torch.no_grad():
            capped = model.generate(input_ids=ids, attention_mask=mask, num_beams=1, max_length=3)
    finally:
        logger.removeHandler(handler)
    assert out.shape[1] == 1 + 4 and capped.shape[1] <= 3
    assert not [r for r in records if "max_new_tokens" in r.getMessage()], [r.getMessage() for r in records]
    assert model.generation_config.max_length == 128


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_lean_loops_make_transformers_build_no_cache_of_its_own(monkeypatch, num_beams):
    """transformers builds two `DynamicCache`s for a model's generate() call unless a cache is passed; this
    recurrent model never uses them, and the lean loops pass a placeholder so that none is built."""
    import transformers.generation.utils as generation_utils

    model = make_model(**GRID[0])
    ids, mask = random_ids([6, 3])
    expected = _generate(model, ids, mask, num_beams=num_beams)

    def refuse(*args, **kwargs):
        raise AssertionError("generate() built a DynamicCache")

    monkeypatch.setattr(generation_utils, "DynamicCache", refuse)
    assert torch.equal(_generate(model, ids, mask, num_beams=num_beams), expected)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_lean_loops_keep_every_row_when_a_processor_is_not_row_local(monkeypatch, num_beams):
    """Should a processor that reads batch positions reach the lean loops (`can_decode` lets it through here, as a
    later transformers' default processor might), they keep every row and still return transformers' result."""
    model = make_model(**GRID[7])
    ids, mask = random_ids([6, 3, 5, 4, 2])
    processors = LogitsProcessorList([_StaggeredEos(num_beams)])
    searches = []
    for name in ("greedy_search", "beam_search"):
        original = getattr(generation_s2s, name)
        monkeypatch.setattr(generation_s2s, name, lambda *a, _f=original, **k: searches.append(a[-1]) or _f(*a, **k))
    monkeypatch.setattr(modeling_s2s.modeling_s2s, "can_decode", lambda *args: True)
    kwargs = dict(logits_processor=processors, max_new_tokens=9, num_beams=num_beams, return_dict_in_generate=True)
    torch.manual_seed(3)
    ours = _generate(model, ids, mask, **kwargs)
    assert searches == [False]  # drop_finished=False: every row kept
    monkeypatch.setattr(modeling_s2s.modeling_s2s, "can_decode", lambda *args: False)
    theirs = _generate(model, ids, mask, **kwargs)
    assert torch.equal(ours.sequences, theirs.sequences)
    if num_beams > 1:
        assert torch.equal(ours.beam_indices, theirs.beam_indices)


# ---------------------------------------------------------------------------------------------------------------
# The lean loops' argmax and top-k
# ---------------------------------------------------------------------------------------------------------------


def _scores_with_ties_nan_and_inf(rows: int, width: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(rows * width)
    scores = torch.randn(rows, width, generator=generator).log_softmax(-1)
    scores[1, [7, width - 3]] = 5.0  # the maximum twice, in different chunks
    scores[2, [70 % width, 71 % width]] = 5.0  # twice in one chunk (of 64 columns)
    scores[3] = -float("inf")
    scores[4, [9, width // 2]] = float("nan")
    scores[5, :: 3] = -float("inf")
    return scores


@pytest.mark.parametrize("width", [8000, 320, 100, 64])
def test_first_argmax_is_torch_argmax(width):
    from modeling_s2s.generation_s2s import first_argmax

    scores = _scores_with_ties_nan_and_inf(6, width)
    assert torch.equal(first_argmax(scores), scores.argmax(-1))
    assert torch.equal(first_argmax(scores[:1]), scores[:1].argmax(-1))
    assert torch.equal(first_argmax(scores.bfloat16()), scores.bfloat16().argmax(-1))


@pytest.mark.parametrize("width,k", [(40000, 10), (8000, 4), (640, 6), (100, 3)])
def test_chunked_topk_gives_torch_topk(width, k):
    from modeling_s2s.generation_s2s import chunked_topk

    scores = _scores_with_ties_nan_and_inf(6, width)
    values, indices = chunked_topk(scores, k)
    expected_values, expected_indices = torch.topk(scores, k)
    torch.testing.assert_close(values, expected_values, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(scores.gather(1, indices), values, atol=0, rtol=0, equal_nan=True)
    assert all(len(set(row.tolist())) == k for row in indices)  # k distinct positions
    distinct = [0]  # a row without ties: the same positions in the same order
    assert torch.equal(indices[distinct], expected_indices[distinct])


@pytest.mark.parametrize("kwargs", [dict(), dict(num_beams=4), dict(num_beams=3, length_penalty=0.6)],
                         ids=["greedy", "beam4", "beam3-penalty"])
def test_a_vocabulary_of_whole_chunks_decodes_as_transformers(monkeypatch, kwargs):
    """With a vocabulary a multiple of 64 wide (as real ones are), greedy and beam search find their tokens by
    `first_argmax` / `chunked_topk`; the sequences are transformers'."""
    model = make_model(vocab_size=640, embedding_size=16, hidden_size=24)
    ids, mask = random_ids([6, 3, 5, 4, 2], vocab_size=640)
    used = []
    for name in ("first_argmax", "chunked_topk"):
        original = getattr(generation_s2s, name)
        monkeypatch.setattr(generation_s2s, name, lambda *a, _f=original, _n=name: used.append(_n) or _f(*a))
    ours, theirs, _, _ = _ours_and_transformers(monkeypatch, model, ids, mask, max_new_tokens=12, **kwargs)
    assert used and set(used) == {"chunked_topk" if kwargs else "first_argmax"}
    assert torch.equal(ours, theirs)
