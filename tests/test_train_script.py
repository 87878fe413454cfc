"""End to end: scripts/train.py on a few hundred Multi30k pairs → a Hub-ready directory that loads and translates."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from modeling_s2s.model_card import parse_model_card
from modeling_s2s.training import parse_arguments, run_training

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = REPO / "configuration" / "models" / "tiny.json"


def _args(output_dir: Path, *extra: str) -> list[str]:
    return [
        str(REPO / "configuration" / "recipes" / "quick.yaml"),
        "--model_config", str(TINY_MODEL),
        "--output_dir", str(output_dir),
        "--tokenizer_vocab_size", "300",
        "--max_train_samples", "240",
        "--max_eval_samples", "24",
        "--max_predict_samples", "24",
        "--per_device_train_batch_size", "40",
        "--per_device_eval_batch_size", "24",
        "--max_steps", "6",
        "--eval_strategy", "no",
        "--save_strategy", "steps",
        "--save_steps", "3",
        "--save_total_limit", "5",
        "--load_best_model_at_end", "false",
        "--generation_max_length", "16",
        "--eval_num_beams", "2",
        "--report_to", "none",
        "--max_train_minutes", "0",
        "--learning_rate", "0.01",
        "--warmup_steps", "0",
        "--logging_steps", "1",
        "--dataloader_pin_memory", "false",
        *extra,
    ]


def _train(argv: list[str]) -> dict:
    return run_training(*parse_arguments(argv))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    metrics = _train(_args(output_dir))
    return output_dir, metrics


def test_output_is_a_complete_hub_ready_directory(trained):
    output_dir, metrics = trained
    for name in ("model.safetensors", "config.json", "generation_config.json", "configuration_s2s.py",
                 "modeling_s2s.py", "pipeline_s2s.py", "tokenizer.json", "README.md", "all_results.json",
                 "test_predictions.txt", "validation_predictions.txt"):
        assert (output_dir / name).is_file(), name
    config = json.loads((output_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_s2s.S2SForConditionalGeneration"
    assert "translation" in config["custom_pipelines"]
    assert json.loads((output_dir / "all_results.json").read_text()) == pytest.approx(metrics)
    assert len((output_dir / "test_predictions.txt").read_text().splitlines()) == 24


def test_model_card_parses_and_reports_the_measured_metrics(trained):
    output_dir, metrics = trained
    metadata, markdown = parse_model_card(output_dir / "README.md")
    assert metadata["pipeline_tag"] == "translation"
    assert set(metadata["language"]) == {"de", "en"}
    reported = {
        (result["dataset"]["split"], metric["type"]): metric["value"]
        for entry in metadata["model-index"]
        for result in entry["results"]
        for metric in result["metrics"]
    }
    assert reported[("test", "bleu")] == pytest.approx(metrics["test_bleu"], abs=0.01)
    assert reported[("test", "chrf")] == pytest.approx(metrics["test_chrf"], abs=0.01)
    assert reported[("validation", "bleu")] == pytest.approx(metrics["eval_bleu"], abs=0.01)
    assert "trust_remote_code=True" in markdown


def test_saved_model_translates_through_auto_classes(trained):
    output_dir, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir).eval()
    inputs = tokenizer(["Ein Hund rennt.", "Zwei Männer spielen Fußball im Park."], return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_new_tokens=8)
    assert generated.shape[0] == 2
    assert model.generation_config.num_beams == 2  # the evaluation setting is saved with the model


def test_saved_model_loads_with_remote_code_in_a_clean_process(trained, tmp_path):
    output_dir, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir).eval()
    inputs = tokenizer(["Ein Hund rennt."], return_tensors="pt")
    expected = model.generate(**inputs, max_new_tokens=8, num_beams=2).tolist()
    code = f"""
import importlib.abc, sys

class BlockPackage(importlib.abc.MetaPathFinder):  # as if modeling_s2s were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_s2s":
            raise ImportError("modeling_s2s is not installed")

sys.meta_path.insert(0, BlockPackage())
sys.path = [p for p in sys.path if p not in ("", ".") and not p.startswith({str(REPO)!r})]
try:
    import modeling_s2s  # noqa
    raise SystemExit("modeling_s2s must not be importable here")
except ImportError:
    pass
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline
tok = AutoTokenizer.from_pretrained({str(output_dir)!r}, trust_remote_code=True)
model = AutoModelForSeq2SeqLM.from_pretrained({str(output_dir)!r}, trust_remote_code=True).eval()
print(model.generate(**tok(["Ein Hund rennt."], return_tensors="pt"), max_new_tokens=8, num_beams=2).tolist())
translator = pipeline("translation", model={str(output_dir)!r}, trust_remote_code=True)
print(translator("Ein Hund rennt.", max_new_tokens=8, num_beams=2)[0]["translation_text"])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == expected
    assert lines[-1] == tokenizer.decode(expected[0], skip_special_tokens=True).strip()


def test_resuming_from_a_checkpoint_gives_the_same_weights_as_an_uninterrupted_run(trained, tmp_path):
    output_dir, _ = trained
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    # the state a run killed after step 3 leaves behind: only its step-3 checkpoint
    shutil.copytree(output_dir / "checkpoint-3", interrupted / "checkpoint-3")
    _train(_args(interrupted, "--resume_from_checkpoint", "true", "--do_eval", "false", "--do_predict", "false"))
    uninterrupted = load_file(output_dir / "checkpoint-6" / "model.safetensors")
    resumed = load_file(interrupted / "checkpoint-6" / "model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)


def test_existing_trained_model_is_not_overwritten(trained):
    output_dir, _ = trained
    before = (output_dir / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds a trained model"):
        _train(_args(output_dir))
    assert (output_dir / "model.safetensors").read_bytes() == before


def test_bad_data_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"translation": {"de": "Hallo", "en": "Hello"}}\n{"translation": {"de": "Nur Deutsch"}}\n')
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train\.jsonl.*line 2|line 2.*train\.jsonl"):
        _train(_args(output_dir, "--train_file", str(bad)))
    assert not output_dir.exists() or not any(output_dir.iterdir())


@pytest.mark.parametrize("grouping", [None, "source", "target"])
def test_group_by_length_sorts_megabatches_by_the_chosen_length(tmp_path, grouping):
    """`--length_grouping source` (default) keys on source length, `target` on target length (the decoder steps
    through the longest target); the other length breaks ties."""
    import random

    from datasets import Dataset
    from transformers import Seq2SeqTrainingArguments
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from modeling_s2s.training import S2STrainer

    rng = random.Random(0)
    sources = [[5] * rng.randint(1, 30) for _ in range(512)]
    targets = [[5] * rng.randint(1, 30) for _ in range(512)]  # independent of the source lengths
    dataset = Dataset.from_dict({"input_ids": sources, "labels": targets})
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=16, train_sampling_strategy="group_by_length",
        use_cpu=True, report_to=[],
    )
    chosen = {} if grouping is None else {"length_grouping": grouping}
    trainer = S2STrainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=dataset, **chosen)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    order = list(sampler)
    assert sorted(order) == list(range(512))
    # transformers cuts the permutation into megabatches of min(512 // (16 * 4), 50) * 16 = 128 examples and sorts
    # each by the key, longest first (then swaps the overall longest example to the very front)
    for start in range(0, 512, 128):
        megabatch = order[start : start + 128][1:]
        pairs = [(len(targets[i]), len(sources[i])) for i in megabatch]
        keys = pairs if grouping == "target" else [(s, t) for t, s in pairs]
        assert keys == sorted(keys, reverse=True)


def test_unknown_length_grouping_is_refused_before_anything_is_written(tmp_path):
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"`length_grouping`='tgt' must be one of \('source', 'target'\)"):
        parse_arguments(["--output_dir", str(output_dir), "--length_grouping", "tgt"])
    assert not output_dir.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and /proc are Linux features")
def test_keep_freed_memory_for_reuse_keeps_large_blocks_instead_of_unmapping_them():
    """A freed 64 MiB tensor is handed back to the kernel by default, and kept for the next allocation after
    `keep_freed_memory_for_reuse()` (what scripts/train.py calls before training)."""
    code = """
import torch
from modeling_s2s.training import keep_freed_memory_for_reuse

def rss_kib():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])

def kib_released_by_freeing_a_64_mib_tensor():
    tensor = torch.ones(16 * 2**20)
    before = rss_kib()
    del tensor
    return before - rss_kib()

print(kib_released_by_freeing_a_64_mib_tensor(), keep_freed_memory_for_reuse(),
      kib_released_by_freeing_a_64_mib_tensor())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    released_by_default, enabled, released_after = result.stdout.split()
    assert int(released_by_default) >= 60 * 1024
    assert enabled == "True"
    assert int(released_after) < 1024
