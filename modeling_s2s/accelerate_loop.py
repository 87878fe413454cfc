"""Training with an explicit Accelerate loop: the job behind `scripts/train_accelerate.py`.

The same job as `scripts/train.py`, from the same module (`job.py`: data → tokenizer → tokenised splits →
`DataCollatorForSeq2Seq`, model config and model, final evaluation files, the Hub-ready directory, model card,
push) and with the same metrics (`evaluation.make_compute_metrics`: sacreBLEU BLEU, chrF, gen_len), but the loop
is written out with `accelerate.Accelerator`, so it runs unchanged on one CPU, `torchrun --nproc_per_node N`
(gloo on CPU, NCCL on GPUs), `accelerate launch` with the configs in `configuration/accelerate/`, DDP or FSDP,
and produces the same Hub-ready directory (weights + remote code + generation config + tokenizer + `README.md`
model card + `all_results.json` + predictions).

Arguments: `ModelArguments` and `DataArguments` from `job.py` plus :class:`AccelerateArguments`, read from a
JSON/YAML recipe with command-line overrides (:func:`parse_arguments`).

What the loop guarantees (and `tests/test_accelerate.py` checks):

* **Same updates for any world size.** A micro-batch stream is cut into optimizer steps of exactly
  `gradient_accumulation_steps` per-process micro-batches (a step may take its last micro-batches from the start
  of the next epoch), and data is never shuffled differently for a different number of processes
  (:class:`EpochSampler`: the order depends on `seed` and the epoch only). The loss of one optimizer step is the
  token-level mean over *all* its micro-batches on *all* processes (see :func:`scaled_loss`), so N processes with
  per-device batch b reproduce one process with batch N·b, up to float rounding.
* **Exact resume.** `save_state` checkpoints (`output_dir/checkpoint-<step>/`) hold model, optimizer, scheduler,
  RNG states and a registered :class:`TrainingProgress` (epoch, optimizer steps, samples consumed in the epoch);
  `load_state` + `skip_first_batches` continue at the exact batch, also with a different number of processes
  (as long as the global batch still lines up). Each checkpoint stores the model `config.json`; resuming with a
  different model configuration fails and names the differing keys. A checkpoint is written to
  `tmp-checkpoint-<step>/` and renamed when complete, so a run stopped while saving leaves the previous ones
  usable; `--resume_from_checkpoint true` takes the newest complete one (`job.last_complete_checkpoint`).
* **Clear failures before training.** fp16 or an Accelerate GPU config on a machine without a GPU, a launcher
  that started several processes that Accelerate does not see, a `global_batch_size` that is not
  `per_device_train_batch_size × world size × gradient_accumulation_steps`: `LaunchError` with the numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    broadcast_object_list,
    set_seed,
)
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import (
    AutoTokenizer,
    EvalPrediction,
    PreTrainedTokenizerBase,
    get_scheduler,
)
from transformers.trainer_utils import SchedulerType

from .configuration_s2s import S2SConfig
from .data import pair_length_keys
from .job import (
    DataArguments,
    JobError,
    ModelArguments,
    TimeBudget,
    build_model,
    check_hub_arguments,
    check_job_plan,
    check_output_dir,
    checkpoint_dirs,
    checkpoint_problems,
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

logger = logging.getLogger("modeling_s2s.accelerate_loop")

__all__ = [
    "AccelerateArguments",
    "CHECKPOINT_CONFIG_NAME",
    "EpochSampler",
    "LaunchError",
    "TrainingProgress",
    "check_global_batch_size",
    "check_launch_environment",
    "compare_model_configs",
    "evaluate_generation",
    "main",
    "parse_arguments",
    "run_accelerate_training",
    "scaled_loss",
]

#: File holding the model configuration inside every checkpoint directory (compared on resume).
CHECKPOINT_CONFIG_NAME = "config.json"
#: File with the human-readable progress of a checkpoint (the loop itself restores the registered object).
PROGRESS_FILE_NAME = "training_progress.json"
#: Files besides the weights that make a checkpoint of this loop complete (see `job.checkpoint_problems`); the
#: progress file is written last, and the whole checkpoint is staged in `tmp-checkpoint-<step>` and renamed.
ACCELERATE_CHECKPOINT_FILES = (CHECKPOINT_CONFIG_NAME, PROGRESS_FILE_NAME)
#: Per-step training logs (loss, learning_rate, grad_norm, epoch; eval metrics), JSON lines, in output_dir.
LOG_HISTORY_NAME = "log_history.jsonl"
#: Config keys that do not describe the model (bookkeeping written by transformers; the speed switches).
_IGNORED_CONFIG_KEYS = frozenset(
    {"transformers_version", "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype", "_commit_hash",
     "_attn_implementation_autoset", "output_attentions", "output_hidden_states", "return_dict", "use_cache",
     "fast_paths", "int8_decoding"}
)
#: Config keys a resumed run may change (regularisation only): a warning, not an error.
_TRAINING_ONLY_CONFIG_KEYS = frozenset({"dropout", "embedding_dropout", "attention_dropout", "label_smoothing"})
MIXED_PRECISION_CHOICES = ("no", "bf16", "fp16")
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length")


class LaunchError(JobError):
    """A launch that cannot work (hardware, world size, batch arithmetic, checkpoint); raised before training."""


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------


@dataclass
class AccelerateArguments:
    """How the explicit Accelerate loop trains, evaluates and checkpoints.

    The final evaluation's beam size and length penalty are `--eval_num_beams` / `--eval_length_penalty`, and the
    time budget is `--max_train_minutes` (all in `DataArguments`, shared with `scripts/train.py`).
    """

    output_dir: str = field(default="outputs/accelerate", metadata={"help": "Where the trained model is written."})
    do_train: bool = field(default=True, metadata={"help": "Train (else only evaluate `model_name_or_path`)."})
    do_eval: bool = field(default=True, metadata={"help": "Evaluate on the validation split after training."})
    do_predict: bool = field(default=False, metadata={"help": "Evaluate on the test split after training."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Sentence pairs per process and micro-batch."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Sentence pairs per process in evaluation."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Optional check: must equal per_device_train_batch_size × world size × "
                          "gradient_accumulation_steps, else the launch fails before training."},
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (ignored when max_train_steps is set)."})
    max_train_steps: int | None = field(
        default=None, metadata={"help": "Total optimizer steps; overrides num_train_epochs. Resume with a larger "
                                        "value to continue a finished run."},
    )
    lr_scheduler_type: str = field(default="linear", metadata={"help": "A transformers.get_scheduler name."})
    num_warmup_steps: int = field(default=0, metadata={"help": "Warm-up optimizer steps of the schedule."})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping norm (0/None: off)."})
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "'no', 'bf16' or 'fp16' (fp16 needs a GPU). Default: the `accelerate launch` config's "
                          "value, else 'no'."},
    )
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even if a GPU is present."})
    seed: int = field(default=42, metadata={"help": "Seed of model initialisation, dropout and data order."})
    train_sampling_strategy: str = field(
        default="random",
        metadata={"help": "'random' (reshuffled every epoch), 'sequential', or 'group_by_length' (random "
                          "megabatches sorted by length, less padding; see --length_grouping)."},
    )
    dataloader_drop_last: bool = field(default=False, metadata={"help": "Drop the last incomplete batch."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    checkpointing_steps: str | None = field(
        default=None, metadata={"help": "Save a resumable checkpoint every N optimizer steps, or 'epoch'."}
    )
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint directory, or 'true' for the newest one in output_dir."}
    )
    eval_strategy: str = field(default="epoch", metadata={"help": "'no', 'epoch' or 'steps' (evaluation in training)."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N optimizer steps ('steps')."})
    generation_num_beams: int = field(default=1, metadata={"help": "Beam size of evaluations during training."})
    generation_max_length: int = field(default=128, metadata={"help": "max_length of generate() in evaluation."})
    logging_steps: int = field(default=50, metadata={"help": "Log loss and learning rate every N optimizer steps."})
    with_tracking: bool = field(default=False, metadata={"help": "Log to trackers (init_trackers/log)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Tracker for --with_tracking (log_with)."})
    project_name: str = field(default="s2s_accelerate", metadata={"help": "Tracker project/run name."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the finished directory (needs hub_model_id)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository, e.g. you/rnn-de-en."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})

    def __post_init__(self) -> None:
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "generation_num_beams", "generation_max_length", "logging_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}`={value!r} must be a positive integer.")
        for name in ("global_batch_size", "max_train_steps", "eval_steps", "checkpoints_total_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"`{name}`={value!r} must be a positive integer or unset.")
        if self.num_warmup_steps < 0:
            raise ValueError(f"`num_warmup_steps`={self.num_warmup_steps} must be >= 0.")
        if self.max_train_steps is None and not self.num_train_epochs > 0:
            raise ValueError(f"`num_train_epochs`={self.num_train_epochs} must be > 0 (or set max_train_steps).")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ValueError(f"`mixed_precision`={self.mixed_precision!r} is not one of {MIXED_PRECISION_CHOICES}.")
        allowed = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in allowed:
            raise ValueError(f"`lr_scheduler_type`={self.lr_scheduler_type!r} is not one of {allowed}.")
        if self.train_sampling_strategy not in SAMPLING_STRATEGIES:
            raise ValueError(
                f"`train_sampling_strategy`={self.train_sampling_strategy!r} is not one of {SAMPLING_STRATEGIES}."
            )
        if self.eval_strategy not in ("no", "epoch", "steps"):
            raise ValueError(f"`eval_strategy`={self.eval_strategy!r} must be 'no', 'epoch' or 'steps'.")
        check_hub_arguments(self.push_to_hub, self.hub_model_id)
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("`eval_strategy`='steps' needs `eval_steps`.")
        if self.checkpointing_steps is not None:
            text = str(self.checkpointing_steps).strip().lower()
            if text in ("", "no", "none"):
                self.checkpointing_steps = None
            elif text != "epoch" and not (text.isdigit() and int(text) > 0):
                raise ValueError(
                    f"`checkpointing_steps`={self.checkpointing_steps!r} must be a positive integer or 'epoch'."
                )
            else:
                self.checkpointing_steps = text

    @property
    def checkpoint_every(self) -> int | None:
        """Optimizer steps between checkpoints (None: per epoch or never)."""
        text = self.checkpointing_steps
        return int(text) if text is not None and text.isdigit() else None

    def to_dict(self) -> dict[str, Any]:
        """The arguments as a plain dict (for the model card and the trackers, like `TrainingArguments.to_dict`)."""
        return asdict(self)


#: Trainer recipe keys (configuration/recipes/*.yaml) that mean the same thing here under another name.
TRAINER_KEY_ALIASES = {
    "max_steps": "max_train_steps",
    "warmup_steps": "num_warmup_steps",
    "save_total_limit": "checkpoints_total_limit",
    "use_cpu": "use_cpu",
}
#: Trainer recipe keys without a counterpart here: skipped with a log line.
TRAINER_ONLY_KEYS = frozenset(
    {"predict_with_generate", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
     "dataloader_pin_memory", "save_strategy", "save_steps", "report_to", "logging_strategy", "eval_accumulation_steps",
     "bf16", "fp16", "logging_first_step", "optim", "label_smoothing_factor"}
)


def _translate_trainer_recipe(mapping: dict[str, Any]) -> dict[str, Any]:
    """Map a `scripts/train.py` recipe onto this script's arguments (see TRAINER_KEY_ALIASES/TRAINER_ONLY_KEYS)."""
    known = {f.name for cls in (ModelArguments, DataArguments, AccelerateArguments) for f in fields(cls)}
    result: dict[str, Any] = {}
    skipped = []
    for key, value in mapping.items():
        if key in known:
            result[key] = value
        elif key in TRAINER_KEY_ALIASES:
            result[TRAINER_KEY_ALIASES[key]] = value
        elif key in TRAINER_ONLY_KEYS:
            skipped.append(key)
        else:
            result[key] = value  # unknown: let the parser reject it with its usual message
    # Trainer spellings of checkpointing, tracking and precision.
    if mapping.get("save_strategy") == "epoch" and "checkpointing_steps" not in mapping:
        result["checkpointing_steps"] = "epoch"
    elif mapping.get("save_strategy") == "steps" and mapping.get("save_steps") and "checkpointing_steps" not in mapping:
        result["checkpointing_steps"] = str(mapping["save_steps"])
    report_to = mapping.get("report_to")
    if report_to not in (None, "none", [], ["none"]) and "with_tracking" not in mapping:
        result["with_tracking"] = True
        result["report_to"] = report_to[0] if isinstance(report_to, list) else report_to
    if "mixed_precision" not in mapping:
        if mapping.get("bf16"):
            result["mixed_precision"] = "bf16"
        elif mapping.get("fp16"):
            result["mixed_precision"] = "fp16"
    if skipped:
        logger.info("Recipe keys of the Trainer path with no counterpart here, skipped: %s", ", ".join(skipped))
    return result


def parse_arguments(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, AccelerateArguments]:
    """Parse `[recipe.yaml|recipe.json] [--key value ...]`; command-line values override the recipe's.

    A recipe written for `scripts/train.py` (e.g. `configuration/recipes/quick.yaml`) also works: Trainer-only
    keys are mapped (`warmup_steps` → `num_warmup_steps`, `max_steps` → `max_train_steps`, `save_strategy` →
    `checkpointing_steps`, `report_to` → `with_tracking`) or skipped with a log line; any other unknown or
    abbreviated key or option raises `job.ArgumentError` naming the closest valid name.
    """
    return parse_job_arguments((ModelArguments, DataArguments, AccelerateArguments), argv, _translate_trainer_recipe)


# --------------------------------------------------------------------------------------------------------------
# Launch checks
# --------------------------------------------------------------------------------------------------------------


def _env_flag(env: Mapping[str, str], name: str) -> bool | None:
    value = env.get(name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def check_launch_environment(
    mixed_precision: str | None,
    *,
    use_cpu: bool = False,
    env: Mapping[str, str] | None = None,
    cuda_available: bool | None = None,
) -> tuple[str, bool]:
    """Refuse launches that ask for GPUs on a machine without one; return `(mixed_precision, cpu)` to use.

    `accelerate launch` passes its config through environment variables: `ACCELERATE_USE_CPU` (`use_cpu`),
    `ACCELERATE_MIXED_PRECISION`, `ACCELERATE_USE_FSDP`, and for MULTI_GPU/FSDP configs it starts the processes
    with torchrun and leaves `ACCELERATE_USE_CPU` unset. Without a GPU such a run would silently train on the CPU
    (and with `num_processes > 1`, as independent copies that do not see each other).
    """
    env = os.environ if env is None else env
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    resolved = mixed_precision or env.get("ACCELERATE_MIXED_PRECISION") or "no"
    if resolved not in MIXED_PRECISION_CHOICES:
        raise LaunchError(f"mixed_precision={resolved!r} is not supported here; use one of {MIXED_PRECISION_CHOICES}.")
    launched_by_accelerate = any(key.startswith("ACCELERATE_DYNAMO") for key in env)
    config_use_cpu = _env_flag(env, "ACCELERATE_USE_CPU")
    if not cuda_available:
        if _env_flag(env, "ACCELERATE_USE_FSDP"):
            raise LaunchError(
                "The Accelerate config asks for FSDP on GPUs (distributed_type: FSDP), but this machine has no GPU "
                "(torch.cuda.is_available() is False). Use configuration/accelerate/cpu_single.yaml, or "
                "`torchrun --nproc_per_node 2 scripts/train_accelerate.py ...` for two CPU processes."
            )
        if launched_by_accelerate and not config_use_cpu:
            raise LaunchError(
                "The Accelerate config asks for GPU(s) (use_cpu: false / distributed_type: MULTI_GPU), but this "
                "machine has no GPU (torch.cuda.is_available() is False). Use "
                "configuration/accelerate/cpu_single.yaml, or `torchrun --nproc_per_node 2 "
                "scripts/train_accelerate.py ...` for two CPU processes."
            )
        if resolved == "fp16":
            raise LaunchError(
                "mixed_precision='fp16' needs a GPU, but this machine has none (torch.cuda.is_available() is False); "
                "on the CPU use --mixed_precision bf16 or no."
            )
    cpu = bool(use_cpu or not cuda_available or config_use_cpu)
    if cpu and resolved == "fp16":
        raise LaunchError("mixed_precision='fp16' needs a GPU, but the run is on the CPU (use_cpu); use bf16 or no.")
    return resolved, cpu


def check_world_size(accelerator, env: Mapping[str, str] | None = None) -> None:
    """Fail if the launcher started more processes than Accelerate joined into one job."""
    env = os.environ if env is None else env
    launched = int(env.get("WORLD_SIZE", "1") or 1)
    if launched != accelerator.num_processes:
        raise LaunchError(
            f"The launcher started WORLD_SIZE={launched} processes but Accelerate set up "
            f"{accelerator.num_processes} ({accelerator.distributed_type}); every process would train its own "
            "copy. On a CPU-only machine start the processes with torchrun (the script passes cpu=True)."
        )


def check_global_batch_size(
    global_batch_size: int | None, per_device_batch_size: int, world_size: int, gradient_accumulation_steps: int
) -> None:
    """Require `global_batch_size == per_device × world size × accumulation` when a global batch is asked for."""
    if global_batch_size is None:
        return
    product = per_device_batch_size * world_size * gradient_accumulation_steps
    if product == global_batch_size:
        return
    formula = (
        f"per_device_train_batch_size={per_device_batch_size} × world size {world_size} × "
        f"gradient_accumulation_steps={gradient_accumulation_steps} = {product}"
    )
    if global_batch_size % world_size:
        hint = (f"global_batch_size={global_batch_size} is not divisible by the world size {world_size}; "
                "launch a number of processes that divides it, or change global_batch_size")
    else:
        per_process = global_batch_size // world_size
        options = [
            f"--per_device_train_batch_size {per_process // a} --gradient_accumulation_steps {a}"
            for a in range(1, per_process + 1) if per_process % a == 0
        ][:3]
        hint = "with this world size use e.g. " + " or ".join(options)
    raise LaunchError(f"global_batch_size={global_batch_size} but {formula}; {hint}.")


# --------------------------------------------------------------------------------------------------------------
# Checkpoint state
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingProgress:
    """Where training stands; registered with `accelerator.register_for_checkpointing` and saved by `save_state`.

    `epoch_samples` counts the *global* samples of epoch `epoch` already consumed (per-process batches ×
    per-device batch size × processes), so a checkpoint can be resumed with another number of processes.
    """

    epoch: int = 0
    completed_steps: int = 0
    epoch_samples: int = 0
    num_processes: int = 1
    per_device_train_batch_size: int = 0
    gradient_accumulation_steps: int = 1
    max_train_steps: int = 0

    def state_dict(self) -> dict[str, int]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, int(value))


def compare_model_configs(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys (other than transformers bookkeeping) whose values differ: `{key: (saved, current)}`."""
    keys = (set(saved) | set(current)) - _IGNORED_CONFIG_KEYS
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def check_checkpoint_config(checkpoint_dir: str | os.PathLike, config: S2SConfig) -> None:
    """Raise `LaunchError` naming the keys in which the checkpoint's model config differs from `config`."""
    path = Path(checkpoint_dir) / CHECKPOINT_CONFIG_NAME
    if not path.is_file():
        raise LaunchError(f"{checkpoint_dir} has no {CHECKPOINT_CONFIG_NAME}; it was not written by this loop.")
    saved = json.loads(path.read_text(encoding="utf-8"))
    differences = compare_model_configs(saved, json.loads(config.to_json_string(use_diff=False)))
    fatal = {k: v for k, v in differences.items() if k not in _TRAINING_ONLY_CONFIG_KEYS}
    if fatal:
        listed = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in fatal.items())
        raise LaunchError(
            f"Checkpoint {checkpoint_dir} was written with a different model configuration ({listed}). Resume with "
            "the same --model_config/--config_overrides/tokenizer, or start a new --output_dir."
        )
    for key, (old, new) in differences.items():
        logger.warning("Resuming with %s=%r (the checkpoint was trained with %r).", key, new, old)


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


class EpochSampler(Sampler[int]):
    """Sample order that depends only on `(seed, epoch)`: the same for every number of processes and on resume.

    `random`: a permutation seeded with `seed + epoch`; `sequential`: 0..n-1; `group_by_length`: the permutation
    cut into megabatches of `megabatch_size` examples, each sorted by its length keys (longest first; the
    training loop passes `data.pair_length_keys` for `--length_grouping`), so consecutive batches
    hold similar lengths. The sampler never touches the global torch RNG (dropout stays reproducible).
    """

    def __init__(
        self,
        num_samples: int,
        seed: int,
        strategy: str = "random",
        lengths: Sequence[int] | None = None,
        megabatch_size: int = 1,
    ):
        if strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"`strategy`={strategy!r} is not one of {SAMPLING_STRATEGIES}.")
        if strategy == "group_by_length" and (lengths is None or len(lengths) != num_samples):
            raise ValueError("`group_by_length` needs one length per sample.")
        self.num_samples = num_samples
        self.seed = seed
        self.strategy = strategy
        self.lengths = list(lengths) if lengths is not None else None
        self.megabatch_size = max(1, megabatch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        if self.strategy == "sequential":
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        if self.strategy == "random":
            return order
        size = self.megabatch_size
        megabatches = [order[i : i + size] for i in range(0, len(order), size)]
        return [i for mb in megabatches for i in sorted(mb, key=lambda j: -self.lengths[j])]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.num_samples


def _train_dataloader(
    dataset, collator, args: AccelerateArguments, world_size: int, length_grouping: str
) -> DataLoader:
    grouped = args.train_sampling_strategy == "group_by_length"
    lengths = pair_length_keys(dataset, first=length_grouping) if grouped else None
    sampler = EpochSampler(
        len(dataset), args.seed, args.train_sampling_strategy,
        lengths=lengths,
        megabatch_size=50 * args.per_device_train_batch_size * world_size,
    )
    return DataLoader(
        dataset,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        collate_fn=collator,
        drop_last=args.dataloader_drop_last,
        num_workers=args.dataloader_num_workers,
        # Own generator: creating an iterator then draws its base seed from here, not from the global RNG, so a
        # resumed run's dropout masks match those of an uninterrupted run.
        generator=torch.Generator().manual_seed(args.seed),
    )


def _eval_dataloader(dataset, collator, args: AccelerateArguments) -> DataLoader:
    return DataLoader(dataset, batch_size=args.per_device_eval_batch_size, shuffle=False, collate_fn=collator,
                      num_workers=args.dataloader_num_workers)


# --------------------------------------------------------------------------------------------------------------
# Loss and evaluation
# --------------------------------------------------------------------------------------------------------------


def scaled_loss(outputs_loss: torch.Tensor, num_processes: int, gradient_accumulation_steps: int) -> torch.Tensor:
    """The loss to pass to `accelerator.backward` so that gradients are the global token mean.

    The model returns `sum of token losses of this micro-batch / N`, with `N` (`num_items_in_batch`) the number of
    target tokens of the whole optimizer step on *all* processes (gathered before the step). Then:

    * `accelerator.backward` divides by `gradient_accumulation_steps` (A), and
    * DDP (and FSDP) *average* gradients over the W processes,

    so the loss is multiplied by `W × A` to cancel both: the accumulated, all-reduced gradient is
    `Σ_processes Σ_micro-batches ∇(sum of token losses) / N`, exactly the gradient of the token-mean loss of the
    global batch. A per-process token mean would instead weight each process's tokens by 1 / (its own token
    count), which differs from the global mean whenever processes see different numbers of target tokens.
    """
    return outputs_loss * (num_processes * gradient_accumulation_steps)


@contextlib.contextmanager
def _full_parameters(accelerator, model):
    """Under FSDP, gather the full parameters for `generate()` on the unwrapped model.

    `generate()` calls the encoder and decoder directly (not through the root module's forward), so the root
    FSDP unit's hooks would not gather their sharded parameters. With full parameters, generation needs no
    collective and may run a different number of steps on each process (no `synced_gpus`).
    """
    if accelerator.distributed_type != DistributedType.FSDP:
        yield
        return
    if hasattr(model, "unshard") and hasattr(model, "reshard"):  # FSDP2 (`fully_shard` modules)
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:  # FSDP1
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield


def _flatten_rnn_parameters(accelerator, model) -> None:
    """Compact the cuDNN RNN weights after wrapping/loading (not for sharded FSDP parameters)."""
    if accelerator.distributed_type != DistributedType.FSDP:
        accelerator.unwrap_model(model).flatten_rnn_parameters()


def _pad_after_eos(ids: torch.Tensor, eos_token_id: int | list[int] | None, pad: int) -> torch.Tensor:
    """Replace every token after the first end-of-sequence token by `pad`.

    transformers 5.x beam search fills finished beams with EOS instead of a pad id of 0
    (`pad_token_id or eos_token_id` in transformers' beam search), so without this `gen_len` would count the fill, which
    depends on the other sequences of the batch (and so on the number of processes).
    """
    if eos_token_id is None:
        return ids
    eos = torch.as_tensor(eos_token_id, device=ids.device).reshape(-1)
    is_eos = torch.isin(ids, eos)
    after_first = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    return ids.masked_fill(after_first, pad)


def _pad_rows(rows: list[np.ndarray], pad: int) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), pad, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def evaluate_generation(
    accelerator,
    model,
    dataloader,
    tokenizer: PreTrainedTokenizerBase,
    *,
    num_beams: int,
    max_length: int,
    length_penalty: float = 1.0,
    desc: str = "Evaluating",
) -> tuple[dict[str, float], np.ndarray | None]:
    """Generate for every example of `dataloader` and score it; returns `(metrics, predictions)` on every process.

    `generate()` runs on the unwrapped model (no DDP hooks). Generated ids are padded to a common length across
    processes (`pad_across_processes`) and gathered with `gather_for_metrics`, which drops the examples that
    Accelerate repeated to give every process a full last batch: every example is scored exactly once, in dataset
    order, for any number of processes. Metrics: `bleu`, `chrf`, `gen_len` (as `scripts/train.py`), `loss`
    (token-mean cross-entropy of the references) and `samples`. `predictions` (N, L) is only set on the main
    process (`None` elsewhere).
    """
    from .evaluation import make_compute_metrics

    unwrapped = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    smoothing = unwrapped.config.label_smoothing
    predictions: list[np.ndarray] = []
    references: list[np.ndarray] = []
    loss_sum, token_count = 0.0, 0
    for batch in tqdm(dataloader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        labels = batch["labels"]
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                decoder_input_ids=batch.get("decoder_input_ids"), labels=labels,
            ).logits
            example_loss = F.cross_entropy(
                logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none",
                label_smoothing=smoothing,
            ).sum(dim=1)
            with _full_parameters(accelerator, model), accelerator.autocast():
                generated = unwrapped.generate(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], num_beams=num_beams,
                    max_length=max_length, length_penalty=length_penalty,
                )
        example_tokens = labels.ne(-100).sum(dim=1)
        generated = _pad_after_eos(generated, unwrapped.generation_config.eos_token_id, pad)
        generated = accelerator.pad_across_processes(generated, dim=1, pad_index=pad)
        padded_labels = accelerator.pad_across_processes(labels, dim=1, pad_index=-100)
        generated, padded_labels, example_loss, example_tokens = accelerator.gather_for_metrics(
            (generated, padded_labels, example_loss, example_tokens)
        )
        predictions.extend(generated.cpu().numpy())
        references.extend(padded_labels.cpu().numpy())
        loss_sum += float(example_loss.sum())
        token_count += int(example_tokens.sum())
    if was_training:
        model.train()
    results: list[Any] = [None]
    prediction_array = None
    if accelerator.is_main_process:
        prediction_array = _pad_rows(predictions, pad)
        label_array = _pad_rows(references, -100)
        metrics = make_compute_metrics(tokenizer)(EvalPrediction(predictions=prediction_array, label_ids=label_array))
        metrics["loss"] = loss_sum / max(token_count, 1)
        metrics["samples"] = len(predictions)
        results = [metrics]
    if accelerator.num_processes > 1:
        broadcast_object_list(results, from_process=0)
    return results[0], prediction_array


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------


class _MicroBatchStream:
    """Per-process micro-batches across epochs, starting at `progress` (epoch, samples already consumed)."""

    def __init__(self, accelerator, dataloader, sampler: EpochSampler, progress: TrainingProgress, per_device: int):
        self.accelerator = accelerator
        self.dataloader = dataloader
        self.sampler = sampler
        self.progress = progress
        self.per_device = per_device
        self.batches_per_epoch = len(dataloader)
        self._iterator: Iterator | None = None
        self._batches_in_epoch = 0
        self.finished_epochs: list[int] = []

    def _start_epoch(self) -> None:
        epoch, world = self.progress.epoch, self.accelerator.num_processes
        skip, remainder = divmod(self.progress.epoch_samples, self.per_device * world)
        if remainder:
            raise LaunchError(
                f"Cannot resume at the exact batch: the checkpoint consumed {self.progress.epoch_samples} samples of "
                f"epoch {epoch}, which is not a whole number of global micro-batches of per_device_train_batch_size="
                f"{self.per_device} × {world} processes = {self.per_device * world}. Resume with a per-device batch "
                "size × world size that divides it."
            )
        loader = self.accelerator.skip_first_batches(self.dataloader, skip) if skip else self.dataloader
        loader.set_epoch(epoch)  # DataLoaderShard.__iter__ re-applies its own epoch counter: keep it in step
        self.sampler.set_epoch(epoch)
        self._iterator = iter(loader)
        self._batches_in_epoch = skip

    def _end_epoch(self) -> None:
        self.finished_epochs.append(self.progress.epoch)
        self.progress.epoch += 1
        self.progress.epoch_samples = 0
        self._batches_in_epoch = 0
        self._iterator = None

    def take(self, count: int) -> list[dict[str, torch.Tensor]]:
        """The next `count` micro-batches of this process (crossing into the next epoch when needed)."""
        batches = []
        while len(batches) < count:
            if self._iterator is None:
                self._start_epoch()
                if self._batches_in_epoch >= self.batches_per_epoch:
                    self._end_epoch()
                    continue
            batches.append(next(self._iterator))
            self._batches_in_epoch += 1
            self.progress.epoch_samples = self._batches_in_epoch * self.per_device * self.accelerator.num_processes
            if self._batches_in_epoch >= self.batches_per_epoch:
                self._end_epoch()
        return batches

    @property
    def fractional_epoch(self) -> float:
        return self.progress.epoch + self._batches_in_epoch / max(self.batches_per_epoch, 1)


def _tracker_config(model_args, data_args, args: AccelerateArguments, config: S2SConfig, extra: dict) -> dict:
    values = {**asdict(model_args), **asdict(data_args), **args.to_dict(), **extra}
    values.update({f"model_{k}": v for k, v in config.to_diff_dict().items()})
    return {k: v for k, v in values.items()
            if isinstance(v, (int, float, str, bool)) and v is not None and "token" not in k and not k.startswith("hub_")}


def _save_checkpoint(accelerator, args: AccelerateArguments, progress: TrainingProgress, model, tokenizer) -> Path:
    """Save a resumable `checkpoint-<step>` atomically: everything goes to `tmp-checkpoint-<step>` first (model,
    optimizer, scheduler, RNG states, registered progress; then config, tokenizer and the progress file, last),
    which is renamed once complete. A run stopped while saving leaves the previous checkpoints as they were."""
    root = Path(args.output_dir)
    path = root / f"checkpoint-{progress.completed_steps}"
    staging = root / f"tmp-checkpoint-{progress.completed_steps}"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)  # left by a run stopped while saving this step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))  # model, optimizer, scheduler, RNG states, registered TrainingProgress
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).config.to_json_file(str(staging / CHECKPOINT_CONFIG_NAME), use_diff=False)
        tokenizer.save_pretrained(str(staging))
        (staging / PROGRESS_FILE_NAME).write_text(json.dumps(progress.state_dict(), indent=2) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()  # every process has written its part into the staging directory
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)  # an incomplete or older save of the same step
        staging.rename(path)
        if args.checkpoints_total_limit:
            _rotate_checkpoints(root, path, args.checkpoints_total_limit)
    accelerator.wait_for_everyone()
    logger.info("Saved checkpoint %s", path)
    return path


def _rotate_checkpoints(root: Path, newest: Path, limit: int) -> None:
    """Keep the newest `limit` complete checkpoints up to `newest`; remove older ones and incomplete ones older
    than `newest` (never `newest` itself, and never a complete checkpoint for an incomplete one)."""
    older = [p for p in checkpoint_dirs(root) if p != newest and _step(p) < _step(newest)]
    complete = [p for p in older if not checkpoint_problems(p, ACCELERATE_CHECKPOINT_FILES)]
    keep = set(complete[len(complete) - (limit - 1):]) if limit > 1 else set()
    for old in older:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def run_accelerate_training(
    model_args: ModelArguments, data_args: DataArguments, args: AccelerateArguments
) -> dict[str, Any]:
    """Train, evaluate and save a Hub-ready model directory with an explicit Accelerate loop.

    Returns all measured metrics (also written to `output_dir/all_results.json` by the main process).
    """
    configure_logging()
    started = time.time()
    if data_args.early_stopping_patience:
        raise LaunchError("--early_stopping_patience is only supported by scripts/train.py.")
    mixed_precision, cpu = check_launch_environment(args.mixed_precision, use_cpu=args.use_cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        # Steps are cut by the loop (exactly A micro-batches each, see _MicroBatchStream), not by epoch ends.
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False
        ),
        # The schedule is stepped once per optimizer step by the loop, so its length is in optimizer steps for
        # any world size (and a checkpoint's scheduler state means the same after a resume on other hardware).
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(even_batches=True),
        log_with=args.report_to if args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, "runs")),
    )
    if accelerator.is_local_main_process:
        logger.setLevel(logging.INFO)
    else:
        logging.getLogger().setLevel(logging.WARNING)
        logger.setLevel(logging.WARNING)
    check_world_size(accelerator)
    world = accelerator.num_processes
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise LaunchError("DeepSpeed is not supported by this loop (its loss scaling differs); use DDP or FSDP.")
    check_global_batch_size(args.global_batch_size, args.per_device_train_batch_size, world,
                            args.gradient_accumulation_steps)
    try:
        resume_checkpoint = check_output_dir(args.output_dir, args.resume_from_checkpoint,
                                             data_args.overwrite_output_dir,
                                             checkpoint_files=ACCELERATE_CHECKPOINT_FILES)
    except ValueError as error:  # an earlier run, a missing or incomplete checkpoint: a launch problem
        raise LaunchError(str(error)) from error
    accelerator.wait_for_everyone()  # every process checked output_dir before anything is written there
    logger.info("Accelerate: %s, %d process(es), device %s, mixed precision %s", accelerator.distributed_type,
                world, accelerator.device, accelerator.mixed_precision)
    set_seed(args.seed)

    # ---- data, tokenizer, model: the pipeline of scripts/train.py ------------------------------------------
    with accelerator.main_process_first():
        raw_datasets = load_raw_datasets(data_args)
    try:
        check_job_plan(raw_datasets.keys(), do_train=args.do_train, do_eval=args.do_eval, do_predict=args.do_predict,
                       model_name_or_path=model_args.model_name_or_path)
    except JobError as error:
        raise LaunchError(str(error)) from error
    if accelerator.is_main_process:
        clear_earlier_run(args.output_dir, resume_checkpoint, data_args.overwrite_output_dir)
    accelerator.wait_for_everyone()  # the earlier run is gone before anything of this one is written
    tokenizer = _load_or_train_tokenizer(accelerator, model_args, data_args, args, raw_datasets, resume_checkpoint)
    model = build_model(model_args, tokenizer)
    if resume_checkpoint:
        check_checkpoint_config(resume_checkpoint, model.config)
    datasets = tokenize_splits(raw_datasets, tokenizer, data_args, lambda desc: accelerator.main_process_first())
    collator = seq2seq_collator(tokenizer, model)

    metrics: dict[str, Any] = {"num_parameters": model.num_parameters()}
    eval_loader = _eval_dataloader(datasets["validation"], collator, args) if "validation" in datasets else None
    test_loader = _eval_dataloader(datasets["test"], collator, args) if "test" in datasets else None

    if args.do_train:
        train_loader = _train_dataloader(datasets["train"], collator, args, world, data_args.length_grouping)
        train_sampler = train_loader.sampler
        no_decay = ("bias",)
        groups = [
            {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": args.weight_decay},
            {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        # fused: one kernel per parameter (CPU and CUDA), as Trainer's default optim "adamw_torch_fused"
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, fused=True)
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
        batches_per_epoch = len(train_loader)  # per process, after sharding
        max_train_steps = args.max_train_steps or math.ceil(
            args.num_train_epochs * batches_per_epoch / args.gradient_accumulation_steps
        )
        lr_scheduler = get_scheduler(
            args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.num_warmup_steps,
            num_training_steps=max_train_steps,
        )
        lr_scheduler = accelerator.prepare(lr_scheduler)
    else:
        model = accelerator.prepare(model)
    eval_loader, test_loader = (accelerator.prepare(dl) if dl is not None else None for dl in (eval_loader, test_loader))
    _flatten_rnn_parameters(accelerator, model)  # contiguous RNN weights after wrapping

    if args.do_train:
        progress = TrainingProgress(
            num_processes=world, per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, max_train_steps=max_train_steps,
        )
        accelerator.register_for_checkpointing(progress)
        if resume_checkpoint:
            accelerator.load_state(resume_checkpoint)
            _flatten_rnn_parameters(accelerator, model)  # contiguous RNN weights after loading
            _log_resume(progress, args, world, max_train_steps, resume_checkpoint)
            if progress.epoch_samples % (args.per_device_train_batch_size * world):
                raise LaunchError(
                    f"Cannot resume {resume_checkpoint} at the exact batch: it consumed {progress.epoch_samples} "
                    f"samples of epoch {progress.epoch}, not a multiple of per_device_train_batch_size="
                    f"{args.per_device_train_batch_size} × {world} processes. Use a per-device batch size × world "
                    "size that divides it (the same global batch as the checkpoint's run reproduces it exactly)."
                )
            progress.num_processes, progress.per_device_train_batch_size = world, args.per_device_train_batch_size
            progress.gradient_accumulation_steps, progress.max_train_steps = args.gradient_accumulation_steps, max_train_steps
        total_batch = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
        if args.with_tracking:
            accelerator.init_trackers(args.project_name, config=_tracker_config(
                model_args, data_args, args, accelerator.unwrap_model(model).config,
                {"num_processes": world, "total_train_batch_size": total_batch, "resolved_max_train_steps": max_train_steps},
            ))
        logger.info(
            "Training: %d examples, %d micro-batches per process and epoch, %d processes × %d per device × %d "
            "accumulation = %d per optimizer step, %d optimizer steps (starting at %d).",
            len(datasets["train"]), batches_per_epoch, world, args.per_device_train_batch_size,
            args.gradient_accumulation_steps, total_batch, max_train_steps, progress.completed_steps,
        )
        train_metrics = _train(
            accelerator, args, data_args, model, optimizer, lr_scheduler, train_loader, progress, max_train_steps,
            tokenizer, eval_loader, train_sampler,
        )
        metrics.update(train_metrics)

    loaders = {"validation": eval_loader, "test": test_loader}
    wanted = [split for split, flag in (("validation", args.do_eval), ("test", args.do_predict)) if flag]
    metrics.update(final_evaluation(
        _final_evaluator(accelerator, model, loaders, tokenizer, data_args, args), wanted,
        output_dir=args.output_dir, tokenizer=tokenizer, write_files=accelerator.is_main_process,
    ))
    metrics["total_runtime_s"] = round(time.time() - started, 1)
    if args.with_tracking and args.do_train:
        accelerator.log({k: v for k, v in metrics.items() if k.startswith(("eval_", "test_"))},
                        step=metrics.get("train_steps"))
    _save_final_model(accelerator, model, tokenizer, data_args, args, metrics)
    if args.with_tracking and args.do_train:
        accelerator.end_training()  # also destroys the process group: last
    return metrics


def _final_evaluator(accelerator, model, loaders: Mapping[str, DataLoader], tokenizer: PreTrainedTokenizerBase,
                     data_args: DataArguments, args: AccelerateArguments):
    """`evaluate(split, prefix)` for `job.final_evaluation`: :func:`evaluate_generation` with the final settings."""

    def evaluate(split: str, prefix: str) -> tuple[dict[str, float], np.ndarray | None]:
        split_metrics, predictions = evaluate_generation(
            accelerator, model, loaders[split], tokenizer, max_length=args.generation_max_length,
            desc=f"Evaluating {split}", **final_generation_kwargs(data_args),
        )
        logger.info("%s: %s", split, split_metrics)
        return split_metrics, predictions

    return evaluate


def _log_resume(progress, args, world, max_train_steps, checkpoint) -> None:
    old_batch = progress.per_device_train_batch_size * progress.num_processes * progress.gradient_accumulation_steps
    new_batch = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    logger.info("Resuming from %s at epoch %d, optimizer step %d, %d samples into the epoch.", checkpoint,
                progress.epoch, progress.completed_steps, progress.epoch_samples)
    if old_batch != new_batch:
        logger.warning("The checkpoint was trained with %d sentence pairs per optimizer step, this run uses %d.",
                       old_batch, new_batch)
    if progress.max_train_steps and progress.max_train_steps != max_train_steps and args.lr_scheduler_type not in (
        "constant", "constant_with_warmup"
    ):
        logger.warning("The %s schedule is rebuilt for %d steps (the checkpoint's run planned %d).",
                       args.lr_scheduler_type, max_train_steps, progress.max_train_steps)
    if progress.completed_steps >= max_train_steps:
        logger.warning("The checkpoint has already done %d >= max_train_steps=%d steps; nothing to train.",
                       progress.completed_steps, max_train_steps)


def _load_or_train_tokenizer(accelerator, model_args, data_args, args, raw_datasets, resume_checkpoint):
    """The named/saved tokenizer, the checkpoint's, or a new one trained once (per node) and shared."""
    if model_args.tokenizer_name or model_args.model_name_or_path:
        return prepare_tokenizer(model_args, raw_datasets, data_args)
    if resume_checkpoint:
        return AutoTokenizer.from_pretrained(resume_checkpoint)
    shared_dir = Path(args.output_dir)
    with accelerator.local_main_process_first():
        if accelerator.is_local_main_process:
            tokenizer = prepare_tokenizer(model_args, raw_datasets, data_args)
            tokenizer.save_pretrained(str(shared_dir))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(shared_dir))
    return tokenizer


def _train(accelerator, args, data_args, model, optimizer, lr_scheduler, train_loader, progress, max_train_steps,
           tokenizer, eval_loader, sampler) -> dict[str, Any]:
    world, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    stream = _MicroBatchStream(accelerator, train_loader, sampler, progress, args.per_device_train_batch_size)
    progress_bar = tqdm(range(max_train_steps), initial=progress.completed_steps, desc="Training",
                        disable=not accelerator.is_local_main_process)
    budget = None
    if data_args.max_train_minutes:  # the Trainer path's clock ('wall' or 'process'), decided by the main process
        budget = TimeBudget(data_args.max_train_minutes, data_args.time_budget_clock)
        budget.begin()
    train_start = time.time()
    start_step = progress.completed_steps
    logged_loss = torch.zeros((), device=accelerator.device)
    logged_steps, total_loss, total_loss_steps = 0, 0.0, 0
    grad_norm = None
    log_history: list[dict[str, Any]] = []
    last_checkpoint_step = progress.completed_steps if progress.completed_steps else None
    model.train()
    while progress.completed_steps < max_train_steps:
        window = stream.take(accumulation)
        # Target tokens of this optimizer step on all processes (see scaled_loss).
        local_tokens = torch.tensor(sum(int(b["labels"].ne(-100).sum()) for b in window), device=accelerator.device)
        num_items = accelerator.gather(local_tokens.reshape(1)).sum()
        step_loss = torch.zeros((), device=accelerator.device)
        for batch in window:
            with accelerator.accumulate(model):
                outputs = model(**batch, num_items_in_batch=num_items)
                step_loss += outputs.loss.detach()
                accelerator.backward(scaled_loss(outputs.loss, world, accumulation))
                if accelerator.sync_gradients:
                    if args.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:
                        lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:  # pragma: no cover - the stream always delivers whole windows
            raise RuntimeError("Gradient accumulation is out of step with the micro-batch windows.")
        progress.completed_steps += 1
        progress_bar.update(1)
        logged_loss += step_loss
        logged_steps += 1
        step = progress.completed_steps
        if step % args.logging_steps == 0 or step == max_train_steps:
            # step_loss is this process's share of the global token mean: sum over processes.
            mean_loss = float(accelerator.reduce(logged_loss, reduction="sum")) / logged_steps
            total_loss += mean_loss * logged_steps
            total_loss_steps += logged_steps
            logs = {"loss": mean_loss, "learning_rate": lr_scheduler.get_last_lr()[0], "epoch": stream.fractional_epoch}
            if grad_norm is not None:
                logs["grad_norm"] = float(grad_norm)  # before clipping, of the all-reduced gradient
            log_history.append({"step": step, **logs})
            progress_bar.set_postfix(loss=f"{mean_loss:.4f}")
            logger.info("step %d: %s", step, logs)
            if args.with_tracking:
                accelerator.log({f"train/{k}": v for k, v in logs.items()}, step=step)
            logged_loss.zero_()
            logged_steps = 0
        epoch_ended = bool(stream.finished_epochs)
        stream.finished_epochs.clear()
        wants_eval = (args.eval_strategy == "steps" and step % args.eval_steps == 0) or (
            args.eval_strategy == "epoch" and epoch_ended
        )
        if wants_eval and eval_loader is not None:
            eval_metrics, _ = evaluate_generation(
                accelerator, model, eval_loader, tokenizer, num_beams=args.generation_num_beams,
                max_length=args.generation_max_length,
            )
            logger.info("step %d eval: %s", step, eval_metrics)
            log_history.append({"step": step, **prefixed(eval_metrics, "eval")})
            if args.with_tracking:
                accelerator.log({f"eval/{k}": v for k, v in eval_metrics.items()}, step=step)
        every = args.checkpoint_every
        if (every and step % every == 0) or (args.checkpointing_steps == "epoch" and epoch_ended):
            _save_checkpoint(accelerator, args, progress, model, tokenizer)
            last_checkpoint_step = step
        if budget is not None:
            if accelerator.is_main_process and budget.spent():
                accelerator.set_trigger()
            if accelerator.check_trigger():  # all processes stop at the same step
                budget.log_stop(step)
                break
    progress_bar.close()
    if args.checkpointing_steps and last_checkpoint_step != progress.completed_steps:
        _save_checkpoint(accelerator, args, progress, model, tokenizer)  # the end state stays resumable
    if logged_steps:
        total_loss += float(accelerator.reduce(logged_loss, reduction="sum"))
        total_loss_steps += logged_steps
    runtime = time.time() - train_start
    if accelerator.is_main_process:
        # Appended over resumed runs, like Trainer's log_history (one JSON object per line).
        path = Path(args.output_dir) / LOG_HISTORY_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in log_history)
    steps_done = progress.completed_steps - start_step
    samples = steps_done * args.per_device_train_batch_size * world * args.gradient_accumulation_steps
    return {
        "train_loss": total_loss / max(total_loss_steps, 1),
        "train_runtime": round(runtime, 3),
        "train_samples_per_second": round(samples / runtime, 3) if runtime > 0 else 0.0,
        "train_steps": progress.completed_steps,
        "train_samples": samples,
        "epoch": round(stream.fractional_epoch, 4),
    }


def _save_final_model(accelerator, model, tokenizer, data_args: DataArguments, args: AccelerateArguments,
                      metrics: dict[str, Any]) -> None:
    """`job.finish_output_directory` for the unwrapped model with its full state dict: the directory layout of
    `scripts/train.py` (weights, config with auto_map, remote code, generation config, tokenizer, README.md)."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP: every process calls it
    if accelerator.is_main_process:
        finish_output_directory(
            args.output_dir, unwrapped, tokenizer, data_args, metrics,
            card_training_args=_card_training_args(accelerator, args, metrics), hub_model_id=args.hub_model_id,
            push=args.push_to_hub, hub_token=args.hub_token, hub_private_repo=args.hub_private_repo,
            save_kwargs={"state_dict": state_dict, "is_main_process": True, "save_function": accelerator.save},
        )
    accelerator.wait_for_everyone()
    logger.info("Saved the trained model to %s", args.output_dir)


def _card_training_args(accelerator, args: AccelerateArguments, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The training arguments the model card lists: the arguments plus what the launch decided (processes,
    distribution, precision, global batch, steps done), without resume/tracker settings."""
    values = {
        **args.to_dict(),
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "mixed_precision": accelerator.mixed_precision,
        "total_train_batch_size": args.per_device_train_batch_size * accelerator.num_processes
        * args.gradient_accumulation_steps,
        "max_steps": metrics.get("train_steps"),
    }
    skip = ("resume_from_checkpoint", "report_to", "project_name")
    return {k: v for k, v in values.items() if k not in skip}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point: `python scripts/train_accelerate.py [recipe.yaml] [--key value ...]`."""
    model_args, data_args, args = parse_arguments(argv)
    keep_freed_memory_for_reuse()  # the command's process only trains: see the function
    return run_accelerate_training(model_args, data_args, args)
