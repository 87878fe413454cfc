"""scripts/translate.py and modeling_s2s.inference: batch translation, scoring, attention plots."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from modeling_s2s import S2SConfig, S2SForConditionalGeneration
from modeling_s2s.evaluation import compute_translation_metrics
from modeling_s2s.inference import attention_matrix, plot_attention, translate
from modeling_s2s.tokenization import train_tokenizer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "translate.py"
SOURCES = [
    "Ein Hund rennt durch den Schnee.",
    "Zwei Männer spielen Fußball auf einer Wiese.",
    "Eine Frau liest ein Buch.",
    "Kinder spielen im Park neben einem großen Baum.",
    "Ein Mann fährt Fahrrad.",
]
TARGETS = [
    "A dog runs through the snow.",
    "Two men play soccer on a meadow.",
    "A woman reads a book.",
    "Children play in the park next to a big tree.",
    "A man rides a bike.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(SOURCES + TARGETS, vocab_size=120, min_frequency=1)
    torch.manual_seed(0)
    config = S2SConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, dropout=0.0)
    model = S2SForConditionalGeneration(config)
    model.generation_config.max_length = 12
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory, model.eval(), tokenizer


def _load_script():
    spec = importlib.util.spec_from_file_location("translate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_length_sorted_batches_keep_input_order_and_match_single_sentences(model_dir):
    _, model, tokenizer = model_dir
    batched = translate(model, tokenizer, SOURCES, batch_size=2, num_beams=2)
    singles = [translate(model, tokenizer, [s], batch_size=1, num_beams=2)[0] for s in SOURCES]
    assert batched == singles


def test_script_writes_one_line_per_input_and_scores_against_references(model_dir, tmp_path, capsys):
    directory, model, tokenizer = model_dir
    source_file, reference_file, output_file = tmp_path / "src.de", tmp_path / "ref.en", tmp_path / "hyp.en"
    source_file.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    reference_file.write_text("\n".join(TARGETS) + "\n", encoding="utf-8")
    report = _load_script().main([
        "--model", str(directory), "--input", str(source_file), "--output", str(output_file),
        "--references", str(reference_file), "--num_beams", "2", "--batch_size", "3",
        "--plot-attention", "1", "--plot-dir", str(tmp_path / "plots"),
    ])
    hypotheses = output_file.read_text(encoding="utf-8").splitlines()
    assert hypotheses == translate(model, tokenizer, SOURCES, num_beams=2)
    assert report == compute_translation_metrics(hypotheses, TARGETS)
    assert json.loads(capsys.readouterr().err.splitlines()[-2]) == report
    png = tmp_path / "plots" / "attention_1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_rejects_mismatched_references_and_bad_plot_index(model_dir, tmp_path):
    directory, _, _ = model_dir
    source_file, reference_file = tmp_path / "src.de", tmp_path / "ref.en"
    source_file.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    reference_file.write_text("\n".join(TARGETS[:2]) + "\n", encoding="utf-8")
    script = _load_script()
    with pytest.raises(SystemExit, match="has 2 lines but the input has 5"):
        script.main(["--model", str(directory), "--input", str(source_file), "--references", str(reference_file)])
    with pytest.raises(SystemExit, match="index 7 is outside 0..4"):
        script.main(["--model", str(directory), "--input", str(source_file), "--plot-attention", "7"])


def test_attention_matrix_rows_are_distributions_over_the_source(model_dir):
    _, model, tokenizer = model_dir
    source_tokens, target_tokens, alignment = attention_matrix(model, tokenizer, SOURCES[0], num_beams=1)
    assert alignment.shape == (len(target_tokens), len(source_tokens))
    torch.testing.assert_close(alignment.sum(-1), torch.ones(len(target_tokens)))
    with pytest.raises(ValueError, match="expected"):
        plot_attention(source_tokens, target_tokens[:-1], alignment, "unused.png")


def test_empty_input_line_is_reported(model_dir):
    _, model, tokenizer = model_dir
    with pytest.raises(ValueError, match="line 2 is empty"):
        translate(model, tokenizer, ["Ein Hund.", "  "])


