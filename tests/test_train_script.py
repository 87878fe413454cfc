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

from modeling_s2s.job import earlier_run_entries
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
    # everything the run wrote is in job.OUTPUT_DIR_ENTRIES (what --overwrite_output_dir removes)
    assert earlier_run_entries(output_dir) == sorted(p.name for p in output_dir.iterdir())


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


def test_saved_model_reproduces_the_written_predictions_and_metrics(trained):
    """What a user relies on: the saved model, reloaded through the Auto classes with its saved generation settings,
    translates the test sentences into exactly the lines of test_predictions.txt, and all_results.json's test
    BLEU/chrF are those of these lines against the references."""
    from modeling_s2s.data import load_parallel_data
    from modeling_s2s.evaluation import compute_translation_metrics

    output_dir, metrics = trained
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir).eval()
    assert model.generation_config.num_beams == 2  # --eval_num_beams is saved with the model
    saved = json.loads((output_dir / "generation_config.json").read_text())
    assert not {"min_length", "top_k", "repetition_penalty"} & saved.keys()  # not the defaults evaluation filled in
    pairs = load_parallel_data("de", "en")["test"]["translation"][:24]  # --max_predict_samples 24
    inputs = tokenizer([pair["de"] for pair in pairs], return_tensors="pt", padding=True)
    generated = model.generate(**inputs, max_length=16)  # --generation_max_length 16; beams from the saved config
    predictions = [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    written = (output_dir / "test_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert predictions == written
    assert len(set(written)) > 1  # a model that says the same thing for everything would prove little
    # the metrics score the references as the tokenizer round-trips them (what Seq2SeqTrainer decodes from labels)
    references = [tokenizer.decode(tokenizer(text_target=pair["en"])["input_ids"], skip_special_tokens=True).strip()
                  for pair in pairs]
    recomputed = compute_translation_metrics(written, references)
    saved = json.loads((output_dir / "all_results.json").read_text())
    assert saved["test_bleu"] == pytest.approx(recomputed["bleu"], abs=1e-4) == metrics["test_bleu"]
    assert saved["test_chrf"] == pytest.approx(recomputed["chrf"], abs=1e-4) == metrics["test_chrf"]


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


def test_resuming_from_a_checkpoint_gives_the_same_weights_as_an_uninterrupted_run(trained, tmp_path, caplog):
    output_dir, _ = trained
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    # the state a run killed while saving step 6 leaves behind: its complete step-3 checkpoint, and a checkpoint-6
    # with the weights written but not yet the optimizer, scheduler, RNG states and trainer_state.json (saved last)
    shutil.copytree(output_dir / "checkpoint-3", interrupted / "checkpoint-3")
    (interrupted / "checkpoint-6").mkdir()
    shutil.copy(output_dir / "checkpoint-6" / "model.safetensors", interrupted / "checkpoint-6")
    with caplog.at_level("WARNING", logger="modeling_s2s.job"):
        _train(_args(interrupted, "--resume_from_checkpoint", "true", "--do_eval", "false", "--do_predict", "false",
                     "--eval_strategy", "no"))
    assert f"Skipping the incomplete checkpoint {interrupted / 'checkpoint-6'}" in caplog.text
    uninterrupted = load_file(output_dir / "checkpoint-6" / "model.safetensors")
    resumed = load_file(interrupted / "checkpoint-6" / "model.safetensors")
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)
    state = json.loads((interrupted / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]


def test_an_interrupted_save_over_an_existing_checkpoint_leaves_the_previous_one_usable(tmp_path):
    """A resumed run re-saving a step it saved before: stopped halfway, the half-overwritten checkpoint must not look
    complete (the Trainer writes trainer_state.json last; S2STrainer removes the old one first)."""
    from transformers import Seq2SeqTrainingArguments

    from modeling_s2s import S2SConfig, S2SForConditionalGeneration
    from modeling_s2s.job import check_output_dir
    from modeling_s2s.training import S2STrainer

    for step in (3, 6):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"weights")
        (checkpoint / "trainer_state.json").write_text("{}")
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="steps")
    model = S2SForConditionalGeneration(S2SConfig(vocab_size=12, embedding_size=4, hidden_size=4))
    trainer = S2STrainer(model=model, args=args)
    trainer.state.global_step = 6

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while saving")

    trainer.save_model = killed
    with pytest.raises(KeyboardInterrupt):
        trainer._save_checkpoint(trainer.model, None)
    assert check_output_dir(tmp_path, "true", False) == str(tmp_path / "checkpoint-3")


def test_existing_trained_model_is_not_overwritten(trained):
    output_dir, _ = trained
    before = (output_dir / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds an earlier run"):
        _train(_args(output_dir))
    assert (output_dir / "model.safetensors").read_bytes() == before


def test_bad_data_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"translation": {"de": "Hallo", "en": "Hello"}}\n{"translation": {"de": "Nur Deutsch"}}\n')
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train\.jsonl.*line 2|line 2.*train\.jsonl"):
        _train(_args(output_dir, "--train_file", str(bad)))
    assert not output_dir.exists() or not any(output_dir.iterdir())


def test_overwrite_replaces_the_earlier_run_and_keeps_the_users_files(trained, tmp_path):
    """`--overwrite_output_dir true` over an earlier run: none of its checkpoints, predictions or logs stay beside
    the new run (so `--resume_from_checkpoint true` cannot pick up the earlier run's checkpoint), and files the job
    did not write stay."""
    from modeling_s2s.job import check_output_dir

    earlier, _ = trained
    output_dir = tmp_path / "out"
    shutil.copytree(earlier, output_dir)
    (output_dir / "runs" / "Jan01_00-00-00").mkdir(parents=True)  # the earlier run's TensorBoard logs
    (output_dir / "runs" / "Jan01_00-00-00" / "events.out.tfevents.1").write_bytes(b"old")
    assert {"checkpoint-3", "checkpoint-6", "test_predictions.txt"} <= {p.name for p in output_dir.iterdir()}
    (output_dir / "notes.md").write_text("my notes")
    (output_dir / "data").mkdir()
    (output_dir / "data" / "extra.jsonl").write_text("{}")
    metrics = _train(_args(output_dir, "--overwrite_output_dir", "true", "--max_steps", "2", "--save_steps", "1",
                           "--do_predict", "false", "--report_to", "none"))
    names = {p.name for p in output_dir.iterdir()}
    assert {"checkpoint-1", "checkpoint-2", "model.safetensors", "validation_predictions.txt", "notes.md",
            "data"} <= names
    assert not names & {"checkpoint-3", "checkpoint-6", "test_predictions.txt", "runs"}, names
    assert (output_dir / "notes.md").read_text() == "my notes" and (output_dir / "data" / "extra.jsonl").is_file()
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    assert not any(key.startswith("test_") for key in json.loads((output_dir / "all_results.json").read_text()))
    assert "test_bleu" not in metrics
    assert check_output_dir(output_dir, "true", False) == str(output_dir / "checkpoint-2")


def test_a_job_without_training_or_a_split_it_evaluates_is_refused_before_writing(tmp_path):
    output_dir = tmp_path / "out"
    # no --do_train and nothing trained to evaluate: it would publish an untrained model with a model card
    with pytest.raises(ValueError, match=r"--do_train is false and there is no --model_name_or_path"):
        _train(_args(output_dir, "--do_train", "false"))
    # --do_predict (the recipe's) with train and validation files only: the card would claim a test evaluation
    pairs = [{"translation": {"de": f"Ein Hund {i}.", "en": f"A dog {i}."}} for i in range(8)]
    for name in ("train", "validation"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    files = ["--train_file", str(tmp_path / "train.jsonl"), "--validation_file", str(tmp_path / "validation.jsonl")]
    with pytest.raises(ValueError, match=r"--do_predict true needs a test split, but the data has only train, "
                                         r"validation\. Pass --test_file"):
        _train(_args(output_dir, *files))
    with pytest.raises(ValueError, match=r"--do_eval true \(implied by --eval_strategy steps.*needs a validation"):
        _train(_args(output_dir, "--train_file", str(tmp_path / "train.jsonl"), "--do_predict", "false",
                     "--eval_strategy", "steps", "--eval_steps", "3", "--do_eval", "false"))
    assert not output_dir.exists()


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
