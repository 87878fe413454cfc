"""OpenNMT-py side by side with our model on this machine: training tokens/s, then greedy and beam-5 decoding at
batch 64 and at batch 1, with achieved FLOP/s, MFU and peak memory of every row.

The published anchors for OpenNMT-py 3.5.1 (2,800 training target tokens/s; 7,200 / 2,100 output tokens/s greedy /
beam 5 at batch 64, 2-core CPU) come from another machine; this script measures OpenNMT-py itself here, in the
same run as our model, so the ratios do not depend on how close this machine is to that one.

Both toolkits get the same data and the same shape:
- the same tokens: Multi30k de→en tokenised with the benchmarks' joint 8k BPE tokenizer; OpenNMT-py reads the
  pre-tokenised text (space-separated BPE pieces) and the same 7,996-piece vocabulary plus its own 4 specials;
- the anchor shape: embeddings 256, 1-layer biLSTM 2×256 encoder, 1-layer LSTM 512 decoder, Luong general
  attention with input feeding, dropout 0.2, Adam 1e-3, gradient clipping at 5, batches of 64 sentences.
  Differences of the toolkits' own designs are kept: OpenNMT-py has no bridge (the encoder's final states are
  the decoder's initial state) and an untied 512 → 8000 generator (8.2 MFLOP per token against our 4.4 for the
  512 → 256 projection and tied 256 → 8000 output layer), so it does *more* arithmetic per target token;
- the same number of training steps (default: one epoch, 453 batches), each from its own random initialisation.

Peak FLOP/s: at the start the script measures the fp32 matmul peak of this machine (`_common.matmul_peak_gflops`:
a 2048² `torch.mm` loop at `--threads` threads, `--peak-seconds` long), when a bf16 row needs it (a ":bf16"
variant in `--ours`, or `--decode-bf16`) the bf16 one, and with `--decode-int8` the int8 one (oneDNN's int8
linear on 2048² int8 operands, GOP/s), and prints them. Every MFU is against the peak of the precision of its row,
measured in this run: fp32 rows (OpenNMT-py's included) against the fp32 peak, bf16 rows (":bf16" training under
autocast, "bf16 weights" decoding) against the bf16 peak, the int8 decoding row against the int8 peak.

Training: OpenNMT-py's `onmt_train` (its own trainer, length-bucketed batches, a report every 50 steps) run as a
subprocess with `OMP_NUM_THREADS`/`MKL_NUM_THREADS` = `--threads`; its target tokens/s are the ones it logs,
averaged over the reports after the first (warm-up). Ours: `S2SForConditionalGeneration` (base preset) trained
with the loop of bench_training.py (forward, backward, clipping, fused Adam as Trainer's default optimizer
`adamw_torch_fused`; OpenNMT-py's `optim: adam` is torch's unfused Adam) on length-grouped batches of 64 for the
same number of steps, each `--ours` variant in a fresh interpreter (`_common.run_isolated`); tokens/s over the
steps after the first 10. OpenNMT-py's figure includes its data pipeline; ours does not (batches are built
beforehand), which is worth a few per cent to us.

Training FLOPs (analytical, multiply-add = 2 FLOPs, real tokens only, padding excluded; E = 256 embedding,
H = 512 hidden, V = 8000 vocabulary, S_b the real source length of the sentence; training = 3 × forward):
- ours: `bench_training.flops_per_batch` (encoder, bridge, decoder with the 512 → 256 projection and the tied
  256 → 8000 output layer; formula in bench_training.py's docstring), summed over the timed batches;
- OpenNMT-py: the same terms for its shape, i.e. no bridge and the untied generator:

      encoder, per source token:   2 directions × 2·(E + H/2)·4·(H/2)
      decoder, per target token:   2·(E + H + H)·4·H                  (LSTM cell, input feeding)
                                 + 2·H·H + 2·S_b·H + 2·S_b·H          (general score: W_a h, scores, context)
                                 + 2·2H·H                             (tanh(W_c [c; h]))
                                 + 2·H·V                              (untied generator, instead of 2·H·E + 2·E·V)
      FLOPs per target token = 3 × (encoder + decoder FLOPs) ÷ target tokens, over all batches of the epoch

  The lengths are those of our length-grouped batches of 64 of the same data (one epoch), with S_b one token
  shorter (OpenNMT-py's source has no `</s>`; both targets count `</s>`, as do both toolkits' target tokens/s).
  OpenNMT-py's GFLOP/s = FLOPs per target token × the target tokens/s it logs.

Decoding (test_2016_flickr, 1000 sentences, batches of 64 sentences, max 80 tokens): OpenNMT-py's
`onmt_translate` (fp32; its own batching: sorted by length within buckets; model loading excluded: its
`-report_time` figures, the time taken as output pieces ÷ its logged "Tokens per second", i.e. its total time
without the 0.1 s rounding of "Total translation time", which is the fallback) against our `generate()`
(batches sorted by source length, time per batch summed), fp32 and, with `--decode-bf16` (the default), our
model with bf16 weights (`model.to(torch.bfloat16)`), and with `--decode-int8` (the default where the CPU has
oneDNN's int8 linear ops) with `config.int8_decoding = True`. They take turns `--decode-repeats`
times (default 2) and each keeps its fastest turn, so a slow stretch of the shared machine must hit every turn
of one of them to move the ratio. `--decode-from DIR` skips training and decodes with a model saved earlier
(this script's `<workdir>/s2s_model` or `--save-model DIR`, and OpenNMT-py's checkpoint of the same `--steps` in
`--workdir`). Output tokens are counted the same way for both (pieces of the output + 1 for `</s>`), and BLEU
(sacreBLEU, detokenised with the same tokenizer) is printed so the speed of two equally (un)finished models is
compared; after one epoch both are far from converged, so the BLEU columns only show the outputs are real.

Decoding FLOPs (an approximation): per output token, one decoder step of each of the `beams` rows,

      2·(E + F + H)·4·H + 2·H·H + 4·S·H + 2·2H·H + output layer (ours 2·H·E + 2·E·V, OpenNMT-py 2·H·V)

with S the mean source length of the test sentences (OpenNMT-py's one token shorter) and F = H with input
feeding (else 0), plus the encoder over all source tokens (ours also the bridge, 2·2·H·H per sentence). It
ignores that beam search may keep stepping a sentence's beams after its best hypothesis ended, that finished rows
leave the batch (or not), top-k, softmax and other element-wise work, and padding; the output tokens are those
of the table. GFLOP/s = these FLOPs ÷ the decoding time; MFU = ÷ the peak of the row's precision.

Batch 1 (`--batch1-sentences N`, default 100; 0 skips): latency per sentence over the first N test sentences,
greedy and beam 5. OpenNMT-py: `onmt_translate -batch_size 1` on those sentences; it logs only totals, so its
mean is total time ÷ N (time as above; like at batch 64 it includes reading the input and writing the output
around its translate calls) and it has no median. Ours: `generate()` one sentence at a time (each decoding
variant), mean and median of the per-sentence times. Same turns as at batch 64 (fastest of
`--decode-repeats` by total time).

Peak memory (MiB of resident memory, whole process, each in a fresh process; the timing runs are separate):
- OpenNMT-py: `ru_maxrss` of `onmt_train` / `onmt_translate` from `os.wait4` (the largest of that process and
  its waited-for descendants, not their sum: onmt_train's 2 spawned DataLoader worker processes come on top of
  its figure); decoding: the largest of its batch-64 runs of that beam size;
- ours, training: the training interpreter's own peak (`_common.peak_rss_mb()`, read at the end of training:
  libraries, tokenizer, the epoch's batches, model, gradients and Adam state); decoding: a fresh interpreter
  that loads the saved model (bf16 row: and casts it to bf16 in place; int8 row: sets int8_decoding), then translates the test set once with
  the same settings (batch 64, one beam size) and reports its peak.

Columns. Training: "target tok/s" (target tokens incl. `</s>` per second), "× OpenNMT-py" (tok/s ÷ OpenNMT-py's
tok/s), "MFLOP/target tok" (model FLOPs per target token as above), "GFLOP/s" (achieved model FLOP/s), "MFU"
(GFLOP/s ÷ the matmul peak of the row's precision, in %), "peak RSS MiB". Decoding at batch 64: "time s" (the
fastest turn), "output tokens", "output tok/s", "× OpenNMT-py" (output tok/s ÷ OpenNMT-py's: > 1 is faster),
"BLEU" (sacreBLEU, 0–100), "GFLOP/s", "MFU", "peak RSS MiB". Batch 1: "mean ms/sentence", "median ms/sentence",
"× OpenNMT-py" (mean ÷ OpenNMT-py's mean: < 1 is faster).

Needs OpenNMT-py installed in some Python (it pins torch < 2.3; here it runs against torch 2.13 with
`pip install --no-deps OpenNMT-py==3.5.1` plus its small dependencies in a venv with system site packages):

    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python            # about 15 minutes
    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python --steps 60 --max-sentences 128 \
        --batch1-sentences 10                                                         # a quick look
    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python \
        --ours base base_fused base:bf16 base_fused:bf16      # also the fused path and bf16 autocast, one epoch each
    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python \
        --decode-from benchmarks/.cache/peers/s2s_model     # decode again with the models of an earlier run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    CACHE_DIR,
    decoding_batches,
    format_table,
    get_tokenizer,
    load_model,
    load_pairs,
    matmul_peak_gflops,
    peak_rss_mb,
    print_footer,
    print_header,
    run_isolated,
    setup_threads,
    tokenize,
    training_batches,
)
from bench_decoding import Runner, bleu
from bench_training import flops_per_batch, make_step

from modeling_s2s.fast_paths import _cpu_has_onednn_int8
from modeling_s2s.training import keep_freed_memory_for_reuse

ONMT_SPECIALS = ("<unk>", "<blank>", "<s>", "</s>")
REPORT_LINE = re.compile(r"Step\s+(\d+)/\s*\d+;.*?(\d+)/\s*(\d+) tok/s;\s+(\d+) sec")
TRANSLATION_TIME = re.compile(r"Total translation time \(s\): ([\d.]+)")
TOKENS_PER_SECOND = re.compile(r"Tokens per second: ([\d.]+)")
# OpenNMT-py's shape (its YAML below): embeddings, hidden size, vocabulary (7,996 pieces + its 4 specials)
ONMT_E, ONMT_H, ONMT_V = 256, 512, 8000
MAX_LENGTH = 80  # decoding: max output tokens of both toolkits
DECODE_BATCH = 64
OURS = "S2S generate()"
OURS_BF16 = "S2S generate() bf16 weights"
OURS_INT8 = "S2S generate() int8"
PRECISION = {OURS: "fp32", OURS_BF16: "bf16", OURS_INT8: "int8"}  # of each decoding row: its MFU's peak
MODEL_SUBDIR = "s2s_model"  # under --workdir: the model our decoding variant saves for the decoding runs


# ---------------------------------------------------------------------------------------------------------------
# Data for OpenNMT-py: the same BPE pieces as text
# ---------------------------------------------------------------------------------------------------------------


def write_pieces(tokenizer, texts: list[str], path: Path) -> None:
    """One line of space-separated BPE pieces per sentence (without our `</s>`: OpenNMT-py adds its own)."""
    specials = set(tokenizer.all_special_ids)
    lines = []
    for ids in tokenizer(texts)["input_ids"]:
        pieces = tokenizer.convert_ids_to_tokens([i for i in ids if i not in specials])
        lines.append(" ".join(pieces))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare_data(tokenizer, workdir: Path) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split in ("train", "validation", "test"):
        sources, targets = load_pairs(split)
        files[f"{split}.src"], files[f"{split}.tgt"] = workdir / f"{split}.de", workdir / f"{split}.en"
        write_pieces(tokenizer, sources, files[f"{split}.src"])
        write_pieces(tokenizer, targets, files[f"{split}.tgt"])
    vocabulary = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    vocabulary = [t for t in vocabulary if t not in tokenizer.all_special_tokens and t not in ONMT_SPECIALS]
    files["vocab"] = workdir / "vocab.txt"
    files["vocab"].write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return files


def first_lines(source: Path, n: int, path: Path) -> Path:
    """The first `n` lines of `source` written to `path`."""
    path.write_text("\n".join(source.read_text(encoding="utf-8").splitlines()[:n]) + "\n", encoding="utf-8")
    return path


def onmt_config(files: dict[str, Path], workdir: Path, steps: int, seed: int) -> Path:
    config = f"""
src_vocab: {files['vocab']}
tgt_vocab: {files['vocab']}
share_vocab: true
src_vocab_size: {ONMT_V}
tgt_vocab_size: {ONMT_V}
data:
  corpus_1:
    path_src: {files['train.src']}
    path_tgt: {files['train.tgt']}
  valid:
    path_src: {files['validation.src']}
    path_tgt: {files['validation.tgt']}
save_model: {workdir / 'model'}
save_checkpoint_steps: {steps}
train_steps: {steps}
valid_steps: {steps * 10}
report_every: {max(1, min(50, steps // 5))}
seed: {seed}
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 1
dec_layers: 1
word_vec_size: {ONMT_E}
hidden_size: {ONMT_H}
global_attention: general
input_feed: 1
dropout: [0.2]
optim: adam
learning_rate: 0.001
max_grad_norm: 5
batch_type: sents
batch_size: 64
valid_batch_size: 64
"""
    path = workdir / "onmt_train.yaml"
    path.write_text(config)
    return path


# glibc reads these at start-up: the same settings as modeling_s2s.training.keep_freed_memory_for_reuse
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def onmt_env(threads: int, keep_freed_memory: bool) -> dict[str, str]:
    # OpenNMT-py 3.5.1 predates torch 2.6's weights_only default; its checkpoints (made by this script) pickle
    # an argparse.Namespace.
    return dict(
        os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
        **(KEEP_FREED_MEMORY_ENV if keep_freed_memory else {}),
    )


def run_with_peak_rss(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run `command` with stdout and stderr to `log`; its peak RSS (MiB) from `os.wait4` (`ru_maxrss`, KiB on
    Linux: the largest of the process and its waited-for descendants, not their sum)."""
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here; keeps Popen from waiting again
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return usage.ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------------------
# Model FLOPs (see the module docstring)
# ---------------------------------------------------------------------------------------------------------------


def encoder_flops(E: int, H: int, source_tokens: float) -> float:
    """Forward FLOPs of the biLSTM encoder (H/2 units per direction) over `source_tokens` tokens."""
    half = H // 2
    return source_tokens * 2 * 2 * (E + half) * 4 * half


def onmt_training_flops_per_token(batches: list[dict[str, torch.Tensor]]) -> float:
    """OpenNMT-py's training FLOPs per target token over `batches` (our batches of the same data): the terms of
    `bench_training.flops_per_batch` without the bridge and with the untied H → V generator; its source is one
    token shorter than ours (no `</s>`)."""
    E, H, V = ONMT_E, ONMT_H, ONMT_V
    per_target = 2 * (E + H + H) * 4 * H + 2 * H * H + 2 * 2 * H * H + 2 * H * V
    flops = targets = 0.0
    for batch in batches:
        source_lengths = batch["attention_mask"].sum(dim=1).double() - 1
        target_lengths = batch["labels"].ne(-100).sum(dim=1).double()
        decoder = float(target_lengths.sum()) * per_target + float((target_lengths * source_lengths).sum()) * 4 * H
        flops += 3.0 * (encoder_flops(E, H, float(source_lengths.sum())) + decoder)
        targets += float(target_lengths.sum())
    return flops / targets


def decoding_flops(
    E: int, H: int, F: int, output_layer: float, output_tokens: int, beams: int, source_lengths: list[int],
    bridge: float = 0.0,
) -> float:
    """Approximate decoding FLOPs: per output token a decoder step of each of the `beams` rows (LSTM cell,
    general attention over the mean source length, combine, output layer), plus the encoder over all source
    tokens and `bridge` FLOPs per sentence."""
    S = sum(source_lengths) / len(source_lengths)
    step = 2 * (E + F + H) * 4 * H + 2 * H * H + 4 * S * H + 2 * 2 * H * H + output_layer
    return (output_tokens * beams * step + encoder_flops(E, H, sum(source_lengths))
            + len(source_lengths) * bridge)


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


# ---------------------------------------------------------------------------------------------------------------
# OpenNMT-py
# ---------------------------------------------------------------------------------------------------------------


def onmt_train(python: str, config: Path, threads: int, workdir: Path, keep_freed_memory: bool) -> dict[str, float]:
    """Run onmt_train; target tokens/s averaged over the reports after the first, weighted by their duration;
    its peak RSS (MiB)."""
    log = workdir / "onmt_train.log"
    command = [python, "-m", "onmt.bin.train", "-config", str(config)]
    start = time.perf_counter()
    peak = run_with_peak_rss(command, log, onmt_env(threads, keep_freed_memory))
    wall = time.perf_counter() - start
    reports = [tuple(int(x) for x in m.groups()) for m in REPORT_LINE.finditer(log.read_text())]
    if len(reports) < 2:
        raise RuntimeError(f"onmt_train logged {len(reports)} reports (need 2); see {log}")
    weighted = seconds = 0.0
    for (_, _, _, previous), (_, _, tgt_per_s, elapsed) in zip(reports, reports[1:]):
        weighted += tgt_per_s * (elapsed - previous)
        seconds += elapsed - previous
    return {"tok/s": weighted / seconds, "wall": wall, "log": str(log), "peak_rss_mb": peak}


def onmt_seconds(log_text: str, pieces: int, log: Path) -> float:
    """onmt_translate's translation time (s): its output pieces ÷ its "Tokens per second" (both count the pieces
    without `</s>`), which is its total time without the 0.1 s rounding of "Total translation time"; that line
    where the two disagree or no piece was output."""
    total = TRANSLATION_TIME.search(log_text)
    if not total:
        raise RuntimeError(f"onmt_translate did not report its time; see {log}")
    seconds = float(total.group(1))
    rate = TOKENS_PER_SECOND.search(log_text)
    if rate and pieces and float(rate.group(1)) > 0:
        precise = pieces / float(rate.group(1))
        if abs(precise - seconds) <= 0.051 + 0.001 * seconds:
            return precise
    return seconds


def onmt_translate(
    python: str, workdir: Path, source: Path, steps: int, beams: int, threads: int, keep_freed_memory: bool,
    batch_size: int = DECODE_BATCH,
) -> dict:
    """One onmt_translate run: its time (s), output pieces per sentence and peak RSS (MiB)."""
    tag = f"beam{beams}" if batch_size == DECODE_BATCH else f"batch{batch_size}.beam{beams}"
    output = workdir / f"test.{tag}.out"
    log = workdir / f"onmt_translate.{tag}.log"
    command = [
        python, "-m", "onmt.bin.translate", "-model", str(workdir / f"model_step_{steps}.pt"), "-src", str(source),
        "-output", str(output), "-batch_size", str(batch_size), "-batch_type", "sents", "-beam_size", str(beams),
        "-max_length", str(MAX_LENGTH), "-report_time", "-gpu", "-1",
    ]
    peak = run_with_peak_rss(command, log, onmt_env(threads, keep_freed_memory))
    pieces = [line.split() for line in output.read_text(encoding="utf-8").splitlines()]
    seconds = onmt_seconds(log.read_text(), sum(len(p) for p in pieces), log)
    return {"seconds": seconds, "pieces": pieces, "peak_rss_mb": peak}


# ---------------------------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------------------------


OUR_VARIANTS = ("base", "base_fused", "base:bf16", "base_fused:bf16")


def train_ours(tokenizer, steps: int, warmup: int, seed: int, grouping: str, variant: str = "base"):
    """Train our model of `variant` (a preset, with ":bf16" under CPU bf16 autocast as Trainer's --bf16); tok/s,
    time, target tokens and model FLOPs (`bench_training.flops_per_batch`) of the timed steps."""
    from _common import build_model

    preset, _, precision = variant.partition(":")
    batches = training_batches(tokenizer, seed=seed, grouping=grouping)
    model = build_model(preset, tokenizer, seed=seed)
    step = make_step(model, is_reference=False, bf16=precision == "bf16")
    tokens, seconds, flops = 0, 0.0, 0.0
    for index in range(steps):
        batch = batches[index % len(batches)]
        start = time.perf_counter()
        step(batch)
        if index >= warmup:
            seconds += time.perf_counter() - start
            tokens += int(batch["labels"].ne(-100).sum())
            flops += flops_per_batch(model.config, batch)
    return model.eval(), {"tok/s": tokens / seconds, "seconds": seconds, "tokens": tokens, "flops": flops}


def _child_setup(threads: int, keep_freed_memory: bool) -> None:
    setup_threads(threads)
    if keep_freed_memory:
        keep_freed_memory_for_reuse()
    quiet_transformers()


def quiet_transformers() -> None:
    """Errors only, and no progress bars (saving and loading weights)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def train_ours_isolated(
    variant: str, steps: int, warmup: int, seed: int, grouping: str, threads: int, keep_freed_memory: bool,
    save_dirs: tuple[str, ...] = (),
) -> dict[str, float]:
    """Run in a fresh interpreter (`run_isolated`): train `variant` as `train_ours`; its figures plus the
    process's own peak RSS (MiB, at the end of training); then save the model (fp32) with the tokenizer to each
    of `save_dirs`."""
    _child_setup(threads, keep_freed_memory)
    tokenizer = get_tokenizer()
    model, result = train_ours(tokenizer, steps, warmup, seed, grouping, variant)
    result["peak_rss_mb"] = peak_rss_mb()
    model = model.float()
    for directory in save_dirs:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return result


def load_precision(model_dir: str, precision: str):
    """Our saved model for decoding in `precision`: "fp32", "bf16" (weights cast to bf16 in place) or "int8"
    (`config.int8_decoding`)."""
    model = load_model(model_dir)
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    model.config.int8_decoding = precision == "int8"
    return model


def decode_peak_rss(
    model_dir: str, sources: list[str], beams: int, threads: int, keep_freed_memory: bool, precision: str
) -> float:
    """Run in a fresh interpreter: load the saved model in `precision` (`load_precision`), translate `sources` once
    as the timed runs do (batches of 64 sorted by length, max 80 tokens); the process's peak RSS (MiB)."""
    _child_setup(threads, keep_freed_memory)
    tokenizer = get_tokenizer()
    model = load_precision(model_dir, precision)
    runner = Runner(tokenizer, {"max_new_tokens": MAX_LENGTH})
    with torch.inference_mode():
        for _, input_ids, attention_mask in decoding_batches(tokenizer, sources, DECODE_BATCH):
            runner.generate(model, input_ids, attention_mask, beams)
    return peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onmt-python", required=True, help="a Python interpreter with OpenNMT-py 3.5.1")
    parser.add_argument("--threads", type=int, default=2, help="threads of both toolkits (and of the matmul peak)")
    parser.add_argument("--steps", type=int, default=453, help="training steps of each toolkit (453 = one epoch)")
    parser.add_argument("--max-sentences", type=int, default=1000, help="test sentences to translate at batch 64")
    parser.add_argument("--batch1-sentences", type=int, default=100,
                        help="batch-1 latency over the first N test sentences, greedy and beam 5, both toolkits "
                             "(0 skips it)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-decode", action="store_true", help="training only")
    parser.add_argument("--ours", nargs="+", default=["base"], choices=OUR_VARIANTS,
                        help="our models to train, one after the other, each for --steps steps in a fresh "
                             "interpreter (':bf16' = under CPU bf16 autocast, as the trainer's --bf16; OpenNMT-py "
                             "3.5.1 has mixed precision only on CUDA). The first decodes, in fp32 (and with bf16 "
                             "weights, see --decode-bf16).")
    parser.add_argument("--length-grouping", default="source", choices=("source", "target"),
                        help="our batches' sort key, as the trainer's --length_grouping")
    parser.add_argument("--workdir", default=str(CACHE_DIR / "peers"),
                        help="OpenNMT-py's data, logs and checkpoint, and our decoding model "
                             f"(<workdir>/{MODEL_SUBDIR})")
    parser.add_argument("--decode-repeats", type=int, default=2,
                        help="decoding turns per toolkit, variant and beam size (batch 64 and batch 1), "
                             "alternating; the fastest of each counts")
    parser.add_argument("--decode-bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="also decode with a bf16-weights copy of our model (rows 'S2S generate() bf16 "
                             "weights', MFU against the bf16 matmul peak)")
    parser.add_argument("--decode-int8", action=argparse.BooleanOptionalAction, default=None,
                        help="also decode with config.int8_decoding (rows 'S2S generate() int8', MFU against the "
                             "int8 matmul peak); default: where the CPU has oneDNN's int8 linear ops")
    parser.add_argument("--decode-from", metavar="DIR",
                        help=f"skip training: decode with our model saved by an earlier run (<workdir>/"
                             f"{MODEL_SUBDIR} or --save-model DIR) and OpenNMT-py's checkpoint of the same --steps "
                             "left in --workdir")
    parser.add_argument("--save-model", metavar="DIR",
                        help="also save the decoding model with its tokenizer to DIR (for bench_decoding.py "
                             "--model_dir and bench_generate_overhead.py)")
    parser.add_argument("--peak-seconds", type=float, default=2.0,
                        help="duration of each matmul peak measurement (fp32, and bf16 where a bf16 row needs it)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is for both toolkits (by default both keep freed memory "
                             "for reuse, as scripts/train.py does: ours by mallopt, OpenNMT-py by glibc's "
                             "MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_ environment)")
    args = parser.parse_args()

    setup_threads(args.threads)
    keep_freed_memory = not args.default_malloc and keep_freed_memory_for_reuse()
    quiet_transformers()
    print_header("OpenNMT-py 3.5.1 side by side with S2S (training, then decoding)")
    version = subprocess.run([args.onmt_python, "-c", "import onmt, torch; print(onmt.__version__, torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    print(f"OpenNMT-py {version[0]} (torch {version[1]}) via {args.onmt_python}; {args.steps} training steps each; "
          f"allocator for both: {'freed memory kept for reuse' if keep_freed_memory else 'glibc defaults'}",
          flush=True)
    training = not args.decode_from
    bf16_training = training and any(v.endswith(":bf16") for v in args.ours)
    bf16_decoding = not args.no_decode and args.decode_bf16
    if args.decode_int8 is None:
        args.decode_int8 = _cpu_has_onednn_int8()
    elif args.decode_int8 and not _cpu_has_onednn_int8():
        parser.error("--decode-int8: this CPU / PyTorch build has no oneDNN int8 linear ops")
    peaks = {"fp32": matmul_peak_gflops(args.threads, seconds=args.peak_seconds)}
    print(f"matmul peak (fp32 2048² torch.mm, {args.threads} threads): {peaks['fp32']:.1f} GFLOP/s", flush=True)
    if bf16_training or bf16_decoding:
        peaks["bf16"] = matmul_peak_gflops(args.threads, seconds=args.peak_seconds, dtype=torch.bfloat16)
        print(f"matmul peak (bf16 2048² torch.mm, {args.threads} threads): {peaks['bf16']:.1f} GFLOP/s", flush=True)
    if not args.no_decode and args.decode_int8:
        peaks["int8"] = matmul_peak_gflops(args.threads, seconds=args.peak_seconds, dtype=torch.int8)
        print(f"matmul peak (int8 2048² oneDNN int8 linear, {args.threads} threads): {peaks['int8']:.1f} GOP/s",
              flush=True)
    print(flush=True)

    workdir = Path(args.workdir)
    tokenizer = get_tokenizer()
    files = prepare_data(tokenizer, workdir)
    sources, references = load_pairs("test")
    sources, references = sources[: args.max_sentences], references[: args.max_sentences]
    test_source = first_lines(files["test.src"], args.max_sentences, workdir / "test.limited.de")

    if args.decode_from:
        model_dir = args.decode_from
        print(f"training skipped: S2S model from {model_dir}, OpenNMT-py's model_step_{args.steps}.pt from "
              f"{workdir}\n", flush=True)
    else:
        model_dir = train_both(args, tokenizer, files, workdir, keep_freed_memory, peaks)
    if args.no_decode:
        print_footer()
        return
    model = load_model(model_dir)
    variants = {OURS: model}
    if args.decode_bf16:
        variants[OURS_BF16] = load_precision(model_dir, "bf16")
    if args.decode_int8:
        variants[OURS_INT8] = load_precision(model_dir, "int8")
    decode_batch64(args, tokenizer, variants, model_dir, sources, references, test_source, workdir,
                   keep_freed_memory, peaks)
    if args.batch1_sentences > 0:
        decode_batch1(args, tokenizer, variants, load_pairs("test")[0], files, workdir, keep_freed_memory)
    print_footer()


def take_turns(
    args, workdir: Path, source: Path, beams: int, variants: dict[str, Any], runner: Runner, batches, n: int,
    keep_freed_memory: bool, batch_size: int,
) -> tuple[list[dict], dict[str, list[dict]]]:
    """OpenNMT-py and each of our variants translate `source` / `batches` in turn, `--decode-repeats` times (a slow
    stretch of a shared machine then has to hit every turn of one of them to change the ratios): OpenNMT-py's
    runs and ours per variant."""
    onmt_runs, our_runs = [], {name: [] for name in variants}
    for _ in range(args.decode_repeats):
        onmt_runs.append(onmt_translate(
            args.onmt_python, workdir, source, args.steps, beams, args.threads, keep_freed_memory, batch_size
        ))
        for name, variant in variants.items():
            with torch.inference_mode():
                our_runs[name].append(runner.run(
                    lambda ids, mask, v=variant: runner.generate(v, ids, mask, beams), batches, n
                ))
    return onmt_runs, our_runs


def decode_batch64(
    args, tokenizer, variants: dict[str, Any], model_dir: str, sources: list[str], references: list[str],
    test_source: Path, workdir: Path, keep_freed_memory: bool, peaks: dict[str, float],
) -> None:
    """Greedy and beam 5 at batch 64: OpenNMT-py and our variants take turns; then the peak-memory runs; prints
    the table."""
    config = next(iter(variants.values())).config
    E, H, V = config.embedding_size, config.hidden_size, config.decoder_vocab_size
    F = H if config.input_feeding else 0
    our_sources = [len(ids) for ids in tokenize(tokenizer, sources)]
    onmt_sources = [n - 1 for n in our_sources]  # OpenNMT-py's source has no </s>
    our_output = 2 * E * V + (2 * H * E if E != H else 0)
    batches = decoding_batches(tokenizer, sources, DECODE_BATCH)
    runner = Runner(tokenizer, {"max_new_tokens": MAX_LENGTH})
    rows = []
    for beams in (1, 5):
        onmt_runs, our_runs = take_turns(args, workdir, test_source, beams, variants, runner, batches, len(sources),
                                         keep_freed_memory, DECODE_BATCH)
        translated = min(onmt_runs, key=lambda run: run["seconds"])
        onmt_ids = [tokenizer.convert_tokens_to_ids(pieces) for pieces in translated["pieces"]]
        onmt_tokens = sum(len(ids) + 1 for ids in onmt_ids)
        onmt_tps = onmt_tokens / translated["seconds"]
        flops = decoding_flops(ONMT_E, ONMT_H, ONMT_H, 2 * ONMT_H * ONMT_V, onmt_tokens, beams, onmt_sources)
        gflops = flops / translated["seconds"] / 1e9
        rows.append([beams, "OpenNMT-py", translated["seconds"], onmt_tokens, onmt_tps, 1.0,
                     bleu(tokenizer, onmt_ids, references), gflops, percent(gflops / peaks["fp32"]),
                     max(run["peak_rss_mb"] for run in onmt_runs)])
        print(f"  OpenNMT-py beams {beams}: {onmt_tps:,.0f} output tok/s", flush=True)
        for name, runs in our_runs.items():
            result = min(runs, key=lambda run: run["seconds"])
            tps = result["tokens"] / result["seconds"]
            flops = decoding_flops(E, H, F, our_output, result["tokens"], beams, our_sources, bridge=2 * 2 * H * H)
            gflops = flops / result["seconds"] / 1e9
            memory = run_isolated(decode_peak_rss, model_dir, sources, beams, args.threads, keep_freed_memory,
                                  PRECISION[name])
            rows.append([beams, name, result["seconds"], result["tokens"], tps, tps / onmt_tps,
                         bleu(tokenizer, result["outputs"], references), gflops,
                         percent(gflops / peaks[PRECISION[name]]), memory])
            print(f"  {name} beams {beams}: {tps:,.0f} output tok/s", flush=True)

    print(f"\n## Decoding test_2016_flickr ({len(sources)} sentences, batch {DECODE_BATCH}, max {MAX_LENGTH} tokens; "
          f"OpenNMT-py fp32, S2S {args.ours[0]} {' / '.join(PRECISION[name] for name in variants)}; models "
          f"after {args.steps} training steps; fastest of {args.decode_repeats} turns each; × OpenNMT-py = output "
          "tok/s ÷ OpenNMT-py's (> 1 is faster); MFU = GFLOP/s ÷ the matmul peak of the row's precision; peak RSS "
          "of a separate fresh process)\n")
    print(format_table(["beams", "toolkit", "time s", "output tokens", "output tok/s", "× OpenNMT-py", "BLEU (0-100)",
                        "GFLOP/s", "MFU %", "peak RSS MiB"], rows))


def decode_batch1(
    args, tokenizer, variants: dict[str, Any], sources: list[str], files: dict[str, Path], workdir: Path,
    keep_freed_memory: bool,
) -> None:
    """Latency per sentence at batch 1 over the first `--batch1-sentences` of `sources` (the whole test set);
    prints the table."""
    sources = sources[: args.batch1_sentences]
    n = len(sources)
    source = first_lines(files["test.src"], n, workdir / f"test.first{n}.de")
    single = decoding_batches(tokenizer, sources, 1, sort=False)
    runner = Runner(tokenizer, {"max_new_tokens": MAX_LENGTH})
    rows = []
    for beams in (1, 5):
        onmt_runs, our_runs = take_turns(args, workdir, source, beams, variants, runner, single, n,
                                         keep_freed_memory, 1)
        onmt_mean = 1000 * min(run["seconds"] for run in onmt_runs) / n
        rows.append([beams, "OpenNMT-py", onmt_mean, float("nan"), 1.0])
        print(f"  OpenNMT-py batch 1 beams {beams}: {onmt_mean:.1f} ms/sentence (mean)", flush=True)
        for name, runs in our_runs.items():
            result = min(runs, key=lambda run: run["seconds"])
            mean = 1000 * result["seconds"] / result["sentences"]
            rows.append([beams, name, mean, result["latency_ms"], mean / onmt_mean])
            print(f"  {name} batch 1 beams {beams}: {mean:.1f} ms/sentence (mean)", flush=True)

    print(f"\n## Batch-1 latency (first {n} test sentences one at a time, max {MAX_LENGTH} tokens; fastest of "
          f"{args.decode_repeats} turns each by total time; × OpenNMT-py = mean ÷ OpenNMT-py's mean (< 1 is faster); "
          "OpenNMT-py logs only its total, so no median)\n")
    print(format_table(["beams", "toolkit", "mean ms/sentence", "median ms/sentence", "× OpenNMT-py"], rows))


def train_both(
    args, tokenizer, files: dict[str, Path], workdir: Path, keep_freed_memory: bool, peaks: dict[str, float]
) -> str | None:
    """OpenNMT-py, then each of our `--ours` variants in a fresh interpreter, for `--steps` steps; prints the
    training table and returns the directory of our first variant's saved model (fp32) for decoding (None with
    --no-decode and no --save-model)."""
    config = onmt_config(files, workdir, args.steps, args.seed)
    onmt = onmt_train(args.onmt_python, config, args.threads, workdir, keep_freed_memory)
    onmt_flops = onmt_training_flops_per_token(training_batches(tokenizer, seed=args.seed,
                                                                grouping=args.length_grouping))
    onmt_gflops = onmt_flops * onmt["tok/s"] / 1e9
    print(f"onmt_train: {onmt['tok/s']:,.0f} target tok/s (its reports), {onmt['wall']:.0f} s in all, peak RSS "
          f"{onmt['peak_rss_mb']:,.0f} MiB", flush=True)
    training_rows = [["OpenNMT-py 3.5.1", "fp32", onmt["tok/s"], 1.0, onmt_flops / 1e6, onmt_gflops,
                      percent(onmt_gflops / peaks["fp32"]), onmt["peak_rss_mb"]]]
    model_dir = str(workdir / MODEL_SUBDIR) if not args.no_decode else None
    for index, variant in enumerate(args.ours):
        save_dirs = tuple(d for d in (model_dir, args.save_model) if d) if index == 0 else ()
        ours = run_isolated(train_ours_isolated, variant, args.steps, 10, args.seed, args.length_grouping,
                            args.threads, keep_freed_memory, save_dirs)
        preset, _, precision = variant.partition(":")
        precision = precision or "fp32"
        gflops = ours["flops"] / ours["seconds"] / 1e9
        print(f"S2S {variant}: {ours['tok/s']:,.0f} target tok/s, peak RSS {ours['peak_rss_mb']:,.0f} MiB",
              flush=True)
        training_rows.append([f"S2S {preset}", precision, ours["tok/s"], ours["tok/s"] / onmt["tok/s"],
                              ours["flops"] / ours["tokens"] / 1e6, gflops, percent(gflops / peaks[precision]),
                              ours["peak_rss_mb"]])
    if model_dir:
        print(f"S2S {args.ours[0]} saved to {model_dir} (for decoding, and --decode-from)", flush=True)

    print("\n## Training (target tokens/s, same shape, batches of 64 sentences (each toolkit's own length "
          "grouping); base_fused = the same without input feeding; × OpenNMT-py = tok/s ÷ OpenNMT-py's; MFU = "
          "GFLOP/s ÷ the matmul peak of the row's precision; peak RSS of the whole training process)\n")
    print(format_table(["toolkit", "precision", "target tok/s", "× OpenNMT-py", "MFLOP/target tok", "GFLOP/s",
                        "MFU %", "peak RSS MiB"], training_rows))
    return model_dir


if __name__ == "__main__":
    sys.exit(main())
