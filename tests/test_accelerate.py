"""The explicit Accelerate loop (`scripts/train_accelerate.py`, `modeling_s2s/accelerate_loop.py`) on CPU with gloo.

Multi-process runs start real processes with `python -m torch.distributed.run --nproc_per_node 2` (what starts two
CPU processes here; `accelerate launch` would need MPI). Everything is tiny: 20 training pairs, 9 (odd) evaluation
pairs, a 400-token tokenizer trained once per session, `configuration/models/tiny.json`, a handful of steps.

Checked: 2 processes with per-device batch b give the same updates as 1 process with batch 2b (global token-mean
loss, world-size independent data order); checkpoints resume across world sizes and a stopped run resumes to the
same weights as an uninterrupted one (bitwise, with dropout); evaluation gathers every example once; the output
directory is the Hub-ready one of scripts/train.py; the Trainer path runs under torchrun; bad launches fail with
clear messages before training; every parameter gets a gradient in every model configuration (no
`find_unused_parameters` needed under DDP).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import GRID, grid_id, make_model, random_ids
from safetensors.torch import load_file

from modeling_s2s import S2SConfig, S2SForConditionalGeneration
from modeling_s2s.accelerate_loop import (
    AccelerateArguments,
    EpochSampler,
    LaunchError,
    TrainingProgress,
    _pad_after_eos,
    check_checkpoint_config,
    check_global_batch_size,
    check_launch_environment,
    check_world_size,
    compare_model_configs,
    parse_arguments,
    scaled_loss,
)
from modeling_s2s.data import DEFAULT_DATA_DIR, read_text_lines
from modeling_s2s.job import earlier_run_entries

REPO = Path(__file__).resolve().parent.parent
TRAIN_ACCELERATE = REPO / "scripts" / "train_accelerate.py"
TRAIN_TRAINER = REPO / "scripts" / "train.py"
TINY_MODEL = REPO / "configuration" / "models" / "tiny.json"
ACCELERATE_CONFIGS = REPO / "configuration" / "accelerate"
NUM_TRAIN, NUM_EVAL = 20, 9  # 9: an odd evaluation set, not a multiple of processes × eval batch
TIMEOUT_S = 300


# --------------------------------------------------------------------------------------------------------------
# Subprocess helpers
# --------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        OMP_NUM_THREADS="1",  # 2 processes on a shared 2-core machine
        HF_DATASETS_CACHE=str(tmp / "hf_datasets"),
        PYTHONUNBUFFERED="1",
    )
    for key in [k for k in env if k.startswith(("ACCELERATE_", "FSDP_"))] + ["WORLD_SIZE", "RANK", "LOCAL_RANK"]:
        env.pop(key, None)  # a launcher around pytest must not leak into the runs
    return env


def launch_command(script: Path, args: list[str], nproc: int) -> list[str]:
    """`python script ...` for one process, `python -m torch.distributed.run --nproc_per_node N script ...` else."""
    if nproc == 1:
        return [sys.executable, str(script), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), str(script), *args]


def run(command: list[str], tmp: Path, *, expect_success: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(tmp), capture_output=True, text=True,
                            timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    if expect_success and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def log_history(directory: Path) -> list[dict]:
    lines = (directory / "log_history.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def assert_weights_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a)
    assert worst[0] <= atol, f"largest difference {worst}"


# --------------------------------------------------------------------------------------------------------------
# Data, tokenizer and the runs (each run once per module)
# --------------------------------------------------------------------------------------------------------------


def _multi30k_pairs(split_stem: str, count: int, max_words: int) -> list[dict[str, str]]:
    de = read_text_lines(DEFAULT_DATA_DIR / f"{split_stem}.de.gz")
    en = read_text_lines(DEFAULT_DATA_DIR / f"{split_stem}.en.gz")
    pairs = [{"de": d, "en": e} for d, e in zip(de, en) if len(d.split()) <= max_words and len(e.split()) <= max_words]
    return pairs[:count]


def _write_jsonl(path: Path, pairs: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps({"translation": p}, ensure_ascii=False) + "\n" for p in pairs), "utf-8")


class Workspace:
    """Files shared by all runs, and the runs themselves (started lazily, at most once each)."""

    def __init__(self, root: Path):
        from modeling_s2s.tokenization import train_tokenizer

        self.root = root
        self.train_file, self.eval_file = root / "train.jsonl", root / "validation.jsonl"
        _write_jsonl(self.train_file, _multi30k_pairs("train", NUM_TRAIN, max_words=8))
        eval_pairs = _multi30k_pairs("val", NUM_EVAL, max_words=9)
        _write_jsonl(self.eval_file, eval_pairs)
        corpus = _multi30k_pairs("train", 1000, max_words=30)
        tokenizer = train_tokenizer((p[lang] for p in corpus for lang in ("de", "en")), vocab_size=400)
        self.tokenizer_dir = root / "tokenizer"
        tokenizer.save_pretrained(str(self.tokenizer_dir))
        self.tokenizer = tokenizer
        self.eval_model_dir = root / "eval_model"
        _memorising_model(tokenizer, eval_pairs).save_pretrained(str(self.eval_model_dir))
        tokenizer.save_pretrained(str(self.eval_model_dir))

    def out(self, name: str) -> Path:
        return self.root / name

    def train_args(self, name: str, *, per_device: int, max_steps: int, dropout: bool = False, extra=()) -> list[str]:
        overrides = "init_std=0.3" + ("" if dropout else ",dropout=0,embedding_dropout=0")
        return [
            "--model_config", str(TINY_MODEL), "--config_overrides", overrides,
            "--tokenizer_name", str(self.tokenizer_dir),
            "--train_file", str(self.train_file), "--validation_file", str(self.eval_file),
            "--output_dir", str(self.out(name)),
            "--per_device_train_batch_size", str(per_device), "--gradient_accumulation_steps", "2",
            "--max_train_steps", str(max_steps),
            # A schedule that does not depend on max_train_steps, so a run stopped at step k and resumed with a
            # larger max follows the same learning rates (warm-up state is in the checkpoint).
            "--lr_scheduler_type", "constant_with_warmup", "--num_warmup_steps", "2", "--learning_rate", "0.02",
            "--max_grad_norm", "1.0", "--eval_strategy", "no", "--logging_steps", "1", "--seed", "7",
            "--do_eval", "false", *extra,
        ]

    @cache  # noqa: B019 - one Workspace per module; each run happens once
    def train(self, name: str, nproc: int, per_device: int, max_steps: int, dropout: bool = False,
              extra: tuple[str, ...] = ()) -> Path:
        args = self.train_args(name, per_device=per_device, max_steps=max_steps, dropout=dropout, extra=extra)
        run(launch_command(TRAIN_ACCELERATE, args, nproc), self.root)
        return self.out(name)

    @cache  # noqa: B019
    def evaluate(self, name: str, nproc: int) -> Path:
        args = [
            "--model_name_or_path", str(self.eval_model_dir), "--validation_file", str(self.eval_file),
            "--do_train", "false", "--do_eval", "true", "--output_dir", str(self.out(name)),
            "--per_device_eval_batch_size", "2", "--eval_num_beams", "2", "--generation_max_length", "40",
        ]
        run(launch_command(TRAIN_ACCELERATE, args, nproc), self.root)
        return self.out(name)


def _memorising_model(tokenizer, pairs: list[dict[str, str]]) -> S2SForConditionalGeneration:
    """A tiny model trained in-process until it reproduces the references: outputs of different lengths (so that
    generated ids really need padding across processes) and a nonzero BLEU."""
    torch.manual_seed(0)
    config = S2SConfig(vocab_size=len(tokenizer), embedding_size=32, hidden_size=64, input_feeding=False,
                       dropout=0.0, embedding_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       decoder_start_token_id=tokenizer.bos_token_id)
    model = S2SForConditionalGeneration(config)
    batch = tokenizer([p["de"] for p in pairs], text_target=[p["en"] for p in pairs], padding=True,
                      return_tensors="pt")
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(120):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.02:
            break
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread in this process too: on a shared 2-core machine two spinning OpenMP threads can make a
    tiny training step hundreds of times slower (measured: 2.5 s instead of 6 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("accelerate"))


# The reference runs. Global batch: 1 process × 4 pairs × 2 accumulation = 2 processes × 2 pairs × 2 = 8 pairs per
# optimizer step; 20 pairs = 5 micro-batches per process and epoch, so the checkpoint after step 2 is mid-epoch
# and step 3 crosses into epoch 1.
REFERENCE_1P_EXTRA = ("--checkpointing_steps", "2", "--do_eval", "true", "--eval_num_beams", "2",
                      "--generation_max_length", "12")


def one_process(ws: Workspace) -> Path:
    return ws.train("reference_1p", 1, 4, 3, extra=REFERENCE_1P_EXTRA)


def two_processes(ws: Workspace) -> Path:
    return ws.train("reference_2p", 2, 2, 3, extra=("--checkpointing_steps", "2", "--with_tracking"))


def stopped_run(ws: Workspace) -> Path:
    return ws.train("dropout_stopped", 1, 4, 2, dropout=True, extra=("--checkpointing_steps", "2"))


# --------------------------------------------------------------------------------------------------------------
# (a) 2 processes = 1 process over the same global batches
# --------------------------------------------------------------------------------------------------------------


def test_two_processes_match_one_process(ws):
    single, double = one_process(ws), two_processes(ws)
    assert_weights_close(weights(single), weights(double))
    logs_1, logs_2 = log_history(single), log_history(double)
    assert [e["step"] for e in logs_1] == [e["step"] for e in logs_2] == [1, 2, 3]
    for a, b in zip(logs_1, logs_2):
        # The loss is the token mean over the global batch and grad_norm that of the all-reduced gradient: a
        # per-process mean or a missing × world size would change them (Adam would hide it in the weights).
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["epoch"] == pytest.approx(b["epoch"])
    assert logs_1[-1]["epoch"] == pytest.approx(1.2)  # 3 steps × 8 pairs = 24 of 20: into the second epoch
    assert list((double / "runs").rglob("events.out.tfevents.*"))  # --with_tracking: TensorBoard logs
    for out in (single, double):  # everything a run writes is in job.OUTPUT_DIR_ENTRIES (what overwrite removes)
        assert earlier_run_entries(out) == sorted(p.name for p in out.iterdir())
    start = weights(single / "checkpoint-2")
    assert max(float((weights(single)[k] - start[k]).abs().max()) for k in start) > 1e-3  # the last step moved


# --------------------------------------------------------------------------------------------------------------
# (c) checkpoints: across world sizes, and stop + resume == no stop
# --------------------------------------------------------------------------------------------------------------


def test_two_process_checkpoint_resumes_in_one_process(ws):
    reference = one_process(ws)
    checkpoint = two_processes(ws) / "checkpoint-2"
    progress = json.loads((checkpoint / "training_progress.json").read_text())
    assert progress == {**progress, "epoch": 0, "completed_steps": 2, "epoch_samples": 16, "num_processes": 2}
    assert (checkpoint / "config.json").is_file() and (checkpoint / "tokenizer.json").is_file()
    resumed = ws.train("resume_2p_in_1p", 1, 4, 3, extra=("--resume_from_checkpoint", str(checkpoint)))
    assert_weights_close(weights(resumed), weights(reference))
    assert [e["step"] for e in log_history(resumed)] == [3]
    assert log_history(resumed)[0]["grad_norm"] == pytest.approx(log_history(reference)[-1]["grad_norm"], rel=1e-4)


def test_one_process_checkpoint_resumes_in_two_processes(ws):
    checkpoint = one_process(ws) / "checkpoint-2"
    reference = two_processes(ws)
    resumed = ws.train("resume_1p_in_2p", 2, 2, 3, extra=("--resume_from_checkpoint", str(checkpoint)))
    assert_weights_close(weights(resumed), weights(reference))


def test_stopped_run_resumes_to_the_uninterrupted_weights(ws):
    # Dropout on: the checkpoint's RNG states and the sampler (which never draws from the global RNG) make the
    # resumed run bitwise identical to the uninterrupted one.
    uninterrupted = ws.train("dropout_full", 1, 4, 3, dropout=True)
    stopped = stopped_run(ws)
    assert (stopped / "checkpoint-2").is_dir()
    resumed = ws.train("dropout_resumed", 1, 4, 3, dropout=True,
                       extra=("--resume_from_checkpoint", str(stopped / "checkpoint-2")))
    full, again = weights(uninterrupted), weights(resumed)
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert log_history(resumed)[-1] == log_history(uninterrupted)[-1]


def test_resume_true_skips_a_checkpoint_stopped_while_saving(ws):
    """`--resume_from_checkpoint true` in a directory whose newest checkpoint was cut short (weights written, the
    rest not): the complete one before it is used, with a warning naming the skipped one, and the result is the
    uninterrupted run's; the re-saved checkpoint is complete and no staging directory is left."""
    import shutil

    uninterrupted = ws.train("dropout_full", 1, 4, 3, dropout=True)
    stopped = stopped_run(ws)
    out = ws.out("dropout_resume_true")
    out.mkdir()
    shutil.copytree(stopped / "checkpoint-2", out / "checkpoint-2")
    (out / "checkpoint-3").mkdir()
    shutil.copy(stopped / "checkpoint-2" / "model.safetensors", out / "checkpoint-3")
    args = ws.train_args("dropout_resume_true", per_device=4, max_steps=3, dropout=True) + [
        "--resume_from_checkpoint", "true", "--checkpointing_steps", "1"]
    result = run(launch_command(TRAIN_ACCELERATE, args, 1), ws.root)
    assert f"Skipping the incomplete checkpoint {out / 'checkpoint-3'}" in result.stderr
    assert f"Resuming from {out / 'checkpoint-2'}" in result.stderr
    full, again = weights(uninterrupted), weights(out)
    assert all(torch.equal(full[k], again[k]) for k in full)
    assert json.loads((out / "checkpoint-3" / "training_progress.json").read_text())["completed_steps"] == 3
    assert not list(out.glob("tmp-checkpoint-*"))


def test_interrupted_checkpoint_save_leaves_the_previous_checkpoint_usable(tmp_path):
    """A checkpoint is written to tmp-checkpoint-<step> and renamed when complete: a save killed halfway leaves no
    checkpoint-<step> that looks resumable, and the previous one stays (even with checkpoints_total_limit=1)."""
    from modeling_s2s.accelerate_loop import ACCELERATE_CHECKPOINT_FILES, _save_checkpoint
    from modeling_s2s.job import check_output_dir

    class Accelerator:  # the parts of accelerate.Accelerator that _save_checkpoint uses, one process
        is_main_process = True
        fail = False

        def wait_for_everyone(self):
            pass

        def unwrap_model(self, model):
            return model

        def save_state(self, directory):
            Path(directory).mkdir(parents=True, exist_ok=True)
            (Path(directory) / "model.safetensors").write_bytes(b"weights")
            if self.fail:
                raise KeyboardInterrupt("killed while saving")
            (Path(directory) / "optimizer.bin").write_bytes(b"optimizer")

    class Tokenizer:
        def save_pretrained(self, directory):
            (Path(directory) / "tokenizer.json").write_text("{}")

    accelerator, model = Accelerator(), SimpleNamespace(config=S2SConfig(vocab_size=12, hidden_size=4,
                                                                           embedding_size=4))
    args = AccelerateArguments(output_dir=str(tmp_path), checkpoints_total_limit=1)
    _save_checkpoint(accelerator, args, TrainingProgress(completed_steps=2), model, Tokenizer())
    accelerator.fail = True
    with pytest.raises(KeyboardInterrupt):
        _save_checkpoint(accelerator, args, TrainingProgress(completed_steps=4), model, Tokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "tmp-checkpoint-4"]
    resume = check_output_dir(tmp_path, "true", False, checkpoint_files=ACCELERATE_CHECKPOINT_FILES)
    assert resume == str(tmp_path / "checkpoint-2")
    accelerator.fail = False  # the resumed run saves step 4 again: complete, renamed, the older one rotated out
    _save_checkpoint(accelerator, args, TrainingProgress(completed_steps=4), model, Tokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4"]
    assert json.loads((tmp_path / "checkpoint-4" / "training_progress.json").read_text())["completed_steps"] == 4


def test_overwrite_replaces_the_earlier_run_and_keeps_the_users_files(ws):
    import shutil

    out = ws.out("overwritten")
    shutil.copytree(one_process(ws), out)  # an earlier run: checkpoints, predictions, log, card, model
    assert {"checkpoint-2", "checkpoint-3", "validation_predictions.txt"} <= {p.name for p in out.iterdir()}
    (out / "notes.md").write_text("my notes")
    args = ws.train_args("overwritten", per_device=4, max_steps=1) + ["--overwrite_output_dir", "true"]
    run(launch_command(TRAIN_ACCELERATE, args, 1), ws.root)
    names = {p.name for p in out.iterdir()}
    assert not names & {"checkpoint-2", "checkpoint-3", "validation_predictions.txt"}, names
    assert (out / "notes.md").read_text() == "my notes" and "model.safetensors" in names
    assert [e["step"] for e in log_history(out)] == [1]  # not appended to the earlier run's log
    assert "eval_bleu" not in json.loads((out / "all_results.json").read_text())
    # without overwrite, the new run is refused
    result = run(launch_command(TRAIN_ACCELERATE, args[:-2], 1), ws.root, expect_success=False)
    assert result.returncode == 2 and "already holds an earlier run" in result.stderr


def test_a_job_that_trains_nothing_is_refused(ws):
    args = ws.train_args("untrained", per_device=4, max_steps=1) + ["--do_train", "false", "--do_eval", "true"]
    result = run(launch_command(TRAIN_ACCELERATE, args, 1), ws.root, expect_success=False)
    assert result.returncode == 2
    assert "train_accelerate.py: error: --do_train is false and there is no --model_name_or_path" in result.stderr
    assert not ws.out("untrained").exists()


def test_resume_with_another_model_config_fails_naming_the_keys(ws):
    checkpoint = stopped_run(ws)
    args = ws.train_args("bad_resume", per_device=4, max_steps=3, dropout=True) + [
        "--resume_from_checkpoint", str(checkpoint / "checkpoint-2"),
        "--config_overrides", "init_std=0.3,hidden_size=32,attention_type=dot",
    ]
    result = run(launch_command(TRAIN_ACCELERATE, args, 1), ws.root, expect_success=False)
    assert result.returncode == 2
    assert "different model configuration" in result.stderr
    assert "hidden_size: checkpoint 64 vs now 32" in result.stderr
    assert "attention_type: checkpoint 'general' vs now 'dot'" in result.stderr
    assert "Training:" not in result.stderr


# --------------------------------------------------------------------------------------------------------------
# (b) evaluation gathered across processes; the output directory
# --------------------------------------------------------------------------------------------------------------


def test_evaluation_with_two_processes_equals_one_process(ws):
    single, double = ws.evaluate("eval_1p", 1), ws.evaluate("eval_2p", 2)
    metrics_1 = json.loads((single / "all_results.json").read_text())
    metrics_2 = json.loads((double / "all_results.json").read_text())
    assert metrics_1["eval_samples"] == metrics_2["eval_samples"] == NUM_EVAL  # none dropped, none repeated
    for key in ("eval_bleu", "eval_chrf", "eval_gen_len", "eval_loss"):
        assert metrics_1[key] == pytest.approx(metrics_2[key], rel=1e-6), key
    assert metrics_1["eval_bleu"] > 50  # the model memorised the references
    lines_1 = (single / "validation_predictions.txt").read_text("utf-8").splitlines()
    lines_2 = (double / "validation_predictions.txt").read_text("utf-8").splitlines()
    assert lines_1 == lines_2 and len(lines_1) == NUM_EVAL
    references = [json.loads(line)["translation"]["en"] for line in ws.eval_file.read_text("utf-8").splitlines()]
    assert sum(p == r for p, r in zip(lines_1, references)) >= NUM_EVAL - 2  # in dataset order
    assert len({len(ws.tokenizer(line)["input_ids"]) for line in lines_1}) > 3  # lengths differ: padding needed


def test_output_directory_is_hub_ready(ws):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from modeling_s2s.model_card import parse_model_card

    out = one_process(ws)
    for name in ("config.json", "model.safetensors", "generation_config.json", "modeling_s2s.py",
                 "configuration_s2s.py", "pipeline_s2s.py", "tokenizer.json", "README.md", "all_results.json",
                 "validation_predictions.txt"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"].endswith("S2SForConditionalGeneration")
    assert "translation" in config["custom_pipelines"]  # pipeline-ready, as scripts/train.py writes it
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 2  # --eval_num_beams
    metrics = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "train_runtime", "eval_bleu", "eval_chrf", "num_parameters"} <= set(metrics)
    metadata, body = parse_model_card(out / "README.md")
    assert "train_accelerate.py" in body and "num_processes" in body
    model = AutoModelForSeq2SeqLM.from_pretrained(str(out)).eval()
    assert_weights_close({k: v for k, v in model.state_dict().items() if k in weights(out)}, weights(out), atol=0)
    # What a user relies on: the saved model, reloaded with its saved generation settings, translates the validation
    # sentences into exactly the lines of validation_predictions.txt, and all_results.json's BLEU/chrF are those
    # of these lines against the references.
    from modeling_s2s.evaluation import compute_translation_metrics

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    pairs = [json.loads(line)["translation"] for line in ws.eval_file.read_text("utf-8").splitlines()]
    inputs = tokenizer([p["de"] for p in pairs], return_tensors="pt", padding=True)
    with torch.no_grad():
        generated = model.generate(**inputs, max_length=12)  # --generation_max_length 12; beams: saved config
    predictions = [t.strip() for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
    written = (out / "validation_predictions.txt").read_text("utf-8").splitlines()
    assert predictions == written and len(written) == NUM_EVAL
    references = [tokenizer.decode(tokenizer(text_target=p["en"])["input_ids"], skip_special_tokens=True).strip()
                  for p in pairs]
    recomputed = compute_translation_metrics(written, references)
    assert metrics["eval_bleu"] == pytest.approx(recomputed["bleu"], abs=1e-4)
    assert metrics["eval_chrf"] == pytest.approx(recomputed["chrf"], abs=1e-4)


# --------------------------------------------------------------------------------------------------------------
# (d) the Trainer path under torchrun
# --------------------------------------------------------------------------------------------------------------


def test_trainer_path_runs_under_torchrun(ws):
    out = ws.out("trainer_2p")
    args = [
        "--model_config", str(TINY_MODEL), "--tokenizer_name", str(ws.tokenizer_dir),
        "--train_file", str(ws.train_file), "--output_dir", str(out), "--do_train", "--max_steps", "3",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--eval_strategy", "no",
        "--save_strategy", "no", "--logging_steps", "1", "--dataloader_pin_memory", "false",
        "--use_cpu", "true",  # without it each torchrun process trains its own copy on a CPU-only machine
    ]
    result = run(launch_command(TRAIN_TRAINER, args, 2), ws.root)
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in result.stderr + result.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    first = next(entry for entry in state["log_history"] if entry.get("step") == 1 and "loss" in entry)
    assert first["epoch"] == pytest.approx(2 * 2 / NUM_TRAIN)  # 2 processes × 2 pairs: the data was sharded
    assert state["global_step"] == 3
    assert (out / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------------
# (e) bad launches fail clearly, before training
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_fp16_without_gpu_fails(ws):
    args = ws.train_args("fp16", per_device=4, max_steps=1) + ["--mixed_precision", "fp16"]
    result = run(launch_command(TRAIN_ACCELERATE, args, 1), ws.root, expect_success=False)
    assert result.returncode == 2
    assert "mixed_precision='fp16' needs a GPU, but this machine has none" in result.stderr
    assert not ws.out("fp16").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerate_config_without_gpu_fails(ws):
    args = ws.train_args("gpu_ddp", per_device=4, max_steps=1)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ACCELERATE_CONFIGS / "gpu_ddp.yaml"), "--main_process_port", str(free_port()),
               str(TRAIN_ACCELERATE), *args]
    result = run(command, ws.root, expect_success=False)
    assert result.returncode != 0
    assert "The Accelerate config asks for GPU(s)" in result.stderr
    assert "this machine has no GPU" in result.stderr
    assert not ws.out("gpu_ddp").exists()


def test_global_batch_not_divisible_by_world_size_fails(ws):
    args = ws.train_args("bad_global", per_device=2, max_steps=1) + ["--global_batch_size", "5"]
    result = run(launch_command(TRAIN_ACCELERATE, args, 2), ws.root, expect_success=False)
    assert result.returncode != 0
    assert ("global_batch_size=5 but per_device_train_batch_size=2 × world size 2 × gradient_accumulation_steps=2 "
            "= 8; global_batch_size=5 is not divisible by the world size 2") in result.stderr
    assert not ws.out("bad_global").exists()


def test_launch_checks_in_process():
    no_gpu = {"cuda_available": False}
    assert check_launch_environment(None, env={}, **no_gpu) == ("no", True)
    assert check_launch_environment("bf16", env={}, **no_gpu) == ("bf16", True)
    assert check_launch_environment(None, env={"ACCELERATE_MIXED_PRECISION": "bf16"}, **no_gpu) == ("bf16", True)
    assert check_launch_environment("fp16", env={}, cuda_available=True) == ("fp16", False)
    with pytest.raises(LaunchError, match="needs a GPU"):
        check_launch_environment(None, env={"ACCELERATE_MIXED_PRECISION": "fp16"}, **no_gpu)
    gpu_single = {"ACCELERATE_USE_CPU": "False", "ACCELERATE_DYNAMO_BACKEND": "NO"}  # as accelerate launch sets
    with pytest.raises(LaunchError, match=r"asks for GPU\(s\)"):
        check_launch_environment(None, env=gpu_single, **no_gpu)
    with pytest.raises(LaunchError, match="FSDP"):
        check_launch_environment(None, env={"ACCELERATE_USE_FSDP": "true", "ACCELERATE_DYNAMO_BACKEND": "NO"},
                                 **no_gpu)
    cpu_multi = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_DYNAMO_BACKEND": "NO"}
    assert check_launch_environment(None, env=cpu_multi, **no_gpu) == ("no", True)

    check_world_size(SimpleNamespace(num_processes=2, distributed_type="MULTI_CPU"), env={"WORLD_SIZE": "2"})
    with pytest.raises(LaunchError, match="WORLD_SIZE=2 processes but Accelerate set up 1"):
        check_world_size(SimpleNamespace(num_processes=1, distributed_type="NO"), env={"WORLD_SIZE": "2"})

    check_global_batch_size(None, 4, 3, 2)
    check_global_batch_size(24, 4, 3, 2)
    with pytest.raises(LaunchError) as error:
        check_global_batch_size(32, 4, 2, 2)
    assert "per_device_train_batch_size=4 × world size 2 × gradient_accumulation_steps=2 = 16" in str(error.value)
    assert "--per_device_train_batch_size 16 --gradient_accumulation_steps 1" in str(error.value)
    with pytest.raises(LaunchError, match="not divisible by the world size 3"):
        check_global_batch_size(32, 4, 3, 2)


def test_checkpoint_config_comparison(tmp_path):
    config = S2SConfig(vocab_size=50, hidden_size=32, embedding_size=8)
    config.to_json_file(str(tmp_path / "config.json"), use_diff=False)
    check_checkpoint_config(tmp_path, config)
    check_checkpoint_config(tmp_path, S2SConfig(vocab_size=50, hidden_size=32, embedding_size=8, dropout=0.0))
    with pytest.raises(LaunchError, match="vocab_size: checkpoint 50 vs now 60"):
        check_checkpoint_config(tmp_path, S2SConfig(vocab_size=60, hidden_size=32, embedding_size=8))
    assert compare_model_configs({"a": 1, "transformers_version": "x"}, {"a": 2}) == {"a": (1, 2)}
    with pytest.raises(LaunchError, match="has no config.json"):
        check_checkpoint_config(tmp_path / "missing", config)


# --------------------------------------------------------------------------------------------------------------
# Pieces of the loop
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", GRID, ids=[grid_id(o) for o in GRID])
def test_every_parameter_gets_a_gradient(options):
    """DDP without find_unused_parameters needs a gradient for every parameter after every backward."""
    model = make_model(**options).train()
    ids, mask = random_ids([5, 3, 4], seed=1)
    for target_lengths in ([4, 2, 3], [1, 1, 1]):  # several target positions (fused path) and one (step path)
        labels, label_mask = random_ids(target_lengths, vocab_size=model.config.decoder_vocab_size, seed=2)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=labels.masked_fill(label_mask == 0, -100)).loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient: {missing}"


def test_projection_before_tied_head_gets_a_gradient():
    model = make_model(embedding_size=6, hidden_size=12).train()  # tied head + hidden→embedding projection
    ids, mask = random_ids([4, 2])
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.output_projection.weight.grad.abs().sum() > 0


def test_scaled_loss_gives_the_global_token_mean_gradient():
    """Two "processes" with different token counts: averaging their gradients of `scaled_loss` (as DDP does)
    equals the gradient of the token mean over the whole batch; per-process token means would not."""
    model = make_model(dropout=0.0, embedding_dropout=0.0, attention_dropout=0.0).train()
    ids, mask = random_ids([5, 3, 4, 2], seed=3)
    labels, label_mask = random_ids([6, 2, 5, 1], seed=4)
    labels = labels.masked_fill(label_mask == 0, -100)
    shards = [slice(0, 2), slice(2, 4)]  # 8 and 6 target tokens

    def gradient(loss_fn) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    full = gradient(lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    total_tokens = labels.ne(-100).sum()
    world, accumulation = 2, 1
    per_process = [
        gradient(lambda s=s: scaled_loss(
            model(input_ids=ids[s], attention_mask=mask[s], labels=labels[s], num_items_in_batch=total_tokens).loss,
            world, accumulation) / accumulation)
        for s in shards
    ]
    torch.testing.assert_close((per_process[0] + per_process[1]) / world, full, rtol=1e-5, atol=1e-7)
    local_means = [gradient(lambda s=s: model(input_ids=ids[s], attention_mask=mask[s], labels=labels[s]).loss)
                   for s in shards]
    assert not torch.allclose((local_means[0] + local_means[1]) / world, full, rtol=1e-3)


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    sampler = EpochSampler(10, seed=3)
    state = torch.get_rng_state()
    first = sampler.indices()
    assert torch.equal(state, torch.get_rng_state())  # never draws from the global RNG (dropout stays exact)
    assert sorted(first) == list(range(10)) and first == EpochSampler(10, seed=3).indices()
    sampler.set_epoch(1)
    assert sampler.indices() != first
    assert EpochSampler(5, seed=0, strategy="sequential").indices() == [0, 1, 2, 3, 4]
    lengths = [3, 9, 1, 7, 5, 2, 8, 4]
    grouped = EpochSampler(8, seed=0, strategy="group_by_length", lengths=lengths, megabatch_size=4).indices()
    assert sorted(grouped) == list(range(8))
    for block in (grouped[:4], grouped[4:]):
        assert [lengths[i] for i in block] == sorted((lengths[i] for i in block), reverse=True)


def test_training_progress_round_trip():
    progress = TrainingProgress(epoch=2, completed_steps=7, epoch_samples=48, num_processes=2)
    restored = TrainingProgress()
    restored.load_state_dict(progress.state_dict())
    assert restored == progress


def test_pad_after_eos():
    ids = torch.tensor([[1, 5, 2, 2, 2], [1, 5, 6, 7, 2], [1, 2, 9, 9, 9]])
    expected = torch.tensor([[1, 5, 2, 0, 0], [1, 5, 6, 7, 2], [1, 2, 0, 0, 0]])
    assert torch.equal(_pad_after_eos(ids, 2, 0), expected)
    assert torch.equal(_pad_after_eos(ids, [2], 0), expected)


def test_arguments_from_a_trainer_recipe_and_validation():
    model_args, data_args, args = parse_arguments(
        [str(REPO / "configuration" / "recipes" / "quick.yaml"), "--output_dir", "x", "--max_train_steps", "5"]
    )
    assert args.num_warmup_steps == 100 and args.checkpointing_steps == "epoch"  # warmup_steps, save_strategy
    assert args.train_sampling_strategy == "group_by_length" and args.max_train_steps == 5
    assert data_args.eval_num_beams == 5 and model_args.model_config.endswith("base_fused.json")
    assert args.checkpoint_every is None and AccelerateArguments(checkpointing_steps="10").checkpoint_every == 10
    for bad in (dict(mixed_precision="fp8"), dict(checkpointing_steps="often"), dict(eval_strategy="steps"),
                dict(per_device_train_batch_size=0), dict(lr_scheduler_type="nope")):
        with pytest.raises(ValueError):
            AccelerateArguments(**bad)
