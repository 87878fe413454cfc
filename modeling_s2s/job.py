"""What both training drivers do: the job around the loop.

`scripts/train.py` (`training.py`, `Seq2SeqTrainer`) and `scripts/train_accelerate.py` (`accelerate_loop.py`, an
explicit Accelerate loop) run the same job and differ only in how they train and checkpoint. This module holds
the shared part, as small functions that take plain values:

* arguments: :class:`ModelArguments`, :class:`DataArguments`, recipes (:func:`recipe_argv`) and
  :func:`parse_job_arguments` (no unknown or abbreviated names), hub checks, :func:`check_job_plan` (train or
  evaluate a trained model; every requested evaluation has its split);
* data → tokenizer → model: :func:`load_raw_datasets`, :func:`prepare_tokenizer`, :func:`tokenize_splits`,
  :func:`build_config`, :func:`build_model`, :func:`seq2seq_collator`;
* the run: the output directory (:data:`OUTPUT_DIR_ENTRIES`, what a run writes there; :func:`check_output_dir`,
  :func:`clear_earlier_run`, :func:`last_complete_checkpoint`), :class:`TimeBudget`,
  :func:`keep_freed_memory_for_reuse`;
* the end: :func:`final_evaluation` (prefixed metrics, `<split>_predictions.txt`) and
  :func:`finish_output_directory` (model + tokenizer + generation config + remote code, `all_results.json`,
  `README.md` model card, push to the Hub).
"""

from __future__ import annotations

import copy
import ctypes
import difflib
import fnmatch
import json
import logging
import os
import re
import shutil
import sys
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser, PreTrainedTokenizerBase

from .configuration_s2s import S2SConfig
from .data import check_length_grouping
from .modeling_s2s import S2SForConditionalGeneration
from .pipeline_s2s import save_for_pipeline

logger = logging.getLogger("modeling_s2s.job")

#: The splits of the final evaluation and the prefix of their metrics (as `Trainer.predict`'s metric_key_prefix).
EVALUATED_SPLITS = (("validation", "eval"), ("test", "test"))
#: Name of the file with every measured metric, in output_dir.
ALL_RESULTS_NAME = "all_results.json"
#: Everything a run of either driver writes into output_dir, as `fnmatch` patterns of the names at its top level
#: (a trailing "/": a directory). The one list of what the job owns there: an output_dir holding any of these
#: holds an earlier run (refused unless resuming or overwriting, :func:`check_output_dir`), and
#: `--overwrite_output_dir true` removes exactly these before the new run writes (:func:`clear_earlier_run`);
#: every other file in output_dir is the user's and stays. The end-to-end tests of both drivers
#: (`tests/test_train_script.py`, `tests/test_accelerate.py`) check that real runs write nothing else.
OUTPUT_DIR_ENTRIES: tuple[str, ...] = (
    # the model: weights, config (auto_map, custom_pipelines), generation config
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    # its remote code: the package modules that `save_for_pipeline` copies
    "configuration_s2s.py", "modeling_s2s.py", "pipeline_s2s.py", "fast_paths.py", "generation_s2s.py",
    "input_checks.py", "resizing.py",
    # the tokenizer
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "target_tokenizer/",
    # results: metrics, predictions, model card
    ALL_RESULTS_NAME, "validation_predictions.txt", "test_predictions.txt", "README.md",
    # training state and logs: checkpoints (complete or not, and the Accelerate loop's staging directories),
    # the Trainer's state and arguments, the Accelerate loop's log, TensorBoard logs
    "checkpoint-[0-9]*/", "tmp-checkpoint-[0-9]*/", "trainer_state.json", "training_args.bin", "log_history.jsonl",
    "runs/",
)
#: Files besides the weights that make a `scripts/train.py` (Trainer) checkpoint complete: the Trainer writes
#: `trainer_state.json` last.
TRAINER_CHECKPOINT_FILES: tuple[str, ...] = ("trainer_state.json",)
#: Weight files of a checkpoint (Trainer: `model.safetensors` or shards; Accelerate `save_state`: `model.safetensors`,
#: `pytorch_model*.bin`, FSDP `pytorch_model_fsdp*`).
_CHECKPOINT_WEIGHTS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*")
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")

# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------


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


def load_mapping(path: str) -> dict[str, Any]:
    """Read a JSON or YAML file (by its suffix) that must hold a mapping of argument names to values."""
    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, not {type(data).__name__}.")
    return data


def mapping_to_argv(mapping: Mapping[str, Any]) -> list[str]:
    """`{key: value}` as `--key value` command-line words (lists as several values, dicts as JSON, None left out)."""
    argv = []
    for key, value in mapping.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in values)
    return argv


class JobError(ValueError):
    """A job refused before it writes anything: bad arguments, an output_dir holding another run, a missing split.
    The message names the option, the value and what is allowed; the scripts print it as one line (exit code 2)."""


class ArgumentError(JobError):
    """An unknown or abbreviated option or recipe key; the message names it and the closest valid name."""


def _did_you_mean(name: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else "; see --help for the valid names."


def check_recipe_keys(mapping: Mapping[str, Any], valid: Iterable[str], source: str = "the recipe") -> None:
    """Refuse recipe keys that are not argument names, written out in full (`learning_rat` is not taken for
    `learning_rate`): :class:`ArgumentError` naming the key and the closest valid name."""
    valid = sorted(set(valid))
    known = set(valid) | {name.replace("_", "-") for name in valid}
    for key in mapping:
        if key not in known:
            raise ArgumentError(
                f"{source}: unknown key {key!r}{_did_you_mean(str(key), valid)} Recipe keys are the scripts' "
                "argument names, written out in full."
            )


def recipe_argv(
    argv: Sequence[str] | None = None,
    translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    valid_keys: Iterable[str] | None = None,
) -> list[str]:
    """Expand `[recipe.yaml|recipe.json] [--key value ...]` into command-line words, the recipe's first so that
    command-line values override them. `translate` maps the recipe's keys first (e.g. Trainer names); with
    `valid_keys`, any other key is refused (:func:`check_recipe_keys`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")) and not argv[0].startswith("--"):
        mapping = load_mapping(argv[0])
        if translate:
            mapping = translate(mapping)
        if valid_keys is not None:
            check_recipe_keys(mapping, valid_keys, argv[0])
        argv = mapping_to_argv(mapping) + argv[1:]
    return argv


def parse_job_arguments(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[Any, ...]:
    """Parse `[recipe.yaml|recipe.json] [--key value ...]` into `dataclass_types` (command-line values override
    the recipe's) with `HfArgumentParser(allow_abbrev=False)`.

    Every recipe key and every command-line option must be an argument name written out in full: argparse's
    prefix matching would silently take `--learning_rat` (or a recipe's `learning_rat:`) for `--learning_rate`.
    Anything else raises :class:`ArgumentError` naming it and the closest valid name.
    """
    parser = HfArgumentParser(list(dataclass_types), allow_abbrev=False)
    names = [f.name for cls in dataclass_types for f in fields(cls) if f.init]
    argv = recipe_argv(argv, translate, valid_keys=names)
    options = sorted({s for action in parser._actions for s in action.option_strings if s.startswith("--")})
    _, unknown = parser.parse_known_args(argv)
    for word in unknown:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            raise ArgumentError(
                f"unknown option {option!r}{_did_you_mean(option, options)} Options are never abbreviated."
            )
    if unknown:
        raise ArgumentError(
            f"unexpected argument {unknown[0]!r}: only a recipe file (first) and --option value pairs are accepted."
        )
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def check_hub_arguments(push_to_hub: bool, hub_model_id: str | None) -> None:
    """Refuse `--push_to_hub` without a repository to push to."""
    if push_to_hub and not hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. your-name/rnn-attention-de-en).")


#: Where each `--do_*` flag's split comes from, for the messages of :func:`check_job_plan`.
_SPLIT_OPTIONS = (
    ("do_train", "train", "--train_file"),
    ("do_eval", "validation", "--validation_file"),
    ("do_predict", "test", "--test_file"),
)


def check_job_plan(
    splits: Iterable[str],
    *,
    do_train: bool,
    do_eval: bool,
    do_predict: bool,
    model_name_or_path: str | None,
    do_eval_note: str = "",
) -> None:
    """Refuse a job that would publish an untrained model or report evaluations it cannot run, before training.

    Without `do_train` the job only evaluates (and re-saves) the trained model of `--model_name_or_path`: that
    option is then required, and so is `do_eval` or `do_predict`. Each of `do_train`, `do_eval`, `do_predict`
    needs its split (train, validation, test) among `splits`, the loaded data's splits. `do_eval_note` explains
    where `do_eval` came from when the user may not have set it (e.g. the Trainer's `eval_strategy`).
    """
    splits = set(splits)
    if not do_train:
        if not model_name_or_path:
            raise JobError(
                "--do_train is false and there is no --model_name_or_path: the job would save and describe an "
                "untrained model. Pass --do_train true to train, or --model_name_or_path <trained model directory "
                "or Hub id> with --do_eval/--do_predict true to evaluate an existing model."
            )
        if not (do_eval or do_predict):
            raise JobError(
                "--do_train, --do_eval and --do_predict are all false: nothing to do. Pass --do_train true, or "
                "--do_eval/--do_predict true to evaluate --model_name_or_path."
            )
    wanted = {"do_train": do_train, "do_eval": do_eval, "do_predict": do_predict}
    for option, split, file_option in _SPLIT_OPTIONS:
        if wanted[option] and split not in splits:
            note = do_eval_note if option == "do_eval" else ""
            raise JobError(
                f"--{option} true{note} needs a {split} split, but the data has only "
                f"{', '.join(sorted(splits)) or 'no splits'}. Pass {file_option} (or a --dataset_name with a {split} "
                f"split), or --{option} false."
            )


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------


def configure_logging() -> None:
    """The log format of both training scripts (INFO and above)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)


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


def _is_owned(entry: Path) -> bool:
    for pattern in OUTPUT_DIR_ENTRIES:
        is_dir = pattern.endswith("/")
        if fnmatch.fnmatchcase(entry.name, pattern.rstrip("/")) and entry.is_dir() == is_dir:
            return True
    return False


def earlier_run_entries(output_dir: str | os.PathLike) -> list[str]:
    """The names in `output_dir` that a run of the job writes (:data:`OUTPUT_DIR_ENTRIES`), sorted."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    return sorted(entry.name for entry in output_dir.iterdir() if _is_owned(entry))


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-<step>` directories of `output_dir`, oldest step first (complete or not)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_problems(checkpoint: str | os.PathLike, required_files: Sequence[str]) -> list[str]:
    """What `checkpoint` lacks to be resumed: non-empty weights and each of `required_files` (the files its
    writer saves last). Empty when it is complete; a run killed while saving it leaves it incomplete."""
    path = Path(checkpoint)
    weights = [w for pattern in _CHECKPOINT_WEIGHTS for w in path.glob(pattern)]
    problems = [] if any(w.is_dir() or w.stat().st_size > 0 for w in weights) else ["model weights"]
    return problems + [name for name in required_files if not (path / name).is_file()]


def last_complete_checkpoint(
    output_dir: str | os.PathLike, required_files: Sequence[str] = TRAINER_CHECKPOINT_FILES
) -> Path | None:
    """The newest complete `checkpoint-<step>` of `output_dir` (:func:`checkpoint_problems`), or None. Newer
    incomplete ones (a run stopped while saving them) are skipped with a warning naming them."""
    for path in reversed(checkpoint_dirs(output_dir)):
        problems = checkpoint_problems(path, required_files)
        if not problems:
            return path
        logger.warning("Skipping the incomplete checkpoint %s (it has no %s; a run probably stopped while saving "
                       "it).", path, " and no ".join(problems))
    return None


def _is_inside(path: Path, directory: Path) -> bool:
    return directory.resolve() in path.resolve().parents


def _resume_requested(value: str | bool | None) -> str | bool | None:
    """`--resume_from_checkpoint` as True (newest in output_dir), a path, or None (false/none/empty: no resume)."""
    if value is True or (isinstance(value, str) and value.strip().lower() == "true"):
        return True
    if value is False or value is None or (isinstance(value, str) and value.strip().lower() in ("", "false", "none")):
        return None
    return str(value)


def check_output_dir(
    output_dir: str | os.PathLike,
    resume_from_checkpoint: str | bool | None,
    overwrite_output_dir: bool,
    *,
    checkpoint_files: Sequence[str] = TRAINER_CHECKPOINT_FILES,
) -> str | None:
    """Return the checkpoint to resume from; refuse an output_dir that holds an earlier run unless asked.

    `resume_from_checkpoint` is a checkpoint directory, or True/'true' for the newest *complete* `checkpoint-*` of
    `output_dir` (weights and `checkpoint_files`, see :func:`last_complete_checkpoint`); an incomplete checkpoint
    directory given by name is refused. Resuming into output_dir continues the run there (overwrite is ignored).
    Otherwise an output_dir with any entry of :data:`OUTPUT_DIR_ENTRIES` holds an earlier run: refused unless
    `overwrite_output_dir` (then :func:`clear_earlier_run` removes those entries before the new run writes).
    Raises :class:`JobError`.
    """
    output_dir = Path(output_dir)
    resume = _resume_requested(resume_from_checkpoint)
    if resume is True:
        last = last_complete_checkpoint(output_dir, checkpoint_files)
        if last is None:
            found = [p.name for p in checkpoint_dirs(output_dir)]
            detail = f" (only incomplete ones: {', '.join(found)})" if found else ""
            raise JobError(
                f"--resume_from_checkpoint true but {output_dir} holds no complete checkpoint-<step> directory"
                f"{detail}. Pass a checkpoint directory, or start a new run without --resume_from_checkpoint."
            )
        if overwrite_output_dir:
            logger.warning("--overwrite_output_dir is ignored: resuming the run in %s from %s.", output_dir, last)
        return str(last)
    if resume is not None:
        path = Path(resume)
        if not path.is_dir():
            raise JobError(
                f"--resume_from_checkpoint {resume!r} is not a directory; pass a checkpoint-<step> directory, or "
                "true for the newest complete one in --output_dir."
            )
        problems = checkpoint_problems(path, checkpoint_files)
        if problems:
            raise JobError(
                f"--resume_from_checkpoint {resume!r} is an incomplete checkpoint (it has no "
                f"{' and no '.join(problems)}; a run probably stopped while saving it). Pass an earlier "
                "checkpoint, or true for the newest complete one."
            )
        if _is_inside(path, output_dir):
            return resume  # continues the run in output_dir
    earlier = earlier_run_entries(output_dir)
    if earlier and not overwrite_output_dir:
        shown = ", ".join(earlier[:6]) + (f" and {len(earlier) - 6} more" if len(earlier) > 6 else "")
        raise JobError(
            f"--output_dir {output_dir} already holds an earlier run ({shown}). Pass --resume_from_checkpoint true "
            "to continue it, --overwrite_output_dir true to replace it (only the files a run writes are removed), "
            "or another --output_dir."
        )
    return resume


def clear_earlier_run(
    output_dir: str | os.PathLike, resume_checkpoint: str | None, overwrite_output_dir: bool
) -> list[str]:
    """With `overwrite_output_dir` and no resume inside `output_dir`: remove the earlier run's entries of
    `output_dir` (:data:`OUTPUT_DIR_ENTRIES`: checkpoints, predictions, results, card, model, tokenizer, remote
    code, logs, `runs/`) so that nothing of it is mixed with the new run; every other file stays. Returns the
    removed names. Call it on the main process only, after :func:`check_output_dir` and before the run writes.
    """
    output_dir = Path(output_dir)
    if not overwrite_output_dir or (resume_checkpoint and _is_inside(Path(resume_checkpoint), output_dir)):
        return []
    removed = earlier_run_entries(output_dir)
    for name in removed:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.warning("--overwrite_output_dir: removed the earlier run's %s from %s (other files are kept).",
                       ", ".join(removed), output_dir)
    return removed


class TimeBudget:
    """A training time limit of `minutes`, counted from :meth:`begin`.

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

    def begin(self) -> None:
        """Start counting (training begins)."""
        self.start = self._now()

    def elapsed(self) -> float:
        """Seconds counted since :meth:`begin` (0 before it)."""
        return 0.0 if self.start is None else self._now() - self.start

    def spent(self) -> bool:
        """Whether the budget is used up."""
        return self.elapsed() >= self.seconds

    def log_stop(self, step: int) -> None:
        """Log that training stops at optimizer step `step` because the budget is spent."""
        logger.info("Time budget of %.1f minutes (%s clock) reached at step %d.", self.seconds / 60, self.clock, step)


# --------------------------------------------------------------------------------------------------------------
# Data, tokenizer, model
# --------------------------------------------------------------------------------------------------------------


def load_raw_datasets(data_args: DataArguments):
    """The parallel text named by `data_args` (`data.load_parallel_data`): a DatasetDict of `translation` pairs."""
    from .data import load_parallel_data

    return load_parallel_data(
        data_args.source_lang, data_args.target_lang,
        dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file, validation_file=data_args.validation_file, test_file=data_args.test_file,
    )


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


def _no_ordering(desc: str) -> AbstractContextManager:
    """A `main_process_first` for a single process: nothing to wait for."""
    return nullcontext()


def tokenize_splits(
    raw_datasets,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    main_process_first: Callable[[str], AbstractContextManager] = _no_ordering,
) -> dict[str, Any]:
    """Tokenize every split with `Dataset.map(batched=True)`; drop over-long training pairs and report them.

    `main_process_first(desc)` is entered around each split's `map`, so that the main process fills the
    `datasets` cache and the others read it (e.g. `TrainingArguments.main_process_first`).
    """
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
        with main_process_first(f"tokenizing {split}"):
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


def _parse_overrides(overrides: str | None) -> dict[str, Any]:
    """`'a=1,b=dot'` as `{"a": 1, "b": "dot"}` (values read as YAML)."""
    result = {}
    for item in filter(None, (part.strip() for part in (overrides or "").split(","))):
        if "=" not in item:
            raise ValueError(f"`config_overrides` item {item!r} must look like name=value.")
        key, raw = (s.strip() for s in item.split("=", 1))
        result[key] = yaml.safe_load(raw)
    return result


def build_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> S2SConfig:
    """S2SConfig from the preset and overrides, with vocabulary size and special ids taken from the tokenizer."""
    kwargs = load_mapping(model_args.model_config) if model_args.model_config else {}
    kwargs.update(_parse_overrides(model_args.config_overrides))
    unknown = set(kwargs) - set(S2SConfig().to_dict())
    if unknown:
        raise ValueError(f"Unknown S2SConfig keywords {sorted(unknown)} in model_config/config_overrides.")
    kwargs.update(vocabulary_from_tokenizer(tokenizer))
    return S2SConfig(**kwargs)


def vocabulary_from_tokenizer(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The S2SConfig fields a (joint) tokenizer decides: vocabulary sizes and special ids (decoder start = `<s>`)."""
    return dict(
        vocab_size=len(tokenizer),
        decoder_vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )


# The generation config each model of a job started with, kept beside the model so that it stays plain.
# Seq2SeqTrainer's evaluation fills every generation default into `model.generation_config` (min_length=0,
# top_k=50, ...); saved, they would make transformers warn at every `generate(min_new_tokens=...)` that
# `min_length` was set too.
_starting_generation_config: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def build_model(model_args: ModelArguments, tokenizer: PreTrainedTokenizerBase) -> S2SForConditionalGeneration:
    """The saved model of `model_name_or_path`, else a new one from :func:`build_config`; logs its size."""
    if model_args.model_name_or_path:
        model = S2SForConditionalGeneration.from_pretrained(model_args.model_name_or_path)
    else:
        model = S2SForConditionalGeneration(build_config(model_args, tokenizer))
    _starting_generation_config[model] = copy.deepcopy(model.generation_config)
    logger.info("Model: %s parameters, config %s", f"{model.num_parameters():,}", model.config.to_json_string())
    return model


def seq2seq_collator(tokenizer: PreTrainedTokenizerBase, model: S2SForConditionalGeneration) -> DataCollatorForSeq2Seq:
    """Pads `input_ids` with the tokenizer's pad id and `labels` with -100 (ignored by the loss), and builds
    `decoder_input_ids` with the model."""
    return DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)


# --------------------------------------------------------------------------------------------------------------
# Final evaluation
# --------------------------------------------------------------------------------------------------------------


def prefixed(metrics: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`metrics` with every key that does not start with `<prefix>_` renamed to `<prefix>_<key>`."""
    return {k if k.startswith(f"{prefix}_") else f"{prefix}_{k}": v for k, v in metrics.items()}


def final_generation_kwargs(data_args: DataArguments) -> dict[str, Any]:
    """The `generate()` settings of the final evaluation, also saved as the model's generation config."""
    return {"num_beams": data_args.eval_num_beams, "length_penalty": data_args.eval_length_penalty}


def write_predictions(output_dir: str | os.PathLike, split: str, predictions: np.ndarray, tokenizer) -> Path:
    """Decode generated ids (-100 counts as padding) to `output_dir/<split>_predictions.txt`, one line each."""
    ids = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    path = Path(output_dir) / f"{split}_predictions.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(text.strip() + "\n" for text in texts), encoding="utf-8")
    return path


def final_evaluation(
    evaluate: Callable[[str, str], tuple[Mapping[str, Any], np.ndarray | None]],
    splits: Iterable[str],
    *,
    output_dir: str | os.PathLike,
    tokenizer: PreTrainedTokenizerBase,
    write_files: bool,
) -> dict[str, Any]:
    """Evaluate each of `splits` ('validation', 'test') with `evaluate(split, prefix) → (metrics, predictions)`.

    Returns the metrics with the split's prefix (`eval_`, `test_`); where `write_files` (the main process) and
    there are predictions, writes them to `<split>_predictions.txt`.
    """
    wanted = set(splits)
    metrics: dict[str, Any] = {}
    for split, prefix in EVALUATED_SPLITS:
        if split not in wanted:
            continue
        split_metrics, predictions = evaluate(split, prefix)
        metrics.update(prefixed(split_metrics, prefix))
        if write_files and predictions is not None:
            write_predictions(output_dir, split, predictions, tokenizer)
    return metrics


# --------------------------------------------------------------------------------------------------------------
# The output directory
# --------------------------------------------------------------------------------------------------------------


def write_model_card(
    output_dir: str | os.PathLike,
    config: S2SConfig,
    data_args: DataArguments,
    training_args: Mapping[str, Any],
    metrics: Mapping[str, Any],
    hub_model_id: str | None,
) -> None:
    """`output_dir/README.md` from the measured metrics and the training arguments (`hub_*`, `push_*` and unset
    arguments left out), with the command line that ran the job."""
    from .model_card import render_model_card

    split_metrics = {}
    for split, prefix in EVALUATED_SPLITS:
        values = {name: metrics.get(f"{prefix}_{name}") for name in ("bleu", "chrf")}
        if all(v is not None for v in values.values()):
            split_metrics[split] = values
    dataset_name = data_args.dataset_name or ("multi30k" if not data_args.train_file else Path(data_args.train_file).name)
    args = {k: v for k, v in training_args.items() if not k.startswith(("hub_", "push_")) and v is not None}
    render_model_card(
        str(output_dir),
        config=config,
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


def push_to_hub(output_dir: str | os.PathLike, hub_model_id: str, *, token: str | None, private: bool) -> None:
    """Upload the finished directory to the Hub repository `hub_model_id` (`hub.push_model_dir`)."""
    from .hub import push_model_dir

    push_model_dir(str(output_dir), hub_model_id, token=token, private=bool(private))


def finish_output_directory(
    output_dir: str | os.PathLike,
    model: S2SForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    metrics: Mapping[str, Any],
    *,
    card_training_args: Mapping[str, Any],
    hub_model_id: str | None,
    push: bool = False,
    hub_token: str | None = None,
    hub_private_repo: bool = False,
    save_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write the Hub-ready, pipeline-ready directory (main process only) and push it if asked.

    The model (unwrapped) gets back the generation config it started the job with, plus the final evaluation's
    generation settings; then `save_for_pipeline` writes weights, config (auto_map + custom_pipelines), remote
    code, generation config and tokenizer (`save_kwargs` go to `save_pretrained`, e.g. a gathered `state_dict`);
    then `all_results.json` and the `README.md` card.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    starting = _starting_generation_config.get(model)
    if starting is not None:  # without the defaults the evaluation filled in
        model.generation_config = copy.deepcopy(starting)
    for name, value in final_generation_kwargs(data_args).items():
        setattr(model.generation_config, name, value)
    save_for_pipeline(model, tokenizer, output_dir, task="translation", **(save_kwargs or {}))
    (output_dir / ALL_RESULTS_NAME).write_text(json.dumps(dict(metrics), indent=2) + "\n", encoding="utf-8")
    write_model_card(output_dir, model.config, data_args, card_training_args, metrics, hub_model_id)
    if push:
        push_to_hub(output_dir, hub_model_id, token=hub_token, private=hub_private_repo)
    return output_dir
