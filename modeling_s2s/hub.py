"""Publishing a finished model directory to the Hugging Face Hub.

:func:`push_model_dir` checks that a directory is complete (weights, config with ``auto_map``, the remote-code
``.py`` files it names, tokenizer, model card: :func:`validate_model_dir`) and that it really loads the way a Hub
user loads it (:func:`check_model_dir_loads`: config, weights, tokenizer, remote code and its pipeline, in a fresh
process without this package), creates the repository if needed and uploads the directory in one commit with
:meth:`huggingface_hub.HfApi.upload_folder`, leaving out training leftovers (``checkpoint-*/``, ``runs/``,
optimizer/scheduler states). The local directory is only read, never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

__all__ = [
    "DEFAULT_COMMIT_MESSAGE",
    "IGNORE_PATTERNS",
    "HubUploadError",
    "ModelDirError",
    "check_model_dir_loads",
    "files_to_upload",
    "push_model_dir",
    "validate_model_dir",
]

DEFAULT_COMMIT_MESSAGE = "Upload attention RNN seq2seq model (modeling_s2s)"
#: Left out of uploads: Trainer checkpoints, TensorBoard logs, optimizer/scheduler/RNG/scaler states, caches.
IGNORE_PATTERNS: tuple[str, ...] = (
    "checkpoint-*/*",
    "checkpoints/*",
    "runs/*",
    "optimizer.pt",
    "*/optimizer.pt",
    "optimizer.bin",
    "*/optimizer.bin",
    "scheduler.pt",
    "*/scheduler.pt",
    "scaler.pt",
    "*/scaler.pt",
    "rng_state*.pth",
    "*/rng_state*.pth",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    ".ipynb_checkpoints/*",
)
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\w+)\s+import|import\s+\.(\w+))", re.MULTILINE)


class ModelDirError(ValueError):
    """The directory is not a complete model directory; the message names what is missing."""


class HubUploadError(RuntimeError):
    """Creating the repository or uploading failed. The local directory was not modified."""


def _module_file(reference: str) -> str:
    """``"configuration_s2s.S2SConfig"`` (or ``"repo--configuration_s2s.S2SConfig"``) -> ``"configuration_s2s.py"``."""
    reference = reference.split("--")[-1]
    return reference.rsplit(".", 1)[0] + ".py"


def _remote_code_files(config: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for value in (config.get("auto_map") or {}).values():
        for reference in value if isinstance(value, (list, tuple)) else [value]:
            if reference:
                names.append(_module_file(reference))
    for info in (config.get("custom_pipelines") or {}).values():
        impl = info.get("impl") if isinstance(info, dict) else None
        if impl:
            names.append(_module_file(impl))
    return list(dict.fromkeys(names))


def _weight_problems(directory: Path) -> list[str]:
    if (directory / "model.safetensors").is_file():
        return []
    index_path = directory / "model.safetensors.index.json"
    if not index_path.is_file():
        return ["model.safetensors (the weights; save with `save_pretrained`, safetensors format)"]
    try:
        shards = set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError) as error:
        return [f"a readable model.safetensors.index.json ({error})"]
    return [f"{shard} (a weight shard listed in model.safetensors.index.json)"
            for shard in sorted(shards) if not (directory / shard).is_file()]


def validate_model_dir(model_dir: str | os.PathLike) -> list[str]:
    """Check that ``model_dir`` is ready for the Hub; return the files that would be uploaded (sorted, relative).

    Required: ``config.json`` with an ``auto_map``; every remote-code module that ``auto_map`` and
    ``custom_pipelines`` name, and the sibling modules they import (``from .x import``); the weights
    (``model.safetensors``, or a complete sharded index); the tokenizer (``tokenizer_config.json`` and
    ``tokenizer.json``); the model card ``README.md``.

    Raises:
        ModelDirError: listing everything that is missing.
    """
    directory = Path(model_dir)
    if not directory.is_dir():
        raise ModelDirError(f"Model directory {directory} does not exist or is not a directory.")
    missing: list[str] = []
    config_path = directory / "config.json"
    config: dict[str, Any] = {}
    if not config_path.is_file():
        missing.append("config.json (the model configuration)")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            missing.append(f"a readable config.json ({error})")
        else:
            if not config.get("auto_map"):
                missing.append(
                    "an `auto_map` in config.json (save after `import modeling_s2s`, which registers the classes "
                    "for remote code, so the model loads with trust_remote_code=True)"
                )
    missing.extend(_weight_problems(directory))
    missing.extend(
        f"{name} (tokenizer; save it with `tokenizer.save_pretrained`)"
        for name in _TOKENIZER_FILES
        if not (directory / name).is_file()
    )
    if not (directory / "README.md").is_file():
        missing.append("README.md (the model card; write it with modeling_s2s.model_card.render_model_card)")
    else:
        try:
            from huggingface_hub import ModelCard

            ModelCard.load(directory / "README.md")
        except Exception as error:  # not UTF-8, broken YAML front matter
            missing.append(f"a readable model card README.md ({type(error).__name__}: {error})")

    # Remote code: the modules named in config.json, and their relative imports, recursively.
    pending = _remote_code_files(config)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        path = directory / name
        if not path.is_file():
            missing.append(f"{name} (remote code named in config.json or imported by it)")
            continue
        for match in _RELATIVE_IMPORT.finditer(path.read_text(encoding="utf-8")):
            pending.append((match.group(1) or match.group(2)) + ".py")

    if missing:
        raise ModelDirError(
            f"{directory} is not ready for the Hub; missing: " + "; ".join(missing) + ". Nothing was uploaded."
        )
    return files_to_upload(directory)


#: Run by :func:`check_model_dir_loads` in a fresh Python process: loads the directory as a Hub user without the
#: package would (trust_remote_code=True), generates two tokens and runs each pipeline that config.json names.
_LOAD_CHECK = r"""
import importlib.abc, json, sys

class BlockPackage(importlib.abc.MetaPathFinder):  # as for a Hub user: the remote code must not need the package
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_s2s":
            raise ImportError("the modeling_s2s package is not available to a Hub user")

sys.meta_path.insert(0, BlockPackage())
sys.path = [p for p in sys.path if p not in ("", ".")]
directory = sys.argv[1]
stage, tasks = "config.json (AutoConfig)", []
try:
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

    AutoConfig.from_pretrained(directory, trust_remote_code=True)
    stage = "the weights (AutoModelForSeq2SeqLM)"
    model, info = AutoModelForSeq2SeqLM.from_pretrained(directory, trust_remote_code=True, output_loading_info=True,
                                                        ignore_mismatched_sizes=True)  # reported below, by name
    unfit = {k: sorted(map(str, v)) for k, v in info.items()
             if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if unfit or info.get("error_msgs"):
        raise ValueError(f"the weights do not fit the model of config.json: {unfit or info['error_msgs']}")
    stage = "the tokenizer (AutoTokenizer)"
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
    stage = "generate()"
    model.eval().generate(**tokenizer(["a"], return_tensors="pt"), max_new_tokens=2, num_beams=1)
    with open(f"{directory}/config.json", encoding="utf-8") as f:
        tasks = sorted(json.load(f).get("custom_pipelines") or {})
    for task in tasks:
        stage = f"the {task!r} pipeline (pipeline_s2s.py)"
        pipeline(task, model=directory, trust_remote_code=True)("a", max_new_tokens=2)
except BaseException as error:
    print(json.dumps({"ok": False, "stage": stage, "error": f"{type(error).__name__}: {error}"[:2000]}))
    sys.exit(1)
print(json.dumps({"ok": True, "model_class": type(model).__name__, "parameters": model.num_parameters(),
                  "tokenizer_class": type(tokenizer).__name__, "pipelines": tasks}))
"""
#: Results of :func:`check_model_dir_loads` by the hash of the directory's uploaded files (a directory is loaded once
#: per process, however often it is checked).
_LOAD_CHECKS: dict[str, dict[str, Any]] = {}


def _content_hash(directory: Path, files: list[str]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        with open(directory / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_model_dir_loads(model_dir: str | os.PathLike, *, timeout: float = 600.0) -> dict[str, Any]:
    """Load ``model_dir`` the way a Hub user without this package does, in a fresh Python process.

    :func:`validate_model_dir` only checks that the files exist; this loads them: ``AutoConfig``,
    ``AutoModelForSeq2SeqLM`` (``trust_remote_code=True``: the directory's remote-code modules; every weight must
    fit the model, none missing, unexpected or of another shape), ``AutoTokenizer``, a two-token ``generate()``,
    and each pipeline that ``config.json``'s ``custom_pipelines`` names (``pipeline_s2s.py``). The installed
    ``modeling_s2s`` package is hidden from that process, so the remote code must stand on its own.

    Returns:
        ``{"model_class", "parameters", "tokenizer_class", "pipelines"}`` of what was loaded.

    Raises:
        ModelDirError: naming the step that failed (config, weights, tokenizer, generate, pipeline) and the error.
    """
    directory = Path(model_dir)
    key = _content_hash(directory, files_to_upload(directory))
    if key in _LOAD_CHECKS:
        return dict(_LOAD_CHECKS[key])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as cwd:
        try:
            result = subprocess.run([sys.executable, "-c", _LOAD_CHECK, str(directory.resolve())], cwd=cwd, env=env,
                                    capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ModelDirError(f"{directory} did not load within {timeout:.0f} s. Nothing was uploaded.") from None
    lines = result.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except ValueError:
        report = {}
    if result.returncode != 0 or not report.get("ok"):
        detail = (f"{report['stage']} failed: {report['error']}" if "stage" in report
                  else f"the loading process exited with {result.returncode}: {result.stderr.strip()[-1500:]}")
        raise ModelDirError(
            f"{directory} does not load as a Hub user would load it (trust_remote_code=True, without the "
            f"modeling_s2s package): {detail}. Nothing was uploaded."
        )
    report.pop("ok")
    _LOAD_CHECKS[key] = report
    return dict(report)


def files_to_upload(model_dir: str | os.PathLike) -> list[str]:
    """The files of ``model_dir`` (relative POSIX paths, sorted) that `push_model_dir` uploads."""
    directory = Path(model_dir)
    relative = sorted(path.relative_to(directory).as_posix() for path in directory.glob("**/*") if path.is_file())
    return list(filter_repo_objects(relative, ignore_patterns=[*IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))


def push_model_dir(
    model_dir: str | os.PathLike,
    hub_model_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    revision: str | None = None,
    api: HfApi | None = None,
    check_loading: bool = True,
) -> str:
    """Upload a finished model directory to the Hub repository ``hub_model_id`` in one commit.

    The directory is validated first (:func:`validate_model_dir`) and, with ``check_loading`` (default), loaded
    in a fresh process as a Hub user would load it (:func:`check_model_dir_loads`). The repository is created if it does not exist
    (``private`` only applies then); with ``revision`` the branch is created too. Files matching
    :data:`IGNORE_PATTERNS` are not uploaded. The local directory is never modified.

    Args:
        model_dir: The directory written by training (``save_pretrained`` + model card).
        hub_model_id: ``"namespace/name"`` (or ``"name"`` for the token's user).
        private: Create the repository as private (otherwise a new repository gets the namespace's default
            visibility, normally public). An existing repository's visibility is never changed.
        token: Hub token (default: the logged-in token / ``HF_TOKEN``).
        commit_message: The commit's message.
        revision: Branch to commit to (default: the main branch).
        api: The `HfApi` client to use (default: ``HfApi(token=token)``); tests pass a fake one.
        check_loading: Load the directory before uploading (:func:`check_model_dir_loads`).

    Returns:
        The URL of the commit.

    Raises:
        ModelDirError: The directory is incomplete or does not load (nothing is contacted).
        ValueError: ``hub_model_id`` is not a valid repository id.
        HubUploadError: A Hub call failed; the message says which, and that the local directory is intact.
    """
    try:
        validate_repo_id(hub_model_id)
    except Exception as error:  # HFValidationError
        raise ValueError(f"`hub_model_id`={hub_model_id!r} is not a valid Hub repository id: {error}") from error
    directory = Path(model_dir)
    files = validate_model_dir(directory)
    if check_loading:
        check_model_dir_loads(directory)
    client = api if api is not None else HfApi(token=token)
    intact = f"The local directory {directory} was not modified."

    try:
        # private=None (not False) when not asked: a new repository then follows the namespace's default visibility.
        repo_url = client.create_repo(repo_id=hub_model_id, token=token, private=True if private else None,
                                      repo_type="model", exist_ok=True)
    except Exception as error:
        raise HubUploadError(
            f"Creating the Hub repository {hub_model_id!r} failed ({type(error).__name__}: {error}). "
            f"Nothing was uploaded. {intact}"
        ) from error
    repo_id = getattr(repo_url, "repo_id", None) or hub_model_id

    if revision is not None and revision != "main":
        try:
            client.create_branch(repo_id=repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
        except Exception as error:
            raise HubUploadError(
                f"Creating the branch {revision!r} of {repo_id!r} failed ({type(error).__name__}: {error}). "
                f"Nothing was uploaded. {intact}"
            ) from error

    try:
        commit = client.upload_folder(
            repo_id=repo_id,
            folder_path=str(directory),
            commit_message=commit_message,
            token=token,
            repo_type="model",
            revision=revision,
            ignore_patterns=list(IGNORE_PATTERNS),  # a fresh list: upload_folder appends to it
        )
    except Exception as error:
        raise HubUploadError(
            f"Uploading {len(files)} files from {directory} to {repo_id!r} failed ({type(error).__name__}: "
            f"{error}). The repository may exist without these files; re-run the upload. {intact}"
        ) from error
    return str(getattr(commit, "commit_url", None) or commit)
