"""sacreBLEU as an offline ``evaluate`` metric.

``evaluate`` 0.4 ships no metric scripts and ``evaluate.load("sacrebleu")`` needs the Hub; this script is loaded
from its path instead: ``evaluate.load("<this directory>")`` or ``evaluate.load("<this file>")``. It is a thin
wrapper around :func:`sacrebleu.corpus_bleu`.
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import sacrebleu as scb

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    address = "Brussels, Belgium",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
"""

_DESCRIPTION = """\
Corpus-level BLEU (Papineni et al., 2002) computed by sacreBLEU (Post, 2018) on detokenized text, with
sacreBLEU's own tokenization (13a by default), so that scores are comparable across systems.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): Detokenized system outputs.
    references (`list` of `str`, or `list` of `list` of `str`): One reference per prediction, or a list of
        references per prediction (every prediction must have the same number of references).
    smooth_method (`str`): "none", "floor", "add-k" or "exp" (default).
    smooth_value (`float`, optional): Value for "floor" (default 0.1) and "add-k" (default 1).
    tokenize (`str`): sacreBLEU tokenizer: "13a" (default), "none", "zh", "intl", "char", "ja-mecab", ...
    lowercase (`bool`): Case-insensitive BLEU. Defaults to False.
    force (`bool`): Do not complain about already tokenized input. Defaults to False.
    use_effective_order (`bool`): Only count n-gram orders that have matches (sentence-level BLEU).
        Defaults to False.
Returns:
    score (`float`): BLEU in [0, 100]; counts, totals, precisions (per n-gram order), bp (brevity penalty),
    sys_len, ref_len.
Examples:
    >>> bleu = evaluate.load("path/to/metric_scripts/sacrebleu")
    >>> bleu.compute(predictions=["hello there general kenobi"], references=["hello there general kenobi"])["score"]
    100.0
"""


def _reference_streams(references: list[Any]) -> list[list[str]]:
    """Per-prediction references -> sacreBLEU's list of reference streams (one per reference index)."""
    per_prediction = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    counts = {len(refs) for refs in per_prediction}
    if len(counts) > 1:
        raise ValueError(
            f"sacreBLEU needs the same number of references for every prediction, got {sorted(counts)}."
        )
    if counts == {0}:
        raise ValueError("Every prediction needs at least one reference.")
    return [list(stream) for stream in zip(*per_prediction, strict=True)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Sacrebleu(evaluate.Metric):
    """sacreBLEU corpus BLEU."""

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
            reference_urls=["https://github.com/mjpost/sacrebleu", "https://aclanthology.org/W18-6319"],
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[Any],
        smooth_method: str = "exp",
        smooth_value: float | None = None,
        force: bool = False,
        lowercase: bool = False,
        tokenize: str = "13a",
        use_effective_order: bool = False,
    ) -> dict[str, Any]:
        output = scb.corpus_bleu(
            predictions,
            _reference_streams(references),
            smooth_method=smooth_method,
            smooth_value=smooth_value,
            force=force,
            lowercase=lowercase,
            tokenize=tokenize,
            use_effective_order=use_effective_order,
        )
        return {
            "score": output.score,
            "counts": output.counts,
            "totals": output.totals,
            "precisions": output.precisions,
            "bp": output.bp,
            "sys_len": output.sys_len,
            "ref_len": output.ref_len,
        }
