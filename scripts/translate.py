#!/usr/bin/env python
"""Translate a file (or stdin) with a trained model; optionally score it and plot attention.

    python scripts/translate.py --model outputs/quick-de-en --input test.de --output test.hyp.en --num_beams 5
    echo "Ein Hund rennt durch den Schnee." | python scripts/translate.py --model outputs/quick-de-en
    python scripts/translate.py --model outputs/quick-de-en --input test.de --references test.en \
        --plot-attention 0 3 --plot-dir plots/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import modeling_s2s  # noqa: F401  (registers the Auto classes)
from modeling_s2s.data import read_text_lines
from modeling_s2s.evaluation import compute_translation_metrics
from modeling_s2s.inference import attention_matrix, plot_attention, translate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Saved model directory or Hub id (with its tokenizer).")
    parser.add_argument("--input", help="Source file, one sentence per line (.gz allowed). Default: stdin.")
    parser.add_argument("--output", help="Write translations here. Default: stdout.")
    parser.add_argument("--references", help="Reference file to score against (sacreBLEU BLEU and chrF).")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--num_beams", type=int, default=5)
    parser.add_argument("--length_penalty", type=float, default=1.0)
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of searching.")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0, help="Seed for sampling.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
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


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    sources = read_text_lines(args.input) if args.input else [line.rstrip("\n") for line in sys.stdin]
    references = read_text_lines(args.references) if args.references else None
    if references is not None and len(references) != len(sources):
        raise SystemExit(f"error: {args.references} has {len(references)} lines but the input has {len(sources)}.")
    bad_plots = [i for i in args.plot_attention or [] if not 0 <= i < len(sources)]
    if bad_plots:
        raise SystemExit(f"error: --plot-attention index {bad_plots[0]} is outside 0..{len(sources) - 1}.")
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.model).to(args.device).eval()
    kwargs = generation_kwargs(args)
    hypotheses = translate(model, tokenizer, sources, batch_size=args.batch_size, show_progress=True, **kwargs)
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
