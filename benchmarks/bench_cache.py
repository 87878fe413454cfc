"""Cached vs uncached incremental decoding: `generate(use_cache=True)` vs `generate(use_cache=False)`.

With the cache (`S2SDecoderCache`: the recurrent state, the input feed and the source attention memory), each
new token costs one decoder step. Without it, generate() feeds the whole prefix again at every step, so the
decoder re-runs from the first token and step t costs t decoder steps (total quadratic in the output length).
Greedy search at batch `--batch-size` (first sentences of Multi30k test_2016_flickr), every output forced to exactly
N tokens (`min_new_tokens = max_new_tokens = N`), for N in `--lengths`.

Reported per N: milliseconds per generated token step (whole generate() time ÷ N, the encoder included) cached
and uncached and their ratio; the cached run also with `config.fast_paths = False` (the plain reference model and
transformers' greedy loop) and the speed-up of the fast paths over it (`--fast-paths-only` leaves it out); the
cached per-step cost relative to the shortest N (flat = 1.0); the size of the cache tensors after the last step;
and the peak RSS above the pre-run RSS during the run (in this process, a lower bound because the allocator
reuses memory).

    python benchmarks/bench_cache.py
    python benchmarks/bench_cache.py --lengths 20 100 --repeats 1      # a quick look
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import (
    FAST_PATHS_OFF,
    build_model,
    decoding_batches,
    fast_paths,
    format_table,
    get_tokenizer,
    load_model,
    load_pairs,
    peak_rss_mb,
    print_footer,
    print_header,
    reset_peak_rss,
    rss_mb,
    setup_threads,
)


def cache_bytes(cache) -> int:
    tensors = [cache.hidden, cache.cell, cache.input_feed]
    for memory in (cache.self_memory, cache.source_memory):
        if memory is not None:
            tensors += [memory.keys, memory.values]
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is not None and tensor.untyped_storage().data_ptr() not in seen:
            seen.add(tensor.untyped_storage().data_ptr())
            total += tensor.untyped_storage().nbytes()
    return total


def timed_generate(model, input_ids, mask, length: int, use_cache: bool, repeats: int, fast: bool = True):
    """Fastest of `repeats` greedy generate() calls with `config.fast_paths = fast`: (seconds, peak MiB, output)."""
    best, memory, output = float("inf"), 0.0, None
    for _ in range(repeats):
        reset_peak_rss()
        before = rss_mb()
        start = time.perf_counter()
        with fast_paths(model, fast):
            output = model.generate(
                input_ids=input_ids, attention_mask=mask, num_beams=1, do_sample=False, min_new_tokens=length,
                max_new_tokens=length, use_cache=use_cache, return_dict_in_generate=True,
            )
        best = min(best, time.perf_counter() - start)
        memory = max(memory, peak_rss_mb() - before)
    assert output.sequences.shape[1] == length + 1, output.sequences.shape
    return best, memory, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="trained model directory; default: an untrained preset")
    parser.add_argument("--preset", default="base", help="preset of the untrained model (base: input feeding)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[20, 100, 400])
    parser.add_argument("--repeats", type=int, default=3, help="cached runs per length (fastest kept)")
    parser.add_argument("--uncached-repeats", type=int, default=1)
    parser.add_argument("--fast-paths-only", action="store_true",
                        help=f"leave out the cached run with config.fast_paths=False ('{FAST_PATHS_OFF}')")
    args = parser.parse_args()

    setup_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print_header("Cached vs uncached generate(): time per generated token")
    tokenizer = get_tokenizer(args.model_dir)
    model = load_model(args.model_dir) if args.model_dir else build_model(args.preset, tokenizer).eval()
    config = model.config
    print(f"model: {args.model_dir or 'untrained ' + args.preset}; input_feeding={config.input_feeding}, "
          f"fused training path={config.fused_decoder}; greedy, batch {args.batch_size}", flush=True)
    sources, _ = load_pairs("test")
    _, input_ids, mask = decoding_batches(tokenizer, sources[: args.batch_size], args.batch_size, sort=False)[0]
    print(f"source lengths: {mask.sum(1).tolist()}\n", flush=True)
    timed_generate(model, input_ids, mask, 5, True, 1)  # warm-up
    timed_generate(model, input_ids, mask, 5, False, 1)
    if not args.fast_paths_only:
        timed_generate(model, input_ids, mask, 5, True, 1, fast=False)

    rows = []
    first_step_ms = None
    for length in args.lengths:
        cached, cached_memory, output = timed_generate(model, input_ids, mask, length, True, args.repeats)
        size = cache_bytes(output.cache)
        uncached, uncached_memory, uncached_output = timed_generate(
            model, input_ids, mask, length, False, args.uncached_repeats
        )
        same = torch.equal(output.sequences, uncached_output.sequences)
        off = off_memory = float("nan")
        if not args.fast_paths_only:
            off, off_memory, off_output = timed_generate(model, input_ids, mask, length, True, args.repeats, False)
            same = same and torch.equal(output.sequences, off_output.sequences)
        step_ms = 1000 * cached / length
        first_step_ms = first_step_ms or step_ms
        rows.append([
            length, step_ms, 1000 * uncached / length, uncached / cached, 1000 * off / length, off / cached,
            step_ms / first_step_ms, size / 1024, cached_memory, off_memory, uncached_memory,
            "yes" if same else "NO",
        ])
        print(f"  N={length}: cached {step_ms:.2f} ms/token, uncached {1000 * uncached / length:.2f} ms/token, "
              f"cached {FAST_PATHS_OFF} {1000 * off / length:.2f} ms/token", flush=True)
    print(f"\n## Greedy generate(), batch {args.batch_size}, output forced to N tokens (ms per generated token = "
          f"generate() time ÷ N; fast paths on unless marked {FAST_PATHS_OFF}; off ÷ cached = the speed-up of the "
          "fast paths)\n")
    print(format_table(
        ["N", "cached ms/token", "uncached ms/token", "uncached ÷ cached", f"cached {FAST_PATHS_OFF} ms/token",
         "off ÷ cached", f"cached vs N={args.lengths[0]}", "cache KiB", "cached peak MiB",
         f"{FAST_PATHS_OFF} peak MiB", "uncached peak MiB", "same output"],
        rows,
    ))
    print_footer()


if __name__ == "__main__":
    main()
