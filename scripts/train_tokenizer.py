#!/usr/bin/env python
"""Train a subword tokenizer (BPE or Unigram) for a translation model and save it for ``AutoTokenizer``.

Examples::

    # joint de+en vocabulary on the embedded Multi30k training split
    python scripts/train_tokenizer.py --source_lang de --target_lang en --output_dir outputs/tok-de-en

    # separate vocabularies (target tokenizer in OUTPUT_DIR/target_tokenizer), Unigram, own data
    python scripts/train_tokenizer.py --source_lang de --target_lang en --train_file data/train \\
        --model_type unigram --separate_vocabs --vocab_size 8000 --output_dir outputs/tok

Only the training split is used. See ``modeling_s2s.data`` for the accepted data formats and
``modeling_s2s.tokenization`` for the tokenizer layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from modeling_s2s.data import load_parallel_data
    from modeling_s2s.tokenization import MODEL_TYPES, iter_texts, save_tokenizers, train_tokenizer
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling_s2s.data import load_parallel_data
    from modeling_s2s.tokenization import MODEL_TYPES, iter_texts, save_tokenizers, train_tokenizer

logger = logging.getLogger("train_tokenizer")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source_lang", default="de", help="Source language code (default: de).")
    parser.add_argument("--target_lang", default="en", help="Target language code (default: en).")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--train_file", help="JSON lines / CSV file, or prefix of a plain-text pair.")
    data.add_argument("--dataset_name", help="A dataset for datasets.load_dataset (Hub id or local path).")
    parser.add_argument("--dataset_config_name", help="Configuration of --dataset_name.")
    parser.add_argument("--cache_dir", help="Cache directory for datasets.")
    parser.add_argument("--vocab_size", type=int, default=8000, help="Vocabulary size (default: 8000).")
    parser.add_argument(
        "--model_type", choices=MODEL_TYPES, default="bpe", help="Subword model (default: bpe)."
    )
    parser.add_argument(
        "--min_frequency", type=int, default=2, help="Minimum BPE merge frequency (default: 2)."
    )
    parser.add_argument("--lowercase", action="store_true", help="Lowercase the text.")
    parser.add_argument(
        "--separate_vocabs",
        action="store_true",
        help="Train separate source and target tokenizers (target saved in OUTPUT_DIR/target_tokenizer).",
    )
    parser.add_argument("--model_max_length", type=int, default=512, help="Tokenizer model_max_length.")
    parser.add_argument("--output_dir", required=True, help="Where to save the tokenizer(s).")
    args = parser.parse_args(argv)
    if args.dataset_config_name and not args.dataset_name:
        parser.error("--dataset_config_name needs --dataset_name")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Train and save the tokenizer(s); returns the process exit code."""
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data = load_parallel_data(
        args.source_lang,
        args.target_lang,
        dataset_name=args.dataset_name,
        dataset_config_name=args.dataset_config_name,
        train_file=args.train_file,
        cache_dir=args.cache_dir,
    )
    if "train" not in data:
        raise SystemExit(f"The data has no train split (splits: {list(data)}).")
    pairs = data["train"]["translation"]
    logger.info("Training on %d sentence pairs (%s-%s).", len(pairs), args.source_lang, args.target_lang)
    options = {
        "vocab_size": args.vocab_size,
        "model_type": args.model_type,
        "lowercase": args.lowercase,
        "min_frequency": args.min_frequency,
        "model_max_length": args.model_max_length,
    }
    if args.separate_vocabs:
        tokenizer = train_tokenizer(iter_texts(pairs, [args.source_lang]), **options)
        target_tokenizer = train_tokenizer(iter_texts(pairs, [args.target_lang]), **options)
    else:
        tokenizer = train_tokenizer(iter_texts(pairs, [args.source_lang, args.target_lang]), **options)
        target_tokenizer = None
    save_tokenizers(args.output_dir, tokenizer, target_tokenizer)

    summary = {
        **{k: v for k, v in vars(args).items() if v is not None},
        "source_vocab_size": len(tokenizer),
        "target_vocab_size": len(target_tokenizer if target_tokenizer is not None else tokenizer),
    }
    example = pairs[0]
    encoded = tokenizer(example[args.source_lang])["input_ids"]
    logger.info("Example: %r -> %s", example[args.source_lang], tokenizer.convert_ids_to_tokens(encoded))
    logger.info("Saved to %s: %s", args.output_dir, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
