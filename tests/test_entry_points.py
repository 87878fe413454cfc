"""The entry points users call — `Seq2SeqTrainer` evaluation, `generate()`, the pipeline, `scripts/translate.py` —
at the base preset's size (`configuration/models/base.json`), in the dtypes users run: fp32, CPU bf16 autocast and
bf16 weights. Each gives the same translations with the fast paths on and off (`config.fast_paths`), on a model
trained briefly so that its predictions are decisive rather than near ties."""

from __future__ import annotations

import copy
import importlib.util
import json
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from conftest import PAD, build_digit_tokenizer
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, pipeline

from modeling_s2s import S2SConfig, S2SForConditionalGeneration, fast_paths, save_for_pipeline

ROOT = Path(__file__).resolve().parent.parent
BASE = json.loads((ROOT / "configuration" / "models" / "base.json").read_text())
# Reverse a string of digits: a task the base shape learns in a few dozen steps.
SOURCES = ["1234", "98765", "5550", "2468", "13579", "30", "777", "86420", "1029384756", "4",
           "654", "11223", "9087", "5", "246813579", "0000"]


def _reverse_pairs(count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        length = int(torch.randint(1, 10, (1,), generator=generator))
        digits = "".join(str(int(d)) for d in torch.randint(0, 10, (length,), generator=generator))
        pairs.append((digits, digits[::-1]))
    return pairs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A base-size model trained for 100 steps on digit reversal, with its tokenizer."""
    tokenizer = build_digit_tokenizer()
    config = S2SConfig(**{**BASE, "dropout": 0.0, "embedding_dropout": 0.0}, vocab_size=len(tokenizer),
                       pad_token_id=PAD, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    torch.manual_seed(0)
    model = S2SForConditionalGeneration(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    pairs = _reverse_pairs(100 * 32, seed=0)
    for step in range(100):
        batch = pairs[step * 32 : (step + 1) * 32]
        inputs = tokenizer([s for s, _ in batch], padding=True, return_tensors="pt")
        labels = tokenizer([t for _, t in batch], padding=True, return_tensors="pt")["input_ids"]
        labels[labels == PAD] = -100
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.generation_config.max_length = 16
    directory = Path(save_for_pipeline(model, tokenizer, tmp_path_factory.mktemp("base") / "model"))
    return model, tokenizer, directory


def _generate(model, tokenizer, fast: bool, dtype: str, num_beams: int) -> list[str]:
    model.config.fast_paths = fast
    inputs = tokenizer(SOURCES, padding=True, return_tensors="pt")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16-autocast" else nullcontext()
    with torch.no_grad(), autocast:
        output = model.generate(**inputs, num_beams=num_beams, max_new_tokens=14)
    model.config.fast_paths = True
    return tokenizer.batch_decode(output, skip_special_tokens=True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16-autocast", "bf16-weights", "int8"])
@pytest.mark.parametrize("num_beams", [1, 5])
def test_generate_at_base_size_gives_the_reference_translations(trained, dtype, num_beams):
    """Fast paths against the fp32 reference; int8: `config.int8_decoding` (where the CPU has oneDNN int8)."""
    model, tokenizer, _ = trained
    if dtype == "bf16-weights":
        model = copy.deepcopy(model).to(torch.bfloat16)
    if dtype == "int8":
        model = copy.deepcopy(model)
        model.config.int8_decoding = True
    fast = _generate(model, tokenizer, True, dtype, num_beams)
    if dtype == "int8":
        assert _decoded_in_int8(model) == fast_paths.int8_decoding_applies(model)
    reference = _generate(model, tokenizer, False, dtype, num_beams)
    _assert_same_translations(fast, reference, exact=dtype == "fp32")


def _decoded_in_int8(model) -> bool:
    """Whether the decoder's last generate() call ran its matmuls through int8 weights."""
    packed = fast_paths._weights_of_decoder.get(model.get_decoder())
    return packed is not None and packed.dtype == torch.int8


def _correct(translations: list[str]) -> int:
    return sum(out == source[::-1] for out, source in zip(translations, SOURCES, strict=True))


def _assert_same_translations(fast: list[str], reference: list[str], exact: bool) -> None:
    """fp32: identical. bf16 rounds differently when the order of operations differs (per-length encoder, batch
    composition), and int8 approximates the matmuls, which may flip a near tie: all but one sentence identical,
    and at most one fewer correct."""
    assert len(fast) == len(reference) == len(SOURCES)
    if exact:
        assert fast == reference
    else:
        assert sum(a != b for a, b in zip(fast, reference)) <= 1, (fast, reference)
        assert _correct(fast) >= _correct(reference) - 1, (fast, reference)
    # the model really learnt the task, so the comparison is between decisive predictions
    assert _correct(reference) >= len(SOURCES) // 2, reference


def _trainer_predictions(model, tokenizer, fast: bool, num_beams: int, tmp_path) -> list[str]:
    model = copy.deepcopy(model)
    model.config.fast_paths = fast
    dataset = Dataset.from_dict({
        "input_ids": [tokenizer(s)["input_ids"] for s in SOURCES],
        "labels": [tokenizer(s[::-1])["input_ids"] for s in SOURCES],
    })
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path / f"trainer-{fast}"), per_device_eval_batch_size=8, predict_with_generate=True,
        generation_num_beams=num_beams, generation_max_length=16, bf16=True, use_cpu=True, report_to="none",
    )
    trainer = Seq2SeqTrainer(model=model, args=args, eval_dataset=dataset,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    predictions = trainer.predict(dataset).predictions
    predictions[predictions == -100] = PAD
    return tokenizer.batch_decode(predictions, skip_special_tokens=True)


@pytest.mark.parametrize("num_beams", [1, 5])
def test_trainer_bf16_evaluation_on_cpu_generates_the_reference_translations(trained, num_beams, tmp_path):
    """`--bf16 --use_cpu` evaluation: Accelerate runs the model's forward under bf16 autocast while generate()
    calls the encoder directly (the combination that once crashed with a float/bfloat16 matmul)."""
    model, tokenizer, _ = trained
    fast = _trainer_predictions(model, tokenizer, True, num_beams, tmp_path)
    reference = _trainer_predictions(model, tokenizer, False, num_beams, tmp_path)
    _assert_same_translations(fast, reference, exact=False)


def test_pipeline_at_base_size_gives_the_reference_translations(trained):
    _, _, directory = trained
    translator = pipeline("translation", model=str(directory), trust_remote_code=True)
    fast = [out["translation_text"] for out in translator(SOURCES, num_beams=5, repetition_penalty=1.2)]
    translator.model.config.fast_paths = False
    reference = [out["translation_text"] for out in translator(SOURCES, num_beams=5, repetition_penalty=1.2)]
    _assert_same_translations(fast, reference, exact=True)


def test_pipeline_decodes_in_int8_when_asked_through_model_kwargs(trained):
    _, _, directory = trained
    translator = pipeline("translation", model=str(directory), trust_remote_code=True,
                          model_kwargs={"int8_decoding": True})
    assert translator.model.config.int8_decoding is True
    int8 = [out["translation_text"] for out in translator(SOURCES, num_beams=5)]
    assert _decoded_in_int8(translator.model) == fast_paths.int8_decoding_applies(translator.model)
    translator.model.config.int8_decoding = False
    fp32 = [out["translation_text"] for out in translator(SOURCES, num_beams=5)]
    _assert_same_translations(int8, fp32, exact=False)


def _translate_script():
    spec = importlib.util.spec_from_file_location("translate_script", ROOT / "scripts" / "translate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_translate_script_at_base_size_gives_the_reference_translations(trained, tmp_path):
    model, tokenizer, directory = trained
    reference_dir = tmp_path / "reference"
    reference_model = copy.deepcopy(model)
    reference_model.config.fast_paths = False
    reference_model.save_pretrained(reference_dir)
    tokenizer.save_pretrained(reference_dir)
    script = _translate_script()
    source_file = tmp_path / "sources.txt"
    source_file.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    outputs = {}
    for name, model_dir in (("fast", directory), ("reference", reference_dir)):
        output = tmp_path / f"{name}.txt"
        script.main(["--model", str(model_dir), "--input", str(source_file), "--output", str(output),
                     "--num_beams", "5", "--batch_size", "6"])
        outputs[name] = output.read_text(encoding="utf-8").splitlines()
    _assert_same_translations(outputs["fast"], outputs["reference"], exact=True)


def test_translate_script_decodes_in_int8_on_request(trained, tmp_path, capsys, monkeypatch):
    model, tokenizer, directory = trained
    script = _translate_script()
    source_file = tmp_path / "sources.txt"
    source_file.write_text("\n".join(SOURCES) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="--int8 decodes on the CPU .*--device is 'cuda'"):
        script.main(["--model", str(directory), "--input", str(source_file), "--int8", "--device", "cuda"])
    outputs, int8_calls = {}, []
    original = fast_paths.int8_linear
    monkeypatch.setattr(fast_paths, "int8_linear", lambda *a: int8_calls.append(1) or original(*a))
    for name, extra in (("fp32", []), ("int8", ["--int8"])):
        output = tmp_path / f"{name}.txt"
        int8_calls.clear()
        script.main(["--model", str(directory), "--input", str(source_file), "--output", str(output),
                     "--num_beams", "5", *extra])
        outputs[name] = output.read_text(encoding="utf-8").splitlines()
    applies = fast_paths.int8_decoding_applies(model)
    assert bool(int8_calls) == applies  # the --int8 run (the last) decoded in int8 where it applies
    _assert_same_translations(outputs["int8"], outputs["fp32"], exact=False)
    assert ("--int8 does not apply" in capsys.readouterr().err) is not applies
    monkeypatch.setattr(fast_paths, "_cpu_has_onednn_int8", lambda: False)  # a CPU without oneDNN int8
    script.main(["--model", str(directory), "--input", str(source_file), "--output", str(tmp_path / "x.txt"),
                 "--int8"])
    assert "--int8 does not apply to this model here" in capsys.readouterr().err
