"""Overhead of `model.generate()` over minimal hand-written decoding loops driving the same model.

Both sides call the model's `forward` with `encoder_outputs` (encoded once) and the recurrent
`cache` (`S2SDecoderCache`) one token at a time; the minimal beam search reorders the cache with
`cache.reorder_cache(beam_idx)` as generate() does. The minimal loops follow generate()'s rules (greedy: finished
rows are padded, stop when all rows have `</s>`; beam search: top 2·k candidates, finished hypotheses scored
by log-probability ÷ length^length_penalty, a sentence is done when it has k finished hypotheses
(`early_stopping=True`)), so greedy outputs must agree exactly and beam outputs for (nearly) every sentence. A
third greedy loop also drops finished rows from the batch and the cache (`cache.batch_select_indices`), as
OpenNMT-py does.

generate() runs twice: with the model's fast paths (`config.fast_paths = True`, the default: the model's own
greedy and beam loops, in which finished rows and settled sentences leave the batch) and with
`config.fast_paths = False` (transformers' own loops, which compute every row until the last row of the batch
ends, over the plain reference model); the last table gives the speed-up of the fast paths.
`--fast-paths-only` leaves the second out. The minimal loops run with the fast paths on.

Timed at batch 64 on the first `--batches` length-sorted batches of Multi30k test_2016_flickr, the methods
alternating batch by batch; each batch is timed `--repeats` times and the fastest kept.

`--stopping-rule` also decodes the whole test set with transformers' beam search (`config.fast_paths = False`)
and counts, per sentence, the beam steps its batch runs under transformers' rule (`early_stopping=True`: until
every sentence has `num_beams` finished hypotheses) and the step at which its best candidate first ends, where
OpenNMT-py stops a sentence.

    python benchmarks/bench_generate_overhead.py --model_dir /tmp/runs/quick1
    python benchmarks/bench_generate_overhead.py --batches 1 --repeats 1        # a quick look
    python benchmarks/bench_generate_overhead.py --model_dir outputs/multi30k-25min-de-en-wall --stopping-rule
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch
import torch.nn.functional as F
from _common import (
    FAST_PATHS_OFF,
    build_model,
    count_generated_tokens,
    decoding_batches,
    fast_paths,
    format_table,
    get_tokenizer,
    load_model,
    load_pairs,
    print_footer,
    print_header,
    setup_threads,
    strip_generated,
)


@torch.no_grad()
def minimal_greedy(model, input_ids, attention_mask, max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
    config = model.config
    encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    batch = input_ids.shape[0]
    tokens = input_ids.new_full((batch, 1), config.decoder_start_token_id)
    generated = [tokens]
    finished = torch.zeros(batch, dtype=torch.bool)
    cache = None
    for step in range(max_new_tokens):
        out = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask, decoder_input_ids=tokens,
                    cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1]
        if step < min_new_tokens:
            logits[:, config.eos_token_id] = float("-inf")
        next_tokens = logits.argmax(dim=-1).masked_fill(finished, config.pad_token_id)
        tokens = next_tokens[:, None]
        generated.append(tokens)
        finished |= next_tokens == config.eos_token_id
        if bool(finished.all()):
            break
    return torch.cat(generated, dim=1)


@torch.no_grad()
def shrinking_greedy(model, input_ids, attention_mask, max_new_tokens: int, min_new_tokens: int = 0) -> torch.Tensor:
    """Greedy search that drops finished rows from the batch (and from the cache, with
    `cache.batch_select_indices`), as OpenNMT-py's translator and the model's own greedy loop do (transformers'
    loop keeps computing finished rows until the last row of the batch ends). Same translations as
    `minimal_greedy`."""
    config = model.config
    encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    batch = input_ids.shape[0]
    result = input_ids.new_full((batch, max_new_tokens + 1), config.pad_token_id)
    result[:, 0] = config.decoder_start_token_id
    alive = torch.arange(batch)
    tokens, mask, cache = result[:, :1], attention_mask, None
    for step in range(max_new_tokens):
        # encoder_outputs only start the cache (first step); afterwards the cache and the mask carry the batch
        out = model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=tokens,
                    cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1]
        if step < min_new_tokens:
            logits[:, config.eos_token_id] = float("-inf")
        next_tokens = logits.argmax(dim=-1)
        result[alive, step + 1] = next_tokens
        running = next_tokens != config.eos_token_id
        if not bool(running.all()):
            if not bool(running.any()):
                break
            keep = running.nonzero().squeeze(1)
            alive, next_tokens, mask = alive[keep], next_tokens[keep], mask[keep]
            cache.batch_select_indices(keep)
        tokens = next_tokens[:, None]
    return result[:, : step + 2]


@torch.no_grad()
def minimal_beam(model, input_ids, attention_mask, num_beams: int, max_new_tokens: int, min_new_tokens: int = 0,
                 length_penalty: float = 1.0) -> torch.Tensor:
    from modeling_s2s import S2SEncoderOutput

    config = model.config
    batch, k = input_ids.shape[0], num_beams
    encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    mask = attention_mask.repeat_interleave(k, dim=0)
    encoder_outputs = S2SEncoderOutput(
        last_hidden_state=encoded.last_hidden_state.repeat_interleave(k, dim=0),
        final_hidden=encoded.final_hidden.repeat_interleave(k, dim=0),
        final_cell=encoded.final_cell.repeat_interleave(k, dim=0) if encoded.final_cell is not None else None,
        attention_mask=mask,
    )
    start, eos, pad = config.decoder_start_token_id, config.eos_token_id, config.pad_token_id
    tokens = input_ids.new_full((batch * k, 1), start)
    sequences = tokens  # (B*k, t) running hypotheses, start token included
    scores = torch.zeros(batch, k)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand the first only
    finished_scores = torch.full((batch, k), float("-inf"))
    finished = torch.full((batch, k, max_new_tokens + 1), pad, dtype=torch.long)
    offsets = torch.arange(batch)[:, None] * k
    done = torch.zeros(batch, dtype=torch.bool)
    cache = None
    for step in range(max_new_tokens):
        out = model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=tokens,
                    cache=cache, use_cache=True)
        cache = out.cache
        log_probs = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B*k, V)
        if step < min_new_tokens:
            log_probs[:, eos] = float("-inf")
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # (B, 2k)
        beam, token = top_index // vocab, top_index % vocab
        ends = token == eos if step < max_new_tokens - 1 else torch.ones_like(token, dtype=torch.bool)
        # the first k candidates that end go to the finished pool (scored per length), while there is room
        new = ends.clone()
        new[:, k:] = False
        new &= ~done[:, None]
        if bool(new.any()):
            length_scores = (top_scores / (step + 1) ** length_penalty).masked_fill(~new, float("-inf"))
            parents = sequences.view(batch, k, -1).gather(1, beam[..., None].expand(-1, -1, step + 1))
            candidate_sequences = F.pad(torch.cat([parents, token[..., None]], dim=2),
                                        (0, max_new_tokens - step - 1), value=pad)
            finished_scores, best = torch.cat([finished_scores, length_scores], dim=1).topk(k, dim=1)
            finished = torch.cat([finished, candidate_sequences], dim=1).gather(
                1, best[..., None].expand(-1, -1, finished.shape[-1]))
        done = finished_scores[:, -1] > float("-inf")
        if bool(done.all()):
            break
        # the best k candidates that do not end keep running
        scores, keep = top_scores.masked_fill(ends, float("-inf")).topk(k, dim=1)
        beam_idx = (beam.gather(1, keep) + offsets).view(-1)
        tokens = token.gather(1, keep).view(-1, 1)
        sequences = torch.cat([sequences[beam_idx], tokens], dim=1)
        cache.reorder_cache(beam_idx)
    return finished[:, 0]


def beam_steps_per_sentence(model, batches, num_beams: int, max_new_tokens: int) -> tuple[float, float]:
    """Mean beam steps a sentence's batch runs in transformers' beam search (`config.fast_paths = False`), and mean
    steps until its best candidate first ends (OpenNMT-py's stopping rule), over `batches`. Spies on transformers'
    `GenerationMixin._get_running_beams_for_next_iteration`, which its beam loop calls once per step with the
    step's candidates (arguments taken by position: log-probabilities, sequences, beam indices, stopping-criteria
    hits, number of beams)."""
    from modeling_s2s import S2SForConditionalGeneration

    name = "_get_running_beams_for_next_iteration"
    own = S2SForConditionalGeneration.__dict__.get(name)  # None: inherited from GenerationMixin
    original = getattr(S2SForConditionalGeneration, name)
    signature = inspect.signature(original)
    names = list(signature.parameters)[1:]  # after self
    steps: dict[int, list] = {}  # sentence -> [step its best candidate first ended, last step it was searched]

    def spy(self, *args, **kwargs):
        arguments = signature.bind(self, *args, **kwargs).arguments
        topk_beam_indices, hits, beams = (arguments[parameter] for parameter in names[2:5])
        column = int((topk_beam_indices[0, 0] != -1).sum()) - 1  # this step's column of the beam indices
        for sentence, best_ends in zip((topk_beam_indices[:, 0, column] // beams).tolist(), hits[:, 0].tolist()):
            record = steps.setdefault(sentence, [None, 0])
            if best_ends and record[0] is None:
                record[0] = column + 1
            record[1] = column + 1
        return original(self, *args, **kwargs)

    ours = first_end = count = 0
    setattr(S2SForConditionalGeneration, name, spy)
    try:
        with fast_paths(model, False):  # the model's own beam loop does not call transformers' step methods
            for _, input_ids, mask in batches:
                steps.clear()
                model.generate(input_ids=input_ids, attention_mask=mask, num_beams=num_beams,
                               max_new_tokens=max_new_tokens, early_stopping=True)
                for best_ended, last in steps.values():
                    ours, first_end, count = ours + last, first_end + (best_ended or last), count + 1
    finally:
        if own is None:
            delattr(S2SForConditionalGeneration, name)
        else:
            setattr(S2SForConditionalGeneration, name, own)
    if not count:
        raise RuntimeError(f"transformers' beam search did not call {name}")
    return ours / count, first_end / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="trained model directory (with tokenizer); default: untrained base")
    parser.add_argument("--preset", default="base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=4, help="length-sorted test batches timed")
    parser.add_argument("--repeats", type=int, default=2, help="times each batch; the fastest is kept")
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--untrained-length", type=int, default=15, help="max_new_tokens of the untrained model")
    parser.add_argument("--profile", action="store_true", help="profile generate() beam search on one batch")
    parser.add_argument("--stopping-rule", action="store_true",
                        help="beam steps per sentence: transformers' early_stopping=True vs OpenNMT-py's rule")
    parser.add_argument("--fast-paths-only", action="store_true",
                        help=f"leave out generate() with config.fast_paths=False ('{FAST_PATHS_OFF}')")
    args = parser.parse_args()

    setup_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print_header("generate() overhead over minimal hand-written decoding loops (same model, same forward calls)")
    tokenizer = get_tokenizer(args.model_dir)
    if args.model_dir:
        model = load_model(args.model_dir)
        max_new, min_new = args.max_new_tokens, 0
        what = f"trained model {args.model_dir}"
    else:
        model = build_model(args.preset, tokenizer).eval()
        max_new, min_new = args.untrained_length, 0
        what = f"UNTRAINED {args.preset} model (random weights; outputs run to max_new_tokens)"
    length_penalty = model.generation_config.length_penalty
    length_penalty = 1.0 if length_penalty is None else length_penalty  # transformers' default
    print(f"model: {what}; input_feeding={model.config.input_feeding}; beams {args.beams}, "
          f"length_penalty {length_penalty}, early_stopping=True, max_new_tokens {max_new}", flush=True)
    sources, _ = load_pairs("test")
    all_batches = decoding_batches(tokenizer, sources, args.batch_size)
    batches = all_batches
    # spread the timed batches over the length range
    stride = max(1, len(batches) // args.batches)
    batches = batches[::stride][: args.batches]
    print(f"data: {len(batches)} test batches of {args.batch_size} sentences (every {stride}th length-sorted "
          "batch)\n", flush=True)

    generation = dict(do_sample=False, max_new_tokens=max_new, early_stopping=True, length_penalty=length_penalty)
    if min_new:
        generation["min_new_tokens"] = min_new
    def generate(ids, mask, beams: int, fast: bool = True):
        with fast_paths(model, fast):
            return model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, **generation)

    kinds = (("greedy", 1), (f"beam {args.beams}", args.beams))
    methods = {}
    for kind, beams in kinds:
        methods[f"generate() {kind}"] = lambda ids, m, beams=beams: generate(ids, m, beams)
        if not args.fast_paths_only:
            methods[f"generate() {kind}, {FAST_PATHS_OFF}"] = lambda ids, m, beams=beams: generate(ids, m, beams, False)
    methods["minimal greedy"] = lambda ids, m: minimal_greedy(model, ids, m, max_new, min_new)
    methods["minimal greedy, drops finished rows"] = lambda ids, m: shrinking_greedy(model, ids, m, max_new, min_new)
    methods[f"minimal beam {args.beams}"] = lambda ids, m: minimal_beam(model, ids, m, args.beams, max_new, min_new,
                                                                        length_penalty)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for fn in methods.values():  # warm-up
        fn(batches[0][1], batches[0][2])
    seconds = dict.fromkeys(methods, 0.0)
    tokens = dict.fromkeys(methods, 0)
    outputs: dict[str, list[list[int]]] = {name: [] for name in methods}
    for _, input_ids, mask in batches:
        for name, fn in methods.items():
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                generated = fn(input_ids, mask)
                best = min(best, time.perf_counter() - start)
            seconds[name] += best
            tokens[name] += count_generated_tokens(generated, pad, eos)
            outputs[name] += [strip_generated(row[1:], pad, eos) for row in generated.tolist()]

    rows, speedups = [], []
    for kind, beams in kinds:
        gen, off, minimal = f"generate() {kind}", f"generate() {kind}, {FAST_PATHS_OFF}", f"minimal {kind}"
        n = len(outputs[gen])
        names = [gen, off, minimal] + (["minimal greedy, drops finished rows"] if beams == 1 else [])
        for name in (name for name in names if name in methods):
            same = sum(a == b for a, b in zip(outputs[gen], outputs[name]))
            rows.append([name, beams, n, seconds[name], round(tokens[name] / seconds[name]),
                         seconds[name] / seconds[minimal], f"{100 * same / n:.1f}%"])
        if off in methods:
            speedups.append([kind, round(tokens[gen] / seconds[gen]), round(tokens[off] / seconds[off]),
                             seconds[off] / seconds[gen]])
    print(f"## generate() vs minimal loops, batch {args.batch_size} (× minimal = time ÷ minimal loop's time; "
          "agree = identical translations)\n")
    print(format_table(["decoder", "beams", "sentences", "seconds", "tok/s", "× minimal", "agree with generate()"],
                       rows))
    if speedups:
        print(f"\n## generate() with fast paths vs {FAST_PATHS_OFF} (× = {FAST_PATHS_OFF} time ÷ fast paths time)\n")
        print(format_table(["search", "fast paths tok/s", f"{FAST_PATHS_OFF} tok/s", "×"], speedups))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        _, input_ids, mask = batches[0]
        for name in (f"generate() beam {args.beams}", f"minimal beam {args.beams}"):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                methods[name](input_ids, mask)
            print(f"\n## Profile: {name}, one batch\n")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    if args.stopping_rule:
        ours, onmt = beam_steps_per_sentence(model, all_batches, args.beams, max_new)
        print(f"\n## Beam {args.beams} steps per sentence over the whole test set ({len(sources)} sentences)\n")
        print(format_table(["stopping rule", "beam steps per sentence"], [
            ["transformers' loop, early_stopping=True (until every sentence has num_beams finished hypotheses)",
             ours],
            ["OpenNMT-py (its best candidate ends)", onmt],
            ["ratio", ours / onmt],
        ]))
    print_footer()


if __name__ == "__main__":
    main()
