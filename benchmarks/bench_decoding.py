"""Translation speed on Multi30k test_2016_flickr (de→en, 1000 sentences) through `model.generate()`.

Measured side by side in one run:

- greedy and beam 5 at batch 64 over the whole test set (batches sorted by source length, as NMT toolkits
  translate) and at batch 1 over the first `--batch1-sentences` sentences (latency per sentence);
- the same model with `config.fast_paths = False` ("fp32, fast_paths=False": the plain reference model and
  transformers' own greedy and beam loops, in which every row of a batch is computed until its last row ends)
  next to the default fast paths (oneDNN matmuls with weights reordered once and reused between generate()
  calls; greedy and beam loops in which finished rows and settled sentences leave the batch, the beams of a
  sentence sharing one copy of its source); `--fast-paths-only` leaves it out;
- the naive reference (benchmarks/reference_model.py, a tutorial-style greedy loop with the same weights)
  greedy at the same batch sizes, with the agreement of its translations with generate()'s;
- int8 decoding (`config.int8_decoding = True`: the decoder's per-step matmuls and the output layer through
  oneDNN's int8 linear op), with BLEU before/after when the model is trained (`--no-quantize` leaves it out;
  left out where the CPU has no oneDNN int8);
- bf16 (`--bf16`): a copy of the model with its weights cast to bfloat16 (`model.to(torch.bfloat16)`; on CPUs
  with AVX-512 BF16 or AMX the matmuls run at about twice the fp32 rate), with BLEU before/after;
- optionally (`--compile`) `torch.compile` of the decoder module;
- optionally (`--plain-weights`) fp32 decoding with the fast paths but plain weights (`F.linear`, as PyTorch's
  BLAS routines take them) instead of weights reordered once for oneDNN: what the reordering buys on this CPU;
- greedy through a hand-written loop over the same model that drops finished rows from the batch and the cache
  (`shrinking_greedy` of bench_generate_overhead.py, as OpenNMT-py translates).

Output tokens are the tokens of the returned translation up to and including `</s>` (no start token, no padding).
Every decoder of a setting runs on one batch before the next batch is taken, in an order rotating from batch to
batch (so a slow stretch of a shared machine hits all of them alike). The last table gives the speed-up of the fast
paths over `fast_paths=False` per setting. Memory: peak RSS above the RSS before, over a separate run of the
longest batch, in this process (allocator reuse makes it a lower bound). With `--model_dir` (a trained model
directory with its tokenizer, e.g. written by scripts/train.py) translations have their natural lengths and BLEU is
reported; without it an untrained base model is used and `max_new_tokens=--untrained-length` (15, the mean
reference length in tokens): a random model almost never predicts `</s>`, so outputs run to that length (the
"tokens" column counts what was really generated) and the work per sentence is comparable to a trained model's, but
beam search never stops early (and finished rows rarely leave the batch).

`--join N` joins every N consecutive test sentences (sources and references) into one: long inputs, as in
summarisation, where the attention over the source is a large part of each step.

    python benchmarks/bench_decoding.py --model_dir /tmp/runs/quick1
    python benchmarks/bench_decoding.py --max-sentences 128 --batch1-sentences 10 --no-quantize   # a quick look
    python benchmarks/bench_decoding.py --model_dir outputs/multi30k-25min-de-en-wall --join 8 --beams 5 \
        --no-quantize --no-reference --batch1-sentences 5 --max-new-tokens 200                      # long inputs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import sys
import time
from typing import Any

import torch
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
    matmul_peak_gflops,
    peak_rss_mb,
    print_footer,
    print_header,
    reset_peak_rss,
    rss_mb,
    setup_threads,
    strip_generated,
)
from reference_model import ReferenceSeq2Seq
from torch import nn

from modeling_s2s import fast_paths as fast_paths_module
from modeling_s2s.fast_paths import int8_decoding_applies

OFF = f"generate() fp32, {FAST_PATHS_OFF}"
PLAIN = "generate() fp32, plain weights"

# Published anchor figures on a 2-core CPU (2 threads, base shape, batch 64, output tokens/s); not measured here.
ANCHORS = {"OpenNMT-py 3.5.1": {1: 7200.0, 5: 2100.0}, "JoeyNMT 2.3.0": {1: 2650.0, 5: 650.0}}


def int8_copy(model: nn.Module) -> nn.Module:
    """A copy that decodes in int8 (`config.int8_decoding`)."""
    quantized = copy.deepcopy(model)
    quantized.config.int8_decoding = True
    return quantized


@contextlib.contextmanager
def plain_fp32_weights():
    """fp32 decoding matmuls with the plain weights at every row count (the fast paths reorder the weights for
    oneDNN above `PLAIN_FP32_ROWS` rows)."""
    saved = fast_paths_module.PLAIN_FP32_ROWS
    fast_paths_module.PLAIN_FP32_ROWS = sys.maxsize
    try:
        yield
    finally:
        fast_paths_module.PLAIN_FP32_ROWS = saved


def join_sentences(texts: list[str], n: int) -> list[str]:
    """Every `n` consecutive texts joined with spaces (the last group may be shorter)."""
    return [" ".join(texts[i : i + n]) for i in range(0, len(texts), n)]


class Runner:
    """Times one decoding setting over a list of batches and keeps its translations."""

    def __init__(self, tokenizer, generation: dict[str, Any]):
        self.tokenizer = tokenizer
        self.generation = generation
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    def generate(self, model, input_ids, attention_mask, beams: int, fast: bool = True) -> torch.Tensor:
        """generate() with `model.config.fast_paths = fast` for this call."""
        with fast_paths(model, fast):
            return model.generate(
                input_ids=input_ids, attention_mask=attention_mask, num_beams=beams, do_sample=False,
                **self.generation,
            )

    def run(self, fn, batches, n_sentences: int) -> dict[str, Any]:
        """fn(input_ids, mask) -> (B, n) generated ids with a start token; see `run_alternating`."""
        return self.run_alternating({"fn": fn}, batches, n_sentences)["fn"]

    def run_alternating(self, fns: dict[str, Any], batches, n_sentences: int) -> dict[str, dict[str, Any]]:
        """Time every fn(input_ids, mask) -> (B, n) generated ids (start token first) over `batches`, all of them
        on one batch before the next batch, in an order rotating from batch to batch, so a slow stretch of a shared
        machine hits every fn alike. Untimed warm-up on the first batch (a fn that fails there is reported and left
        out). Memory: peak RSS above the RSS before, in a separate untimed run of the longest batch per fn."""
        working = {}
        for name, fn in fns.items():
            try:
                fn(batches[0][1], batches[0][2])
                working[name] = fn
            except Exception as error:  # torch.compile may fail; report it instead of stopping
                print(f"{name} FAILED: {type(error).__name__}: {error}"[:500])
        outputs = {name: [[] for _ in range(n_sentences)] for name in working}
        tokens = dict.fromkeys(working, 0)
        latencies: dict[str, list[float]] = {name: [] for name in working}
        names = list(working)
        for position, (index, input_ids, mask) in enumerate(batches):
            turn = position % len(names)  # who goes first rotates: no decoder always follows the same one
            for name in names[turn:] + names[:turn]:
                fn = working[name]
                start = time.perf_counter()
                generated = fn(input_ids, mask)
                latencies[name].append(time.perf_counter() - start)
                tokens[name] += count_generated_tokens(generated, self.pad, self.eos)
                for row, i in enumerate(index):
                    outputs[name][i] = strip_generated(generated[row, 1:].tolist(), self.pad, self.eos)
        longest = max(batches, key=lambda batch: batch[1].numel())
        results = {}
        for name, fn in working.items():
            reset_peak_rss()
            before = rss_mb()
            fn(longest[1], longest[2])
            results[name] = {
                "seconds": sum(latencies[name]), "tokens": tokens[name], "outputs": outputs[name],
                "sentences": sum(len(b[0]) for b in batches), "latency_ms": 1000 * statistics.median(latencies[name]),
                "memory": peak_rss_mb() - before,
            }
        return results


def bleu(tokenizer, outputs: list[list[int]], references: list[str]) -> float:
    import sacrebleu

    hypotheses = tokenizer.batch_decode(outputs, skip_special_tokens=True)
    return sacrebleu.corpus_bleu(hypotheses, [references]).score


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
ONEDNN_LINEAR = "mkldnn::_linear_pointwise"  # the fast paths' matmuls; the profiler gives them no FLOP count


def onednn_linear_flops(event) -> float:
    """FLOPs of the oneDNN linear calls of one profiler event grouped by input shape: x (..., in), weight
    (out, in) -> 2·rows·in·out per call."""
    x_shape, weight_shape = event.input_shapes[0], event.input_shapes[1]
    rows = math.prod(x_shape[:-1])
    return 2.0 * rows * weight_shape[0] * weight_shape[1] * event.count


def print_profiles(
    runner: Runner, variants: dict[str, tuple[nn.Module, bool]], batches, batch_size: int, beam_sizes,
    threads: int, results: dict,
) -> None:
    """Where decoding time goes: the float matmul FLOPs of the batch run (counted by torch.profiler: mm, addmm and
    bmm, plus the fast paths' oneDNN linear calls from their input shapes; the encoder's fused LSTM kernel is not
    included) divided by the run's *unprofiled* time from the table
    above, against the fp32 matmul peak of this machine; then the profiler's op table (profiling inflates the
    cost of small ops, so read it for the ranking, not for absolute times)."""
    from torch.profiler import ProfilerActivity, profile

    peak = matmul_peak_gflops(threads)
    rows, tables = [], []
    for name, (variant, fast) in variants.items():
        for beams in beam_sizes:
            with profile(activities=[ProfilerActivity.CPU], with_flops=True, record_shapes=True) as prof:
                for _, ids, mask in batches:
                    runner.generate(variant, ids, mask, beams, fast)
            averages = prof.key_averages()
            gflop = sum(e.flops for e in averages if e.key in MATMUL_OPS) / 1e9
            gflop += sum(onednn_linear_flops(e) for e in prof.key_averages(group_by_input_shape=True)
                         if e.key == ONEDNN_LINEAR) / 1e9
            seconds = results[(name, batch_size, beams)]["seconds"]
            rows.append([name, beams, gflop, seconds, gflop / seconds, gflop / seconds / peak])
            tables.append((f"{name}, beams {beams}", averages.table(sort_by="self_cpu_time_total", row_limit=12)))
    print(f"\n## Float matmul work of the batch-{batch_size} run (fp32 matmul peak here {peak:.0f} GFLOP/s)\n")
    print(format_table(["decoder", "beams", "matmul GFLOP", "seconds (unprofiled)", "GFLOP/s", "× fp32 peak"], rows))
    for title, table in tables:
        print(f"\n### Profiler ops: {title}\n")
        print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="trained model directory (with tokenizer); default: untrained base")
    parser.add_argument("--preset", default="base", help="preset of the untrained model (without --model_dir)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-sentences", type=int, default=1000, help="sentences of the test set at batch 64")
    parser.add_argument("--batch1-sentences", type=int, default=100, help="first N sentences at batch 1")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--join", type=int, default=1, help="join every N consecutive test sentences into one input")
    parser.add_argument("--max-new-tokens", type=int, default=80, help="trained model (the recipe's max length)")
    parser.add_argument("--untrained-length", type=int, default=15, help="max_new_tokens of the untrained model")
    parser.add_argument("--no-reference", action="store_true", help="leave out the naive reference model")
    parser.add_argument("--fast-paths-only", action="store_true",
                        help=f"leave out generate() with config.fast_paths=False ('fp32, {FAST_PATHS_OFF}')")
    parser.add_argument("--no-quantize", action="store_true", help="leave out int8 decoding (config.int8_decoding)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile of the decoder")
    parser.add_argument("--bf16", action="store_true", help="also decode with the weights cast to bfloat16")
    parser.add_argument("--plain-weights", action="store_true",
                        help="also decode in fp32 with plain instead of oneDNN-reordered weights")
    parser.add_argument("--profile", action="store_true",
                        help="profile every variant over the batch-64 run: its float matmul GFLOP/s against the "
                             "matmul peak measured here, and the profiler's op table")
    args = parser.parse_args()

    setup_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print_header("Decoding speed on Multi30k test_2016_flickr through generate()")
    tokenizer = get_tokenizer(args.model_dir)
    if args.model_dir:
        model = load_model(args.model_dir)
        generation = {"max_new_tokens": args.max_new_tokens}
        what = f"trained model {args.model_dir}"
    else:
        model = build_model(args.preset, tokenizer).eval()
        length = args.untrained_length
        generation = {"max_new_tokens": length}
        what = f"UNTRAINED {args.preset} model (random weights), max_new_tokens={length}"
    config = model.config
    generation_config = model.generation_config
    print(f"model: {what}; input_feeding={config.input_feeding}, E={config.embedding_size}, "
          f"H={config.hidden_size}, V={config.vocab_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters")
    print(f"generation: {generation}, length_penalty={generation_config.length_penalty}, "
          f"early_stopping={generation_config.early_stopping}\n", flush=True)

    sources, references = load_pairs("test")
    if args.join > 1:
        sources, references = join_sentences(sources, args.join), join_sentences(references, args.join)
        print(f"inputs: every {args.join} consecutive test sentences joined into one ({len(sources)} inputs)\n")
    sources, references = sources[: args.max_sentences], references[: args.max_sentences]
    full = decoding_batches(tokenizer, sources, args.batch_size)
    single = decoding_batches(tokenizer, sources[: args.batch1_sentences], 1, sort=False)
    runner = Runner(tokenizer, generation)
    trained = bool(args.model_dir)

    # name -> (model, config.fast_paths while it decodes)
    variants: dict[str, tuple[nn.Module, bool]] = {"generate() fp32": (model, True)}
    if not args.fast_paths_only:
        variants[OFF] = (model, False)
    if not args.no_quantize and int8_decoding_applies(model):
        variants["generate() int8"] = (int8_copy(model), True)
    if args.bf16:
        variants["generate() bf16"] = (copy.deepcopy(model).to(torch.bfloat16), True)
    if args.compile:
        compiled = copy.deepcopy(model)
        compiled.model.decoder.compile(dynamic=True)
        variants["generate() compiled"] = (compiled, True)
    reference = None if args.no_reference else ReferenceSeq2Seq.from_s2s(model).eval()

    rows, results = [], {}
    settings = [(bs, beams) for bs in (args.batch_size, 1) for beams in args.beams]
    for batch_size, beams in settings:
        batches = full if batch_size > 1 else single
        n = len(sources)
        fns = {}
        for name, (variant, fast) in variants.items():
            fns[name] = lambda ids, mask, v=variant, f=fast, beams=beams: runner.generate(v, ids, mask, beams, f)
        if args.plain_weights:

            def plain_fn(ids, mask, beams=beams):
                with plain_fp32_weights():
                    return runner.generate(model, ids, mask, beams)

            fns[PLAIN] = plain_fn
        if beams == 1:
            from bench_generate_overhead import shrinking_greedy

            def shrink_fn(ids, mask):
                return shrinking_greedy(model, ids, mask, generation["max_new_tokens"])

            fns["loop dropping finished"] = shrink_fn
        if reference is not None and beams == 1:

            def ref_fn(ids, mask):
                out = reference.greedy(ids, mask, max_new_tokens=generation["max_new_tokens"],
                                       min_new_tokens=generation.get("min_new_tokens", 0))
                return torch.cat([out.new_full((out.shape[0], 1), config.decoder_start_token_id), out], dim=1)

            fns["naive reference"] = ref_fn
        results.update({
            (name, batch_size, beams): result for name, result in runner.run_alternating(fns, batches, n).items()
        })
        for name in [*variants, PLAIN, "loop dropping finished", "naive reference"]:
            result = results.get((name, batch_size, beams))
            if result is None:
                continue
            baseline = results.get(("generate() fp32", batch_size, beams))
            selected = [i for i in range(n) if result["outputs"][i] or baseline["outputs"][i]] if baseline else []
            same = sum(result["outputs"][i] == baseline["outputs"][i] for i in selected) if baseline else 0
            score = bleu(tokenizer, result["outputs"], references) if trained and batch_size > 1 else float("nan")
            rows.append([
                name, batch_size, beams, result["sentences"], result["seconds"],
                result["sentences"] / result["seconds"], round(result["tokens"] / result["seconds"]),
                result["latency_ms"] if batch_size == 1 else float("nan"),
                baseline["seconds"] / result["seconds"] if baseline else float("nan"),
                f"{100 * same / max(1, len(selected)):.0f}%" if baseline else "n/a", score, result["memory"],
            ])
            print(f"  {name:33s} batch {batch_size:3d} beams {beams}: {result['tokens'] / result['seconds']:,.0f} "
                  f"tok/s", flush=True)

    print("\n## Decoding (output tokens/s; × fp32 = speed-up over generate() fp32 in the same setting; "
          "same = translations identical to generate() fp32)\n")
    print(format_table(
        ["decoder", "batch", "beams", "sentences", "seconds", "sent/s", "tok/s", "ms/sent (median)", "× fp32",
         "same", "BLEU", "peak MiB"],
        rows,
    ))
    anchor_rows = []
    for beams in args.beams:
        result = results.get(("generate() fp32", args.batch_size, beams))
        if result is not None and beams in (1, 5):
            rate = result["tokens"] / result["seconds"]
            anchor_rows.append([f"generate() fp32, beams {beams}", round(rate),
                                *(rate / a[beams] for a in ANCHORS.values())])
    if anchor_rows:
        print(f"\n## Batch {args.batch_size} vs the published anchors (not measured in this run)\n")
        print(format_table(["decoder", "tok/s", *(f"× {name}" for name in ANCHORS)], anchor_rows))

    speedups = []
    for batch_size, beams in settings:
        fast, off = results.get(("generate() fp32", batch_size, beams)), results.get((OFF, batch_size, beams))
        if fast is not None and off is not None:
            fast_rate, off_rate = fast["tokens"] / fast["seconds"], off["tokens"] / off["seconds"]
            speedups.append([batch_size, beams, round(fast_rate), round(off_rate), fast_rate / off_rate,
                             off["memory"], fast["memory"]])
    if speedups:
        print(f"\n## Fast paths vs {FAST_PATHS_OFF} (generate() fp32, same model, same batches; "
              f"× = fast paths tok/s ÷ {FAST_PATHS_OFF} tok/s)\n")
        print(format_table(["batch", "beams", "fast paths tok/s", f"{FAST_PATHS_OFF} tok/s", "×",
                            f"{FAST_PATHS_OFF} peak MiB", "fast paths peak MiB"], speedups))

    if args.profile:
        print_profiles(runner, variants, full, args.batch_size, args.beams, args.threads, results)
    print_footer()


if __name__ == "__main__":
    main()
