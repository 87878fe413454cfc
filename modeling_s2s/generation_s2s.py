"""Greedy and beam search in which finished rows leave the batch (a fast path, behind `S2SConfig.fast_paths`).

transformers computes every row of a batch until the last row is done. Here the decoder, log-softmax, logits
processors, top-k and argmax of a step cover only the rows still searching: in greedy search the rows without
EOS, in beam search the sentences whose finished hypotheses can still change. The results are transformers':
the same sequences (and beam indices), as tests pin for every row-local processor and stopping criterion.

`S2SForConditionalGeneration.generate` hands the loop to `decode` through transformers' supported hook
`generate(custom_generate=<callable>)`: transformers still prepares the generation config, encoder outputs,
logits processors and stopping criteria. `can_decode` sends everything the loops do not reproduce exactly
(sampling, per-step scores/attentions, assisted decoding, streamers, constraints, ...) to transformers' own loops.
Only public transformers API is used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import transformers
from transformers.generation import GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput

# Logits processors and stopping criteria that judge each row by its own tokens and scores alone (no state per
# batch position): with only these, finished rows can leave the batch without changing the other rows' outputs.
ROW_LOCAL_PROCESSORS = tuple(
    getattr(transformers, name)
    for name in (
        "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "TemperatureLogitsWarper",
        "RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor", "SequenceBiasLogitsProcessor",
        "NoBadWordsLogitsProcessor", "ForcedBOSTokenLogitsProcessor", "ForcedEOSTokenLogitsProcessor",
        "InfNanRemoveLogitsProcessor", "ExponentialDecayLengthPenalty", "LogitNormalization",
        "SuppressTokensAtBeginLogitsProcessor", "SuppressTokensLogitsProcessor",
    )
    if hasattr(transformers, name)
)
ROW_LOCAL_STOPPING_CRITERIA = (
    transformers.MaxLengthCriteria, transformers.MaxTimeCriteria, transformers.EosTokenCriteria,
    transformers.StopStringCriteria,
)

# generate() arguments whose behaviour the loops here do not reproduce (or that transformers does not pass to a
# `custom_generate` callable): with any of them, transformers' own loops run.
_TRANSFORMERS_ONLY_ARGUMENTS = (
    "assistant_model", "assistant_tokenizer", "streamer", "synced_gpus", "prefix_allowed_tokens_fn",
    "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate", "cache", "past_key_values",
    "decoder_attention_mask", "decoder_inputs_embeds", "tokenizer",
)
# Generation settings the loops here support only at these neutral values.
_NEUTRAL_SETTINGS = {
    "do_sample": (None, False), "num_beam_groups": (None, 1), "diversity_penalty": (None, 0.0),
    "penalty_alpha": (None,), "constraints": (None,), "force_words_ids": (None,), "guidance_scale": (None, 1.0),
    "watermarking_config": (None,), "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0), "low_memory": (None, False), "cache_implementation": (None,),
    "token_healing": (None, False), "prompt_lookup_num_tokens": (None,), "use_mtp": (None, False),
    "dola_layers": (None,), "use_cache": (None, True), "is_assistant": (None, False), "stop_strings": (None,),
    "prefill_chunk_size": (None,),
}
_PER_STEP_OUTPUTS = ("output_scores", "output_logits", "output_attentions", "output_hidden_states")


def _setting(name: str, model, generation_config, kwargs: dict[str, Any]):
    """The value `generate()` will use for `name`: the keyword, else the passed config's, else the model's."""
    for source in (kwargs, generation_config, model.generation_config):
        value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
        if value is not None:
            return value
    return None


def _is_row_local_processor(processor) -> bool:
    # a repetition penalty may carry a prompt length per batch row
    per_row_prompt = torch.is_tensor(getattr(processor, "prompt_ignore_length", None))
    return type(processor) in ROW_LOCAL_PROCESSORS and not per_row_prompt


def _rows_are_independent(logits_processor, stopping_criteria) -> bool:
    return all(_is_row_local_processor(p) for p in logits_processor or ()) and all(
        type(c) in ROW_LOCAL_STOPPING_CRITERIA for c in stopping_criteria or ()
    )


def can_decode(model, generation_config, kwargs: dict[str, Any]) -> bool:
    """Whether `decode` returns what transformers' loops would for this `generate()` call: greedy or beam search
    without sampling, per-step outputs, or any option listed above. Raises `ValueError` for a bad `num_beams`."""
    num_beams = _setting("num_beams", model, generation_config, kwargs)
    if num_beams is not None and (isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"`num_beams`={num_beams!r} must be a positive integer (1 for greedy search).")
    if any(kwargs.get(name) is not None for name in _TRANSFORMERS_ONLY_ARGUMENTS):
        return False
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return False  # sharded models must run every step on every process (synced_gpus)
    for name, neutral in _NEUTRAL_SETTINGS.items():
        if _setting(name, model, generation_config, kwargs) not in neutral:
            return False
    if _setting("return_dict_in_generate", model, generation_config, kwargs) and any(
        _setting(name, model, generation_config, kwargs) for name in _PER_STEP_OUTPUTS
    ):
        return False
    return _rows_are_independent(kwargs.get("logits_processor"), kwargs.get("stopping_criteria"))


class FreshDecoderState:
    """Passed to `generate()` as `cache` together with `decode`, which builds the decoder state with its first
    forward: transformers then builds no key/value cache of its own (two `DynamicCache`s, a few ms per call) that
    this recurrent model would never use."""


def decoding_arguments() -> dict[str, Any]:
    """The `generate()` keyword arguments that hand the loop to `decode`."""
    return {"custom_generate": decode, "cache": FreshDecoderState()}


def decode(model, input_ids, logits_processor, stopping_criteria, generation_config, **model_kwargs):
    """The `custom_generate` loop: greedy search (`num_beams == 1`) or beam search over the rows still searching.
    A processor or criterion that is not row-local (a new default of a later transformers) keeps every row."""
    drop_finished = _rows_are_independent(logits_processor, stopping_criteria)
    search = beam_search if (generation_config.num_beams or 1) > 1 else greedy_search
    return search(model, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs,
                  drop_finished)


@contextlib.contextmanager
def max_new_tokens_replace_the_default_max_length(model, generation_config, kwargs: dict[str, Any]):
    """A call that asks for `max_new_tokens` (and no `max_length`) runs without the model's default `max_length`
    (128 in a new model's generation config): transformers would otherwise warn at every such call that both
    were set, though `max_new_tokens` is what the caller asked for and takes precedence anyway."""
    asks_for_max_length = (
        kwargs.get("max_length") is not None or getattr(generation_config, "max_length", None) is not None
    )
    if kwargs.get("max_new_tokens") is None or asks_for_max_length:
        yield
        return
    saved = model.generation_config.max_length
    model.generation_config.max_length = None
    try:
        yield
    finally:
        model.generation_config.max_length = saved


def _eos_token_ids(generation_config) -> list[int] | None:
    eos = generation_config.eos_token_id
    return None if eos is None else [int(token) for token in (eos if isinstance(eos, (list, tuple)) else [eos])]


#: Width of the column chunks in which `first_argmax` and `chunked_topk` look for the largest scores.
SCORE_CHUNK = 64


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(-1)` of (N, V) scores: the first index of each row's maximum (NaN counting as the largest).

    On CPU in two passes: the maximum of every chunk of `SCORE_CHUNK` columns (vectorised), then the first index of
    the maximum within the first chunk holding it; PyTorch's CPU argmax over a whole long row is several times
    slower. Elsewhere, or when V is not a multiple of the chunk, `torch.argmax`."""
    rows, width = scores.shape
    if scores.device.type != "cpu" or width % SCORE_CHUNK or width == SCORE_CHUNK:
        return scores.argmax(-1)
    chunks = scores.reshape(rows, width // SCORE_CHUNK, SCORE_CHUNK)
    best_chunk = chunks.amax(-1).argmax(-1)  # (N,): the first chunk holding the row's maximum
    within = chunks[torch.arange(rows, device=scores.device), best_chunk].argmax(-1)
    return best_chunk * SCORE_CHUNK + within


def chunked_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(scores, k)` of (N, W) scores: the k largest values of each row, sorted, and their indices.

    On CPU in two passes: the k chunks of `SCORE_CHUNK` columns with the largest maxima hold the k largest values
    (a value outside them is smaller than k chunk maxima, so than k values), and the top k of those k·chunk
    candidates are the row's. Values equal to each other may come in another order than torch.topk's (whose order
    of ties is unspecified too). Elsewhere, or when W is not a multiple of the chunk, `torch.topk`."""
    rows, width = scores.shape
    chunks_per_row = width // SCORE_CHUNK
    if scores.device.type != "cpu" or width % SCORE_CHUNK or chunks_per_row <= 2 * k:
        return torch.topk(scores, k)
    chunks = scores.reshape(rows, chunks_per_row, SCORE_CHUNK)
    best_chunks = torch.topk(chunks.amax(-1), k).indices  # (N, k)
    candidates = torch.take_along_dim(chunks, best_chunks[:, :, None], dim=1).flatten(1)  # (N, k·chunk)
    values, positions = torch.topk(candidates, k)
    chunk_of = torch.gather(best_chunks, 1, positions // SCORE_CHUNK)
    return values, chunk_of * SCORE_CHUNK + positions % SCORE_CHUNK


def _pad_token_id(generation_config) -> int | None:
    """transformers' padding id: `pad_token_id`, else the first EOS id."""
    eos = _eos_token_ids(generation_config)
    return generation_config.pad_token_id if generation_config.pad_token_id is not None else (eos[0] if eos else None)


def _source_mask(model_kwargs):
    mask = model_kwargs.get("attention_mask")
    return mask if mask is not None else model_kwargs["encoder_outputs"].attention_mask


def _step(model, tokens, encoder_outputs, source_mask, cache=None):
    """The model's forward on decoder `tokens` (N, t) -> (logits of the last position (N, V), cache)."""
    outputs = model(decoder_input_ids=tokens, encoder_outputs=encoder_outputs, attention_mask=source_mask,
                    cache=cache, use_cache=True, return_dict=True)
    return outputs.logits[:, -1], outputs.cache


# ---------------------------------------------------------------------------------------------------------------
# Greedy search
# ---------------------------------------------------------------------------------------------------------------


def greedy_search(model, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs,
                  drop_finished: bool = True) -> torch.LongTensor | GenerateEncoderDecoderOutput:
    """transformers' greedy search, where a row that has finished leaves every per-step tensor.

    input_ids: (B, t) decoder prompt. Returns (B, t + n) sequences, n the step at which the last row finished; a row
    that finished earlier is padded with the pad id, as transformers pads it.
    """
    batch_size, length = input_ids.shape
    encoder_outputs, source_mask = model_kwargs["encoder_outputs"], _source_mask(model_kwargs)
    pad = _pad_token_id(generation_config)
    pads_finished_rows = any(hasattr(criterion, "eos_token_id") for criterion in stopping_criteria)
    logits, cache = _step(model, input_ids, encoder_outputs, source_mask)  # the whole prompt, every row
    sequences = F.pad(input_ids, (0, max(generation_config.max_length - length, 0)), value=pad)
    alive = torch.arange(batch_size, device=input_ids.device)
    unfinished = torch.ones(batch_size, dtype=torch.bool, device=input_ids.device)
    while True:
        next_tokens = first_argmax(logits_processor(sequences[alive, :length], logits.float()))
        if not drop_finished and pads_finished_rows:
            next_tokens = torch.where(unfinished, next_tokens, pad)
        if length >= sequences.shape[1]:  # no room left: a stopping criterion other than max_length decides
            sequences = F.pad(sequences, (0, sequences.shape[1]), value=pad)
        sequences[alive, length] = next_tokens
        length += 1
        finished = stopping_criteria(sequences[alive, :length], None)
        if drop_finished:
            if bool(finished.all()):
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(1)
                alive, next_tokens = alive[keep], next_tokens[keep]
                source_mask = source_mask[keep] if source_mask is not None else None
                cache.batch_select_indices(keep)
        else:
            unfinished &= ~finished
            if not bool(unfinished.any()):
                break
        logits, cache = _step(model, next_tokens[:, None], encoder_outputs, source_mask, cache)
    sequences = sequences[:, :length]
    if generation_config.return_dict_in_generate:
        return GenerateEncoderDecoderOutput(sequences=sequences, cache=cache)
    return sequences


# ---------------------------------------------------------------------------------------------------------------
# Beam search
# ---------------------------------------------------------------------------------------------------------------


def _gather_beams(tensor: torch.Tensor, beam_indices: torch.Tensor) -> torch.Tensor:
    """tensor (n, k, ...) -> (n, k', ...): per sentence, the beams `beam_indices` (n, k')."""
    while beam_indices.dim() < tensor.dim():
        beam_indices = beam_indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, beam_indices, dim=1)


@dataclass
class _Beams:
    """Beam search state of n sentences with k beams, in transformers' names and layout.

    `sentences` (n,) are their indices in generate()'s batch; every other field has n rows: running_sequences and
    sequences (finished hypotheses) (n, k, max_length), running_beam_scores, beam_scores and is_sent_finished
    (n, k), running_beam_indices and beam_indices (n, k, max_length - prompt), improvable (n, 1): whether the
    running beams may still beat a finished hypothesis (transformers' early-stop heuristic).
    """

    sentences: torch.Tensor
    running_sequences: torch.Tensor
    running_beam_scores: torch.Tensor
    running_beam_indices: torch.Tensor
    sequences: torch.Tensor
    beam_scores: torch.Tensor
    beam_indices: torch.Tensor
    is_sent_finished: torch.Tensor
    improvable: torch.Tensor

    @classmethod
    def start(cls, input_ids, batch_size: int, num_beams: int, max_length: int, fill_value: int) -> _Beams:
        """The state before the first step, as transformers initialises it. input_ids: (B·k, t) prompts."""
        device, prompt_length = input_ids.device, input_ids.shape[1]
        sequences = torch.full((batch_size, num_beams, max_length), fill_value, dtype=torch.long, device=device)
        sequences[:, :, :prompt_length] = input_ids.view(batch_size, num_beams, -1)
        running_scores = torch.zeros(batch_size, num_beams, device=device)
        running_scores[:, 1:] = -1e9  # only the first beam is expanded at the first step
        indices = torch.full((batch_size, num_beams, max_length - prompt_length), -1, dtype=torch.int32, device=device)
        return cls(
            sentences=torch.arange(batch_size, device=device),
            running_sequences=sequences,
            running_beam_scores=running_scores,
            running_beam_indices=indices,
            sequences=sequences.clone(),
            beam_scores=torch.full((batch_size, num_beams), -1e9, device=device),
            beam_indices=indices.clone(),
            is_sent_finished=torch.zeros(batch_size, num_beams, dtype=torch.bool, device=device),
            improvable=torch.ones(batch_size, 1, dtype=torch.bool, device=device),
        )

    def select(self, index: torch.Tensor) -> _Beams:
        return _Beams(**{field.name: getattr(self, field.name)[index] for field in fields(self)})

    def store(self, other: _Beams) -> None:
        """Copy the finished hypotheses of `other`'s sentences into this whole-batch state."""
        for name in ("sequences", "beam_scores", "beam_indices"):
            getattr(self, name)[other.sentences] = getattr(other, name)


@dataclass
class _BeamSettings:
    num_beams: int
    beams_to_keep: int  # candidates per sentence and step: enough that k survive even if the best all end
    prompt_length: int
    max_length: int
    length_penalty: float
    early_stopping: bool | str


def _advance(beams: _Beams, log_probs: torch.Tensor, cur_len: int, s: _BeamSettings, stopping_criteria):
    """One step of transformers' beam search on `beams` (in place). log_probs: (n·k, V) processed log-probabilities.
    Returns which of the step's candidates (n, beams_to_keep) hit a stopping criterion.

    The best `beams_to_keep` continuations over all beams of a sentence; those that hit a stopping criterion
    become finished hypotheses (scored with the length penalty) if among the best k, the others keep running.
    """
    count, k = beams.sentences.shape[0], s.num_beams
    # in place: the processed log-probabilities are this step's own tensor (the same values as transformers' sum)
    accumulated = log_probs.reshape(count, k, -1).add_(beams.running_beam_scores[:, :, None]).reshape(count, -1)
    topk_log_probs, topk_indices = chunked_topk(accumulated, s.beams_to_keep)
    vocab_size = accumulated.shape[-1] // k
    parent = topk_indices // vocab_size
    topk_sequences = _gather_beams(beams.running_sequences, parent)
    topk_sequences[:, :, cur_len] = topk_indices % vocab_size
    topk_beam_indices = _gather_beams(beams.running_beam_indices, parent)
    # beam indices count over generate()'s whole batch of n_total·k rows
    topk_beam_indices[:, :, cur_len - s.prompt_length] = (parent + beams.sentences[:, None] * k).to(torch.int32)
    hits = stopping_criteria(topk_sequences[:, :, : cur_len + 1].flatten(0, 1), None).view(count, -1)

    running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
    best_running = torch.topk(running_log_probs, k=k)[1]
    beams.running_sequences = _gather_beams(topk_sequences, best_running)
    beams.running_beam_scores = _gather_beams(running_log_probs, best_running)
    beams.running_beam_indices = _gather_beams(topk_beam_indices, best_running)

    just_finished = hits & (torch.arange(s.beams_to_keep, device=hits.device) < k)[None, :]
    finished_scores = topk_log_probs / ((cur_len + 1 - s.prompt_length) ** s.length_penalty)
    full = torch.all(beams.is_sent_finished, dim=-1, keepdim=True) & (s.early_stopping is True)
    finished_scores += full.to(torch.float32) * -1.0e9
    finished_scores += (~beams.improvable).to(torch.float32) * -1.0e9
    finished_scores += (~just_finished) * -1.0e9
    merged_scores = torch.cat((beams.beam_scores, finished_scores), dim=1)
    best = torch.topk(merged_scores, k=k)[1]
    beams.sequences = _gather_beams(torch.cat((beams.sequences, topk_sequences), dim=1), best)
    beams.beam_scores = _gather_beams(merged_scores, best)
    beams.beam_indices = _gather_beams(torch.cat((beams.beam_indices, topk_beam_indices), dim=1), best)
    beams.is_sent_finished = _gather_beams(torch.cat((beams.is_sent_finished, just_finished), dim=1), best)
    return hits


def _still_improvable(beams: _Beams, cur_len: int, s: _BeamSettings) -> torch.Tensor:
    """transformers' early-stop heuristic: whether the best running beam could still beat the worst finished
    hypothesis, (n, 1). With `early_stopping="never"` and a positive length penalty it assumes `max_length`."""
    if s.early_stopping == "never" and s.length_penalty > 0.0:
        best_length = s.max_length - s.prompt_length
    else:
        best_length = cur_len - s.prompt_length
    best_running = beams.running_beam_scores[:, :1] / (best_length**s.length_penalty)
    worst_finished = torch.where(beams.is_sent_finished, torch.min(beams.beam_scores, dim=1, keepdim=True)[0], -1.0e9)
    return beams.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)


def beam_search(model, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs,
                drop_finished: bool = True) -> torch.LongTensor | GenerateBeamEncoderDecoderOutput:
    """transformers' beam search, where a sentence whose finished hypotheses can no longer change (settled)
    leaves every per-step tensor. input_ids: (B·k, t). Returns what transformers returns without per-step
    outputs: sequences (B·r, t + n) (r = `num_return_sequences`) and, in a dict, their beam indices.

    transformers repeats the encoder outputs once per beam; the decoder takes them once per sentence instead, so
    the beams of a sentence attend over one copy of its source (`S2SDecoderCache.rows_per_source`).
    """
    config = generation_config
    num_beams, prompt_length = config.num_beams, input_ids.shape[1]
    batch_size = input_ids.shape[0] // num_beams
    eos, pad = _eos_token_ids(config), _pad_token_id(config)
    settings = _BeamSettings(
        num_beams=num_beams, beams_to_keep=max(2, 1 + len(eos or [])) * num_beams, prompt_length=prompt_length,
        max_length=config.max_length, length_penalty=config.length_penalty if config.length_penalty is not None else 1.0,
        early_stopping=config.early_stopping if config.early_stopping is not None else False,
    )
    fill_value = (pad or eos[0]) if eos else -1  # as transformers fills unused positions
    live = _Beams.start(input_ids, batch_size, num_beams, config.max_length, fill_value)
    final = _Beams.start(input_ids, batch_size, num_beams, config.max_length, fill_value)
    encoder_outputs = model_kwargs["encoder_outputs"]
    encoder_outputs = type(encoder_outputs)(
        **{key: value[::num_beams] if torch.is_tensor(value) else value for key, value in encoder_outputs.items()}
    )
    source_mask = model_kwargs.get("attention_mask")
    if source_mask is None and encoder_outputs.attention_mask is not None:
        source_mask = encoder_outputs.attention_mask.repeat_interleave(num_beams, dim=0)
    logits, cache = _step(model, input_ids, encoder_outputs, source_mask)  # every beam of every sentence
    cur_len = prompt_length
    while True:
        count = live.sentences.shape[0]
        sequences = live.running_sequences[:, :, :cur_len].flatten(0, 1)
        log_probs = logits_processor(sequences, F.log_softmax(logits.float(), dim=-1))
        hits = _advance(live, log_probs, cur_len, settings, stopping_criteria)
        parents = live.running_beam_indices[..., cur_len - prompt_length].long()  # rows of the whole batch
        parents = parents - (live.sentences - torch.arange(count, device=parents.device))[:, None] * num_beams
        cur_len += 1
        live.improvable = _still_improvable(live, cur_len, settings)
        searching = (
            torch.any(live.improvable)
            & ~(torch.all(live.is_sent_finished) & (settings.early_stopping is True))
            & ~torch.all(hits)
        )
        settled = live.is_sent_finished.all(dim=-1) & (
            (settings.early_stopping is True) | ~live.improvable.squeeze(-1)
        )
        if not bool(searching) or (drop_finished and bool(settled.all())):
            final.store(live)
            break
        cache.reorder_cache(parents.flatten())
        if drop_finished and bool(settled.any()):
            final.store(live.select(settled.nonzero().squeeze(1)))
            keep = (~settled).nonzero().squeeze(1)
            live = live.select(keep)
            rows = (keep[:, None] * num_beams + torch.arange(num_beams, device=keep.device)).flatten()
            cache.batch_select_indices(rows)
            source_mask = source_mask[rows] if source_mask is not None else None
        tokens = live.running_sequences[:, :, cur_len - 1].reshape(-1, 1)
        logits, cache = _step(model, tokens, encoder_outputs, source_mask, cache)
    return _beam_output(final, config, prompt_length, cache)


def _beam_output(beams: _Beams, config, prompt_length: int, cache):
    """transformers' result: the best `num_return_sequences` hypotheses per sentence, cropped to the longest."""
    count = config.num_return_sequences or 1
    sequences = beams.sequences[:, :count].flatten(0, 1)
    beam_indices = beams.beam_indices[:, :count].flatten(0, 1)
    generated = int(((beam_indices + 1).bool()).sum(dim=1).max())
    sequences, beam_indices = sequences[:, : prompt_length + generated], beam_indices[:, :generated]
    if config.return_dict_in_generate:
        return GenerateBeamEncoderDecoderOutput(sequences=sequences, beam_indices=beam_indices, cache=cache)
    return sequences


__all__ = ["ROW_LOCAL_PROCESSORS", "ROW_LOCAL_STOPPING_CRITERIA", "FreshDecoderState", "beam_search", "can_decode",
           "decode", "decoding_arguments", "greedy_search"]
