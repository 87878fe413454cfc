"""The text-to-text pipeline: same output as `generate` + decode, generation options, batching, the registered task,
and a directory saved with `save_for_pipeline` used from a fresh process that cannot import `modeling_s2s`."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from modeling_s2s import S2SConfig, S2SForConditionalGeneration
from modeling_s2s import pipeline_s2s as pipeline_module
from modeling_s2s.pipeline_s2s import (
    PIPELINE_TASK,
    S2STextToTextPipeline,
    add_pipeline_to_model_dir,
    save_for_pipeline,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CORPUS = [
    "a man rides a horse on the beach .",
    "two dogs play in the snow .",
    "a woman sings on a stage .",
    "children are playing football in a park .",
    "ein mann reitet ein pferd am strand .",
    "zwei hunde spielen im schnee .",
    "eine frau singt auf einer bühne .",
    "kinder spielen fußball in einem park .",
]
SOURCES = ["a man rides a horse .", "two dogs play in the snow on the beach .", "a woman sings ."]


def make_tokenizer(texts=CORPUS):
    """A tokenizer with <pad>=0, <s>=1, </s>=2, <unk>=3 that appends </s>: the package's, or a word-level one."""
    try:
        from modeling_s2s.tokenization import train_tokenizer
    except ImportError:
        train_tokenizer = None
    if train_tokenizer is not None:
        return train_tokenizer(texts, vocab_size=80, min_frequency=1)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in " ".join(texts).split():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="right",
    )


def make_model(tokenizer, seed: int = 0, target_tokenizer=None) -> S2SForConditionalGeneration:
    extra = {}
    if target_tokenizer is not None:
        extra = {"share_encoder_decoder_embeddings": False, "decoder_vocab_size": len(target_tokenizer)}
    config = S2SConfig(
        vocab_size=len(tokenizer), embedding_size=16, hidden_size=16, init_std=0.5, dropout=0.1, **extra
    )
    torch.manual_seed(seed)
    model = S2SForConditionalGeneration(config).eval()
    model.generation_config.max_length = 10
    model.generation_config.num_beams = 2
    return model


def reference(model, tokenizer, text: str, decode_tokenizer=None, **generate_kwargs) -> list[str]:
    """`generate` + decode, the way a user would call them."""
    inputs = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, **generate_kwargs)
    return (decode_tokenizer or tokenizer).batch_decode(output, skip_special_tokens=True)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture(scope="module")
def translator(model, tokenizer):
    return S2STextToTextPipeline(model=model, tokenizer=tokenizer, task="translation", device=-1)


def test_single_input_matches_generate(translator, model, tokenizer):
    for text in SOURCES:
        expected = reference(model, tokenizer, text)
        assert translator(text) == [{"translation_text": expected[0]}]
    # the outputs are not all the same string (the check above is not vacuous)
    assert len({translator(text)[0]["translation_text"] for text in SOURCES}) > 1


def test_output_key_follows_task(model, tokenizer):
    text = SOURCES[0]
    expected = reference(model, tokenizer, text)[0]
    generic = S2STextToTextPipeline(model=model, tokenizer=tokenizer, task="text2text-generation", device=-1)
    assert generic(text) == [{"generated_text": expected}]
    summarizer = S2STextToTextPipeline(model=model, tokenizer=tokenizer, task="summarization", device=-1)
    assert summarizer(text) == [{"summary_text": expected}]


@pytest.mark.parametrize("batch_size", [None, 2])
def test_list_input_and_batching(translator, model, tokenizer, batch_size):
    expected = [{"translation_text": reference(model, tokenizer, text)[0]} for text in SOURCES]
    kwargs = {} if batch_size is None else {"batch_size": batch_size}
    assert translator(SOURCES, **kwargs) == expected


def test_beams_and_num_return_sequences(translator, model, tokenizer):
    text = SOURCES[1]
    expected = reference(model, tokenizer, text, num_beams=4, num_return_sequences=3)
    result = translator(text, num_beams=4, num_return_sequences=3)
    assert result == [{"translation_text": t} for t in expected]
    # A list of inputs with several sequences each gives one list per input.
    nested = translator(SOURCES[:2], num_beams=4, num_return_sequences=3, batch_size=2)
    assert len(nested) == 2 and all(len(item) == 3 for item in nested)
    assert nested[1] == result
    # Greedy differs from the default beam search only through the arguments passed.
    assert translator(text, num_beams=1)[0]["translation_text"] == reference(model, tokenizer, text, num_beams=1)[0]


def test_sampling_kwargs(translator, model, tokenizer):
    text = SOURCES[0]
    kwargs = dict(do_sample=True, top_k=5, temperature=1.5, num_beams=1, num_return_sequences=4)
    torch.manual_seed(123)
    expected = reference(model, tokenizer, text, **kwargs)
    torch.manual_seed(123)
    assert translator(text, **kwargs) == [{"translation_text": t} for t in expected]


def test_init_time_generation_kwargs_and_call_override(model, tokenizer):
    pipe = S2STextToTextPipeline(
        model=model, tokenizer=tokenizer, task="translation", device=-1, num_beams=1, max_new_tokens=3
    )
    text = SOURCES[1]
    assert pipe(text) == [{"translation_text": reference(model, tokenizer, text, num_beams=1, max_new_tokens=3)[0]}]
    assert pipe(text, max_new_tokens=6)[0]["translation_text"] == reference(
        model, tokenizer, text, num_beams=1, max_new_tokens=6
    )[0]
    # the model's own generation config is untouched
    assert model.generation_config.num_beams == 2 and model.generation_config.max_new_tokens is None


def test_return_tensors_and_truncation(translator, model, tokenizer):
    text = SOURCES[1]
    inputs = tokenizer(text, return_tensors="pt")
    ids = model.generate(**inputs)[0].tolist()
    result = translator(text, return_tensors=True, return_text=False)
    assert result == [{"translation_token_ids": ids}]

    truncated = tokenizer(text, truncation=True, max_length=3, return_tensors="pt")
    assert truncated["input_ids"].shape[1] == 3
    expected = tokenizer.decode(model.generate(**truncated)[0], skip_special_tokens=True)
    assert translator(text, max_input_length=3) == [{"translation_text": expected}]


def test_rejects_non_text_input(translator):
    with pytest.raises(TypeError, match="string"):
        translator(123)


def test_empty_list_gives_an_empty_list(translator, model, tokenizer):
    # transformers' own `Pipeline.__call__` fails on `inputs[0]` (IndexError); no inputs give no outputs, as an empty
    # generator does in transformers, and as `modeling_s2s.inference.translate([])` does.
    assert translator([]) == []
    assert translator([], batch_size=2, num_beams=3, num_return_sequences=2) == []
    pipe = pipeline(PIPELINE_TASK, model=model, tokenizer=tokenizer, device=-1)
    assert pipe([]) == []


@pytest.mark.parametrize("text", ["", " ", "\t\n  "])
def test_empty_or_whitespace_input_is_refused_naming_its_position(translator, text):
    with pytest.raises(ValueError, match=r"the input is empty or whitespace-only"):
        translator(text)
    with pytest.raises(ValueError, match=r"inputs\[1\] \(input 2 of 3\) is empty or whitespace-only"):
        translator([SOURCES[0], text, SOURCES[1]])
    with pytest.raises(ValueError, match=r"inputs\[0\] \(input 1 of 1\)"):
        translator([text], batch_size=2)
    # Streamed inputs (generators, datasets) are checked as they are read.
    with pytest.raises(ValueError, match="empty or whitespace-only"):
        list(translator(item for item in [SOURCES[0], text]))


def test_pipeline_and_translate_refuse_the_same_inputs(translator, model, tokenizer):
    from modeling_s2s.inference import translate

    for bad in (["ok .", ""], ["ok .", "   "]):
        with pytest.raises(ValueError, match="2"):
            translator(bad)
        with pytest.raises(ValueError, match="line 2"):
            translate(model, tokenizer, bad)


def test_non_string_list_item_is_named(translator):
    with pytest.raises(TypeError, match=r"inputs\[1\] \(input 2 of 2\) is int"):
        translator([SOURCES[0], 5])
    with pytest.raises(TypeError, match="string"):
        translator(())


def test_registered_task_with_model_object(model, tokenizer):
    pipe = pipeline(PIPELINE_TASK, model=model, tokenizer=tokenizer, device=-1)
    assert isinstance(pipe, S2STextToTextPipeline)
    text = SOURCES[2]
    assert pipe(text) == [{"generated_text": reference(model, tokenizer, text)[0]}]


def test_save_for_pipeline_directory(tmp_path, model, tokenizer):
    directory = Path(save_for_pipeline(model, tokenizer, tmp_path / "saved"))
    names = {p.name for p in directory.iterdir()}
    assert {
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "configuration_s2s.py", "modeling_s2s.py", "pipeline_s2s.py", "fast_paths.py", "generation_s2s.py",
    } <= names
    config = json.loads((directory / "config.json").read_text())
    assert config["custom_pipelines"] == {
        "translation": {"impl": "pipeline_s2s.S2STextToTextPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
    }
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_s2s.S2SForConditionalGeneration"
    # the in-memory config gets no `custom_pipelines` (only the saved one has it)
    assert "custom_pipelines" not in model.config.to_dict()
    # remote code: the pipeline file imports only transformers/torch/stdlib
    tree = ast.parse((directory / "pipeline_s2s.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
    assert {name.split(".")[0] for name in imported} <= {"__future__", "json", "os", "shutil", "typing", "torch", "transformers"}
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))

    # In-process (package imported): the registered task loads the directory.
    pipe = pipeline(PIPELINE_TASK, model=str(directory), device=-1)
    assert pipe(SOURCES[0]) == [{"generated_text": reference(model, tokenizer, SOURCES[0])[0]}]


def test_custom_task_name(tmp_path, model, tokenizer):
    directory = save_for_pipeline(model, tokenizer, tmp_path / "summ", task="summarization")
    config = json.loads((Path(directory) / "config.json").read_text())
    assert list(config["custom_pipelines"]) == ["summarization"]
    with pytest.raises(ValueError):
        save_for_pipeline(model, tokenizer, tmp_path / "bad", task="")


def test_add_pipeline_to_saved_directory(tmp_path, model, tokenizer):
    """A directory written by plain `save_pretrained` (as `Trainer.save_model` does) gets the remote pipeline."""
    directory = tmp_path / "trainer_output"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    before = json.loads((directory / "config.json").read_text())
    assert "custom_pipelines" not in before
    assert add_pipeline_to_model_dir(directory) == str(directory)
    after = json.loads((directory / "config.json").read_text())
    assert after.pop("custom_pipelines") == {
        "translation": {"impl": "pipeline_s2s.S2STextToTextPipeline", "pt": ["AutoModelForSeq2SeqLM"], "type": "text"}
    }
    assert after == before
    assert (directory / "pipeline_s2s.py").read_bytes() == Path(pipeline_module.__file__).read_bytes()
    pipe = pipeline("translation", model=str(directory), trust_remote_code=True, device=-1)
    assert type(pipe).__module__.startswith("transformers_modules.")
    assert pipe(SOURCES[2]) == [{"translation_text": reference(model, tokenizer, SOURCES[2])[0]}]
    with pytest.raises(FileNotFoundError, match="config.json"):
        add_pipeline_to_model_dir(tmp_path / "empty")


def test_separate_target_tokenizer(tmp_path, tokenizer):
    target_tokenizer = make_tokenizer([s.upper() for s in CORPUS])
    model = make_model(tokenizer, seed=3, target_tokenizer=target_tokenizer)
    directory = save_for_pipeline(model, tokenizer, tmp_path / "sep", target_tokenizer=target_tokenizer)
    assert (Path(directory) / "target_tokenizer" / "tokenizer.json").is_file()
    pipe = pipeline(PIPELINE_TASK, model=directory, device=-1)
    assert pipe.target_tokenizer is not None
    loaded_target = AutoTokenizer.from_pretrained(Path(directory) / "target_tokenizer")
    for text in SOURCES:
        expected = reference(model, tokenizer, text, decode_tokenizer=loaded_target)[0]
        assert pipe(text) == [{"generated_text": expected}]
    direct = S2STextToTextPipeline(model=model, tokenizer=tokenizer, target_tokenizer=target_tokenizer, device=-1)
    assert direct(SOURCES[0]) == pipe(SOURCES[0])


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_s2s" or name.startswith("modeling_s2s."):
                raise ImportError("modeling_s2s is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockPackage())
    from transformers import pipeline
    from transformers.utils import logging
    logging.set_verbosity_error()

    directory, sources = sys.argv[1], json.loads(sys.argv[2])
    result = {}
    try:
        pipeline("translation", model=directory, trust_remote_code=False, device=-1)
        result["without_trust"] = "loaded"
    except ValueError as error:
        result["without_trust"] = "ValueError"
    translator = pipeline("translation", model=directory, trust_remote_code=True, device=-1)
    result["class"] = type(translator).__name__
    result["module"] = type(translator).__module__
    result["single"] = translator(sources[0])
    result["batched"] = translator(sources, batch_size=2)
    result["beams"] = translator(sources[1], num_beams=3, num_return_sequences=2)
    inferred = pipeline(model=directory, trust_remote_code=True, device=-1)
    result["inferred_task"] = inferred.task
    result["inferred"] = inferred(sources[0])
    result["package_loaded"] = any(name.split(".")[0] == "modeling_s2s" for name in sys.modules)
    print("\\nRESULT=" + json.dumps(result))
    """
)


def test_fresh_process_without_package(tmp_path, model, tokenizer):
    directory = save_for_pipeline(model, tokenizer, tmp_path / "remote")
    script = tmp_path / "use_pipeline.py"
    script.write_text(FRESH_PROCESS_SCRIPT)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"), TOKENIZERS_PARALLELISM="false")
    completed = subprocess.run(
        [sys.executable, str(script), str(directory), json.dumps(SOURCES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT="))
    result = json.loads(line[len("RESULT="):])

    assert result["without_trust"] == "ValueError"
    assert result["class"] == "S2STextToTextPipeline"
    assert result["module"].startswith("transformers_modules.")
    assert result["package_loaded"] is False
    expected = [reference(model, tokenizer, text)[0] for text in SOURCES]
    assert result["single"] == [{"translation_text": expected[0]}]
    assert result["batched"] == [{"translation_text": text} for text in expected]
    beams = reference(model, tokenizer, SOURCES[1], num_beams=3, num_return_sequences=2)
    assert result["beams"] == [{"translation_text": text} for text in beams]
    assert result["inferred_task"] == "translation"
    assert result["inferred"] == [{"translation_text": expected[0]}]
