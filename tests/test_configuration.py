"""S2SConfig: validation (errors name the argument and the value) and lossless save/load."""

from __future__ import annotations

import json
import re

import pytest
from conftest import tiny_config
from transformers import AutoConfig

from modeling_s2s import S2SConfig

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
