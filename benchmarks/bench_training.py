"""Training throughput: the S2S model with and without its fast paths, and the naive PyTorch reference, side by side
on the same Multi30k batches.

For each preset of configuration/models/ (tiny, small, base, base_fused) three implementations start from the same
weights and train on the same length-grouped batches of 64 sentence pairs (forward + backward + gradient
clipping at 5 + fused Adam step, as Trainer's default optimizer `adamw_torch_fused`; dropout on):

- "s2s": `S2SForConditionalGeneration` as it trains by default (`config.fast_paths = True`: the per-length CPU
  encoder, the decoder's step matmuls through oneDNN with reordered weights and the weight gradients of all steps
  in one matmul, the output layer only up to each row's last label);
- "s2s fast_paths=False": the same model with `config.fast_paths = False` (the plain reference math of
  modeling_s2s.py); `--fast-paths-only` leaves it out;
- "naive": benchmarks/reference_model.py, a tutorial-style implementation of the same architecture;
  `--no-reference` leaves it out.

Optionally (`--bf16`) also "s2s bf16": the S2S model under CPU bf16 autocast, as Trainer's `--bf16`. Warm-up steps
are excluded; the timed steps alternate between the implementations batch by batch, so load from other jobs hits
all alike and the ratios stay meaningful: "× naive" and "× off" (the speed-up of the fast paths: tokens/s ÷
those of "s2s fast_paths=False").

Model FLOPs (analytical, multiply-add = 2 FLOPs, real tokens only, padding excluded; E embedding size, H hidden
size, V vocabulary, S_b real source length of the sentence, F = H with input feeding else 0):

    encoder, per source token:   2 directions × 2·(E + H/2)·4·(H/2)          (LSTM, H/2 units per direction)
    bridge, per sentence:        2 × 2·H·H                                     (h0 and c0 projections)
    decoder, per target token:   2·(E + F + H)·4·H                             (LSTM cell)
                               + 2·H·H + 2·S_b·H + 2·S_b·H                    (general score: W_a h, scores, context)
                               + 2·2H·H                                       (tanh(W_c [c; h]))
                               + 2·H·E + 2·E·V                                (projection H→E, tied output layer)
    training = 3 × forward (backward ≈ 2 × forward); embedding lookups, softmax and element-wise ops are free.

Achieved FLOP/s = model FLOPs of the timed batches ÷ their time; MFU = achieved ÷ the matmul peak of the row's
precision that this script measures a moment before (a 2048² `torch.mm` loop at the same thread count, fp32, and
bf16 with `--bf16` for the "s2s bf16" rows). Peak memory: each
(preset, implementation) trains a few steps in a fresh spawned interpreter; the table gives the peak RSS
increase over the RSS before the first step (model, batches and libraries loaded), which includes the Adam state.

    python benchmarks/bench_training.py                       # all presets, 20 timed steps each
    python benchmarks/bench_training.py --presets base --steps 3 --warmup 1 --no-memory   # a quick look
    python benchmarks/bench_training.py --presets base base_fused --bf16                  # also bf16 autocast
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from _common import (
    FAST_PATHS_OFF,
    PRESETS,
    fast_paths,
    format_table,
    get_tokenizer,
    matmul_peak_gflops,
    peak_rss_mb,
    preset_kwargs,
    print_footer,
    print_header,
    reset_peak_rss,
    rss_mb,
    run_isolated,
    setup_threads,
    training_batches,
)
from reference_model import ReferenceSeq2Seq

from modeling_s2s.training import keep_freed_memory_for_reuse

OFF = f"s2s {FAST_PATHS_OFF}"  # the S2S model with config.fast_paths = False
NAIVE = "naive"  # benchmarks/reference_model.py

# Published anchor figures for this shape on a 2-core CPU (2 threads, base shape, batch 64); not measured by this script.
ANCHORS = {"OpenNMT-py 3.5.1": 2800.0, "JoeyNMT 2.3.0": 1150.0}


def flops_per_batch(config: Any, batch: dict[str, torch.Tensor]) -> float:
    """Training FLOPs of one batch (see the module docstring)."""
    E, H, V = config.embedding_size, config.hidden_size, config.decoder_vocab_size
    F = H if config.input_feeding else 0
    source_lengths = batch["attention_mask"].sum(dim=1).double()
    target_lengths = batch["labels"].ne(-100).sum(dim=1).double()
    half = H // 2
    encoder = float(source_lengths.sum()) * 2 * 2 * (E + half) * 4 * half
    bridge = batch["labels"].shape[0] * 2 * 2 * H * H
    per_target = 2 * (E + F + H) * 4 * H + 2 * H * H + 2 * 2 * H * H + 2 * E * V + (2 * H * E if E != H else 0)
    decoder = float(target_lengths.sum()) * per_target + float((target_lengths * source_lengths).sum()) * 4 * H
    return 3.0 * (encoder + bridge + decoder)


def make_step(module: torch.nn.Module, is_reference: bool, bf16: bool = False, fast: bool = True):
    """One training step; `bf16` runs forward and loss under CPU bf16 autocast, as Trainer's `--bf16` does; `fast`:
    the S2S model's `config.fast_paths` during the step."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)  # as Trainer's default adamw_torch_fused
    module.train()

    def step(batch: dict[str, torch.Tensor]) -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if is_reference:
                loss = module(batch["input_ids"], batch["attention_mask"], batch["labels"])
            else:
                with fast_paths(module, fast):
                    loss = module(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
        optimizer.step()
        return float(loss.detach())

    return step


def build_pair(preset: str, config_kwargs: dict[str, Any]):
    from modeling_s2s import S2SConfig, S2SForConditionalGeneration

    kwargs = preset_kwargs(preset)
    kwargs.update(config_kwargs)
    torch.manual_seed(0)
    model = S2SForConditionalGeneration(S2SConfig(**kwargs))
    return model, ReferenceSeq2Seq.from_s2s(model)


def memory_probe(
    preset: str, config_kwargs: dict[str, Any], implementation: str, batches: list, threads: int, reuse: bool
):
    """Run in a fresh interpreter: peak RSS increase (MiB) over the steps on `batches`."""
    setup_threads(threads)
    if reuse:
        keep_freed_memory_for_reuse()
    model, reference = build_pair(preset, config_kwargs)
    module = reference if implementation == NAIVE else model
    if implementation == NAIVE:
        del model
    step = make_step(module, implementation == NAIVE, fast=implementation != OFF)
    reset_peak_rss()
    before = rss_mb()
    for batch in batches:
        step(batch)
    return peak_rss_mb() - before


def profile_step(step, batch, rows: int = 30) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per implementation and preset")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation and preset first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="leave out the naive reference model")
    parser.add_argument("--fast-paths-only", action="store_true",
                        help=f"leave out the S2S model with config.fast_paths=False ('{OFF}')")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-preset peak-memory subprocesses")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="duration of the matmul peak measurement")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of one S2S step (and of one bf16 step with --bf16)")
    parser.add_argument("--seed", type=int, default=0, help="batch order")
    parser.add_argument("--length-grouping", default="source", choices=("source", "target"),
                        help="batch sort key, as the trainer's --length_grouping")
    parser.add_argument("--bf16", action="store_true", help="also time the S2S model under CPU bf16 autocast")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (the training scripts call "
                             "modeling_s2s.training.keep_freed_memory_for_reuse, and so does this script by default)")
    args = parser.parse_args()

    setup_threads(args.threads)
    reuse = not args.default_malloc and keep_freed_memory_for_reuse()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print_header(f"Training throughput: S2S model, S2S with {FAST_PATHS_OFF} and the naive PyTorch reference "
                 "(same batches, same weights)")
    tokenizer = get_tokenizer()
    batches = training_batches(tokenizer, args.batch_size, seed=args.seed, grouping=args.length_grouping)
    warmup, timed = batches[: args.warmup], batches[args.warmup : args.warmup + args.steps]
    tokens = sum(int(b["labels"].ne(-100).sum()) for b in timed)
    source_tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    print("allocator: " + ("glibc, freed memory kept for reuse (keep_freed_memory_for_reuse, as scripts/train.py)"
                           if reuse else "glibc defaults (--default-malloc)"))
    print(f"data: Multi30k de→en train, {len(batches)} length-grouped batches of {args.batch_size} "
          f"(--length-grouping {args.length_grouping}); "
          f"timed {len(timed)} batches = {tokens:,} target tokens ({tokens / len(timed):.0f}/batch), "
          f"{source_tokens:,} source tokens; warm-up {len(warmup)} batches")
    peak = matmul_peak_gflops(args.threads, seconds=args.peak_seconds)
    print(f"matmul peak (fp32 2048² torch.mm, {args.threads} threads): {peak:.1f} GFLOP/s", flush=True)
    if args.bf16:
        bf16_peak = matmul_peak_gflops(args.threads, seconds=args.peak_seconds, dtype=torch.bfloat16)
        print(f"matmul peak (bf16 2048² torch.mm, {args.threads} threads): {bf16_peak:.1f} GFLOP/s "
              "(the MFU of the bf16 rows)", flush=True)
    print()

    config_kwargs = dict(
        vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    rows, memory_rows = [], []
    memory_names = ["s2s", *([] if args.fast_paths_only else [OFF]), *([] if args.no_reference else [NAIVE])]
    results: dict[str, dict[str, float]] = {}
    for preset in args.presets:
        model, reference = build_pair(preset, config_kwargs)
        config = model.config
        implementations = {"s2s": make_step(model, False)}
        if not args.fast_paths_only:
            implementations[OFF] = make_step(copy.deepcopy(model), False, fast=False)
        if args.bf16:
            implementations["s2s bf16"] = make_step(copy.deepcopy(model), False, bf16=True)
        if not args.no_reference:
            implementations[NAIVE] = make_step(reference, True)
        for step in implementations.values():
            for batch in warmup:
                step(batch)
        seconds = dict.fromkeys(implementations, 0.0)
        for batch in timed:
            for name, step in implementations.items():
                start = time.perf_counter()
                step(batch)
                seconds[name] += time.perf_counter() - start
        flops = sum(flops_per_batch(config, b) for b in timed)
        params = sum(p.numel() for p in model.parameters())
        results[preset] = rates = {name: tokens / s for name, s in seconds.items()}
        for name, s in seconds.items():
            rate = tokens / s
            rows.append([
                preset, "fused" if config.fused_decoder else "steps", name, f"{params / 1e6:.2f}M",
                round(rate), 1000 * s / len(timed), rate / rates.get(NAIVE, float("nan")),
                rate / rates.get(OFF, float("nan")), flops / tokens / 1e6, flops / s / 1e9,
                f"{100 * flops / s / 1e9 / (bf16_peak if name == 's2s bf16' else peak):.1f}%",
            ])
        print(f"{preset}: " + ", ".join(f"{n} {tokens / s:,.0f} tok/s" for n, s in seconds.items()), flush=True)
        if args.profile:  # on a batch every implementation has run: bf16 kernels for its shapes are built
            for name in ("s2s", "s2s bf16"):
                if name in implementations:
                    print(f"\n### Profiler ops of one step: {preset}, {name}\n")
                    profile_step(implementations[name], timed[0])
        del model, reference, implementations
        if not args.no_memory:
            few = timed[: args.memory_steps]
            memory = {
                name: run_isolated(memory_probe, preset, config_kwargs, name, few, args.threads, reuse)
                for name in memory_names
            }
            memory_rows.append([preset, *(memory[n] for n in memory)])

    print(f"\n## Training throughput (target tokens/s on the same batches; × naive = tok/s ÷ the naive reference's, "
          f"× off = tok/s ÷ those of '{OFF}', i.e. the speed-up of the fast paths)\n")
    print(format_table(
        ["preset", "decoder", "impl", "params", "tok/s", "ms/step", "× naive", "× off", "MFLOP/tok", "GFLOP/s",
         "MFU"],
        rows,
    ))
    if "base" in results or "base_fused" in results:
        print("\n## Base shape vs the published anchors (not measured in this run)\n")
        anchor_rows = []
        for preset in ("base", "base_fused"):
            for name, rate in results.get(preset, {}).items():
                if name != NAIVE:
                    suffix = {"s2s bf16": " (bf16 autocast)", OFF: f" ({FAST_PATHS_OFF})"}
                    label = f"S2S {preset}" + suffix.get(name, "")
                    anchor_rows.append([label, round(rate), *(rate / a for a in ANCHORS.values())])
        print(format_table(["model", "tok/s", *(f"× {name} ({a:,.0f})" for name, a in ANCHORS.items())],
                           anchor_rows))
    if memory_rows:
        names = memory_names
        print(f"\n## Peak memory of training ({args.memory_steps} steps incl. the first Adam step, fresh process; "
              "MiB of RSS above the pre-step RSS)\n")
        print(format_table(["preset", *(f"{n} MiB" for n in names)], memory_rows))
    print_footer()


if __name__ == "__main__":
    main()
