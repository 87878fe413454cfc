"""The Trainer driver behind `scripts/train.py`: parallel text → tokenizer → `Seq2SeqTrainer` → evaluated,
Hub-ready model.

Arguments come from `HfArgumentParser` over `ModelArguments`, `DataArguments` and `Seq2SeqTrainingArguments`,
read from a JSON/YAML recipe (see `configuration/recipes/`) with command-line overrides on top. Everything the
job shares with `scripts/train_accelerate.py` (data, tokenizer, model, final evaluation files, the Hub-ready
directory, model card, push) is in `job.py`; here are only the Trainer's parts (sampler, callbacks, checkpoints).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import SequentialSampler
from transformers import (
    EarlyStoppingCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length

from .data import check_length_grouping, pair_length_keys
from .job import (
    TRAINER_CHECKPOINT_FILES,
    DataArguments,
    ModelArguments,
    TimeBudget,
    build_config,
    build_model,
    check_hub_arguments,
    check_job_plan,
    check_output_dir,
    clear_earlier_run,
    configure_logging,
    final_evaluation,
    final_generation_kwargs,
    finish_output_directory,
    keep_freed_memory_for_reuse,
    load_raw_datasets,
    parse_job_arguments,
    prefixed,
    prepare_tokenizer,
    seq2seq_collator,
    tokenize_splits,
)

logger = logging.getLogger("modeling_s2s.training")

__all__ = [
    "DataArguments",
    "ModelArguments",
    "S2STrainer",
    "TimeBudgetCallback",
    "build_config",
    "keep_freed_memory_for_reuse",
    "parse_arguments",
    "run_training",
]


class TimeBudgetCallback(TimeBudget, TrainerCallback):
    """Stops training once `minutes` have passed since training began (the clocks of :class:`job.TimeBudget`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin()

    def on_step_end(self, args, state, control, **kwargs):
        if self.spent():
            self.log_stop(state.global_step)
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


class S2STrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose `group_by_length` sorts pairs by both lengths (`data.pair_length_keys`).

    `length_grouping="source"` (default): source length, then target length — transformers sorts by the length of
    `input_ids` only; the tie-break trims target padding (25-minute bf16 run: 9.3 epochs instead of 8.3).
    `length_grouping="target"`: target length, then source length, which cuts target padding on Multi30k from 30 %
    to 3 %; its 25-minute bf16 runs scored lower, its fp32 run higher (benchmarks/RESULTS_quality.md). Both
    groupings train at about the same speed per step: with the default fast paths the output layer runs only
    inside the label spans, so target padding costs little.
    """

    def __init__(self, *args, length_grouping: str = "source", **kwargs):
        self.length_grouping = check_length_grouping(length_grouping)
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        # Saving into an existing checkpoint-<step> (a resumed run passing a step it saved before): remove its
        # trainer_state.json (written last) first, so that a save interrupted halfway leaves that checkpoint
        # incomplete (skipped by `--resume_from_checkpoint true`) instead of complete-looking with mixed files.
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            for name in TRAINER_CHECKPOINT_FILES:
                (folder / name).unlink(missing_ok=True)
        return super()._save_checkpoint(model, trial)

    def _get_eval_sampler(self, eval_dataset):
        # transformers 5 also sorts *evaluation* batches by length (random megabatches) under group_by_length, so
        # `<split>_predictions.txt` would not follow the order of the evaluated file: evaluate in dataset order.
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        columns = getattr(dataset, "column_names", None) or []
        if self.args.train_sampling_strategy != "group_by_length" or not {"input_ids", "labels"} <= set(columns):
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=pair_length_keys(dataset, first=self.length_grouping),
        )


def parse_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, Seq2SeqTrainingArguments]:
    """Parse `[recipe.yaml|recipe.json] [--key value ...]`; command-line values override the recipe's. Unknown or
    abbreviated recipe keys and options raise `job.ArgumentError` (`job.parse_job_arguments`)."""
    return parse_job_arguments((ModelArguments, DataArguments, Seq2SeqTrainingArguments), argv)


def check_world_size(training_args: Seq2SeqTrainingArguments) -> None:
    """Refuse several processes on a machine without CUDA unless `use_cpu` makes them train one model (gloo DDP)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not training_args.use_cpu:
        # Without use_cpu, torchrun on a CPU-only machine trains independent copies (transformers only warns).
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} processes on a machine without CUDA need --use_cpu true so that "
            "they train one model together (gloo DDP)."
        )


def build_trainer(model, tokenizer, datasets: dict[str, Any], data_args: DataArguments,
                  training_args: Seq2SeqTrainingArguments) -> S2STrainer:
    """The `S2STrainer` with the seq2seq collator, generation metrics and the early-stopping/time-budget callbacks."""
    from .evaluation import make_compute_metrics

    callbacks: list[TrainerCallback] = []
    if data_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    if data_args.max_train_minutes:
        callbacks.append(TimeBudgetCallback(data_args.max_train_minutes, data_args.time_budget_clock))
    return S2STrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.get("train") if training_args.do_train else None,
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=seq2seq_collator(tokenizer, model),
        compute_metrics=make_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        callbacks=callbacks,
        length_grouping=data_args.length_grouping,
    )


def _trainer_predict(trainer: S2STrainer, datasets: dict[str, Any], data_args: DataArguments):
    """`evaluate(split, prefix)` for `job.final_evaluation`: `trainer.predict` with the final generation settings."""

    def evaluate(split: str, prefix: str) -> tuple[dict[str, float], np.ndarray | None]:
        result = trainer.predict(datasets[split], metric_key_prefix=prefix, **final_generation_kwargs(data_args))
        return result.metrics, result.predictions

    return evaluate


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> dict[str, Any]:
    """Train, evaluate on validation and test, save a Hub-ready directory (model card included) and push it if
    asked. Returns all measured metrics (also written to `all_results.json`)."""
    configure_logging()
    check_world_size(training_args)
    push_to_hub, hub_model_id = training_args.push_to_hub, training_args.hub_model_id
    check_hub_arguments(push_to_hub, hub_model_id)
    training_args.push_to_hub = False  # the finished directory is published by modeling_s2s.hub, not mid-training
    resume_checkpoint = check_output_dir(training_args.output_dir, training_args.resume_from_checkpoint,
                                         data_args.overwrite_output_dir)
    set_seed(training_args.seed)
    started = time.time()

    raw_datasets = load_raw_datasets(data_args)
    eval_strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    eval_note = "" if eval_strategy == "no" else (
        f" (implied by --eval_strategy {eval_strategy}; pass --eval_strategy no too to turn it off)")
    check_job_plan(raw_datasets.keys(), do_train=training_args.do_train, do_eval=training_args.do_eval,
                   do_predict=training_args.do_predict, model_name_or_path=model_args.model_name_or_path,
                   do_eval_note=eval_note)
    with training_args.main_process_first(local=False, desc="clearing the earlier run in output_dir"):
        if training_args.process_index == 0:
            clear_earlier_run(training_args.output_dir, resume_checkpoint, data_args.overwrite_output_dir)
    tokenizer = prepare_tokenizer(model_args, raw_datasets, data_args)
    model = build_model(model_args, tokenizer)
    datasets = tokenize_splits(raw_datasets, tokenizer, data_args,
                               lambda desc: training_args.main_process_first(desc=desc))
    trainer = build_trainer(model, tokenizer, datasets, data_args, training_args)

    metrics: dict[str, Any] = {"num_parameters": model.num_parameters()}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume_checkpoint)
        metrics.update(prefixed(train_result.metrics, "train"))
        trainer.save_model()  # weights, config with auto_map, module files, generation config, tokenizer
        trainer.save_state()

    wanted = {"validation": training_args.do_eval, "test": training_args.do_predict}
    metrics.update(final_evaluation(
        _trainer_predict(trainer, datasets, data_args), [s for s in datasets if wanted.get(s)],
        output_dir=training_args.output_dir, tokenizer=tokenizer, write_files=trainer.is_world_process_zero(),
    ))
    metrics["total_runtime_s"] = round(time.time() - started, 1)

    if trainer.is_world_process_zero():
        card_args = training_args.to_dict()
        finish_output_directory(
            training_args.output_dir, trainer.accelerator.unwrap_model(model), tokenizer, data_args, metrics,
            card_training_args=card_args, hub_model_id=hub_model_id, push=push_to_hub,
            hub_token=training_args.hub_token, hub_private_repo=bool(training_args.hub_private_repo),
        )
    return metrics
