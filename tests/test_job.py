"""`modeling_s2s/job.py`: what `scripts/train.py` and `scripts/train_accelerate.py` share, without training."""

import numpy as np
import pytest

from modeling_s2s import accelerate_loop, job, training
from modeling_s2s.configuration_s2s import S2SConfig
from modeling_s2s.job import (
    DataArguments,
    TimeBudget,
    check_hub_arguments,
    check_output_dir,
    final_evaluation,
    prefixed,
    recipe_argv,
    write_model_card,
)


class _CharTokenizer:
    """Just what `write_predictions` needs: `pad_token_id` and `batch_decode`."""

    pad_token_id = 0

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" " + "".join(chr(96 + int(i)) for i in row if i != self.pad_token_id) + " " for row in ids]


def test_both_drivers_use_the_shared_job_functions():
    for name in ("ModelArguments", "DataArguments", "check_output_dir", "prepare_tokenizer", "tokenize_splits",
                 "build_model", "final_evaluation", "finish_output_directory", "keep_freed_memory_for_reuse"):
        assert getattr(training, name) is getattr(job, name), name
        assert getattr(accelerate_loop, name) is getattr(job, name), name
    assert issubclass(training.TimeBudgetCallback, job.TimeBudget)
    assert training.build_config is job.build_config  # still importable from training (benchmarks, README)


def test_prefixed_keeps_keys_that_already_carry_the_prefix():
    assert prefixed({"bleu": 1.0, "eval_loss": 2.0, "evaluation": 3}, "eval") == {
        "eval_bleu": 1.0, "eval_loss": 2.0, "eval_evaluation": 3,
    }


def test_recipe_argv_puts_the_recipe_first_and_translates_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 5\nreport_to: [none]\nunused: null\n", encoding="utf-8")
    assert recipe_argv([str(recipe), "--max_steps", "7"]) == ["--max_steps", "5", "--report_to", "none",
                                                               "--max_steps", "7"]
    renamed = recipe_argv([str(recipe)], lambda m: {"max_train_steps": m["max_steps"]})
    assert renamed == ["--max_train_steps", "5"]
    assert recipe_argv(["--seed", "1"]) == ["--seed", "1"]


def _checkpoint(directory, *files, weights=b"weights"):
    """A checkpoint directory with non-empty weights (unless `weights` is None) and `files`."""
    directory.mkdir(parents=True)
    if weights is not None:
        (directory / "model.safetensors").write_bytes(weights)
    for name in files:
        (directory / name).write_text("{}")
    return directory


def test_check_output_dir_resumes_or_refuses(tmp_path):
    assert check_output_dir(tmp_path / "new", None, False) is None
    _checkpoint(tmp_path / "checkpoint-3", "trainer_state.json")
    _checkpoint(tmp_path / "checkpoint-12", "trainer_state.json")
    assert check_output_dir(tmp_path, "true", False) == str(tmp_path / "checkpoint-12")
    assert check_output_dir(tmp_path, True, True) == str(tmp_path / "checkpoint-12")  # resuming: nothing cleared
    with pytest.raises(ValueError, match="already holds an earlier run"):
        check_output_dir(tmp_path, None, False)
    assert check_output_dir(tmp_path, None, True) is None
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        check_output_dir(tmp_path / "new", True, False)
    with pytest.raises(ValueError, match="is not a directory"):
        check_output_dir(tmp_path / "new", str(tmp_path / "nope"), False)
    with pytest.raises(ValueError, match="push_to_hub needs"):
        check_hub_arguments(True, None)


def test_resume_true_skips_incomplete_checkpoints_with_a_warning(tmp_path, caplog):
    """A run killed while saving checkpoint-9 leaves it without trainer_state.json (written last) or with empty
    weights: `--resume_from_checkpoint true` takes the newest complete one and names the skipped ones."""
    _checkpoint(tmp_path / "checkpoint-3", "trainer_state.json")
    _checkpoint(tmp_path / "checkpoint-6", "trainer_state.json")
    _checkpoint(tmp_path / "checkpoint-9")  # weights written, trainer_state.json not yet
    _checkpoint(tmp_path / "checkpoint-12", "trainer_state.json", weights=b"")  # weights cut short
    with caplog.at_level("WARNING", logger="modeling_s2s.job"):
        assert check_output_dir(tmp_path, "true", False) == str(tmp_path / "checkpoint-6")
    warned = caplog.text
    assert "checkpoint-9" in warned and "trainer_state.json" in warned
    assert "checkpoint-12" in warned and "model weights" in warned
    # an incomplete checkpoint named explicitly is refused, naming what it lacks
    with pytest.raises(ValueError, match=r"checkpoint-9.*incomplete.*trainer_state\.json"):
        check_output_dir(tmp_path, str(tmp_path / "checkpoint-9"), False)
    # the Accelerate loop's checkpoints are complete with config.json and training_progress.json
    files = ("config.json", "training_progress.json")  # accelerate_loop.ACCELERATE_CHECKPOINT_FILES
    acc = tmp_path / "acc"
    _checkpoint(acc / "checkpoint-2", *files)
    _checkpoint(acc / "checkpoint-4", "config.json")  # stopped before training_progress.json
    assert check_output_dir(acc, "true", False, checkpoint_files=files) == str(acc / "checkpoint-2")
    only_incomplete = tmp_path / "only"
    _checkpoint(only_incomplete / "checkpoint-5")
    with pytest.raises(ValueError, match=r"no complete checkpoint.*only incomplete ones: checkpoint-5"):
        check_output_dir(only_incomplete, "true", False)
    assert files == accelerate_loop.ACCELERATE_CHECKPOINT_FILES


def test_any_earlier_run_is_refused_without_overwrite(tmp_path):
    """Not only a trained model or checkpoints: predictions, logs, a card or a tokenizer of an earlier run would be
    mixed with the new run's files."""
    for name in ("test_predictions.txt", "log_history.jsonl", "README.md", "tokenizer.json", "runs/"):
        directory = tmp_path / name.strip("/")
        directory.mkdir()
        target = directory / name
        target.mkdir() if name.endswith("/") else target.write_text("x")
        with pytest.raises(ValueError, match=f"already holds an earlier run \\({name.strip('/')}\\)"):
            check_output_dir(directory, None, False)
    user_files = tmp_path / "mine"
    user_files.mkdir()
    (user_files / "notes.txt").write_text("mine")
    (user_files / "data").mkdir()
    assert check_output_dir(user_files, None, False) is None  # only the user's own files: a new run is fine


def test_overwrite_removes_exactly_the_earlier_runs_entries(tmp_path):
    out = tmp_path / "out"
    owned = ["config.json", "model.safetensors", "modeling_s2s.py", "tokenizer.json", "all_results.json",
             "test_predictions.txt", "validation_predictions.txt", "README.md", "trainer_state.json",
             "training_args.bin", "log_history.jsonl"]
    for name in owned:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("old run")
    _checkpoint(out / "checkpoint-6", "trainer_state.json")
    _checkpoint(out / "tmp-checkpoint-7")
    (out / "runs" / "Jan01").mkdir(parents=True)
    user = ["notes.txt", "my_model.safetensors", "checkpoint-notes.txt", "eval.py", "data/train.jsonl"]
    for name in user:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("mine")
    (out / "runs.txt").write_text("mine")
    assert check_output_dir(out, None, True) is None
    removed = job.clear_earlier_run(out, None, True)
    assert set(removed) == set(owned) | {"checkpoint-6", "tmp-checkpoint-7", "runs"}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(user + ["runs.txt"])
    # resuming into output_dir, or no overwrite: nothing is removed
    (out / "checkpoint-6").mkdir()
    assert job.clear_earlier_run(out, str(out / "checkpoint-6"), True) == []
    assert job.clear_earlier_run(out, None, False) == []
    assert (out / "checkpoint-6").is_dir()


def test_job_plan_needs_training_or_a_trained_model_and_the_evaluated_splits():
    all_splits = ["train", "validation", "test"]
    job.check_job_plan(all_splits, do_train=True, do_eval=True, do_predict=True, model_name_or_path=None)
    job.check_job_plan(["validation"], do_train=False, do_eval=True, do_predict=False, model_name_or_path="trained/")
    with pytest.raises(ValueError, match=r"--do_train is false and there is no --model_name_or_path.*untrained"):
        job.check_job_plan(all_splits, do_train=False, do_eval=True, do_predict=True, model_name_or_path=None)
    with pytest.raises(ValueError, match="nothing to do"):
        job.check_job_plan(all_splits, do_train=False, do_eval=False, do_predict=False, model_name_or_path="trained/")
    with pytest.raises(ValueError, match=r"--do_eval true needs a validation split, but the data has only test, "
                                         r"train\. Pass --validation_file .* or --do_eval false"):
        job.check_job_plan(["train", "test"], do_train=True, do_eval=True, do_predict=True, model_name_or_path=None)
    with pytest.raises(ValueError, match=r"--do_predict true needs a test split.*--test_file"):
        job.check_job_plan(["train", "validation"], do_train=True, do_eval=True, do_predict=True, model_name_or_path=None)
    with pytest.raises(ValueError, match=r"--do_train true needs a train split.*--train_file"):
        job.check_job_plan(["validation"], do_train=True, do_eval=True, do_predict=False, model_name_or_path="m/")
    with pytest.raises(ValueError, match=r"--do_eval true \(implied by --eval_strategy epoch"):
        job.check_job_plan(["train"], do_train=True, do_eval=True, do_predict=False, model_name_or_path=None,
                       do_eval_note=" (implied by --eval_strategy epoch)")


@pytest.mark.parametrize("driver", [training, accelerate_loop], ids=["trainer", "accelerate"])
def test_misspelt_or_abbreviated_names_are_refused_naming_the_closest(tmp_path, driver):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rat: 0.5\noutput_dir: out\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"r\.yaml: unknown key 'learning_rat'; did you mean 'learning_rate'\?"):
        driver.parse_arguments([str(recipe)])
    with pytest.raises(ValueError, match=r"unknown option '--learning_rat'; did you mean '--learning_rate'\?"):
        driver.parse_arguments(["--output_dir", "out", "--learning_rat", "0.5"])
    with pytest.raises(ValueError, match=r"unknown option '--learning'; did you mean '--learning_rate'\?"):
        driver.parse_arguments(["--output_dir", "out", "--learning=0.5"])
    with pytest.raises(ValueError, match=r"unexpected argument 'stray'"):
        driver.parse_arguments(["--output_dir", "out", "stray"])
    recipe.write_text("learning_rate: 0.5\noutput_dir: out\n", encoding="utf-8")
    *_, args = driver.parse_arguments([str(recipe), "--seed", "3"])
    assert args.learning_rate == 0.5 and args.seed == 3
    with pytest.raises(job.ArgumentError):  # a JobError: the scripts print it as one line, exit status 2
        driver.parse_arguments(["--output_dir", "out", "--sed", "3"])


def test_misspelt_option_is_one_error_line_from_the_script(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "train.py"
    result = subprocess.run([sys.executable, str(script), "--output_dir", "x", "--num_train_epoch", "1"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "x").exists()
    assert result.stderr.strip() == ("train.py: error: unknown option '--num_train_epoch'; did you mean "
                                     "'--num_train_epochs'? Options are never abbreviated.")


def test_time_budget_counts_from_begin():
    budget = TimeBudget(0.0, "process")
    assert budget.elapsed() == 0.0
    budget.begin()
    assert budget.spent()
    wall = TimeBudget(60.0)
    wall.begin()
    assert not wall.spent()
    with pytest.raises(ValueError, match="must be 'wall' or 'process'"):
        TimeBudget(1.0, "cpu")


def test_final_evaluation_prefixes_metrics_and_writes_predictions(tmp_path):
    calls = []

    def evaluate(split, prefix):
        calls.append((split, prefix))
        return {"bleu": 10.0, f"{prefix}_runtime": 1.5}, np.array([[1, 2, -100], [3, 0, 0]])

    metrics = final_evaluation(evaluate, ["test", "validation"], output_dir=tmp_path, tokenizer=_CharTokenizer(),
                               write_files=True)
    assert calls == [("validation", "eval"), ("test", "test")]
    assert metrics == {"eval_bleu": 10.0, "eval_runtime": 1.5, "test_bleu": 10.0, "test_runtime": 1.5}
    assert (tmp_path / "test_predictions.txt").read_text() == "ab\nc\n"
    assert final_evaluation(evaluate, ["test"], output_dir=tmp_path / "none", tokenizer=_CharTokenizer(),
                            write_files=False) == {"test_bleu": 10.0, "test_runtime": 1.5}
    assert not (tmp_path / "none").exists()


def test_model_card_takes_plain_training_arguments(tmp_path):
    from modeling_s2s.model_card import parse_model_card

    config = S2SConfig(vocab_size=50, decoder_vocab_size=50, hidden_size=8, embedding_size=8)
    metrics = {"num_parameters": 1234, "eval_bleu": 12.5, "eval_chrf": 40.0, "train_runtime": 3.0}
    write_model_card(tmp_path, config, DataArguments(), {"learning_rate": 0.01, "hub_token": "secret",
                                                         "push_to_hub": True, "seed": None}, metrics, None)
    metadata, markdown = parse_model_card(tmp_path / "README.md")
    assert "secret" not in markdown
    assert "learning_rate" in markdown
    reported = {metric["type"]: metric["value"] for entry in metadata["model-index"]
                for result in entry["results"] for metric in result["metrics"]}
    assert reported["bleu"] == pytest.approx(12.5)
