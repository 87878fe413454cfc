"""The encoder alone, forward + backward on real training batches: fast paths on vs `config.fast_paths = False`.

With `config.fast_paths = True` (the default), `S2SEncoder` on CPU runs the RNN once per distinct source length of
a batch (each group cut to its length, through oneDNN's fused RNN kernel) when the batch has at most
`modeling_s2s.fast_paths.MAX_LENGTH_GROUPS` lengths, and packs the batch (`pack_padded_sequence`, which PyTorch
runs step by step on CPU) when it has more. With `config.fast_paths = False` every batch with mixed lengths is
packed (the reference path). A batch whose rows all have one length runs unpacked either way.

This script times the anchor shape's encoder (embeddings 256, biLSTM 2×256, dropout on) both ways on the
Multi30k training batches, grouped by how many distinct source lengths a batch has; the two ways alternate batch
by batch. "×" = fast_paths=False time ÷ fast paths time (the speed-up of the fast path).

    python benchmarks/bench_encoder.py
    python benchmarks/bench_encoder.py --length-grouping target --max-batches 4     # batches of many lengths
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from _common import (
    FAST_PATHS_OFF,
    build_model,
    fast_paths,
    format_table,
    get_tokenizer,
    print_footer,
    print_header,
    setup_threads,
    training_batches,
)

from modeling_s2s.fast_paths import MAX_LENGTH_GROUPS
from modeling_s2s.training import keep_freed_memory_for_reuse


def encoder_step(encoder, batch: dict[str, torch.Tensor], fast: bool) -> float:
    """Forward + backward of the encoder over `batch` with `config.fast_paths = fast`; seconds."""
    with fast_paths(encoder, fast):
        start = time.perf_counter()
        out = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = out.last_hidden_state.sum() + out.final_hidden.sum() + out.final_cell.sum()
        loss.backward()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--length-grouping", default="source", choices=("source", "target"))
    parser.add_argument("--max-batches", type=int, default=8, help="timed batches per number of distinct lengths")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    setup_threads(args.threads)
    keep_freed_memory_for_reuse()
    print_header(f"Encoder forward + backward: fast paths vs {FAST_PATHS_OFF}")
    tokenizer = get_tokenizer()
    batches = training_batches(tokenizer, seed=args.seed, grouping=args.length_grouping)
    by_count: dict[int, list] = collections.defaultdict(list)
    for batch in batches:
        by_count[len(set(batch["attention_mask"].sum(1).tolist()))].append(batch)
    print(f"{len(batches)} batches of 64 ({args.length_grouping}-first length grouping); batches per number of "
          f"distinct source lengths: {dict(sorted((k, len(v)) for k, v in by_count.items()))}; "
          f"MAX_LENGTH_GROUPS = {MAX_LENGTH_GROUPS}\n", flush=True)
    encoder = build_model("base", tokenizer).train().get_encoder()
    for batch in batches[:3]:
        encoder_step(encoder, batch, fast=False)
        encoder_step(encoder, batch, fast=True)
    rows = []
    for count, group in sorted(by_count.items()):
        timed = group[: args.max_batches]
        seconds = {"off": 0.0, "fast": 0.0}
        for batch in timed:
            seconds["off"] += encoder_step(encoder, batch, fast=False)
            seconds["fast"] += encoder_step(encoder, batch, fast=True)
        per_batch = {name: 1000 * s / len(timed) for name, s in seconds.items()}
        path = "unpacked (one length)" if count == 1 else (
            "per length" if count <= MAX_LENGTH_GROUPS else "packed (too many lengths)"
        )
        rows.append([count, len(group), len(timed), per_batch["off"], per_batch["fast"],
                     per_batch["off"] / per_batch["fast"], path])
    print(format_table(["lengths", "batches", "timed", f"{FAST_PATHS_OFF} ms", "fast paths ms", "×",
                        "fast paths' encoder"], rows))
    print_footer()


if __name__ == "__main__":
    main()
