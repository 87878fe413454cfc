"""The encoder alone: packed sequences vs one RNN call per source length, forward + backward, on real batches.

A training batch whose rows have different source lengths used to be packed (`pack_padded_sequence`), which on
CPU runs PyTorch's step-by-step RNN; since the seventh session `S2SEncoder` runs the RNN once per distinct length
(each group cut to its length, oneDNN's fused RNN kernel) when a batch has at most `MAX_LENGTH_GROUPS` lengths.
This script times the anchor shape's encoder (embeddings 256, biLSTM 2×256, dropout on) both ways on the Multi30k
training batches that mix source lengths, grouped by how many distinct lengths a batch has; batches with a
single length are timed once (they take neither path). The two ways alternate batch by batch.

    python benchmarks/bench_encoder.py
    python benchmarks/bench_encoder.py --length-grouping target --max-batches 4     # batches of many lengths
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import time

import torch
from _common import (
    build_model,
    format_table,
    get_tokenizer,
    packed_encoder,
    print_footer,
    print_header,
    setup_threads,
    training_batches,
)

import modeling_s2s.modeling_s2s as modeling
from modeling_s2s.training import keep_freed_memory_for_reuse


def encoder_step(encoder, batch: dict[str, torch.Tensor], packed: bool) -> float:
    """Forward + backward of the encoder over `batch`; seconds. `packed`: pack every mixed-length batch."""
    with packed_encoder() if packed else contextlib.nullcontext():
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
    print_header("Encoder forward + backward: packed sequences vs one RNN call per source length")
    tokenizer = get_tokenizer()
    batches = training_batches(tokenizer, seed=args.seed, grouping=args.length_grouping)
    by_count: dict[int, list] = collections.defaultdict(list)
    for batch in batches:
        by_count[len(set(batch["attention_mask"].sum(1).tolist()))].append(batch)
    print(f"{len(batches)} batches of 64 ({args.length_grouping}-first length grouping); batches per number of "
          f"distinct source lengths: {dict(sorted((k, len(v)) for k, v in by_count.items()))}; "
          f"MAX_LENGTH_GROUPS = {modeling.MAX_LENGTH_GROUPS}\n", flush=True)
    encoder = build_model("base", tokenizer).train().get_encoder()
    for batch in batches[:3]:
        encoder_step(encoder, batch, packed=True)
        encoder_step(encoder, batch, packed=False)
    rows = []
    for count, group in sorted(by_count.items()):
        timed = group[: args.max_batches]
        seconds = {"packed": 0.0, "model": 0.0}
        for batch in timed:
            seconds["packed"] += encoder_step(encoder, batch, packed=True)
            seconds["model"] += encoder_step(encoder, batch, packed=False)
        per_batch = {name: 1000 * s / len(timed) for name, s in seconds.items()}
        path = "unpacked (one length)" if count == 1 else (
            "per length" if count <= modeling.MAX_LENGTH_GROUPS else "packed (too many lengths)"
        )
        rows.append([count, len(group), len(timed), per_batch["packed"], per_batch["model"],
                     per_batch["packed"] / per_batch["model"], path])
    print(format_table(["lengths", "batches", "timed", "packed ms", "model ms", "× packed", "model's path"], rows))
    print_footer()


if __name__ == "__main__":
    main()
