"""scripts/translate.py and modeling_s2s.inference: batch translation, scoring, attention plots."""

import importlib.util
import io
import json
import os
from pathlib import Path

import pytest
import torch

from modeling_s2s import S2SConfig, S2SForConditionalGeneration
from modeling_s2s.evaluation import compute_translation_metrics
from modeling_s2s.inference import (
    SourceTruncationWarning,
    attention_matrix,
    default_max_source_length,
    plot_attention,
    translate,
)
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




# ---- input checks and truncation ---------------------------------------------------------------------------------

LONG = "Ein Hund rennt durch den Schnee und zwei Männer spielen Fußball auf einer Wiese neben einem großen Baum."
MISSING_MODEL = "/nonexistent/model-dir"  # loading it would fail: the checks below must come first


def test_translate_warns_how_many_inputs_were_truncated_and_to_what_length(model_dir):
    _, model, tokenizer = model_dir
    sources = [SOURCES[2], LONG, SOURCES[4]]
    limit = 30
    lengths = [len(ids) for ids in tokenizer(sources)["input_ids"]]
    assert lengths[1] > limit >= max(lengths[0], lengths[2]), lengths
    expected_truncated = [i for i, n in enumerate(lengths) if n > limit]
    with pytest.warns(SourceTruncationWarning) as record:
        truncated = translate(model, tokenizer, sources, max_source_length=limit, num_beams=1)
    assert len(record) == 1
    message = str(record[0].message)
    assert f"{len(expected_truncated)} of 3 inputs are longer than {limit} tokens" in message, message
    assert f"truncated to {limit} tokens" in message and "max_source_length" in message
    assert record[0].filename == __file__  # points at the caller
    # Truncation changes the input of the long sentence only.
    whole = translate(model, tokenizer, sources, max_source_length=None, num_beams=1)
    assert truncated[0] == whole[0] and truncated[2] == whole[2]
    inputs = tokenizer([LONG], truncation=True, max_length=limit, return_tensors="pt")
    assert inputs["input_ids"].shape[1] == limit
    with torch.no_grad():
        reference = tokenizer.batch_decode(model.generate(**inputs, num_beams=1), skip_special_tokens=True)
    assert truncated[1] == reference[0].strip()


def test_translate_does_not_warn_without_truncation(model_dir, recwarn):
    _, model, tokenizer = model_dir
    translate(model, tokenizer, [LONG], max_source_length=None, num_beams=1)
    translate(model, tokenizer, [LONG], max_source_length=1000, num_beams=1)
    translate(model, tokenizer, [LONG], max_source_length=3, num_beams=1, warn_truncation=False)
    assert not [w for w in recwarn if issubclass(w.category, SourceTruncationWarning)]


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "8"])
def test_translate_rejects_bad_max_source_length(model_dir, value):
    _, model, tokenizer = model_dir
    with pytest.raises(ValueError, match=rf"`max_source_length`={value!r}.*None .*>= 1"):
        translate(model, tokenizer, SOURCES, max_source_length=value)


def test_default_max_source_length_follows_a_sane_tokenizer_limit(model_dir):
    _, _, tokenizer = model_dir

    class Limit:
        def __init__(self, value):
            self.model_max_length = value

    assert default_max_source_length(tokenizer) == tokenizer.model_max_length == 512
    assert default_max_source_length(Limit(128)) == 128
    assert default_max_source_length(Limit(int(1e30))) == 256  # transformers' "no limit" placeholder
    assert default_max_source_length(Limit(0)) == 256
    assert default_max_source_length(Limit(None)) == 256


def test_script_max_source_length_warns_on_stderr_and_truncates(model_dir, tmp_path, capsys):
    directory, model, tokenizer = model_dir
    source_file, output_file = tmp_path / "src.de", tmp_path / "hyp.en"
    sources = [SOURCES[2], LONG, LONG, SOURCES[4]]
    source_file.write_text("\n".join(sources) + "\n", encoding="utf-8")
    args = ["--model", str(directory), "--input", str(source_file), "--output", str(output_file), "--num_beams", "1"]
    _load_script().main([*args, "--max_source_length", "30"])
    err = capsys.readouterr().err
    assert "warning: 2 of 4 lines are longer than 30 tokens and are truncated to 30 tokens (lines 2, 3)" in err, err
    assert "--max_source_length" in err
    expected = translate(model, tokenizer, sources, max_source_length=30, num_beams=1, warn_truncation=False)
    assert output_file.read_text(encoding="utf-8").splitlines() == expected

    _load_script().main([*args, "--max_source_length", "0"])  # 0: no limit
    assert "warning" not in capsys.readouterr().err
    assert output_file.read_text(encoding="utf-8").splitlines() == translate(
        model, tokenizer, sources, max_source_length=None, num_beams=1
    )
    _load_script().main(args)  # default: the tokenizer's model_max_length (512): nothing truncated
    assert "warning" not in capsys.readouterr().err


def test_script_rejects_a_negative_max_source_length(capsys):
    with pytest.raises(SystemExit):
        _load_script().main(["--model", MISSING_MODEL, "--max_source_length", "-1"])
    err = capsys.readouterr().err
    assert "--max_source_length" in err and "-1 is negative" in err and "0 for no limit" in err, err


def test_script_checks_the_output_path_before_loading_anything(tmp_path):
    script = _load_script()
    source_file = tmp_path / "src.de"
    source_file.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    base = ["--model", MISSING_MODEL, "--input", str(source_file)]
    missing = tmp_path / "no_such_dir" / "out.en"
    with pytest.raises(SystemExit, match=rf"--output {missing}.*{missing.parent} does not exist"):
        script.main([*base, "--output", str(missing)])
    with pytest.raises(SystemExit, match=rf"--output {tmp_path} is a directory"):
        script.main([*base, "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="is not a directory"):
        script.main([*base, "--output", str(source_file / "out.en")])


def test_script_refuses_an_unwritable_output_before_loading(tmp_path, monkeypatch):
    script = _load_script()
    existing = tmp_path / "old.en"
    existing.write_text("x\n", encoding="utf-8")
    # Root may write anywhere, so the permission answer is simulated (the script asks `os.access`).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SystemExit, match=rf"directory {tmp_path} is not writable"):
        script.main(["--model", MISSING_MODEL, "--output", str(tmp_path / "new.en")])
    with pytest.raises(SystemExit, match=rf"--output {existing} exists and is not writable"):
        script.main(["--model", MISSING_MODEL, "--output", str(existing)])


def test_script_refuses_an_empty_stdin_line_before_loading(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("Ein Hund.\n \t\nEine Frau.\n"))
    with pytest.raises(ValueError, match="line 2 is empty or whitespace-only"):
        _load_script().main(["--model", MISSING_MODEL])


def test_empty_input_list_gives_no_translations(model_dir):
    _, model, tokenizer = model_dir
    assert translate(model, tokenizer, []) == []
