"""save_pretrained / from_pretrained (own classes, Auto classes, remote code in a clean process), tied and
separate embeddings through construction, loading and resizing, and the embedding accessors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import BOS, GRID, VOCAB, make_model, random_ids
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from modeling_s2s import S2SConfig, S2SForConditionalGeneration, S2SModel
from modeling_s2s.modeling_s2s import S2SEncoder

REPO = Path(__file__).resolve().parents[1]
SOURCE_LENGTHS = [6, 3, 5]


def _logits(model, ids, mask, decoder_input_ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits


def _decoder_inputs(vocab=VOCAB, length=5):
    ids = torch.randint(4, vocab, (len(SOURCE_LENGTHS), length), generator=torch.Generator().manual_seed(3))
    ids[:, 0] = BOS
    return ids


def _gen(model, ids, mask=None, **kwargs):
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=6, **{"num_beams": 3, **kwargs}
        )


def _same_storage(*tensors) -> bool:
    return len({t.untyped_storage().data_ptr() for t in tensors}) == 1


def _embedding_tensors(model: S2SForConditionalGeneration):
    return (
        model.model.encoder.embed_tokens.weight,
        model.model.decoder.embed_tokens.weight,
        model.lm_head.weight,
    )


def _assert_joint_tied(model: S2SForConditionalGeneration):
    encoder, decoder, head = _embedding_tensors(model)
    assert _same_storage(model.model.shared.weight, encoder, decoder, head)
    assert model.get_input_embeddings().weight is model.model.shared.weight


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved model (self-attention, multi-head, GRU) with a customised generation config."""
    model = make_model(**GRID[12])
    model.generation_config.num_beams = 2
    model.generation_config.max_new_tokens = 7
    directory = tmp_path_factory.mktemp("saved")
    model.save_pretrained(directory)
    return model, directory


def test_saved_directory_is_self_contained(saved):
    _, directory = saved
    names = {p.name for p in directory.iterdir()}
    assert {
        "model.safetensors",
        "generation_config.json",
        "config.json",
        "configuration_s2s.py",
        "modeling_s2s.py",
        "fast_paths.py",
        "generation_s2s.py",
        "input_checks.py",
        "resizing.py",
    } <= names
    config = json.loads((directory / "config.json").read_text())
    assert config["model_type"] == "attention_s2s"
    assert config["auto_map"]["AutoConfig"] == "configuration_s2s.S2SConfig"
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_s2s.S2SForConditionalGeneration"
    # The copied model code imports only its sibling modules, each of which was copied too.
    modeling = (directory / "modeling_s2s.py").read_text()
    relative = [line.split()[1] for line in modeling.splitlines() if line.startswith("from .")]
    assert {".configuration_s2s", ".fast_paths", ".generation_s2s", ".input_checks", ".resizing"} == set(relative)
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["num_beams"] == 2 and generation["max_new_tokens"] == 7
    assert generation["decoder_start_token_id"] == BOS


def test_tied_weights_are_stored_once(saved):
    _, directory = saved
    with safe_open(directory / "model.safetensors", "pt") as handle:
        keys = set(handle.keys())
    assert "model.shared.weight" in keys
    assert not keys & {
        "lm_head.weight",
        "model.encoder.embed_tokens.weight",
        "model.decoder.embed_tokens.weight",
    }


@pytest.mark.parametrize("loader", [S2SForConditionalGeneration, AutoModelForSeq2SeqLM])
def test_reload_gives_identical_logits_and_generations(saved, loader):
    model, directory = saved
    loaded = loader.from_pretrained(directory).eval()
    assert type(loaded) is S2SForConditionalGeneration
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs()
    torch.testing.assert_close(
        _logits(loaded, ids, mask, decoder_input_ids),
        _logits(model, ids, mask, decoder_input_ids),
        atol=0,
        rtol=0,
    )
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(_gen(loaded, ids, mask), _gen(model, ids, mask))
    assert torch.equal(_gen(loaded, ids, mask, num_beams=1), _gen(model, ids, mask, num_beams=1))
    # The saved generation defaults come back.
    assert loaded.generation_config.num_beams == 2 and loaded.generation_config.max_new_tokens == 7
    _assert_joint_tied(loaded)


def test_auto_config_and_auto_model_load_the_base_model(saved):
    model, directory = saved
    config = AutoConfig.from_pretrained(directory)
    assert isinstance(config, S2SConfig)
    assert config.to_diff_dict() | {"_name_or_path": ""} == model.config.to_diff_dict() | {
        "_name_or_path": ""
    }
    base = AutoModel.from_pretrained(directory).eval()
    assert type(base) is S2SModel
    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs()
    with torch.no_grad():
        expected = model.model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        got = base(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)
    # ...and a base model saved on its own loads back too.
    base_dir = directory.parent / "base_only"
    base.save_pretrained(base_dir)
    base_config = json.loads((base_dir / "config.json").read_text())
    assert base_config["auto_map"]["AutoModel"] == "modeling_s2s.S2SModel"
    assert (base_dir / "modeling_s2s.py").exists()
    again = AutoModel.from_pretrained(base_dir).eval()
    with torch.no_grad():
        reloaded = again(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(reloaded.last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    repo, model_dir, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    # Nothing on the path may provide the package: not the repository, not the working directory, not an
    # editable install's finder.
    sys.path[:] = [p for p in sys.path if p not in ("", ".") and not os.path.abspath(p).startswith(repo)
                   and "modeling_s2s" not in p]
    sys.meta_path[:] = [f for f in sys.meta_path if "modeling_s2s" not in repr(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "modeling_s2s" not in repr(h)]
    sys.path_importer_cache.clear()
    try:
        import modeling_s2s  # noqa: F401
        importable = True
    except ImportError:
        importable = False

    import torch
    from transformers import AutoModelForSeq2SeqLM

    try:
        AutoModelForSeq2SeqLM.from_pretrained(model_dir)
        refused = None
    except Exception as error:  # noqa: BLE001 - reported to the test, which checks the type
        refused = [type(error).__name__, str(error)]
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), num_beams=3, max_new_tokens=6)
    print(json.dumps({"importable": importable, "refused": refused, "module": type(model).__module__,
                      "sequences": out.tolist()}))
    """
)


def test_remote_code_load_in_a_process_without_the_package(saved, tmp_path):
    model, directory = saved
    ids, _ = random_ids(SOURCE_LENGTHS)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(REPO), str(directory), json.dumps(ids.tolist())],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # (the refused load may print an interactive prompt before the report)
    report = json.loads(result.stdout[result.stdout.rindex('{"importable"') :])
    assert report["importable"] is False
    assert report["refused"] is not None and report["refused"][0] == "ValueError"
    assert "trust_remote_code" in report["refused"][1]
    assert report["module"].startswith("transformers_modules")
    assert report["sequences"] == _gen(model, ids, None).tolist()


# --- tied and separate embeddings -------------------------------------------------------------------------


def test_joint_vocabulary_ties_through_construction_loading_and_resizing(tmp_path):
    model = make_model()
    _assert_joint_tied(model)
    model.save_pretrained(tmp_path / "before")
    _assert_joint_tied(S2SForConditionalGeneration.from_pretrained(tmp_path / "before"))

    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs()
    before = _logits(model, ids, mask, decoder_input_ids)
    old_rows = model.get_input_embeddings().weight.detach()[:VOCAB].clone()
    model.resize_token_embeddings(VOCAB + 7)
    _assert_joint_tied(model)
    assert model.config.vocab_size == VOCAB + 7 and model.config.decoder_vocab_size == VOCAB + 7
    assert model.get_input_embeddings().weight.shape[0] == VOCAB + 7
    assert model.get_output_embeddings().weight.shape[0] == VOCAB + 7
    assert torch.equal(model.get_input_embeddings().weight[:VOCAB], old_rows)
    after = _logits(model, ids, mask, decoder_input_ids)
    assert after.shape[-1] == VOCAB + 7
    # The old vocabulary's rows are kept, so the logits of the old tokens do not change.
    torch.testing.assert_close(after[..., :VOCAB], before, atol=1e-6, rtol=0)
    # The new ids are usable on both sides, and training updates one shared matrix.
    new_ids = ids.clone()
    new_ids[0, 0] = VOCAB + 6
    model.train()
    model(input_ids=new_ids, attention_mask=mask, labels=torch.tensor([[VOCAB + 5, 2]] * 3)).loss.backward()
    assert model.model.shared.weight.grad is not None
    model.eval()

    model.save_pretrained(tmp_path / "resized")
    loaded = S2SForConditionalGeneration.from_pretrained(tmp_path / "resized").eval()
    _assert_joint_tied(loaded)
    assert loaded.config.vocab_size == VOCAB + 7 and loaded.config.decoder_vocab_size == VOCAB + 7
    torch.testing.assert_close(
        _logits(loaded, new_ids, mask, decoder_input_ids),
        _logits(model, new_ids, mask, decoder_input_ids),
        atol=0,
        rtol=0,
    )


def test_changing_the_shared_matrix_changes_all_tied_uses():
    model = make_model()
    with torch.no_grad():
        model.model.shared.weight[5].fill_(0.123)
    for tensor in _embedding_tensors(model):
        assert torch.all(tensor[5] == 0.123)


SEPARATE = dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=23)


def test_separate_vocabularies_save_load_and_resize(tmp_path):
    model = make_model(**SEPARATE)
    encoder, decoder, head = _embedding_tensors(model)
    assert encoder.shape[0] == VOCAB and decoder.shape[0] == 23 and head.shape[0] == 23
    assert _same_storage(decoder, head) and not _same_storage(encoder, decoder)
    assert model.get_input_embeddings() is model.model.encoder.embed_tokens

    ids, mask = random_ids(SOURCE_LENGTHS)
    decoder_input_ids = _decoder_inputs(vocab=23)
    model.save_pretrained(tmp_path / "separate")
    loaded = S2SForConditionalGeneration.from_pretrained(tmp_path / "separate").eval()
    torch.testing.assert_close(
        _logits(loaded, ids, mask, decoder_input_ids),
        _logits(model, ids, mask, decoder_input_ids),
        atol=0,
        rtol=0,
    )
    assert _same_storage(*_embedding_tensors(loaded)[1:]) and not _same_storage(
        *_embedding_tensors(loaded)[:2]
    )

    old_decoder_rows = decoder.detach().clone()
    model.resize_decoder_token_embeddings(30)
    encoder, decoder, head = _embedding_tensors(model)
    assert model.config.decoder_vocab_size == 30 and model.config.vocab_size == VOCAB
    assert encoder.shape[0] == VOCAB and decoder.shape[0] == 30 and head.shape[0] == 30
    assert _same_storage(decoder, head)
    assert torch.equal(decoder[:23], old_decoder_rows)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.tensor([[BOS, 29]] * 3))
    assert out.logits.shape == (3, 2, 30)

    # Resizing the source vocabulary leaves the target side alone.
    model.resize_token_embeddings(VOCAB + 4)
    encoder, decoder, head = _embedding_tensors(model)
    assert model.config.vocab_size == VOCAB + 4 and model.config.decoder_vocab_size == 30
    assert encoder.shape[0] == VOCAB + 4 and decoder.shape[0] == 30 and _same_storage(decoder, head)

    model.save_pretrained(tmp_path / "resized")
    reloaded = S2SForConditionalGeneration.from_pretrained(tmp_path / "resized").eval()
    assert reloaded.config.decoder_vocab_size == 30 and reloaded.config.vocab_size == VOCAB + 4
    decoder_input_ids = _decoder_inputs(vocab=30)
    torch.testing.assert_close(
        _logits(reloaded, ids, mask, decoder_input_ids),
        _logits(model, ids, mask, decoder_input_ids),
        atol=0,
        rtol=0,
    )
    assert torch.equal(_gen(reloaded, ids, mask), _gen(model, ids, mask))

    with pytest.raises(ValueError, match="share_encoder_decoder_embeddings"):
        make_model().resize_decoder_token_embeddings(30)


def test_untied_output_layer_is_independent(tmp_path):
    model = make_model(tie_word_embeddings=False)
    encoder, decoder, head = _embedding_tensors(model)
    assert _same_storage(encoder, decoder)
    assert not _same_storage(decoder, head)
    assert head.shape == (VOCAB, model.config.hidden_size)
    with torch.no_grad():
        model.model.shared.weight.zero_()
    assert head.abs().sum() > 0
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert "lm_head.weight" in set(handle.keys())
    loaded = S2SForConditionalGeneration.from_pretrained(tmp_path)
    assert not _same_storage(loaded.model.shared.weight, loaded.lm_head.weight)
    assert torch.equal(loaded.lm_head.weight, head)
    assert torch.all(loaded.model.shared.weight == 0)
    # Resizing keeps the trained output rows and adds new ones.
    model.resize_token_embeddings(VOCAB + 2)
    assert model.lm_head.weight.shape == (VOCAB + 2, model.config.hidden_size)
    assert torch.equal(model.lm_head.weight[:VOCAB], head)
    assert not _same_storage(model.model.shared.weight, model.lm_head.weight)


def test_embedding_accessors():
    model = make_model()
    encoder = model.get_encoder()
    assert isinstance(encoder, S2SEncoder) and encoder.main_input_name == "input_ids"
    assert encoder is model.model.get_encoder()
    ids, mask = random_ids(SOURCE_LENGTHS)
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=mask)
    assert out.last_hidden_state.shape == (3, ids.shape[1], model.config.hidden_size)
    assert out.final_hidden.shape == (3, model.config.encoder_layers, model.config.hidden_size)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)
    assert model.get_input_embeddings().num_embeddings == VOCAB
    assert model.get_input_embeddings().padding_idx == model.config.pad_token_id
    assert model.get_output_embeddings() is model.lm_head
    assert model.can_generate()

    replacement = torch.nn.Embedding(VOCAB, model.config.embedding_size, padding_idx=0)
    model.set_input_embeddings(replacement)
    model.tie_weights()
    assert model.model.encoder.embed_tokens is replacement and model.model.decoder.embed_tokens is replacement
    _assert_joint_tied(model)
