"""The main job behind `scripts/train.py`: parallel text → tokenizer → `Seq2SeqTrainer` → evaluated, Hub-ready model.

Arguments come from `HfArgumentParser` over `ModelArguments`, `DataArguments` and `Seq2SeqTrainingArguments`,
read from a JSON/YAML recipe (see `configuration/recipes/`) with command-line overrides on top.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import (
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EarlyStoppingCallback,
    HfArgumentParser,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint

from .configuration_s2s import S2SConfig
from .data import check_length_grouping, pair_length_keys
from .modeling_s2s import S2SForConditionalGeneration
from .pipeline_s2s import save_for_pipeline

logger = logging.getLogger("modeling_s2s.training")

REPO_ROOT = Path(__file__).resolve().parent.parent

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's allocator keep freed memory for the next allocation instead of handing it back to the kernel.

    Every CPU training step allocates and frees a few (target tokens × vocabulary) float tensors (logits,
    log-probabilities and their gradients: 30–60 MB each for 64 sentences and an 8k vocabulary). glibc serves
    blocks over 32 MB with a fresh `mmap` and unmaps them on free, so each step pays again for the kernel
    zero-filling those pages on first touch: ≈ 10 % of a step of the base model on a 2-core machine
    (`benchmarks/README.md`). With `mmap` off and no trimming, the blocks come from the heap and are reused; the
    process then keeps its peak memory until it exits, as with the jemalloc/tcmalloc that PyTorch's CPU tuning
    guide recommends. Returns False (nothing changed) where glibc's `mallopt` is not available.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


@dataclass
class ModelArguments:
    """Which model to train: a fresh one from a preset (+ overrides) or a saved one to continue from."""

    model_config: str | None = field(
        default=None,
        metadata={"help": "JSON/YAML file of S2SConfig keywords (see configuration/models/). Default: S2SConfig()."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated S2SConfig overrides, e.g. 'hidden_size=256,attention_type=dot'."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from a saved model directory or Hub id instead of a new model."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Existing tokenizer (dir or Hub id). Default: train a new one on train data."}
    )
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size of a newly trained tokenizer."})
    tokenizer_type: str = field(default="bpe", metadata={"help": "'bpe' or 'unigram' for a new tokenizer."})
    lowercase: bool = field(default=False, metadata={"help": "Lowercase text in a newly trained tokenizer."})


@dataclass
class DataArguments:
    """Where the parallel text comes from and how it is cut; what happens after training."""

    source_lang: str = field(default="de", metadata={"help": "Source language code."})
    target_lang: str = field(default="en", metadata={"help": "Target language code."})
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` Hub id or local dataset path."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "JSON lines, CSV or plain-text pair prefix."})
    validation_file: str | None = field(default=None, metadata={"help": "Same formats as train_file."})
    test_file: str | None = field(default=None, metadata={"help": "Same formats as train_file."})
    max_source_length: int = field(default=100, metadata={"help": "Drop training pairs with longer sources (tokens)."})
    max_target_length: int = field(default=100, metadata={"help": "Drop training pairs with longer targets (tokens)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation pairs."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only the first N test pairs."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for Dataset.map."})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without a better metric_for_best_model."}
    )
    max_train_minutes: float | None = field(
        default=None, metadata={"help": "Stop training (then evaluate and save) after this many minutes."}
    )
    time_budget_clock: str = field(
        default="wall", metadata={"help": "'wall' or 'process' (CPU time / threads) for max_train_minutes."}
    )
    length_grouping: str = field(
        default="source",
        metadata={"help": "How `group_by_length` sorts pairs: 'source' (source length, then target length) or "
                  "'target' (target length, then source length: the least decoder padding; lower BLEU in the "
                  "25-minute bf16 Multi30k runs, higher in one fp32 run; both train at the same speed)."},
    )
    eval_num_beams: int = field(default=5, metadata={"help": "Beam size of the final validation/test evaluation."})
    eval_length_penalty: float = field(default=1.0, metadata={"help": "Length penalty of the final evaluation."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds a trained model."}
    )

    def __post_init__(self):
        check_length_grouping(self.length_grouping)


class TimeBudgetCallback(TrainerCallback):
    """Stops training once `minutes` have passed since training began.

    `clock="wall"` counts wall time. `clock="process"` counts this process's CPU time divided by the torch thread
    count: on a machine shared with other jobs it approximates the wall time the same work takes on an idle one.
    """

    def __init__(self, minutes: float, clock: str = "wall"):
        if clock not in ("wall", "process"):
            raise ValueError(f"`time_budget_clock`={clock!r} must be 'wall' or 'process'.")
        self.seconds = minutes * 60.0
        self.clock = clock
        self.start: float | None = None

    def _now(self) -> float:
        if self.clock == "wall":
            return time.monotonic()
        return time.process_time() / max(1, torch.get_num_threads())

    def elapsed(self) -> float:
        return 0.0 if self.start is None else self._now() - self.start

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        if self.elapsed() >= self.seconds:
            logger.info("Time budget of %.1f minutes (%s clock) reached at step %d.", self.seconds / 60, self.clock,
                        state.global_step)
            control.should_training_stop = True
            control.should_evaluate = True
            control.should_save = True
        return control


class S2STrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose `group_by_length` sorts pairs by both lengths (`data.pair_length_keys`).

    `length_grouping="source"` (default): source length, then target length — transformers sorts by the length of
    `input_ids` only; the tie-break trims target padding (25-minute bf16 run: 9.3 epochs instead of 8.3).
    `length_grouping="target"`: target length, then source length, which cuts target padding on Multi30k from 30 %
    to 3 %; its 25-minute bf16 runs scored lower, its fp32 run higher (benchmarks/RESULTS_quality.md). It used to
    train 1.2–1.4× faster per step; since the fifth session (output layer over label spans only, oneDNN step
    matmuls) both train at the same speed.
    """

    def __init__(self, *args, length_grouping: str = "source", **kwargs):
        self.length_grouping = check_length_grouping(length_grouping)
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        columns = getattr(dataset, "column_names", None) or []
        if self.args.train_sampling_strategy != "group_by_length" or not {"input_ids", "labels"} <= set(columns):
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=pair_length_keys(dataset, first=self.length_grouping),
        )


def _load_mapping(path: str) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, not {type(data).__name__}.")
    return data


def _mapping_to_argv(mapping: dict[str, Any]) -> list[str]:
    argv = []
    for key, value in mapping.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)
    return argv


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, Seq2SeqTrainingArguments]:
    """Parse `[recipe.yaml|recipe.json] [--key value ...]`; command-line values override the recipe's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("--"):
        argv = _mapping_to_argv(_load_mapping(argv[0])) + argv[1:]
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def _parse_overrides(overrides: str | None) -> dict[str, Any]:
    result = {}
    for item in filter(None, (part.strip() for part in (overrides or "").split(","))):
        if "=" not in item:
            raise ValueError(f"`config_overrides` item {item!r} must look like name=value.")
        key, raw = (s.strip() for s in item.split("=", 1))
        result[key] = yaml.safe_load(raw)
    return result


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> S2SConfig:
    """S2SConfig from the preset and overrides, with vocabulary size and special ids taken from the tokenizer."""
    kwargs = _load_mapping(model_args.model_config) if model_args.model_config else {}
    kwargs.update(_parse_overrides(model_args.config_overrides))
    unknown = set(kwargs) - set(S2SConfig().to_dict())
    if unknown:
        raise ValueError(f"Unknown S2SConfig keywords {sorted(unknown)} in model_config/config_overrides.")
    kwargs.update(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    return S2SConfig(**kwargs)


def check_output_dir(training_args: Seq2SeqTrainingArguments, data_args: DataArguments) -> str | None:
    """Return the checkpoint to resume from; refuse to overwrite a trained model unless asked."""
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume in ("True", "true", True):
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise ValueError(f"`resume_from_checkpoint`=True but {output_dir} holds no checkpoint-* directory.")
        return last
    if resume:
        if not Path(resume).is_dir():
            raise ValueError(f"`resume_from_checkpoint`={resume!r} is not a directory.")
        return resume
    trained = output_dir.is_dir() and (output_dir / "model.safetensors").exists()
    has_checkpoints = output_dir.is_dir() and get_last_checkpoint(str(output_dir)) is not None
    if (trained or has_checkpoints) and not data_args.overwrite_output_dir:
        raise ValueError(
            f"Output directory {output_dir} already holds a trained model or checkpoints. Pass "
            "--resume_from_checkpoint true to continue it, --overwrite_output_dir true to replace it, or another "
            "--output_dir."
        )
    return None


def prepare_tokenizer(model_args: ModelArguments, raw_datasets, data_args: DataArguments) -> PreTrainedTokenizerBase:
    """Load the named tokenizer, the one saved with `model_name_or_path`, or train a joint one on the train split."""
    name = model_args.tokenizer_name or model_args.model_name_or_path
    if name:
        return AutoTokenizer.from_pretrained(name)
    from .tokenization import train_tokenizer

    if "train" not in raw_datasets:
        raise ValueError("A new tokenizer needs a train split; pass --train_file or --tokenizer_name.")
    pairs = raw_datasets["train"]["translation"]
    texts = [pair[lang] for pair in pairs for lang in (data_args.source_lang, data_args.target_lang)]
    return train_tokenizer(
        texts, vocab_size=model_args.tokenizer_vocab_size, model_type=model_args.tokenizer_type,
        lowercase=model_args.lowercase,
    )


def tokenize_splits(raw_datasets, tokenizer, data_args: DataArguments, training_args):
    """Tokenize every split with `Dataset.map(batched=True)`; drop over-long training pairs and report them."""
    from .data import filter_by_length, make_preprocess_function

    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_predict_samples,
    }
    preprocess = make_preprocess_function(tokenizer, data_args.source_lang, data_args.target_lang)
    tokenized = {}
    for split, dataset in raw_datasets.items():
        if limits.get(split) is not None:
            dataset = dataset.select(range(min(limits[split], len(dataset))))
        with training_args.main_process_first(desc=f"tokenizing {split}"):
            dataset = dataset.map(
                preprocess,
                batched=True,
                num_proc=data_args.preprocessing_num_workers,
                remove_columns=dataset.column_names,
                desc=f"Tokenizing {split}",
            )
        if split == "train":
            before = len(dataset)
            dataset, dropped = filter_by_length(
                dataset, data_args.max_source_length, data_args.max_target_length,
                special_token_ids=tokenizer.all_special_ids,
            )
            logger.info("Length filter dropped %d of %d training pairs (max %d/%d tokens).", dropped, before,
                        data_args.max_source_length, data_args.max_target_length)
        tokenized[split] = dataset
    return tokenized


def _prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k if k.startswith(prefix) else f"{prefix}_{k}": v for k, v in metrics.items()}


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: Seq2SeqTrainingArguments
) -> dict[str, Any]:
    """Train, evaluate on validation and test, save a Hub-ready directory (model card included) and push it if
    asked. Returns all measured metrics (also written to `all_results.json`)."""
    from .data import load_parallel_data
    from .evaluation import make_compute_metrics

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not training_args.use_cpu:
        # Without use_cpu, torchrun on a CPU-only machine trains independent copies (transformers only warns).
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} processes on a machine without CUDA need --use_cpu true so that "
            "they train one model together (gloo DDP)."
        )
    push_to_hub, hub_model_id = training_args.push_to_hub, training_args.hub_model_id
    if push_to_hub and not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/rnn-attention-de-en).")
    training_args.push_to_hub = False  # the finished directory is published by modeling_s2s.hub, not mid-training
    resume_checkpoint = check_output_dir(training_args, data_args)
    set_seed(training_args.seed)
    started = time.time()

    raw_datasets = load_parallel_data(
        data_args.source_lang, data_args.target_lang,
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file, validation_file=data_args.validation_file, test_file=data_args.test_file,
    )
    tokenizer = prepare_tokenizer(model_args, raw_datasets, data_args)
    if model_args.model_name_or_path:
        model = S2SForConditionalGeneration.from_pretrained(model_args.model_name_or_path)
    else:
        model = S2SForConditionalGeneration(build_config(model_args, tokenizer))
    num_parameters = model.num_parameters()
    logger.info("Model: %s parameters, config %s", f"{num_parameters:,}", model.config.to_json_string())
    datasets = tokenize_splits(raw_datasets, tokenizer, data_args, training_args)

    callbacks = []
    if data_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=data_args.early_stopping_patience))
    if data_args.max_train_minutes:
        callbacks.append(TimeBudgetCallback(data_args.max_train_minutes, data_args.time_budget_clock))
    trainer = S2STrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.get("train") if training_args.do_train else None,
        eval_dataset=datasets.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=make_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        callbacks=callbacks,
        length_grouping=data_args.length_grouping,
    )

    metrics: dict[str, Any] = {"num_parameters": num_parameters}
    if training_args.do_train:
        if "train" not in datasets:
            raise ValueError("--do_train needs a train split.")
        train_result = trainer.train(resume_from_checkpoint=resume_checkpoint)
        metrics.update(_prefixed(train_result.metrics, "train"))
        trainer.save_model()  # weights, config with auto_map, module files, generation config, tokenizer
        trainer.save_state()

    final_generation = {"num_beams": data_args.eval_num_beams, "length_penalty": data_args.eval_length_penalty}
    for split, key in (("validation", "eval"), ("test", "test")):
        if split in datasets and (training_args.do_eval if split == "validation" else training_args.do_predict):
            result = trainer.predict(datasets[split], metric_key_prefix=key, **final_generation)
            metrics.update(result.metrics)
            if trainer.is_world_process_zero() and result.predictions is not None:
                _write_predictions(training_args.output_dir, split, result.predictions, tokenizer)
    metrics["total_runtime_s"] = round(time.time() - started, 1)

    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        model.generation_config.num_beams = data_args.eval_num_beams
        model.generation_config.length_penalty = data_args.eval_length_penalty
        # weights, config (auto_map + custom_pipelines), module files, tokenizer: a Hub-ready, pipeline-ready dir
        save_for_pipeline(trainer.accelerator.unwrap_model(model), tokenizer, output_dir, task="translation")
        (output_dir / "all_results.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        _write_model_card(output_dir, model, data_args, training_args, metrics, hub_model_id)
        if push_to_hub:
            from .hub import push_model_dir

            push_model_dir(str(output_dir), hub_model_id, token=training_args.hub_token,
                           private=bool(training_args.hub_private_repo))
    return metrics


def _write_predictions(output_dir: str, split: str, predictions, tokenizer) -> None:
    import numpy as np

    ids = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    path = Path(output_dir) / f"{split}_predictions.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(text.strip() + "\n" for text in texts), encoding="utf-8")


def _write_model_card(output_dir: Path, model, data_args, training_args, metrics, hub_model_id) -> None:
    from .model_card import render_model_card

    split_metrics = {}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        values = {name: metrics.get(f"{prefix}_{name}") for name in ("bleu", "chrf")}
        if all(v is not None for v in values.values()):
            split_metrics[split] = values
    dataset_name = data_args.dataset_name or ("multi30k" if not data_args.train_file else Path(data_args.train_file).name)
    args = {k: v for k, v in training_args.to_dict().items() if not k.startswith(("hub_", "push_")) and v is not None}
    render_model_card(
        str(output_dir),
        config=model.config,
        source_lang=data_args.source_lang,
        target_lang=data_args.target_lang,
        dataset_name=dataset_name,
        metrics=split_metrics,
        training_args=args,
        train_runtime_s=metrics.get("train_runtime"),
        num_parameters=metrics["num_parameters"],
        hub_model_id=hub_model_id,
        command="python " + " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
    )
