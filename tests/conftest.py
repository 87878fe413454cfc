"""Shared fixtures and helpers: offline Hub, tiny configurations, right-padded batches, a word-level tokenizer.

Everything here is deliberately tiny (vocabulary 20, hidden size 12) so the whole suite runs on a shared
2-core CPU; the behaviour under test does not depend on the size.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models gain nothing from a second thread, and OpenMP spin-waiting makes two threads per process (and per
# subprocess) crawl when the 2-core machine is busy; one thread keeps the suite's time independent of load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from modeling_s2s import S2SConfig, S2SForConditionalGeneration, fast_paths  # noqa: E402
from modeling_s2s.fast_paths import onednn_dtype  # noqa: E402

torch.set_num_threads(1)

PAD, BOS, EOS, UNK = 0, 1, 2, 3
VOCAB = 20
FIRST_REAL = 4  # ids 4..VOCAB-1 are ordinary tokens

# Dropout is deliberately nonzero everywhere: tests run the model in eval mode, which must disable it.
TINY = dict(
    vocab_size=VOCAB,
    embedding_size=8,
    hidden_size=12,
    encoder_layers=1,
    decoder_layers=1,
    dropout=0.3,
    embedding_dropout=0.3,
    attention_dropout=0.3,
    init_std=0.3,
)


# A covering grid over the architecture options: every attention variant x cell x input feeding x style x
# self-attention value appears at least twice, and bridge, bidirectionality, depth and vocabulary layout vary
# along the way (`tests/test_modeling.py::test_grid_covers_every_option_twice` checks the coverage).
SEPARATE_VOCAB = dict(share_encoder_decoder_embeddings=False, decoder_vocab_size=23)
GRID = [
    dict(
        attention_type="dot",
        cell_type="lstm",
        input_feeding=True,
        attention_style="luong",
        decoder_self_attention=False,
        bridge="zero",
        bidirectional_encoder=True,
    ),
    dict(
        attention_type="dot",
        cell_type="gru",
        input_feeding=False,
        attention_style="bahdanau",
        decoder_self_attention=True,
        bridge="last",
        bidirectional_encoder=False,
        encoder_layers=2,
        decoder_layers=2,
        **SEPARATE_VOCAB,
    ),
    dict(
        attention_type="general",
        cell_type="lstm",
        input_feeding=False,
        attention_style="luong",
        decoder_self_attention=True,
        bridge="mean",
        bidirectional_encoder=True,
        encoder_layers=2,
    ),
    dict(
        attention_type="general",
        cell_type="gru",
        input_feeding=True,
        attention_style="bahdanau",
        decoder_self_attention=False,
        bridge="linear",
        bidirectional_encoder=False,
        decoder_layers=2,
        tie_word_embeddings=False,
        **SEPARATE_VOCAB,
    ),
    dict(
        attention_type="concat",
        cell_type="lstm",
        input_feeding=True,
        attention_style="bahdanau",
        decoder_self_attention=True,
        bridge="linear",
        bidirectional_encoder=True,
    ),
    dict(
        attention_type="concat",
        cell_type="gru",
        input_feeding=False,
        attention_style="luong",
        decoder_self_attention=False,
        bridge="zero",
        bidirectional_encoder=False,
        encoder_layers=2,
        decoder_layers=2,
        tie_word_embeddings=False,
    ),
    dict(
        attention_type="additive",
        cell_type="lstm",
        input_feeding=False,
        attention_style="bahdanau",
        decoder_self_attention=False,
        bridge="mean",
        bidirectional_encoder=False,
        **SEPARATE_VOCAB,
    ),
    dict(
        attention_type="additive",
        cell_type="gru",
        input_feeding=True,
        attention_style="luong",
        decoder_self_attention=True,
        bridge="last",
        bidirectional_encoder=True,
        encoder_layers=2,
        decoder_layers=2,
    ),
    dict(
        attention_type="scaled_dot",
        cell_type="lstm",
        input_feeding=False,
        attention_style="luong",
        decoder_self_attention=False,
        bridge="last",
        bidirectional_encoder=False,
        encoder_layers=2,
        decoder_layers=2,
        embedding_size=12,
    ),
    dict(
        attention_type="scaled_dot",
        cell_type="gru",
        input_feeding=True,
        attention_style="bahdanau",
        decoder_self_attention=True,
        bridge="mean",
        bidirectional_encoder=True,
        decoder_layers=2,
        **SEPARATE_VOCAB,
    ),
    dict(
        attention_type="scaled_dot",
        attention_learnable_scale=True,
        cell_type="lstm",
        input_feeding=True,
        attention_style="luong",
        decoder_self_attention=True,
        bridge="zero",
        bidirectional_encoder=False,
        encoder_layers=2,
        tie_word_embeddings=False,
        **SEPARATE_VOCAB,
    ),
    dict(
        attention_type="scaled_dot",
        attention_learnable_scale=True,
        cell_type="gru",
        input_feeding=False,
        attention_style="bahdanau",
        decoder_self_attention=False,
        bridge="linear",
        bidirectional_encoder=True,
    ),
    dict(
        attention_type="multihead",
        attention_heads=2,
        cell_type="lstm",
        input_feeding=False,
        attention_style="luong",
        decoder_self_attention=True,
        bridge="linear",
        bidirectional_encoder=True,
    ),
    dict(
        attention_type="multihead",
        attention_heads=4,
        cell_type="gru",
        input_feeding=True,
        attention_style="bahdanau",
        decoder_self_attention=False,
        bridge="zero",
        bidirectional_encoder=False,
        **SEPARATE_VOCAB,
    ),
    dict(
        attention_type="multihead",
        attention_heads=2,
        cell_type="gru",
        input_feeding=False,
        attention_style="luong",
        decoder_self_attention=False,
        bridge="mean",
        bidirectional_encoder=True,
        encoder_layers=2,
        decoder_layers=2,
        tie_word_embeddings=False,
    ),
    dict(
        attention_type="multihead",
        attention_heads=4,
        cell_type="lstm",
        input_feeding=True,
        attention_style="bahdanau",
        decoder_self_attention=True,
        bridge="last",
        bidirectional_encoder=False,
    ),
]


def grid_id(options: dict) -> str:
    """A readable pytest id for a grid entry."""
    parts = [
        options["attention_type"] + (f"{options['attention_heads']}" if "attention_heads" in options else "")
    ]
    if options.get("attention_learnable_scale"):
        parts.append("learnscale")
    parts += [options["cell_type"], options["attention_style"], "if" if options["input_feeding"] else "noif"]
    parts += ["selfattn"] if options["decoder_self_attention"] else []
    parts += [options["bridge"], "bi" if options["bidirectional_encoder"] else "uni"]
    parts += [f"L{options.get('encoder_layers', 1)}{options.get('decoder_layers', 1)}"]
    parts += ["sepvocab"] if "decoder_vocab_size" in options else []
    parts += ["untied"] if options.get("tie_word_embeddings") is False else []
    return "-".join(parts)


def decoder_vocab(model) -> int:
    return model.config.decoder_vocab_size


def tiny_config(**overrides) -> S2SConfig:
    """A tiny `S2SConfig`; keyword arguments override the defaults in `TINY`."""
    return S2SConfig(**{**TINY, **overrides})


def make_model(seed: int = 0, model_class=S2SForConditionalGeneration, **overrides):
    """A seeded, randomly initialised tiny model in eval mode."""
    torch.manual_seed(seed)
    return model_class(tiny_config(**overrides)).eval()


def random_ids(
    lengths, vocab_size: int = VOCAB, seed: int = 0, eos: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch of random ordinary tokens (ending in `</s>` when `eos`) and its attention mask.

    Returns (ids, mask), both (B, max(lengths)).
    """
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(FIRST_REAL, vocab_size, (length,), generator=generator)
        if eos:
            ids[row, length - 1] = EOS
        mask[row, :length] = 1
    return ids, mask


def assert_same_generation(batched_row: torch.Tensor, alone: torch.Tensor) -> None:
    """A row of a batched `generate()` equals the unbatched output, followed only by padding."""
    length = alone.shape[-1]
    assert batched_row.shape[-1] >= length, (batched_row, alone)
    assert torch.equal(batched_row[:length], alone), (batched_row, alone)
    assert bool((batched_row[length:] == PAD).all()), (batched_row, alone)


def build_digit_tokenizer():
    """A word-level fast tokenizer over the digits 0-9 (`<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, digits 4..13).

    Text is split into single characters; the post-processor appends `</s>` to every sequence.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": UNK}
    vocab.update({str(d): FIRST_REAL + d for d in range(10)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS)]
    )
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
    )


@pytest.fixture(scope="session")
def digit_tokenizer():
    return build_digit_tokenizer()


# The oneDNN path of the decoder's matmuls (`PackedWeights`) runs on x86 CPUs with AVX2/AVX-512 only.
needs_onednn_matmuls = pytest.mark.skipif(
    onednn_dtype(torch.zeros(1)) is None, reason="oneDNN matmuls need an x86 CPU with AVX2 or AVX-512"
)
# int8 decoding (`config.int8_decoding`) runs where oneDNN's int8 linear ops do (x86 CPUs).
needs_onednn_int8 = pytest.mark.skipif(
    not fast_paths._cpu_has_onednn_int8(), reason="int8 decoding needs oneDNN's int8 linear ops (x86 CPU)"
)
