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


def test_check_output_dir_resumes_or_refuses(tmp_path):
    assert check_output_dir(tmp_path / "new", None, False) is None
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    assert check_output_dir(tmp_path, "true", False) == str(tmp_path / "checkpoint-12")
    with pytest.raises(ValueError, match="already holds"):
        check_output_dir(tmp_path, None, False)
    assert check_output_dir(tmp_path, None, True) is None
    with pytest.raises(ValueError, match="holds no checkpoint"):
        check_output_dir(tmp_path / "new", True, False)
    with pytest.raises(ValueError, match="push_to_hub needs"):
        check_hub_arguments(True, None)


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
