"""Translation metrics (sacreBLEU BLEU and chrF) through ``evaluate``, offline.

``evaluate.load("sacrebleu")`` needs the Hugging Face Hub (the ``evaluate`` wheel ships no metric scripts), so the
metrics are loaded from the scripts bundled in ``modeling_s2s/metric_scripts/`` (:data:`METRIC_SCRIPTS_DIR`); this
works with ``HF_HUB_OFFLINE=1``. The scores are sacreBLEU's corpus scores on detokenized text (BLEU with the
``13a`` tokenizer).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
from transformers import EvalPrediction, PreTrainedTokenizerBase

__all__ = [
    "METRIC_NAMES",
    "METRIC_SCRIPTS_DIR",
    "compute_translation_metrics",
    "load_metric",
    "make_compute_metrics",
    "metric_script_path",
]

#: Directory holding one folder per bundled metric script (``<name>/<name>.py``).
METRIC_SCRIPTS_DIR: Path = Path(__file__).resolve().parent / "metric_scripts"
#: Names accepted by :func:`load_metric`.
METRIC_NAMES: tuple[str, ...] = ("sacrebleu", "chrf")


def metric_script_path(name: str) -> Path:
    """Path of the bundled ``evaluate`` script of metric ``name`` (``"sacrebleu"`` or ``"chrf"``)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; bundled metrics: {', '.join(METRIC_NAMES)}.")
    return METRIC_SCRIPTS_DIR / name / f"{name}.py"


def load_metric(name: str, **kwargs: Any) -> evaluate.EvaluationModule:
    """Load a bundled metric (``"sacrebleu"`` or ``"chrf"``) with :func:`evaluate.load`, without the Hub.

    ``kwargs`` go to :func:`evaluate.load` (e.g. ``cache_dir``, ``experiment_id``).
    """
    return evaluate.load(str(metric_script_path(name)), **kwargs)


@functools.cache
def _cached_metric(name: str) -> evaluate.EvaluationModule:
    # Only used through `compute(predictions=..., references=...)`, which keeps no state between calls.
    return load_metric(name)


def compute_translation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (both 0-100) of detokenized ``predictions`` against one reference each.

    Returns:
        ``{"bleu": float, "chrf": float}``.
    """
    predictions, references = list(predictions), list(references)
    if len(predictions) != len(references):
        raise ValueError(f"Got {len(predictions)} predictions but {len(references)} references.")
    if not predictions:
        raise ValueError("No predictions to score.")
    bleu = _cached_metric("sacrebleu").compute(predictions=predictions, references=references)
    chrf = _cached_metric("chrf").compute(predictions=predictions, references=references)
    return {"bleu": float(bleu["score"]), "chrf": float(chrf["score"])}


def _token_ids(array: Any, pad_token_id: int, what: str) -> np.ndarray:
    ids = np.asarray(array)
    if ids.ndim == 3:
        raise ValueError(
            f"{what} look like logits (shape {ids.shape}); run Seq2SeqTrainer with predict_with_generate=True so "
            "that compute_metrics gets generated token ids."
        )
    if ids.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array of token ids, got shape {ids.shape}.")
    # -100 marks ignored label positions and padding added when gathering generations of different lengths.
    return np.where(ids < 0, pad_token_id, ids).astype(np.int64)


def _mean_generated_length(ids: np.ndarray, pad_token_id: int, eos_token_id: int | None) -> float:
    """Mean count of non-pad tokens up to and including the first ``</s>`` of each row (beam search fills
    finished rows with ``</s>``, which must not count)."""
    lengths = np.count_nonzero(ids != pad_token_id, axis=1)
    if eos_token_id is not None:
        is_eos = ids == eos_token_id
        first_eos = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1) + 1, ids.shape[1])
        real = np.arange(ids.shape[1])[None, :] < first_eos[:, None]
        lengths = np.count_nonzero((ids != pad_token_id) & real, axis=1)
    return float(np.mean(lengths))


def make_compute_metrics(
    tokenizer: PreTrainedTokenizerBase,
) -> Callable[[EvalPrediction], dict[str, float]]:
    """``compute_metrics`` for ``Seq2SeqTrainer(..., predict_with_generate=True)``.

    The returned function decodes the generated ids and the labels with ``tokenizer`` (the *target* tokenizer
    when vocabularies are separate), after replacing ``-100`` by the pad id, with ``skip_special_tokens=True``,
    strips the texts, and returns ``{"bleu", "chrf", "gen_len"}`` where ``gen_len`` is the mean number of
    non-pad tokens per generated sequence up to its first ``</s>`` (it includes the decoder start and that
    ``</s>``).
    """
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        raise ValueError("The tokenizer needs a pad token to decode padded predictions and labels.")

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        if labels is None:
            raise ValueError("compute_metrics needs labels (label_ids is None).")
        prediction_ids = _token_ids(predictions, pad_token_id, "predictions")
        label_ids = _token_ids(labels, pad_token_id, "labels")
        decoded_predictions = [
            t.strip() for t in tokenizer.batch_decode(prediction_ids, skip_special_tokens=True)
        ]
        decoded_labels = [t.strip() for t in tokenizer.batch_decode(label_ids, skip_special_tokens=True)]
        scores = compute_translation_metrics(decoded_predictions, decoded_labels)
        scores["gen_len"] = _mean_generated_length(prediction_ids, pad_token_id, tokenizer.eos_token_id)
        return scores

    return compute_metrics
