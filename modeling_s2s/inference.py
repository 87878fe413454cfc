"""Batch translation and attention plots for trained models (used by `scripts/translate.py`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    max_source_length: int | None = 256,
    show_progress: bool = False,
    **generate_kwargs: Any,
) -> list[str]:
    """Translate `sentences` in length-sorted batches; returns one string per input, in input order.

    `generate_kwargs` go to `model.generate` (`num_beams`, `length_penalty`, `do_sample`, `top_k`, `top_p`,
    `temperature`, `max_new_tokens`, ...).
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size`={batch_size} must be >= 1.")
    empty = [i for i, sentence in enumerate(sentences) if not sentence.strip()]
    if empty:
        raise ValueError(f"Input line {empty[0] + 1} is empty; every line needs text to translate.")
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
