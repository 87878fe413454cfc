"""Batch translation and attention plots for trained models (used by `scripts/translate.py`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: Tokenizers without a length limit report a huge `model_max_length` (transformers' VERY_LARGE_INTEGER); a value
#: above this is such a placeholder, not a length to truncate to.
SANE_MAX_LENGTH = 100_000
#: Source length limit when the tokenizer declares none.
DEFAULT_MAX_SOURCE_LENGTH = 256
_SHOWN_POSITIONS = 10


class SourceTruncationWarning(UserWarning):
    """`translate` truncated inputs longer than ``max_source_length`` tokens."""


def default_max_source_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's ``model_max_length`` when it is a real limit (an int in [1, `SANE_MAX_LENGTH`]), else
    `DEFAULT_MAX_SOURCE_LENGTH` (256)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= SANE_MAX_LENGTH:
        return limit
    return DEFAULT_MAX_SOURCE_LENGTH


def check_sources(sentences: Sequence[str], what: str = "Input line") -> None:
    """Raise `ValueError` naming the 1-based position of the first empty or whitespace-only sentence (`TypeError`
    for a non-string), so nothing is translated when one input is unusable."""
    for index, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise TypeError(f"{what} {index + 1} is {type(sentence).__name__} ({sentence!r:.80}), not a string.")
        if not sentence.strip():
            raise ValueError(
                f"{what} {index + 1} is empty or whitespace-only ({sentence!r:.80}); every line needs text to translate."
            )


def _check_max_source_length(max_source_length: int | None) -> None:
    if max_source_length is not None and (
        isinstance(max_source_length, bool) or not isinstance(max_source_length, int) or max_source_length < 1
    ):
        raise ValueError(f"`max_source_length`={max_source_length!r} must be None (no limit) or an int >= 1.")


def truncated_inputs(
    tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str], max_source_length: int | None, chunk: int = 4096
) -> list[int]:
    """0-based indices of the sentences longer than ``max_source_length`` tokens (special tokens included), i.e.
    those that `translate` truncates; ``[]`` for ``max_source_length=None``."""
    _check_max_source_length(max_source_length)
    if max_source_length is None:
        return []
    found = []
    for start in range(0, len(sentences), chunk):
        encoded = tokenizer(list(sentences[start : start + chunk]), truncation=False, padding=False, verbose=False)
        found += [start + i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_source_length]
    return found


def truncation_message(
    indices: Sequence[int], total: int, max_source_length: int, what: str = "inputs", one_based: bool = False
) -> str:
    """``"3 of 10 inputs are longer than 256 tokens and are truncated to 256 tokens (indices 1, 4, 8)"``; with
    ``one_based`` the positions are 1-based and named after ``what`` (``"... (lines 2, 5, 9)"``)."""
    shown = ", ".join(str(i + one_based) for i in indices[:_SHOWN_POSITIONS])
    more = f", ... ({len(indices) - _SHOWN_POSITIONS} more)" if len(indices) > _SHOWN_POSITIONS else ""
    return (
        f"{len(indices)} of {total} {what} are longer than {max_source_length} tokens and are truncated to "
        f"{max_source_length} tokens ({what if one_based else 'indices'} {shown}{more})"
    )


def _batches_by_length(sentences: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    # Sorting by length keeps padding (and wasted RNN/attention work) small; results are put back in order.
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.inference_mode()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[str],
    *,
    batch_size: int = 64,
    max_source_length: int | None = DEFAULT_MAX_SOURCE_LENGTH,
    show_progress: bool = False,
    warn_truncation: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Translate `sentences` in length-sorted batches; returns one string per input, in input order (``[]`` for
    no input).

    Every sentence must hold text: an empty or whitespace-only one raises `ValueError` naming its 1-based position
    before anything is translated. Sources longer than ``max_source_length`` tokens (special tokens included;
    ``None``: no limit) are truncated; with ``warn_truncation`` a `SourceTruncationWarning` says how many and to
    what length. `generate_kwargs` go to `model.generate` (`num_beams`, `length_penalty`, `do_sample`, `top_k`,
    `top_p`, `temperature`, `max_new_tokens`, ...).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size`={batch_size!r} must be an int >= 1.")
    _check_max_source_length(max_source_length)
    check_sources(sentences)
    if warn_truncation and max_source_length is not None:
        truncated = truncated_inputs(tokenizer, sentences, max_source_length)
        if truncated:
            message = truncation_message(truncated, len(sentences), max_source_length)
            warnings.warn(
                f"{message}; pass a larger max_source_length (None: no limit) to keep them whole.",
                SourceTruncationWarning,
                stacklevel=3,  # the caller of `translate` (inference_mode's wrapper is one frame)
            )
    model.eval()
    results: list[str] = [""] * len(sentences)
    batches = list(_batches_by_length(sentences, batch_size))
    for indices in tqdm(batches, desc="Translating", disable=not show_progress):
        inputs = tokenizer(
            [sentences[i] for i in indices],
            return_tensors="pt",
            padding=True,
            truncation=max_source_length is not None,
            max_length=max_source_length,
        ).to(model.device)
        generated = model.generate(**inputs, **generate_kwargs)
        for index, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True)):
            results[index] = text.strip()
    return results


@torch.inference_mode()
def attention_matrix(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, source: str, **generate_kwargs: Any
) -> tuple[list[str], list[str], torch.Tensor]:
    """Translate one sentence and return (source tokens, target tokens, alignment (target_len, source_len)),
    the alignment averaged over heads, recomputed by a teacher-forced pass over the generated output."""
    model.eval()
    inputs = tokenizer([source], return_tensors="pt").to(model.device)
    generated = model.generate(**inputs, **generate_kwargs)
    decoder_input_ids = generated[:, :-1]
    outputs = model(**inputs, decoder_input_ids=decoder_input_ids, output_attentions=True)
    alignment = outputs.cross_attentions[-1][0].mean(0)  # (T, S)
    source_tokens = tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    target_tokens = tokenizer.convert_ids_to_tokens(generated[0, 1:])
    return source_tokens, target_tokens, alignment.float().cpu()


def plot_attention(
    source_tokens: Sequence[str], target_tokens: Sequence[str], alignment: torch.Tensor, path: str | Path
) -> Path:
    """Write a PNG heatmap of `alignment` (target_len, source_len) with tokens on the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if tuple(alignment.shape) != (len(target_tokens), len(source_tokens)):
        raise ValueError(
            f"alignment has shape {tuple(alignment.shape)}, expected ({len(target_tokens)}, {len(source_tokens)})."
        )
    width = max(4.0, 0.45 * len(source_tokens) + 1.5)
    height = max(3.0, 0.4 * len(target_tokens) + 1.5)
    figure, axes = plt.subplots(figsize=(width, height))
    image = axes.imshow(alignment.numpy(), cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    axes.set_xticks(range(len(source_tokens)), labels=list(source_tokens), rotation=90)
    axes.set_yticks(range(len(target_tokens)), labels=list(target_tokens))
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    figure.colorbar(image, ax=axes, fraction=0.04)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
