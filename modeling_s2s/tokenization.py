"""Training subword tokenizers (BPE or Unigram) for the seq2seq models with the ``tokenizers`` library.

The result is a plain :class:`~transformers.PreTrainedTokenizerFast` (a ``tokenizer.json`` + config), so
``AutoTokenizer.from_pretrained(dir)`` loads it without this package. Its layout:

* special tokens with fixed ids: ``<pad>`` = :data:`PAD_ID` (0), ``<s>`` = :data:`BOS_ID` (1),
  ``</s>`` = :data:`EOS_ID` (2), ``<unk>`` = :data:`UNK_ID` (3) - the defaults of ``S2SConfig``;
* NFKC normalisation (plus lowercasing if asked), a Metaspace pre-tokenizer and decoder, so
  ``decode(encode(text), skip_special_tokens=True)`` gives back the (normalised) text with its spaces;
* every sequence, source and target alike, ends with ``</s>``; no ``<s>`` is added (the model prepends the
  decoder start token ``<s>`` itself when it shifts the labels right);
* right padding;
* printable ASCII is always in the vocabulary; other characters not seen in training become ``<unk>`` (and
  are lost when decoding with ``skip_special_tokens=True``).

Vocabularies: one joint source+target vocabulary is the default (and lets the model share embeddings). With
separate vocabularies the source tokenizer is saved in the output directory and the target tokenizer in its
``target_tokenizer/`` subfolder (:data:`TARGET_TOKENIZER_SUBFOLDER`); :func:`load_tokenizers` loads both, as does
``AutoTokenizer.from_pretrained(dir)`` / ``AutoTokenizer.from_pretrained(dir, subfolder="target_tokenizer")``.
In that case tokenize the labels and decode the generations with the target tokenizer
(``data.make_preprocess_function(..., target_tokenizer=tgt)``, ``evaluation.make_compute_metrics(tgt)``):
``source_tokenizer(src, text_target=tgt)`` would use the source vocabulary for the labels.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "EOS_ID",
    "EOS_TOKEN",
    "MODEL_TYPES",
    "PAD_ID",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TARGET_TOKENIZER_SUBFOLDER",
    "UNK_ID",
    "UNK_TOKEN",
    "iter_texts",
    "load_tokenizers",
    "save_tokenizers",
    "special_token_kwargs",
    "train_tokenizer",
]

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
#: Special tokens in id order: their position is their id.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
#: Supported subword models.
MODEL_TYPES: tuple[str, ...] = ("bpe", "unigram")
#: Subfolder holding the target tokenizer when source and target vocabularies are separate.
TARGET_TOKENIZER_SUBFOLDER = "target_tokenizer"

_METASPACE = "\u2581"  # "▁", as in SentencePiece


def _base_alphabet(lowercase: bool) -> list[str]:
    """Printable ASCII (no whitespace; uppercase only without ``lowercase``), always in the vocabulary so that
    digits and punctuation missing from a small training corpus do not become ``<unk>``."""
    chars = [c for c in string.printable if not c.isspace()]
    return [c for c in chars if not c.isupper()] if lowercase else chars


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    model_type: str = "bpe",
    lowercase: bool = False,
    min_frequency: int = 2,
    *,
    model_max_length: int = 512,
    show_progress: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a BPE or Unigram tokenizer on ``texts`` and wrap it as a :class:`PreTrainedTokenizerFast`.

    Args:
        texts: Training sentences (any iterable; consumed once).
        vocab_size: Target vocabulary size, special tokens included. Small corpora may give fewer tokens.
        model_type: ``"bpe"`` or ``"unigram"``.
        lowercase: Lowercase after NFKC normalisation (decoding then gives lowercased text).
        min_frequency: Minimum pair frequency for a BPE merge (not used by Unigram).
        model_max_length: Stored as ``tokenizer.model_max_length`` (the default truncation length).
        show_progress: Show the ``tokenizers`` training progress bar.

    Returns:
        A fast tokenizer with ``<pad>``/``<s>``/``</s>``/``<unk>`` at ids 0/1/2/3 that appends ``</s>`` to every
        sequence and pads on the right.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"`model_type` must be one of {MODEL_TYPES}, got {model_type!r}.")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"`vocab_size` must be an int > {len(SPECIAL_TOKENS)}, got {vocab_size!r}.")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"`min_frequency` must be a positive int, got {min_frequency!r}.")

    trainer: trainers.Trainer
    if model_type == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN, fuse_unk=True))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=_base_alphabet(lowercase),
            show_progress=show_progress,
        )
    else:
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            unk_token=UNK_TOKEN,
            initial_alphabet=_base_alphabet(lowercase),
            show_progress=show_progress,
        )
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=_METASPACE, prepend_scheme="always", split=True
    )
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always", split=True)

    count = 0

    def counted(items: Iterable[str]) -> Iterator[str]:
        nonlocal count
        for item in items:
            count += 1
            yield item

    tokenizer.train_from_iterator(counted(texts), trainer=trainer)
    if count == 0:
        raise ValueError("`texts` is empty: nothing to train the tokenizer on.")
    for token, expected in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID, UNK_ID), strict=True):
        actual = tokenizer.token_to_id(token)
        if actual != expected:  # pragma: no cover - the trainers put special tokens first, in order
            raise RuntimeError(f"special token {token!r} got id {actual}, expected {expected}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}",
        pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}",
        special_tokens=[(EOS_TOKEN, EOS_ID)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,  # keep "a ." as is: decoding must restore the text exactly
    )


def iter_texts(pairs: Iterable[dict[str, Any]], languages: Sequence[str]) -> Iterator[str]:
    """Yield the sentences of ``languages`` from ``translation`` dicts (e.g. ``dataset["train"]["translation"]``)."""
    for pair in pairs:
        for lang in languages:
            yield pair[lang]


def save_tokenizers(
    output_dir: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    target_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Save a joint tokenizer in ``output_dir``, or a source tokenizer there and the target tokenizer in
    ``output_dir/target_tokenizer``."""
    output_dir = Path(output_dir)
    tokenizer.save_pretrained(output_dir)
    if target_tokenizer is not None:
        target_tokenizer.save_pretrained(output_dir / TARGET_TOKENIZER_SUBFOLDER)


def load_tokenizers(
    path: str | os.PathLike, **kwargs: Any
) -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """Load ``(source_tokenizer, target_tokenizer)`` saved by :func:`save_tokenizers`.

    With a joint vocabulary (no ``target_tokenizer/`` subfolder) both are the same object. ``path`` is a local
    directory or a Hub repo id (looked up as `from_pretrained` does). ``kwargs`` go to
    :meth:`AutoTokenizer.from_pretrained`.
    """
    from .pipeline_s2s import find_target_tokenizer

    source = AutoTokenizer.from_pretrained(os.fspath(path), **kwargs)
    target = find_target_tokenizer(os.fspath(path), **kwargs)
    return source, target if target is not None else source


def special_token_kwargs(
    tokenizer: PreTrainedTokenizerBase, target_tokenizer: PreTrainedTokenizerBase | None = None
) -> dict[str, Any]:
    """Token ids and vocabulary sizes for building an ``S2SConfig`` from the tokenizer(s).

    Returns ``pad_token_id``, ``bos_token_id``, ``eos_token_id``, ``decoder_start_token_id`` (= ``bos``) and
    ``vocab_size`` (``len(tokenizer)``). With a separate ``target_tokenizer`` also ``decoder_vocab_size`` and
    ``share_encoder_decoder_embeddings=False`` (the same id means different tokens in the two vocabularies);
    special token ids are then taken from the target tokenizer and must agree with the source tokenizer's pad.
    """
    target = target_tokenizer if target_tokenizer is not None else tokenizer
    ids = {
        "pad_token_id": target.pad_token_id,
        "bos_token_id": target.bos_token_id,
        "eos_token_id": target.eos_token_id,
    }
    missing = [name for name, value in ids.items() if value is None]
    if missing:
        raise ValueError(f"The tokenizer has no {', '.join(missing)}; train it with `train_tokenizer`.")
    if tokenizer.pad_token_id != target.pad_token_id:
        raise ValueError(
            f"Source and target tokenizers disagree on the pad id ({tokenizer.pad_token_id} vs "
            f"{target.pad_token_id})."
        )
    kwargs: dict[str, Any] = {
        **ids,
        "decoder_start_token_id": ids["bos_token_id"],
        "vocab_size": len(tokenizer),
    }
    if target_tokenizer is not None:
        kwargs["decoder_vocab_size"] = len(target_tokenizer)
        kwargs["share_encoder_decoder_embeddings"] = False
    return kwargs
