"""Tests of `modeling_s2s.evaluation` and the offline metric scripts."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sacrebleu  # noqa: E402
from transformers import EvalPrediction  # noqa: E402

from modeling_s2s.evaluation import (  # noqa: E402
    METRIC_NAMES,
    compute_translation_metrics,
    load_metric,
    make_compute_metrics,
    metric_script_path,
)
from modeling_s2s.tokenization import EOS_ID, PAD_ID, train_tokenizer  # noqa: E402

REFERENCES = [
    "Two young, White males are outside near many bushes.",
    "Several men in hard hats are operating a giant pulley system.",
    "A little girl climbing into a wooden playhouse.",
    "A man in a blue shirt is standing on a ladder cleaning a window.",
]
PREDICTIONS = [
    "Two young white men are outside near bushes.",
    "Several men in helmets operate a giant pulley system.",
    "A girl climbs into a wooden playhouse.",
    "A man in a blue shirt stands on a ladder and cleans windows.",
]


def test_metric_scripts_are_bundled():
    for name in METRIC_NAMES:
        assert metric_script_path(name).is_file()
    with pytest.raises(ValueError, match="sacrebleu"):
        metric_script_path("bleurt")


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_load_metric_offline_identical_is_100(name):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    metric = load_metric(name)
    result = metric.compute(predictions=REFERENCES, references=REFERENCES)
    assert result["score"] == pytest.approx(100.0)


def test_metrics_equal_sacrebleu():
    bleu = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    direct = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES])
    assert bleu["score"] == pytest.approx(direct.score)
    assert bleu["counts"] == direct.counts and bleu["sys_len"] == direct.sys_len
    assert 0.0 < bleu["score"] < 100.0

    chrf = load_metric("chrf").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert chrf["score"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    chrfpp = load_metric("chrf").compute(predictions=PREDICTIONS, references=REFERENCES, word_order=2)
    assert chrfpp["score"] == pytest.approx(
        sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], word_order=2).score
    )


def test_multiple_references_and_options():
    other = [r.lower() for r in REFERENCES]
    bleu = load_metric("sacrebleu").compute(
        predictions=PREDICTIONS, references=[[a, b] for a, b in zip(REFERENCES, other, strict=True)]
    )
    assert bleu["score"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES, other]).score)
    lower = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES, lowercase=True)
    assert lower["score"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], lowercase=True).score
    )
    intl = load_metric("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES, tokenize="intl")
    assert intl["score"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], tokenize="intl").score
    )


def test_compute_translation_metrics():
    scores = compute_translation_metrics(PREDICTIONS, REFERENCES)
    assert set(scores) == {"bleu", "chrf"}
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    identical = compute_translation_metrics(REFERENCES, REFERENCES)
    assert identical["bleu"] == pytest.approx(100.0) and identical["chrf"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        compute_translation_metrics(PREDICTIONS, REFERENCES[:-1])
    with pytest.raises(ValueError):
        compute_translation_metrics([], [])


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer((REFERENCES + PREDICTIONS) * 3, vocab_size=300, min_frequency=1)


def _pad(sequences, value):
    """Right-pad lists of ids into a 2-D array."""
    out = np.full((len(sequences), max(len(s) for s in sequences)), value, dtype=np.int64)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = s
    return out


def test_make_compute_metrics(tokenizer):
    compute_metrics = make_compute_metrics(tokenizer)
    labels = [tokenizer(text_target=r)["input_ids"] for r in REFERENCES]
    # generate() output: decoder start token, tokens, </s>, pad; gathering across batches pads with -100
    generated = [[tokenizer.bos_token_id] + tokenizer(p)["input_ids"] for p in PREDICTIONS]
    predictions = _pad(generated, PAD_ID)
    predictions = np.concatenate([predictions, np.full((len(generated), 3), -100)], axis=1)
    label_ids = _pad(labels, -100)

    scores = compute_metrics(EvalPrediction(predictions=predictions, label_ids=label_ids))
    decoded = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    references = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in labels]
    assert references == REFERENCES and decoded == PREDICTIONS  # the tokenizer round-trips these sentences
    expected = compute_translation_metrics(decoded, references)
    assert scores["bleu"] == pytest.approx(expected["bleu"])
    assert scores["chrf"] == pytest.approx(expected["chrf"])
    assert scores["gen_len"] == pytest.approx(np.mean([len(g) for g in generated]))

    as_tuple = compute_metrics(EvalPrediction(predictions=(predictions, None), label_ids=label_ids))
    assert as_tuple == scores


def test_make_compute_metrics_identical_is_100(tokenizer):
    labels = [tokenizer(text_target=r)["input_ids"] for r in REFERENCES]
    assert all(ids[-1] == EOS_ID for ids in labels)
    scores = make_compute_metrics(tokenizer)(
        EvalPrediction(predictions=_pad(labels, PAD_ID), label_ids=_pad(labels, -100))
    )
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)


def test_make_compute_metrics_rejects_logits(tokenizer):
    logits = np.zeros((2, 5, len(tokenizer)), dtype=np.float32)
    with pytest.raises(ValueError, match="predict_with_generate"):
        make_compute_metrics(tokenizer)(
            EvalPrediction(predictions=logits, label_ids=np.zeros((2, 5), dtype=int))
        )


def test_gen_len_stops_at_the_first_eos_of_beam_filled_rows(tokenizer):
    labels = [tokenizer(text_target=r)["input_ids"] for r in REFERENCES]
    generated = [[tokenizer.bos_token_id] + tokenizer(p)["input_ids"] for p in PREDICTIONS]
    # beam search fills finished rows with </s> instead of padding when pad_token_id is 0
    filled = _pad(generated, EOS_ID)
    scores = make_compute_metrics(tokenizer)(EvalPrediction(predictions=filled, label_ids=_pad(labels, -100)))
    assert scores["gen_len"] == pytest.approx(np.mean([len(g) for g in generated]))
