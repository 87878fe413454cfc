"""Publishing to the Hub, tested at the `huggingface_hub` API boundary (no network): what is validated, which repo,
folder, files and commit message are sent, and that failures leave the local directory byte-identical."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from modeling_s2s import S2SConfig, S2SForConditionalGeneration, hub
from modeling_s2s.hub import (
    DEFAULT_COMMIT_MESSAGE,
    HubUploadError,
    ModelDirError,
    files_to_upload,
    push_model_dir,
    validate_model_dir,
)
from modeling_s2s.model_card import render_model_card
from modeling_s2s.pipeline_s2s import save_for_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "someone/lstm-attention-en-de"
MODEL_FILES = {
    "README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "configuration_s2s.py", "modeling_s2s.py", "pipeline_s2s.py", "fast_paths.py",
    "generation_s2s.py", "input_checks.py", "resizing.py",
}
EXTRA_KEPT = {"all_results.json", "trainer_state.json", "test_predictions.txt"}
LEFTOVERS = {
    "checkpoint-500/model.safetensors", "checkpoint-500/optimizer.pt", "checkpoint-500/rng_state.pth",
    "checkpoint-500/scheduler.pt", "runs/Jan01_00-00-00/events.out.tfevents.1", "optimizer.pt", "scheduler.pt",
    "rng_state_0.pth", "__pycache__/modeling_s2s.cpython-311.pyc",
}


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "a": 4, "man": 5, "ein": 6, "mann": 7, ".": 8}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory):
    """A complete model directory plus training leftovers, built once."""
    directory = tmp_path_factory.mktemp("hub") / "model"
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = S2SForConditionalGeneration(S2SConfig(vocab_size=len(tokenizer), embedding_size=8, hidden_size=8))
    save_for_pipeline(model, tokenizer, directory)
    render_model_card(directory, config=model.config, source_lang="en", target_lang="de",
                      metrics={"test": {"bleu": 1.0, "chrf": 2.0}}, training_args={"seed": 1},
                      hub_model_id=REPO_ID)
    for name in EXTRA_KEPT | LEFTOVERS:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(name.encode()).digest() * 4)
    return directory


@pytest.fixture
def model_dir(template_dir, tmp_path):
    """A fresh copy per test (tests may break it on purpose)."""
    import shutil

    return Path(shutil.copytree(template_dir, tmp_path / "model"))


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, and (through the keys) the exact set of files."""
    return {
        path.relative_to(directory).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


class FakeHfApi:
    """Stands in for `huggingface_hub.HfApi`: records the calls, optionally fails one of them."""

    def __init__(self, fail: str | None = None, error: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.fail, self.error = fail, error
        self.sent_files: list[str] | None = None

    def _record(self, name: str, kwargs: dict):
        self.calls.append((name, kwargs))
        if name == self.fail:
            raise self.error

    def create_repo(self, **kwargs):
        self._record("create_repo", kwargs)
        return None

    def create_branch(self, **kwargs):
        self._record("create_branch", kwargs)

    def upload_folder(self, **kwargs):
        # What the real client would send: the folder's files, filtered the way `upload_folder` filters them.
        folder = Path(kwargs["folder_path"])
        relative = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        patterns = list(kwargs.get("ignore_patterns") or []) + DEFAULT_IGNORE_PATTERNS
        self.sent_files = list(filter_repo_objects(relative, ignore_patterns=patterns))
        self._record("upload_folder", kwargs)
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0123abcd"


def http_error(status: int = 500) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(f"{status} Server Error", response=httpx2.Response(status, request=request))


def test_push_sends_expected_calls(model_dir):
    before = snapshot(model_dir)
    api = FakeHfApi()
    url = push_model_dir(model_dir, REPO_ID, private=True, token="hf_x", commit_message="First version", api=api)
    assert url == f"https://huggingface.co/{REPO_ID}/commit/0123abcd"
    assert [name for name, _ in api.calls] == ["create_repo", "upload_folder"]
    create = api.calls[0][1]
    assert create["repo_id"] == REPO_ID and create["private"] is True and create["exist_ok"] is True
    assert create["token"] == "hf_x" and create.get("repo_type", "model") == "model"
    upload = api.calls[1][1]
    assert upload["repo_id"] == REPO_ID
    assert Path(upload["folder_path"]) == model_dir
    assert upload["commit_message"] == "First version"
    assert upload.get("revision") is None and upload.get("repo_type", "model") == "model"
    assert set(api.sent_files) == MODEL_FILES | EXTRA_KEPT
    assert not set(api.sent_files) & LEFTOVERS
    assert set(files_to_upload(model_dir)) == set(api.sent_files)
    assert snapshot(model_dir) == before


def test_default_commit_message_and_revision(model_dir):
    api = FakeHfApi()
    push_model_dir(model_dir, REPO_ID, revision="v1", api=api)
    assert [name for name, _ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][1]["private"] is None  # the namespace's default visibility
    assert api.calls[1][1]["branch"] == "v1" and api.calls[1][1]["exist_ok"] is True
    assert api.calls[2][1]["revision"] == "v1"
    assert api.calls[2][1]["commit_message"] == DEFAULT_COMMIT_MESSAGE


@pytest.mark.parametrize("fail", ["create_repo", "upload_folder"])
def test_failing_api_leaves_directory_intact(model_dir, fail):
    before = snapshot(model_dir)
    api = FakeHfApi(fail=fail, error=http_error(500))
    with pytest.raises(HubUploadError) as info:
        push_model_dir(model_dir, REPO_ID, api=api)
    message = str(info.value)
    assert "was not modified" in message and str(model_dir) in message
    assert ("Creating the Hub repository" if fail == "create_repo" else "Uploading") in message
    assert "500 Server Error" in message
    assert isinstance(info.value.__cause__, HfHubHTTPError)
    if fail == "create_repo":
        assert [name for name, _ in api.calls] == ["create_repo"]  # nothing uploaded after a failed create
    assert snapshot(model_dir) == before


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("model.safetensors", "model.safetensors"),
        ("config.json", "config.json"),
        ("tokenizer.json", "tokenizer.json"),
        ("tokenizer_config.json", "tokenizer_config.json"),
        ("README.md", "README.md"),
        ("modeling_s2s.py", "modeling_s2s.py"),
        ("pipeline_s2s.py", "pipeline_s2s.py"),
        ("configuration_s2s.py", "configuration_s2s.py"),
        ("fast_paths.py", "fast_paths.py"),
        ("generation_s2s.py", "generation_s2s.py"),
    ],
)
def test_incomplete_directory_is_rejected_before_any_call(model_dir, remove, named):
    (model_dir / remove).unlink()
    before = snapshot(model_dir)
    api = FakeHfApi()
    with pytest.raises(ModelDirError, match=named.replace(".", r"\.")):
        push_model_dir(model_dir, REPO_ID, api=api)
    assert api.calls == []
    assert snapshot(model_dir) == before


def test_validation_reports_everything_missing(model_dir, tmp_path):
    for name in ("README.md", "tokenizer.json", "model.safetensors"):
        (model_dir / name).unlink()
    with pytest.raises(ModelDirError) as info:
        validate_model_dir(model_dir)
    assert all(name in str(info.value) for name in ("README.md", "tokenizer.json", "model.safetensors"))
    # a config without auto_map (saved without the package's registration)
    config = json.loads((model_dir / "config.json").read_text())
    del config["auto_map"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="auto_map"):
        validate_model_dir(model_dir)
    with pytest.raises(ModelDirError, match="does not exist"):
        validate_model_dir(tmp_path / "nope")


def test_sharded_weights_accepted(model_dir):
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
    (model_dir / "model.safetensors").rename(model_dir / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00001.safetensors" for name in names}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model-00001-of-00001.safetensors" in validate_model_dir(model_dir)
    assert hub.check_model_dir_loads(model_dir)["parameters"] > 0  # the sharded weights really load
    (model_dir / "model-00001-of-00001.safetensors").unlink()
    with pytest.raises(ModelDirError, match="model-00001-of-00001"):
        validate_model_dir(model_dir)


def test_invalid_repo_id(model_dir):
    api = FakeHfApi()
    with pytest.raises(ValueError, match="hub_model_id"):
        push_model_dir(model_dir, "bad repo id!!", api=api)
    assert api.calls == []


class _HubStandIn(BaseHTTPRequestHandler):
    """A local stand-in for the Hub: accepts repository creation, answers everything else with HTTP 500."""

    requests: list[tuple[str, str, dict]] = []

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return {}

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self._body()
        type(self).requests.append(("POST", self.path, body))
        if self.path == "/api/repos/create":
            host = f"http://{self.headers['Host']}"
            self._reply(200, {"url": f"{host}/{body.get('organization')}/{body.get('name')}", "name": body.get("name")})
        else:
            self._reply(500, {"error": "stand-in Hub refuses uploads"})

    def do_GET(self):  # noqa: N802
        type(self).requests.append(("GET", self.path, {}))
        self._reply(500, {"error": "stand-in Hub"})

    def log_message(self, *args):
        pass


def test_real_client_against_local_stand_in(model_dir, monkeypatch):
    """The real `HfApi` over HTTP: the repository creation request carries our repo id and privacy flag, and the
    refused upload becomes a `HubUploadError` with the directory untouched."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _HubStandIn.requests = []
    server = HTTPServer(("127.0.0.1", 0), _HubStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        api = HfApi(endpoint=f"http://127.0.0.1:{server.server_port}", token="hf_fake_token")
        before = snapshot(model_dir)
        with pytest.raises(HubUploadError, match="Uploading") as info:
            push_model_dir(model_dir, REPO_ID, private=True, api=api)
        assert "was not modified" in str(info.value)
        assert snapshot(model_dir) == before
    finally:
        server.shutdown()
        server.server_close()
    create = [body for method, path, body in _HubStandIn.requests if path == "/api/repos/create"]
    assert create and create[0]["name"] == "lstm-attention-en-de" and create[0]["organization"] == "someone"
    assert create[0].get("visibility") == "private" or create[0].get("private") is True


def load_cli():
    spec = importlib.util.spec_from_file_location("push_to_hub_cli", REPO_ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_dry_run_and_error(model_dir, capsys):
    cli = load_cli()
    before = snapshot(model_dir)
    assert cli.main(["--model_dir", str(model_dir), "--hub_model_id", REPO_ID, "--dry_run"]) == 0
    listed = {line.strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed == MODEL_FILES | EXTRA_KEPT
    (model_dir / "README.md").unlink()
    assert cli.main(["--model_dir", str(model_dir), "--hub_model_id", REPO_ID]) == 1
    assert "README.md" in capsys.readouterr().err
    del before["README.md"]
    assert snapshot(model_dir) == before


def _garbage(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest() * 4  # what the template writes for the files it does not load


def _break_weights(model_dir: Path) -> None:
    (model_dir / "model.safetensors").write_bytes(_garbage("model.safetensors"))


def _weights_of_another_model(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["hidden_size"] = 12  # the saved weights have hidden size 8
    (model_dir / "config.json").write_text(json.dumps(config))


def _break_remote_code(model_dir: Path) -> None:
    path = model_dir / "modeling_s2s.py"
    path.write_text(path.read_text().replace("class S2SForConditionalGeneration(", "class Renamed("))


def _break_pipeline(model_dir: Path) -> None:
    (model_dir / "pipeline_s2s.py").write_text("raise RuntimeError('broken pipeline module')\n")


def _break_tokenizer(model_dir: Path) -> None:
    (model_dir / "tokenizer.json").write_bytes(_garbage("tokenizer.json"))


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        (_break_weights, r"the weights \(AutoModelForSeq2SeqLM\) failed: SafetensorError"),
        (_weights_of_another_model, r"the weights .*do not fit the model of config\.json.*mismatched_keys"),
        (_break_remote_code, r"(the weights|config\.json).*S2SForConditionalGeneration"),
        (_break_pipeline, r"the 'translation' pipeline .*broken pipeline module"),
        (_break_tokenizer, r"the tokenizer"),
    ],
    ids=["garbage-weights", "weights-of-another-config", "remote-code", "pipeline-code", "garbage-tokenizer"],
)
def test_dry_run_refuses_a_directory_that_does_not_load(model_dir, capsys, breakage, named):
    """Every file exists, so the file checks pass; only loading it as a Hub user would finds the damage."""
    breakage(model_dir)
    validate_model_dir(model_dir)  # complete on paper
    before = snapshot(model_dir)
    cli = load_cli()
    assert cli.main(["--model_dir", str(model_dir), "--hub_model_id", REPO_ID, "--dry_run"]) == 1
    error = capsys.readouterr().err
    assert "does not load as a Hub user would load it" in error
    assert re.search(named, error), error
    api = FakeHfApi()
    with pytest.raises(ModelDirError, match="does not load"):
        push_model_dir(model_dir, REPO_ID, api=api)
    assert api.calls == []  # nothing contacted, nothing uploaded
    assert snapshot(model_dir) == before


def test_dry_run_reports_what_it_loaded(model_dir, capsys):
    cli = load_cli()
    assert cli.main(["--model_dir", str(model_dir), "--hub_model_id", REPO_ID, "--dry_run"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "loads with trust_remote_code=True (S2SForConditionalGeneration" in first
    assert "pipelines: translation" in first
    (model_dir / "README.md").write_bytes(b"---\nlanguage: [en\n---\n")  # broken YAML front matter
    with pytest.raises(ModelDirError, match="readable model card README.md"):
        validate_model_dir(model_dir)


def test_cli_arguments(monkeypatch, model_dir, capsys):
    cli = load_cli()
    seen = {}

    def fake_push(model_dir, hub_model_id, **kwargs):
        seen.update(model_dir=model_dir, hub_model_id=hub_model_id, **kwargs)
        return "https://huggingface.co/x/commit/1"

    monkeypatch.setattr(cli, "push_model_dir", fake_push)
    argv = ["--model_dir", str(model_dir), "--hub_model_id", REPO_ID, "--private", "--commit_message", "msg",
            "--token", "hf_t", "--revision", "dev"]
    assert cli.main(argv) == 0
    assert seen == {"model_dir": str(model_dir), "hub_model_id": REPO_ID, "private": True, "token": "hf_t",
                    "commit_message": "msg", "revision": "dev"}
    assert "https://huggingface.co/x/commit/1" in capsys.readouterr().out
