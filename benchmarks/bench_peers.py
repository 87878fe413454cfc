"""OpenNMT-py side by side with our model on this machine: training tokens/s, then greedy and beam-5 decoding.

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

Training: OpenNMT-py's `onmt_train` (its own trainer, length-bucketed batches, a report every 50 steps) run as a
subprocess with `OMP_NUM_THREADS`/`MKL_NUM_THREADS` = `--threads`; its target tokens/s are the ones it logs,
averaged over the reports after the first (warm-up). Ours: `S2SForConditionalGeneration` (base preset) trained
with the loop of bench_training.py (forward, backward, clipping, Adam) on length-grouped batches of 64 for the
same number of steps; tokens/s over the steps after the first 10. OpenNMT-py's figure includes its data
pipeline; ours does not (batches are built beforehand), which is worth a few per cent to us.

Decoding (after training, test_2016_flickr, 1000 sentences, batches of 64 sentences, max 80 tokens):
OpenNMT-py's `onmt_translate` (its own batching: sorted by length within buckets; time as its `-report_time`
prints, model loading excluded) against our `generate()` (batches sorted by source length, time per batch
summed). The two take turns `--decode-repeats` times (default 2) and each keeps its fastest turn, so a slow
stretch of the shared machine must hit every turn of one toolkit to move the ratio. `--decode-from DIR` skips
training and decodes again with the models of an earlier run (`--save-model DIR`, and OpenNMT-py's checkpoint in
`--workdir`). Output tokens are counted the same way for both (pieces of the output + 1 for `</s>`), and BLEU
(sacreBLEU, detokenised with the same tokenizer) is printed so the speed of two equally (un)finished models is
compared; after one epoch both are far from converged, so the BLEU columns only show the outputs are real.

Needs OpenNMT-py installed in some Python (it pins torch < 2.3; here it runs against torch 2.13 with
`pip install --no-deps OpenNMT-py==3.5.1` plus its small dependencies in a venv with system site packages):

    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python            # about 12 minutes
    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python --steps 60 --max-sentences 128
    python benchmarks/bench_peers.py --onmt-python /tmp/onmt-venv/bin/python \
        --ours base base_fused base:bf16 base_fused:bf16      # also the fused path and bf16 autocast, one epoch each
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import (
    CACHE_DIR,
    decoding_batches,
    format_table,
    get_tokenizer,
    load_model,
    load_pairs,
    print_footer,
    print_header,
    setup_threads,
    training_batches,
)
from bench_decoding import Runner, bleu
from bench_training import make_step

from modeling_s2s.training import keep_freed_memory_for_reuse

ONMT_SPECIALS = ("<unk>", "<blank>", "<s>", "</s>")
REPORT_LINE = re.compile(r"Step\s+(\d+)/\s*\d+;.*?(\d+)/\s*(\d+) tok/s;\s+(\d+) sec")
TRANSLATION_TIME = re.compile(r"Total translation time \(s\): ([\d.]+)")


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


def onmt_config(files: dict[str, Path], workdir: Path, steps: int, seed: int) -> Path:
    config = f"""
src_vocab: {files['vocab']}
tgt_vocab: {files['vocab']}
share_vocab: true
src_vocab_size: 8000
tgt_vocab_size: 8000
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
word_vec_size: 256
hidden_size: 512
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


# ---------------------------------------------------------------------------------------------------------------
# OpenNMT-py
# ---------------------------------------------------------------------------------------------------------------


def onmt_train(python: str, config: Path, threads: int, workdir: Path, keep_freed_memory: bool) -> dict[str, float]:
    """Run onmt_train; target tokens/s averaged over the reports after the first, weighted by their duration."""
    log = workdir / "onmt_train.log"
    command = [python, "-m", "onmt.bin.train", "-config", str(config)]
    start = time.perf_counter()
    with log.open("w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=onmt_env(threads, keep_freed_memory),
                       check=True)
    wall = time.perf_counter() - start
    reports = [tuple(int(x) for x in m.groups()) for m in REPORT_LINE.finditer(log.read_text())]
    if len(reports) < 2:
        raise RuntimeError(f"onmt_train logged {len(reports)} reports (need 2); see {log}")
    weighted = seconds = 0.0
    for (_, _, _, previous), (_, _, tgt_per_s, elapsed) in zip(reports, reports[1:]):
        weighted += tgt_per_s * (elapsed - previous)
        seconds += elapsed - previous
    return {"tok/s": weighted / seconds, "wall": wall, "log": str(log)}


def onmt_translate(
    python: str, workdir: Path, source: Path, steps: int, beams: int, threads: int, keep_freed_memory: bool
) -> dict:
    output = workdir / f"test.beam{beams}.out"
    log = workdir / f"onmt_translate.beam{beams}.log"
    command = [
        python, "-m", "onmt.bin.translate", "-model", str(workdir / f"model_step_{steps}.pt"), "-src", str(source),
        "-output", str(output), "-batch_size", "64", "-batch_type", "sents", "-beam_size", str(beams),
        "-max_length", "80", "-report_time", "-gpu", "-1",
    ]
    with log.open("w") as handle:
        subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=onmt_env(threads, keep_freed_memory),
                       check=True)
    found = TRANSLATION_TIME.search(log.read_text())
    if not found:
        raise RuntimeError(f"onmt_translate did not report its time; see {log}")
    lines = output.read_text(encoding="utf-8").splitlines()
    return {"seconds": float(found.group(1)), "pieces": [line.split() for line in lines]}


# ---------------------------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------------------------


OUR_VARIANTS = ("base", "base_fused", "base:bf16", "base_fused:bf16")


def train_ours(tokenizer, steps: int, warmup: int, seed: int, grouping: str, variant: str = "base"):
    """Train our model of `variant` (a preset, with ":bf16" under CPU bf16 autocast as Trainer's --bf16)."""
    from _common import build_model

    preset, _, precision = variant.partition(":")
    batches = training_batches(tokenizer, seed=seed, grouping=grouping)
    model = build_model(preset, tokenizer, seed=seed)
    step = make_step(model, is_reference=False, bf16=precision == "bf16")
    tokens, seconds = 0, 0.0
    for index in range(steps):
        batch = batches[index % len(batches)]
        start = time.perf_counter()
        step(batch)
        if index >= warmup:
            seconds += time.perf_counter() - start
            tokens += int(batch["labels"].ne(-100).sum())
    return model.eval(), {"tok/s": tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onmt-python", required=True, help="a Python interpreter with OpenNMT-py 3.5.1")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=453, help="training steps of each toolkit (453 = one epoch)")
    parser.add_argument("--max-sentences", type=int, default=1000, help="test sentences to translate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-decode", action="store_true", help="training only")
    parser.add_argument("--ours", nargs="+", default=["base"], choices=OUR_VARIANTS,
                        help="our models to train, one after the other, each for --steps steps (':bf16' = under CPU "
                             "bf16 autocast, as the trainer's --bf16; OpenNMT-py 3.5.1 has mixed precision only on "
                             "CUDA). The first decodes, in fp32.")
    parser.add_argument("--length-grouping", default="source", choices=("source", "target"),
                        help="our batches' sort key, as the trainer's --length_grouping")
    parser.add_argument("--workdir", default=str(CACHE_DIR / "peers"))
    parser.add_argument("--decode-repeats", type=int, default=2,
                        help="decoding turns per toolkit and beam size, alternating; the fastest of each counts")
    parser.add_argument("--decode-from", metavar="DIR",
                        help="skip training: decode with our model saved by an earlier --save-model DIR and "
                             "OpenNMT-py's checkpoint of the same --steps left in --workdir")
    parser.add_argument("--save-model", metavar="DIR",
                        help="also save the decoding model with its tokenizer to DIR (for bench_decoding.py "
                             "--model_dir and bench_generate_overhead.py)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is for both toolkits (by default both keep freed memory "
                             "for reuse, as scripts/train.py does: ours by mallopt, OpenNMT-py by glibc's "
                             "MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_ environment)")
    args = parser.parse_args()

    setup_threads(args.threads)
    keep_freed_memory = not args.default_malloc and keep_freed_memory_for_reuse()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print_header("OpenNMT-py 3.5.1 side by side with S2S (training, then decoding)")
    version = subprocess.run([args.onmt_python, "-c", "import onmt, torch; print(onmt.__version__, torch.__version__)"],
                             capture_output=True, text=True, check=True).stdout.split()
    print(f"OpenNMT-py {version[0]} (torch {version[1]}) via {args.onmt_python}; {args.steps} training steps each; "
          f"allocator for both: {'freed memory kept for reuse' if keep_freed_memory else 'glibc defaults'}\n",
          flush=True)
    workdir = Path(args.workdir)
    tokenizer = get_tokenizer()
    files = prepare_data(tokenizer, workdir)
    sources, references = load_pairs("test")
    sources, references = sources[: args.max_sentences], references[: args.max_sentences]
    test_source = workdir / "test.limited.de"
    test_source.write_text(
        "\n".join(files["test.src"].read_text(encoding="utf-8").splitlines()[: args.max_sentences]) + "\n",
        encoding="utf-8",
    )

    if args.decode_from:
        model = load_model(args.decode_from)
        print(f"training skipped: S2S model from {args.decode_from}, OpenNMT-py's model_step_{args.steps}.pt from "
              f"{workdir}\n", flush=True)
    else:
        model = train_both(args, tokenizer, files, workdir, keep_freed_memory)
    if args.no_decode:
        print_footer()
        return
    batches = decoding_batches(tokenizer, sources, 64)
    runner = Runner(tokenizer, {"max_new_tokens": 80})
    decode_rows = []
    for beams in (1, 5):
        # the toolkits take turns, `--decode-repeats` times; each keeps its fastest run (a slow stretch of a
        # shared machine then has to hit every turn of one toolkit to change the ratio)
        onmt_runs, our_runs = [], []
        for _ in range(args.decode_repeats):
            onmt_runs.append(onmt_translate(
                args.onmt_python, workdir, test_source, args.steps, beams, args.threads, keep_freed_memory
            ))
            with torch.inference_mode():
                our_runs.append(runner.run(lambda ids, mask, b=beams: runner.generate(model, ids, mask, b), batches,
                                           len(sources)))
        translated = min(onmt_runs, key=lambda run: run["seconds"])
        result = min(our_runs, key=lambda run: run["seconds"])
        onmt_ids = [tokenizer.convert_tokens_to_ids(pieces) for pieces in translated["pieces"]]
        onmt_tokens = sum(len(ids) + 1 for ids in onmt_ids)
        ours_tps = result["tokens"] / result["seconds"]
        onmt_tps = onmt_tokens / translated["seconds"]
        decode_rows.append([beams, "OpenNMT-py", translated["seconds"], onmt_tokens, onmt_tps, 1.0,
                            bleu(tokenizer, onmt_ids, references)])
        decode_rows.append([beams, "S2S generate()", result["seconds"], result["tokens"], ours_tps,
                            ours_tps / onmt_tps, bleu(tokenizer, result["outputs"], references)])

    print(f"\n## Decoding test_2016_flickr ({len(sources)} sentences, batch 64, max 80 tokens, fp32; S2S "
          f"{args.ours[0]}; models after {args.steps} training steps; fastest of {args.decode_repeats} turns "
          "each)\n")
    print(format_table(["beams", "toolkit", "seconds", "tokens", "tok/s", "× OpenNMT-py", "BLEU"], decode_rows))
    print_footer()


def train_both(args, tokenizer, files: dict[str, Path], workdir: Path, keep_freed_memory: bool):
    """OpenNMT-py, then each of our `--ours` variants, for `--steps` steps; prints the training table and returns
    our first variant's model (fp32) for decoding."""
    config = onmt_config(files, workdir, args.steps, args.seed)
    onmt = onmt_train(args.onmt_python, config, args.threads, workdir, keep_freed_memory)
    print(f"onmt_train: {onmt['tok/s']:,.0f} target tok/s (its reports), {onmt['wall']:.0f} s in all", flush=True)
    training_rows, model = [["OpenNMT-py 3.5.1", "fp32", onmt["tok/s"], 1.0]], None
    for variant in args.ours:
        trained, ours = train_ours(
            tokenizer, args.steps, warmup=10, seed=args.seed, grouping=args.length_grouping, variant=variant
        )
        model = model or trained.float()
        preset, _, precision = variant.partition(":")
        print(f"S2S {variant}: {ours['tok/s']:,.0f} target tok/s", flush=True)
        training_rows.append([f"S2S {preset}", precision or "fp32", ours["tok/s"], ours["tok/s"] / onmt["tok/s"]])

    if args.save_model:
        model.save_pretrained(args.save_model)
        tokenizer.save_pretrained(args.save_model)
    print("\n## Training (target tokens/s, same shape, batches of 64 sentences (each toolkit's own length "
          "grouping); base_fused = the same without input feeding)\n")
    print(format_table(["toolkit", "precision", "tok/s", "× OpenNMT-py"], training_rows))
    return model


if __name__ == "__main__":
    sys.exit(main())
