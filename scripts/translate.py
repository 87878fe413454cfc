#!/usr/bin/env python
"""Translate a file (or stdin) with a trained model; optionally score it and plot attention.

    python scripts/translate.py --model outputs/quick-de-en --input test.de --output test.hyp.en --num_beams 5
    echo "Ein Hund rennt durch den Schnee." | python scripts/translate.py --model outputs/quick-de-en
    python scripts/translate.py --model outputs/quick-de-en --input test.de --references test.en \
        --plot-attention 0 3 --plot-dir plots/

Every input line must hold text (an empty or whitespace-only line is an error naming it). Sources longer than
--max_source_length tokens are truncated, with a warning on stderr naming how many and to what length. The
--output path is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import modeling_s2s  # noqa: F401  (registers the Auto classes)
from modeling_s2s.data import read_text_lines
from modeling_s2s.evaluation import compute_translation_metrics
from modeling_s2s.fast_paths import int8_decoding_applies
from modeling_s2s.inference import (
    DEFAULT_MAX_SOURCE_LENGTH,
    attention_matrix,
    check_sources,
    default_max_source_length,
    plot_attention,
    translate,
    truncated_inputs,
    truncation_message,
)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give a number of tokens >= 1, or 0 for no limit")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Saved model directory or Hub id (with its tokenizer).")
    parser.add_argument("--input", help="Source file, one sentence per line (.gz allowed). Default: stdin.")
    parser.add_argument("--output", help="Write translations here. Default: stdout.")
    parser.add_argument("--references", help="Reference file to score against (sacreBLEU BLEU and chrF).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument(
        "--max_source_length", type=_non_negative_int, default=None,
        help="Truncate sources to this many tokens (special tokens included); 0: no limit. Default: the "
        f"tokenizer's model_max_length when it sets a real limit, else {DEFAULT_MAX_SOURCE_LENGTH}. A warning on "
        "stderr names the truncated lines.",
    )
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--length_penalty", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of searching.")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="Seed for sampling.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--int8", action="store_true",
        help="Decode with int8 matmuls (config.int8_decoding: fp32 models on x86 CPUs; --device cpu).",
    )
    parser.add_argument("--plot-attention", "--plot_attention", dest="plot_attention", type=int, nargs="*",
                        help="0-based indices of input sentences whose attention heatmaps to write as PNG.")
    parser.add_argument("--plot-dir", "--plot_dir", dest="plot_dir", default="attention_plots")
    return parser


def generation_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"num_beams": args.num_beams, "length_penalty": args.length_penalty, "do_sample": args.do_sample}
    for name in ("max_new_tokens", "temperature", "top_k", "top_p"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    return kwargs


def check_output_path(output: str) -> None:
    """Fail (`SystemExit`) before anything is loaded or translated when ``output`` can't be written: it is a
    directory, its directory is missing or not a directory, or it (or its directory) is not writable."""
    path = Path(output)
    parent = path.parent
    if path.is_dir():
        raise SystemExit(f"error: --output {output} is a directory; give a file path.")
    if not parent.exists():
        raise SystemExit(f"error: --output {output}: the directory {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise SystemExit(f"error: --output {output}: {parent} is not a directory.")
    if path.exists() and not os.access(path, os.W_OK):
        raise SystemExit(f"error: --output {output} exists and is not writable.")
    if not path.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --output {output}: the directory {parent} is not writable.")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.output:
        check_output_path(args.output)
    sources = read_text_lines(args.input) if args.input else [line.rstrip("\r\n") for line in sys.stdin]
    check_sources(sources)  # stdin lines (read_text_lines already refuses empty lines in a file)
    references = read_text_lines(args.references) if args.references else None
    if references is not None and len(references) != len(sources):
        raise SystemExit(f"error: {args.references} has {len(references)} lines but the input has {len(sources)}.")
    if args.int8 and args.device != "cpu":
        raise SystemExit(f"error: --int8 decodes on the CPU (oneDNN's int8 matmuls); --device is {args.device!r}.")
    bad_plots = [i for i in args.plot_attention or [] if not 0 <= i < len(sources)]
    if bad_plots:
        raise SystemExit(f"error: --plot-attention index {bad_plots[0]} is outside 0..{len(sources) - 1}.")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model).to(args.device).eval()
    if args.int8:
        model.config.int8_decoding = True
        if not int8_decoding_applies(model):
            print(f"warning: --int8 does not apply to this model here (it needs fast_paths, fp32 weights (these are "
                  f"{model.dtype}) and an x86 CPU with oneDNN); decoding without it.", file=sys.stderr)
    kwargs = generation_kwargs(args)
    if args.max_source_length is None:
        max_source_length = default_max_source_length(tokenizer)
    else:
        max_source_length = args.max_source_length or None  # 0: no limit
    truncated = truncated_inputs(tokenizer, sources, max_source_length)
    if truncated:
        message = truncation_message(truncated, len(sources), max_source_length, what="lines", one_based=True)
        print(f"warning: {message}; use --max_source_length to change the limit (0: no limit).", file=sys.stderr)
    hypotheses = translate(
        model, tokenizer, sources, batch_size=args.batch_size, max_source_length=max_source_length,
        show_progress=True, warn_truncation=False, **kwargs,
    )
    text = "".join(h + "\n" for h in hypotheses)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    report: dict = {}
    if references is not None:
        report = compute_translation_metrics(hypotheses, references)
        print(json.dumps(report), file=sys.stderr)
    for index in args.plot_attention or []:
        source_tokens, target_tokens, alignment = attention_matrix(model, tokenizer, sources[index], **kwargs)
        path = plot_attention(source_tokens, target_tokens, alignment, Path(args.plot_dir) / f"attention_{index}.png")
        print(f"wrote {path}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
