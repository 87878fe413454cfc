"""Tests of `modeling_s2s.tokenization` and `scripts/train_tokenizer.py`."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util  # noqa: E402
import shutil  # noqa: E402
import unicodedata  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from modeling_s2s.data import load_parallel_data, make_preprocess_function  # noqa: E402
from modeling_s2s.tokenization import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    TARGET_TOKENIZER_SUBFOLDER,
    UNK_ID,
    iter_texts,
    load_tokenizers,
    save_tokenizers,
    special_token_kwargs,
    train_tokenizer,
)

N_TRAIN = 3000  # pairs of Multi30k train used to train the test tokenizers (keeps the tests fast)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def multi30k():
    return load_parallel_data("de", "en")


@pytest.fixture(scope="module")
def train_pairs(multi30k):
    return multi30k["train"].select(range(N_TRAIN))["translation"]


@pytest.fixture(scope="module")
def test_sentences(multi30k):
    return list(iter_texts(multi30k["test"]["translation"], ["de", "en"]))


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def trained(request, train_pairs, tmp_path_factory):
    """(in-memory tokenizer, tokenizer reloaded with AutoTokenizer, training texts) per model type."""
    texts = list(iter_texts(train_pairs, ["de", "en"]))
    tokenizer = train_tokenizer(texts, vocab_size=2000, model_type=request.param)
    directory = tmp_path_factory.mktemp(f"tok-{request.param}")
    tokenizer.save_pretrained(directory)
    return tokenizer, AutoTokenizer.from_pretrained(directory), texts


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def test_special_tokens_have_fixed_ids(trained):
    for tok in trained[:2]:
        assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID]
        assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (
            PAD_ID,
            BOS_ID,
            EOS_ID,
            UNK_ID,
        )
        assert tok.padding_side == "right"
        assert tok.model_max_length == 512
        assert len(tok) == 2000


def test_reloaded_tokenizer_encodes_like_the_original(trained, test_sentences):
    tokenizer, reloaded, _ = trained
    sample = test_sentences[:200]
    assert reloaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]


def test_round_trip_is_exact(trained, test_sentences):
    """decode(encode(x)) == x for sentences whose characters were seen in training (NFKC-normalised x otherwise)."""
    _, tok, texts = trained
    seen = set("".join(_nfkc(t) for t in texts))
    checked = umlauts = 0
    for sentence in test_sentences + texts[:500]:
        if not set(_nfkc(sentence)) <= seen:
            continue
        ids = tok(sentence)["input_ids"]
        decoded = tok.decode(ids, skip_special_tokens=True)
        assert decoded == _nfkc(sentence)
        if _nfkc(sentence) == sentence:
            assert decoded == sentence
        checked += 1
        umlauts += any(c in sentence for c in "äöüÄÖÜß")
    assert checked > 0.9 * (len(test_sentences) + 500)  # the check covered almost everything
    assert umlauts > 100


def test_round_trip_of_special_cases(trained):
    _, tok, texts = trained
    seen = set("".join(texts))
    for sentence in ["Ein Mann.", "Zwei  Leerzeichen", "trailing space ", "Größe, weiß; Mädchen über Bäume!"]:
        assert set(sentence) <= seen  # precondition: every character occurs in the training text
        assert tok.decode(tok(sentence)["input_ids"], skip_special_tokens=True) == sentence


def test_eos_appended_and_no_bos(trained, train_pairs):
    _, tok, _ = trained
    sources = [p["de"] for p in train_pairs[:50]]
    targets = [p["en"] for p in train_pairs[:50]]
    encoded = tok(sources, text_target=targets)
    assert set(encoded) == {"input_ids", "attention_mask", "labels"}
    for ids in encoded["input_ids"] + encoded["labels"]:
        assert ids[-1] == EOS_ID
        assert EOS_ID not in ids[:-1] and BOS_ID not in ids and PAD_ID not in ids
    single = tok(sources[0], text_target=targets[0])
    assert single["labels"] == tok(targets[0])["input_ids"]
    assert single["labels"][-1] == EOS_ID


def test_right_padding(trained):
    _, tok, _ = trained
    batch = tok(["Ein Hund.", "Ein großer Hund läuft über die Wiese."], padding=True)
    short, long = batch["input_ids"]
    n = sum(batch["attention_mask"][0])
    assert len(short) == len(long)
    assert short[n - 1] == EOS_ID and all(i == PAD_ID for i in short[n:])
    assert batch["attention_mask"][0] == [1] * n + [0] * (len(short) - n)


def test_lowercase(train_pairs):
    texts = list(iter_texts(train_pairs, ["de", "en"]))[:2000]
    tok = train_tokenizer(texts, vocab_size=800, model_type="bpe", lowercase=True)
    seen = set("".join(_nfkc(t).lower() for t in texts))
    for sentence in texts[:200]:
        assert set(_nfkc(sentence).lower()) <= seen
        assert tok.decode(tok(sentence)["input_ids"], skip_special_tokens=True) == _nfkc(sentence).lower()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer(["a b"], model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b"], vocab_size=3)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([], vocab_size=100)


def test_special_token_kwargs(trained):
    tok = trained[1]
    kwargs = special_token_kwargs(tok)
    assert kwargs == {
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "decoder_start_token_id": tok.bos_token_id,
        "vocab_size": len(tok),
    }
    from modeling_s2s.configuration_s2s import S2SConfig

    config = S2SConfig(**kwargs)
    assert (config.vocab_size, config.pad_token_id, config.eos_token_id) == (len(tok), PAD_ID, EOS_ID)


def test_separate_vocabularies(train_pairs, tmp_path):
    source = train_tokenizer(iter_texts(train_pairs, ["de"]), vocab_size=600)
    target = train_tokenizer(iter_texts(train_pairs, ["en"]), vocab_size=500)
    save_tokenizers(tmp_path, source, target)
    assert (tmp_path / TARGET_TOKENIZER_SUBFOLDER / "tokenizer.json").is_file()
    src_tok, tgt_tok = load_tokenizers(tmp_path)
    assert (len(src_tok), len(tgt_tok)) == (600, 500)
    assert src_tok.get_vocab() == source.get_vocab() and tgt_tok.get_vocab() == target.get_vocab()
    via_auto = AutoTokenizer.from_pretrained(tmp_path, subfolder=TARGET_TOKENIZER_SUBFOLDER)
    assert via_auto.get_vocab() == target.get_vocab()

    pair = train_pairs[0]
    out = make_preprocess_function(src_tok, "de", "en", target_tokenizer=tgt_tok)({"translation": [pair]})
    assert out["input_ids"][0] == src_tok(pair["de"])["input_ids"]
    assert out["labels"][0] == tgt_tok(text_target=pair["en"])["input_ids"]
    assert tgt_tok.decode(out["labels"][0], skip_special_tokens=True) == pair["en"]

    kwargs = special_token_kwargs(src_tok, tgt_tok)
    assert kwargs["vocab_size"] == 600 and kwargs["decoder_vocab_size"] == 500
    assert kwargs["share_encoder_decoder_embeddings"] is False


def _as_hub_cache(folder: Path, cache: Path, repo_id: str, missing: tuple[str, ...] = ()) -> None:
    """Lay `folder` out as huggingface_hub's cache holds a repo downloaded online: refs/main -> snapshots/<commit>,
    and `.no_exist/<commit>/<file>` for each file the Hub answered 404 for (`missing`)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    for name in missing:
        marker = repo / ".no_exist" / commit / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


@pytest.mark.parametrize("separate", [True, False])
def test_load_tokenizers_from_a_hub_repo(train_pairs, tmp_path, separate):
    """A Hub id finds the `target_tokenizer/` subfolder too (here through the offline cache)."""
    source = train_tokenizer(iter_texts(train_pairs, ["de"]), vocab_size=600)
    target = train_tokenizer(iter_texts(train_pairs, ["en"]), vocab_size=500) if separate else None
    save_tokenizers(tmp_path / "saved", source, target)
    from modeling_s2s.configuration_s2s import S2SConfig

    S2SConfig(**special_token_kwargs(source, target)).save_pretrained(tmp_path / "saved")  # a model repo's config
    # the target tokenizer's folder has no config.json: AutoTokenizer asks for it, the Hub says 404
    missing = (f"{TARGET_TOKENIZER_SUBFOLDER}/config.json",) if separate else ()
    _as_hub_cache(tmp_path / "saved", tmp_path / "cache", "someone/s2s-tokenizers", missing)
    src_tok, tgt_tok = load_tokenizers("someone/s2s-tokenizers", cache_dir=tmp_path / "cache")
    assert src_tok.get_vocab() == source.get_vocab()
    if separate:
        assert tgt_tok.get_vocab() == target.get_vocab()
    else:
        assert tgt_tok is src_tok


def test_no_target_tokenizer_for_a_path_that_is_gone(tmp_path):
    from modeling_s2s.pipeline_s2s import find_target_tokenizer

    assert find_target_tokenizer(str(tmp_path / "deleted" / "model")) is None
    assert find_target_tokenizer("runs/deleted/model") is None


def test_load_tokenizers_joint(trained, tmp_path):
    save_tokenizers(tmp_path, trained[0])
    source, target = load_tokenizers(tmp_path)
    assert source is target


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "train_tokenizer_script", REPO / "scripts" / "train_tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("separate", [False, True])
def test_train_tokenizer_script(train_pairs, tmp_path, separate):
    prefix = tmp_path / "small"
    pairs = train_pairs[:1000]
    (tmp_path / "small.de").write_text("".join(p["de"] + "\n" for p in pairs), encoding="utf-8")
    (tmp_path / "small.en").write_text("".join(p["en"] + "\n" for p in pairs), encoding="utf-8")
    out = tmp_path / "out"
    argv = [
        "--train_file",
        str(prefix),
        "--vocab_size",
        "400",
        "--model_type",
        "unigram",
        "--output_dir",
        str(out),
    ]
    assert _load_script().main(argv + (["--separate_vocabs"] if separate else [])) == 0
    source, target = load_tokenizers(out)
    assert (source is not target) == separate
    assert (out / TARGET_TOKENIZER_SUBFOLDER).is_dir() == separate
    for tok, text in ((source, pairs[1]["de"]), (target, pairs[1]["en"])):
        ids = tok(text)["input_ids"]
        assert ids[-1] == EOS_ID
        assert tok.decode(ids, skip_special_tokens=True) == text
