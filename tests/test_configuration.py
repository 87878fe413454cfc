"""S2SConfig: validation (errors name the argument and the value) and lossless save/load."""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_config
from transformers import AutoConfig, PreTrainedConfig

from modeling_s2s import S2SConfig
from modeling_s2s.configuration_s2s import BOOL_FIELDS

# Every field set to a non-default (but valid) value, so a round trip that drops or resets one is caught.
NON_DEFAULT = dict(
    vocab_size=31,
    decoder_vocab_size=37,
    share_encoder_decoder_embeddings=False,
    tie_word_embeddings=False,
    embedding_size=24,
    hidden_size=48,
    encoder_layers=3,
    decoder_layers=2,
    cell_type="gru",
    bidirectional_encoder=False,
    bridge="mean",
    attention_type="multihead",
    attention_heads=4,
    attention_learnable_scale=True,
    attention_style="bahdanau",
    input_feeding=False,
    decoder_self_attention=True,
    dropout=0.15,
    embedding_dropout=0.05,
    attention_dropout=0.25,
    label_smoothing=0.1,
    init_std=0.07,
    pad_token_id=3,
    bos_token_id=4,
    eos_token_id=5,
    decoder_start_token_id=6,
    use_cache=False,
    fast_paths=False,
)


def test_defaults_are_valid_and_documented_values():
    config = S2SConfig()
    assert config.model_type == "attention_s2s"
    assert config.is_encoder_decoder
    assert config.decoder_vocab_size == config.vocab_size
    assert config.tie_word_embeddings is True
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id, config.decoder_start_token_id) == (
        0,
        1,
        2,
        1,
    )
    assert config.num_hidden_layers == config.decoder_layers
    assert "cache" in config.keys_to_ignore_at_inference


@pytest.mark.parametrize(
    ("style", "input_feeding", "fused"),
    [("luong", False, True), ("luong", True, False), ("bahdanau", False, False), ("bahdanau", True, False)],
)
def test_fused_decoder_only_for_luong_without_input_feeding(style, input_feeding, fused):
    assert tiny_config(attention_style=style, input_feeding=input_feeding).fused_decoder is fused


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (dict(attention_type="luong_dot"), ["attention_type", "luong_dot"]),
        (dict(cell_type="rnn"), ["cell_type", "rnn"]),
        (dict(bridge="sum"), ["bridge", "sum"]),
        (dict(attention_style="vaswani"), ["attention_style", "vaswani"]),
        (dict(attention_type="multihead", attention_heads=5), ["attention_heads", "5", "12"]),
        (dict(attention_type="general", attention_heads=2), ["attention_heads", "2"]),
        (dict(hidden_size=13, bidirectional_encoder=True), ["hidden_size", "13", "bidirectional"]),
        (dict(vocab_size=-5), ["vocab_size", "-5"]),
        (dict(vocab_size=0), ["vocab_size", "0"]),
        (dict(embedding_size=-8), ["embedding_size", "-8"]),
        (dict(hidden_size=-12), ["hidden_size", "-12"]),
        (dict(encoder_layers=0), ["encoder_layers", "0"]),
        (dict(decoder_layers=-1), ["decoder_layers", "-1"]),
        (dict(attention_heads=0), ["attention_heads", "0"]),
        (dict(hidden_size=12.0), ["hidden_size", "12.0"]),
        (dict(dropout=1.0), ["dropout", "1.0"]),
        (dict(dropout=1.5), ["dropout", "1.5"]),
        (dict(embedding_dropout=-0.1), ["embedding_dropout", "-0.1"]),
        (dict(attention_dropout=2), ["attention_dropout", "2"]),
        (dict(label_smoothing=1.0), ["label_smoothing", "1.0"]),
        (dict(init_std=0.0), ["init_std", "0.0"]),
        (
            dict(bridge="last", encoder_layers=2, decoder_layers=1),
            ["bridge", "encoder_layers", "2", "decoder_layers"],
        ),
        (dict(decoder_vocab_size=30), ["decoder_vocab_size", "30", "share_encoder_decoder_embeddings"]),
        (dict(pad_token_id=20), ["pad_token_id", "20"]),
        (dict(pad_token_id=-1), ["pad_token_id", "-1"]),
        (dict(eos_token_id=25), ["eos_token_id", "25"]),
        (dict(bos_token_id=-3), ["bos_token_id", "-3"]),
        (dict(decoder_start_token_id=99), ["decoder_start_token_id", "99"]),
        # With separate vocabularies the pad id must exist in both; the target-side ids only in the target one.
        (
            dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=30, pad_token_id=25),
            ["pad_token_id", "25"],
        ),
    ],
)
def test_invalid_values_raise_naming_argument_and_value(overrides, named):
    with pytest.raises(ValueError) as info:
        tiny_config(**overrides)
    message = str(info.value)
    for fragment in named:
        assert fragment in message, (fragment, message)


def test_valid_edge_values_are_accepted():
    # Sizes of 1, dropout 0, odd hidden size with a unidirectional encoder, target-only ids beyond the source vocab.
    config = tiny_config(
        vocab_size=10,
        share_encoder_decoder_embeddings=False,
        decoder_vocab_size=30,
        eos_token_id=25,
        hidden_size=13,
        bidirectional_encoder=False,
        embedding_size=1,
        dropout=0.0,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        bridge="last",
        encoder_layers=2,
        decoder_layers=2,
    )
    assert config.decoder_vocab_size == 30 and config.vocab_size == 10
    assert tiny_config(attention_type="multihead", attention_heads=4).attention_heads == 4
    assert tiny_config(bridge="linear", encoder_layers=3, decoder_layers=1).encoder_layers == 3


def _fields(config: S2SConfig) -> dict:
    data = config.to_dict()
    for volatile in ("transformers_version", "_name_or_path"):
        data.pop(volatile, None)
    return data


def test_save_load_round_trip_keeps_every_field(tmp_path):
    config = S2SConfig(**NON_DEFAULT)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "attention_s2s"
    for name, value in NON_DEFAULT.items():
        assert saved[name] == value, name

    for loaded in (S2SConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, S2SConfig)
        for name, value in NON_DEFAULT.items():
            assert getattr(loaded, name) == value, name
        assert _fields(loaded) == _fields(config)


def test_dict_round_trip_and_invalid_saved_config_is_rejected(tmp_path):
    config = S2SConfig(**NON_DEFAULT)
    assert _fields(S2SConfig.from_dict(config.to_dict())) == _fields(config)

    # A hand-edited config.json with a bad value fails on load, naming the value.
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(re.sub(r'"cell_type": "gru"', '"cell_type": "elman"', path.read_text()))
    with pytest.raises(ValueError, match="elman"):
        S2SConfig.from_pretrained(tmp_path)


# ---- types are checked, not coerced -----------------------------------------------------------------------------

INT_FIELDS = ("vocab_size", "decoder_vocab_size", "embedding_size", "hidden_size", "encoder_layers", "decoder_layers",
              "attention_heads")
FLOAT_FIELDS = ("dropout", "embedding_dropout", "attention_dropout", "label_smoothing", "init_std")
TOKEN_ID_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _raises_naming(overrides: dict, *fragments: str) -> str:
    with pytest.raises(ValueError) as info:
        tiny_config(**overrides)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_bool_fields_are_listed_and_documented():
    assert set(BOOL_FIELDS) >= {
        "share_encoder_decoder_embeddings", "tie_word_embeddings", "bidirectional_encoder",
        "attention_learnable_scale", "input_feeding", "decoder_self_attention", "use_cache", "fast_paths",
    }
    for name in BOOL_FIELDS:
        assert f"{name} (`bool`" in S2SConfig.__doc__, name


@pytest.mark.parametrize("name", BOOL_FIELDS)
@pytest.mark.parametrize("value", ["False", "True", 0, 1, None, 1.0])
def test_bool_fields_must_be_real_bools(name, value):
    _raises_naming({name: value}, f"`{name}`={value!r}", type(value).__name__, "True or False")


def test_bidirectional_encoder_string_false_is_refused_not_read_as_true():
    message = _raises_naming(dict(bidirectional_encoder="False"), "bidirectional_encoder", "'False'", "bool")
    assert "not converted" in message


@pytest.mark.parametrize("name", ["return_dict", "output_hidden_states", "output_attentions"])
def test_inherited_bool_fields_are_checked_too(name):
    _raises_naming({name: "yes"}, f"`{name}`='yes'", "bool")
    assert getattr(tiny_config(**{name: False}), name) is False


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize("value", [2.0, True, "4"])
def test_int_fields_reject_floats_bools_and_strings(name, value):
    _raises_naming({name: value}, f"`{name}`={value!r}", type(value).__name__, "int")


@pytest.mark.parametrize("name", TOKEN_ID_FIELDS)
@pytest.mark.parametrize("value", [1.0, True, "1"])
def test_token_ids_reject_floats_bools_and_strings(name, value):
    _raises_naming({name: value}, f"`{name}`={value!r}", type(value).__name__, "token id")


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_float_fields_accept_int_and_float_but_not_bool_or_str(name):
    assert getattr(tiny_config(**{name: 0.125}), name) == 0.125
    zero_or_one = 1 if name == "init_std" else 0
    assert getattr(tiny_config(**{name: zero_or_one}), name) == zero_or_one
    for value in (True, False, "0.1", None):
        _raises_naming({name: value}, f"`{name}`={value!r}", type(value).__name__, "number")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_init_std_must_be_finite(value):
    _raises_naming(dict(init_std=value), "init_std", repr(value), "finite")


def test_is_encoder_decoder_must_be_true():
    _raises_naming(dict(is_encoder_decoder=False), "is_encoder_decoder", "False", "True")


# ---- special token ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"), [("pad_token_id", "pad"), ("decoder_start_token_id", "start")]
)
def test_ids_the_model_needs_cannot_be_none(name, reason):
    _raises_naming({name: None}, f"`{name}`=None", reason, "[0, 19]")


def test_bos_and_eos_may_be_none_and_eos_may_be_a_list():
    config = tiny_config(bos_token_id=None, eos_token_id=None)
    assert config.bos_token_id is None and config.eos_token_id is None
    assert tiny_config(eos_token_id=[2, 3]).eos_token_id == [2, 3]
    _raises_naming(dict(eos_token_id=[2, 30]), "eos_token_id", "30")
    _raises_naming(dict(eos_token_id=[]), "eos_token_id", "[]")
    _raises_naming(dict(decoder_start_token_id=[1]), "decoder_start_token_id", "[1]")


# ---- unknown keyword arguments --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "closest"),
    [("hiden_size", "hidden_size"), ("bidirectional", "bidirectional_encoder"), ("dropuot", "dropout"),
     ("attention_typ", "attention_type"), ("fast_path", "fast_paths"), ("pad_id", "pad_token_id")],
)
def test_unknown_keyword_names_the_key_and_the_closest_valid_name(key, closest):
    with pytest.raises(ValueError) as info:
        S2SConfig(**{key: 64})
    message = str(info.value)
    assert f"`{key}`=64" in message and f"did you mean `{closest}`?" in message, message


def test_several_unknown_keywords_are_all_named():
    with pytest.raises(ValueError) as info:
        S2SConfig(hiden_size=64, xyzzy=1)
    message = str(info.value)
    assert "`hiden_size`=64" in message and "`xyzzy`=1" in message and "hidden_size" in message


def test_unknown_keyword_in_a_saved_config_is_refused(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["hiden_size"] = 64
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="hiden_size.*hidden_size"):
        S2SConfig.from_pretrained(tmp_path)


def test_every_key_transformers_knows_is_accepted():
    # Everything the installed PreTrainedConfig serialises or declares, with the value it has by default.
    base = PreTrainedConfig().to_dict()
    base.pop("model_type", None)
    base["is_encoder_decoder"] = True  # PreTrainedConfig's default is False; this model is always encoder-decoder
    config = tiny_config(**base)
    assert config.hidden_size == 12
    # Keys from_pretrained passes, remote code / pipelines / quantizers write, and generation keys of older saves.
    tiny_config(
        transformers_version="4.40.0", architectures=["S2SForConditionalGeneration"], model_type="attention_s2s",
        auto_map={"AutoConfig": "configuration_s2s.S2SConfig"}, custom_pipelines={}, dtype="float32",
        id2label={"0": "LABEL_0", "1": "LABEL_1"}, label2id={"LABEL_0": 0, "LABEL_1": 1}, return_dict=True,
        output_attentions=False, output_hidden_states=False, use_cache=True, is_encoder_decoder=True,
        tie_word_embeddings=True, name_or_path="somewhere", num_labels=2, attn_implementation="eager",
        _name_or_path="x", _commit_hash="abc", num_beams=4, max_length=20, early_stopping=True, length_penalty=1.0,
        no_repeat_ngram_size=0, forced_eos_token_id=2, bad_words_ids=None, num_hidden_layers=1,
    )
    assert tiny_config(torch_dtype="float16").dtype is not None


# A config.json as transformers v4 wrote it for a remote-code model: every v4 PretrainedConfig key.
V4_CONFIG = {
    "_name_or_path": "outputs/quick-de-en", "add_cross_attention": False, "architectures": ["S2SForConditionalGeneration"],
    "auto_map": {"AutoConfig": "configuration_s2s.S2SConfig"}, "bad_words_ids": None, "begin_suppress_tokens": None,
    "chunk_size_feed_forward": 0, "cross_attention_hidden_size": None, "diversity_penalty": 0.0, "do_sample": False,
    "early_stopping": False, "encoder_no_repeat_ngram_size": 0, "exponential_decay_length_penalty": None,
    "finetuning_task": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "is_decoder": False, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "length_penalty": 1.0, "max_length": 20, "min_length": 0, "no_repeat_ngram_size": 0, "num_beam_groups": 1,
    "num_beams": 1, "num_return_sequences": 1, "output_attentions": False, "output_hidden_states": False,
    "output_scores": False, "prefix": None, "problem_type": None, "pruned_heads": {}, "remove_invalid_values": False,
    "repetition_penalty": 1.0, "return_dict": True, "return_dict_in_generate": False, "sep_token_id": None,
    "suppress_tokens": None, "task_specific_params": None, "temperature": 1.0, "tf_legacy_loss": False,
    "tie_encoder_decoder": False, "tokenizer_class": None, "top_k": 50, "top_p": 1.0, "torch_dtype": "float32",
    "torchscript": False, "transformers_version": "4.46.0", "typical_p": 1.0, "use_bfloat16": False,
    "_attn_implementation_autoset": True,
}


def test_config_saved_by_transformers_v4_loads(tmp_path):
    data = {**V4_CONFIG, **tiny_config().to_dict()}
    data.pop("fast_paths")  # saved before the field existed: gets the default
    (tmp_path / "config.json").write_text(json.dumps(data))
    for loaded in (S2SConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert isinstance(loaded, S2SConfig)
        assert loaded.hidden_size == 12 and loaded.fast_paths is True


def test_from_pretrained_overrides_are_validated(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    assert S2SConfig.from_pretrained(tmp_path, dropout=0.1).dropout == 0.1
    config, unused = S2SConfig.from_pretrained(tmp_path, output_attentions=True, foo=1, return_unused_kwargs=True)
    assert config.output_attentions is True and unused == {"foo": 1}
    with pytest.raises(ValueError, match="`dropout`='0.1'"):
        S2SConfig.from_pretrained(tmp_path, dropout="0.1")
    with pytest.raises(ValueError, match="`bidirectional_encoder`='False'"):
        AutoConfig.from_pretrained(tmp_path, bidirectional_encoder="False")


# ---- fast_paths ----------------------------------------------------------------------------------------------------


def test_fast_paths_defaults_to_true_and_round_trips(tmp_path):
    assert S2SConfig().fast_paths is True
    tiny_config(fast_paths=False).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["fast_paths"] is False
    assert S2SConfig.from_pretrained(tmp_path).fast_paths is False
    assert AutoConfig.from_pretrained(tmp_path).fast_paths is False
    assert "Set False to run the plain reference model" in " ".join(S2SConfig.__doc__.split())
