"""Model cards: Hub metadata (YAML front matter, model-index) and the required Markdown sections."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from huggingface_hub import ModelCard

from modeling_s2s import S2SConfig
from modeling_s2s.model_card import DEFAULT_TEMPLATE_PATH, parse_model_card, render_model_card

METRICS = {"test": {"bleu": 35.4321, "chrf": 61.25}, "validation": {"bleu": 37.5, "chrf": 63.0}}
TRAINING_ARGS = {
    "learning_rate": 0.001,
    "num_train_epochs": 12,
    "per_device_train_batch_size": 128,
    "seed": 42,
    "lr_scheduler_type": "linear",
    "report_to": ["tensorboard"],
    "hub_token": "hf_SECRET_TOKEN_VALUE",
    "output_dir": "/home/someone/private/outputs",
    "fsdp": [],
    "run_name": None,
}
REQUIRED_SECTIONS = (
    "## Model description",
    "## Architecture and hyperparameters",
    "## Training data",
    "## Training procedure",
    "## Evaluation results",
    "## Intended use and limitations",
    "## How to use",
    "## Citation",
)


def front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "no YAML front matter"
    return yaml.safe_load(match.group(1))


def render(tmp_path, name="card", **overrides):
    kwargs = dict(
        config=S2SConfig(vocab_size=100, hidden_size=32, embedding_size=16, encoder_layers=2, decoder_layers=2),
        source_lang="en",
        target_lang="de",
        dataset_name="multi30k",
        metrics=METRICS,
        training_args=TRAINING_ARGS,
        train_runtime_s=3725.4,
        num_parameters=1234567,
        hub_model_id="someone/lstm-attention-en-de",
        command="python scripts/train.py configuration/recipes/quick.yaml --hub_token hf_CLI_SECRET --seed 42",
    )
    kwargs.update(overrides)
    return render_model_card(tmp_path / name, **kwargs)


def test_metadata(tmp_path):
    text = render(tmp_path)
    assert (tmp_path / "card" / "README.md").read_text(encoding="utf-8") == text
    meta = front_matter(text)
    assert meta["language"] == ["en", "de"]
    assert meta["license"] == "cc-by-nc-4.0"
    assert meta["datasets"] == ["multi30k"]
    assert meta["metrics"] == ["bleu", "chrf"]
    assert meta["pipeline_tag"] == "translation"
    assert meta["library_name"] == "transformers"
    assert set(meta["tags"]) == {"translation", "seq2seq", "rnn", "lstm", "attention", "modeling-s2s"}


def test_model_index_holds_the_metrics(tmp_path):
    meta = front_matter(render(tmp_path))
    (index,) = meta["model-index"]
    assert index["name"] == "lstm-attention-en-de"
    found = {}
    for result in index["results"]:
        assert result["task"]["type"] == "translation"
        assert result["dataset"]["type"] == "multi30k"
        assert result["dataset"]["name"]
        for metric in result["metrics"]:
            found[(result["dataset"]["split"], metric["type"])] = metric
    assert {key: m["value"] for key, m in found.items()} == {
        ("test", "bleu"): 35.4321, ("test", "chrf"): 61.25, ("validation", "bleu"): 37.5, ("validation", "chrf"): 63.0,
    }
    assert found[("test", "bleu")]["name"] == "Test BLEU" and found[("validation", "chrf")]["name"] == "Validation chrF"
    # huggingface_hub reads it back as evaluation results
    card = ModelCard((tmp_path / "card" / "README.md").read_text(encoding="utf-8"))
    assert len(card.data.eval_results) == 4
    assert {(r.dataset_split, r.metric_type, r.metric_value) for r in card.data.eval_results} >= {("test", "bleu", 35.4321)}


def test_sections_and_tables(tmp_path):
    text = render(tmp_path)
    _, body = parse_model_card(tmp_path / "card")
    positions = [body.index(section) for section in REQUIRED_SECTIONS]
    assert positions == sorted(positions)
    # architecture table from the config
    assert "| `cell_type` | `lstm` |" in body and "| `hidden_size` | `32` |" in body
    assert "| `encoder_layers` | `2` |" in body and "| parameters | 1,234,567 |" in body
    # training arguments, runtime, command
    assert "| `learning_rate` | `0.001` |" in body and "| `num_train_epochs` | `12` |" in body
    assert "1:02:05" in body and "python scripts/train.py configuration/recipes/quick.yaml" in body
    # evaluation results table
    assert "| BLEU | chrF |" in body
    assert re.search(r"\| test \(`test_2016_flickr`\) \| 35\.43 \| 61\.25 \|", body)
    assert re.search(r"\| validation \(`val`\) \| 37\.50 \| 63\.00 \|", body)
    # usage with and without the package
    assert "import modeling_s2s" in body and 'AutoModelForSeq2SeqLM.from_pretrained("someone/lstm-attention-en-de")' in body
    assert 'from_pretrained("someone/lstm-attention-en-de", trust_remote_code=True)' in body
    assert 'pipeline("translation", model="someone/lstm-attention-en-de", trust_remote_code=True)' in body
    # Multi30k terms of use and citation for the default data
    assert "non-commercial research and/or educational purposes" in body
    assert "elliott-etal-2016-multi30k" in body and "10.18653/v1/W16-3210" in body
    assert text.endswith("\n")


def test_no_secrets_or_local_paths(tmp_path):
    text = render(tmp_path)
    assert "hf_SECRET_TOKEN_VALUE" not in text and "hf_CLI_SECRET" not in text
    assert "--hub_token ***" in text
    assert "/home/someone/private" not in text
    assert "`fsdp`" not in text and "`run_name`" not in text  # empty values are left out


def test_python_snippets_compile(tmp_path):
    text = render(tmp_path)
    snippets = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(snippets) == 2
    for snippet in snippets:
        compile(snippet, "<model card>", "exec")


def test_custom_data_gru_and_prefixed_metrics(tmp_path):
    config = S2SConfig(vocab_size=50, hidden_size=16, embedding_size=16, cell_type="gru", attention_type="additive",
                       attention_style="bahdanau")
    text = render(
        tmp_path,
        config=config,
        source_lang="fr",
        target_lang="en",
        dataset_name="my_corpus.jsonl",
        metrics={"test": {"test_bleu": 20.0, "test_chrf": 45.5, "test_loss": 2.5, "test_runtime": 9.0}},
        hub_model_id=None,
        license="apache-2.0",
        train_runtime_s=None,
        command=None,
    )
    meta = front_matter(text)
    assert "gru" in meta["tags"] and "lstm" not in meta["tags"]
    assert meta["license"] == "apache-2.0" and meta["language"] == ["fr", "en"]
    assert meta["datasets"] == ["my_corpus.jsonl"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics == {"bleu": 20.0, "chrf": 45.5}  # loss goes to the table only, runtime nowhere
    assert "| test | 20.00 | 45.50 | 2.50 |" in text
    assert "Multi30k" not in text and "elliott-etal-2016-multi30k" not in text
    # without a Hub id the usage examples point at the local directory
    assert f'from_pretrained("{tmp_path / "card"}")' in text
    assert "Training took" not in text and "```bash" not in text


def test_without_metrics_and_generation_config(tmp_path):
    directory = tmp_path / "card"
    directory.mkdir()
    (directory / "generation_config.json").write_text(json.dumps({"num_beams": 5, "max_length": 128}))
    text = render(tmp_path, metrics=None, training_args=None)
    meta = front_matter(text)
    assert "model-index" not in meta
    assert "No evaluation results were recorded." in text
    assert "The training arguments were not recorded." in text
    assert "| generation `num_beams` | `5` |" in text


def test_parse_model_card(tmp_path):
    render(tmp_path)
    meta, body = parse_model_card(tmp_path / "card" / "README.md")
    assert meta == parse_model_card(tmp_path / "card")[0]
    assert meta["license"] == "cc-by-nc-4.0" and meta["model-index"][0]["results"]
    assert body.lstrip().startswith("# lstm-attention-en-de")
    with pytest.raises(FileNotFoundError):
        parse_model_card(tmp_path / "nowhere")


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="finite"):
        render(tmp_path, metrics={"test": {"bleu": float("nan")}})
    with pytest.raises(TypeError, match="split"):
        render(tmp_path, metrics={"test": 35.0})
    with pytest.raises(FileNotFoundError, match="template"):
        render(tmp_path, template_path=tmp_path / "missing.md")
    assert DEFAULT_TEMPLATE_PATH.is_file()


def test_usage_follows_saved_pipeline(tmp_path):
    directory = tmp_path / "card"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "attention_s2s"}))
    text = render(tmp_path)
    assert 'pipeline("translation"' not in text  # the directory has no remote-code pipeline
    assert 'pipeline("s2s-text2text", model="someone/lstm-attention-en-de")' in text
    for snippet in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        compile(snippet, "<model card>", "exec")
    pipelines = {"summarization": {"impl": "pipeline_s2s.S2STextToTextPipeline", "pt": ["AutoModelForSeq2SeqLM"]}}
    (directory / "config.json").write_text(json.dumps({"model_type": "attention_s2s", "custom_pipelines": pipelines}))
    text = render(tmp_path)
    assert 'pipeline("summarization", model="someone/lstm-attention-en-de", trust_remote_code=True)' in text
    assert "s2s-text2text" not in text


# --------------------------------------------------------------------------------------------------------------
# The usage snippets, run against a real saved model
# --------------------------------------------------------------------------------------------------------------

_BLOCK_PACKAGE = """
import importlib.abc, sys

class BlockPackage(importlib.abc.MetaPathFinder):  # a Hub user without the modeling_s2s package
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "modeling_s2s":
            raise ImportError("modeling_s2s is not installed")

sys.meta_path.insert(0, BlockPackage())
sys.path = [p for p in sys.path if p not in ("", ".")]
"""


def _run_snippet(snippet: str, cwd, *, without_package: bool) -> list:
    """Run a card snippet in a fresh process; return what each of its print() calls printed, as Python values."""
    import ast
    import os
    import subprocess
    import sys

    code = (_BLOCK_PACKAGE if without_package else "") + snippet
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"the card's snippet failed:\n{snippet}\n{result.stderr[-3000:]}"
    return [ast.literal_eval(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Two real tiny model directories: one with the remote-code translation pipeline (save_for_pipeline), one with
    the model and tokenizer only (save_pretrained), each with its card; and their in-process outputs."""
    import torch
    from conftest import build_digit_tokenizer
    from transformers import pipeline

    from modeling_s2s import S2SForConditionalGeneration
    from modeling_s2s.model_card import EXAMPLE_SENTENCES
    from modeling_s2s.pipeline_s2s import save_for_pipeline

    root = tmp_path_factory.mktemp("card_models")
    tokenizer = build_digit_tokenizer()
    torch.manual_seed(0)
    model = S2SForConditionalGeneration(S2SConfig(vocab_size=len(tokenizer), embedding_size=8, hidden_size=8,
                                                  pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                                  decoder_start_token_id=1)).eval()
    with_pipeline, plain = root / "with_pipeline", root / "plain"
    save_for_pipeline(model, tokenizer, with_pipeline)
    model.save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    example = "12 3 45 6"  # digits: tokens the tokenizer knows
    for directory in (with_pipeline, plain):
        render_model_card(directory, config=model.config, source_lang="xx", target_lang="yy", dataset_name="d.jsonl",
                          metrics=METRICS, num_parameters=model.num_parameters(), hub_model_id=None)
        card = directory / "README.md"
        # the card's example sentence for an unknown language is a placeholder; use one the tokenizer knows
        card.write_text(card.read_text(encoding="utf-8").replace(EXAMPLE_SENTENCES.get("xx", "Your text here."),
                                                                 example), encoding="utf-8")
    generated = model.generate(**tokenizer([example], return_tensors="pt"), num_beams=5, max_new_tokens=64)
    expected = {
        "generate": tokenizer.batch_decode(generated, skip_special_tokens=True),
        "pipeline": pipeline("s2s-text2text", model=str(plain))(example),
        "pipeline_beams": pipeline("s2s-text2text", model=str(plain))([example], num_beams=5, batch_size=8),
    }
    assert expected["generate"][0]  # a non-empty translation: the comparisons below mean something
    return with_pipeline, plain, expected


def _snippets(directory) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (directory / "README.md").read_text(encoding="utf-8"), re.DOTALL)


def test_card_snippets_run_against_the_saved_model_with_remote_pipeline(saved_models, tmp_path):
    """Both snippets of a card for a directory that ships the remote-code pipeline: with the package (Auto
    classes) and without it (trust_remote_code=True, the pipeline from pipeline_s2s.py); what they print is what
    the model generates in this process."""
    directory, _, expected = saved_models
    with_package, without_package = _snippets(directory)
    assert str(directory) in with_package and "trust_remote_code=True" in without_package
    assert _run_snippet(with_package, tmp_path, without_package=False) == [expected["generate"]]
    single, batch = _run_snippet(without_package, tmp_path, without_package=True)
    assert single == [{"translation_text": expected["pipeline"][0]["generated_text"]}]
    assert batch == [{"translation_text": expected["pipeline_beams"][0]["generated_text"]}]


def test_card_snippet_runs_against_a_model_saved_without_pipeline(saved_models, tmp_path):
    """Without a remote-code pipeline the card shows the package's "s2s-text2text" pipeline instead."""
    _, directory, expected = saved_models
    with_package, without_package = _snippets(directory)
    assert 'pipeline("s2s-text2text"' in with_package and "pipeline(" not in without_package
    assert _run_snippet(with_package, tmp_path, without_package=False) == [expected["generate"],
                                                                            expected["pipeline"]]
    assert _run_snippet(without_package, tmp_path, without_package=True) == []  # loads, prints nothing
