"""chrF / chrF++ (sacreBLEU) as an offline ``evaluate`` metric.

``evaluate`` 0.4 ships no metric scripts and ``evaluate.load("chrf")`` needs the Hub; this script is loaded from its
path instead: ``evaluate.load("<this directory>")`` or ``evaluate.load("<this file>")``. It is a thin wrapper
around :func:`sacrebleu.corpus_chrf`.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import sacrebleu as scb

_CITATION = """\
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    address = "Lisbon, Portugal",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/W15-3049",
    pages = "392--395",
}
"""

_DESCRIPTION = """\
chrF (Popović, 2015): character n-gram F-score, and chrF++ (word n-grams added, word_order=2), computed at corpus
level by sacreBLEU.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Detokenized system outputs.
    references (`list` of `str`, or `list` of `list` of `str`): One reference per prediction, or a list of
        references per prediction (every prediction must have the same number of references).
    char_order (`int`): Character n-gram order. Defaults to 6.
    word_order (`int`): Word n-gram order; 2 gives chrF++. Defaults to 0.
    beta (`int`): Weight of recall relative to precision. Defaults to 2.
    lowercase (`bool`): Case-insensitive. Defaults to False.
    whitespace (`bool`): Include whitespace in character n-grams. Defaults to False.
    eps_smoothing (`bool`): Smoothing of the reference implementations instead of sacreBLEU's. Defaults to False.
Returns:
    score (`float`): chrF in [0, 100]; char_order, word_order, beta.
Examples:
    >>> chrf = evaluate.load("path/to/metric_scripts/chrf")
    >>> chrf.compute(predictions=["the cat sat"], references=["the cat sat"])["score"]
    100.0
"""


def _reference_streams(references: list[Any]) -> list[list[str]]:
    """Per-prediction references -> sacreBLEU's list of reference streams (one per reference index)."""
    per_prediction = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    counts = {len(refs) for refs in per_prediction}
    if len(counts) > 1:
        raise ValueError(
            f"chrF needs the same number of references for every prediction, got {sorted(counts)}."
        )
    if counts == {0}:
        raise ValueError("Every prediction needs at least one reference.")
    return [list(stream) for stream in zip(*per_prediction, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Chrf(evaluate.Metric):
    """sacreBLEU corpus chrF."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/mjpost/sacrebleu",
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(
                            datasets.Value("string", id="sequence"), id="references"
                        ),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://github.com/m-popovic/chrF", "https://aclanthology.org/W15-3049"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[Any],
        char_order: int = 6,
        word_order: int = 0,
        beta: int = 2,
        lowercase: bool = False,
        whitespace: bool = False,
        eps_smoothing: bool = False,
    ) -> dict[str, Any]:
        streams = _reference_streams(references)
        if lowercase:  # what sacrebleu's CHRF(lowercase=True) does; corpus_chrf has no such argument
            predictions = [p.lower() for p in predictions]
            streams = [[r.lower() for r in stream] for stream in streams]
        output = scb.corpus_chrf(
            predictions,
            streams,
            char_order=char_order,
            word_order=word_order,
            beta=beta,
            remove_whitespace=not whitespace,
            eps_smoothing=eps_smoothing,
        )
        return {"score": output.score, "char_order": char_order, "word_order": word_order, "beta": beta}
