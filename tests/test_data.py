"""Tests of `modeling_s2s.data`: file formats, error reporting, the embedded Multi30k, preprocessing, filtering."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402

from modeling_s2s.data import (  # noqa: E402
    DEFAULT_DATA_DIR,
    DataFileNotFoundError,
    DataFormatError,
    filter_by_length,
    load_parallel_data,
    make_preprocess_function,
    pair_length_keys,
    preprocess_function,
)
from modeling_s2s.tokenization import EOS_ID, train_tokenizer  # noqa: E402

# Content chosen to trip up naive readers: umlauts/ß, commas and quotes (CSV quoting), values pandas would
# turn into NaN or numbers ("NA", "120", "null"), JSON-looking text, a no-break space, trailing whitespace.
PAIRS = [
    ("Zwei junge weiße Männer sind im Freien.", "Two young, White males are outside."),
    ('Ein Mann sagt: "Grüß Gott", und geht.', 'A man says "hello", then leaves.'),
    ("NA", "120"),
    ("null", "None"),
    ('{"de": "x"}', "3.5"),
    ("Straße mit 120\u00a0cm Schnee. ", "Street with 120 cm of snow. "),
    ("Öl, Äpfel; Übermaß.", "Oil, apples; excess."),
]
SRC, TGT = "de", "en"
EXPECTED = [{SRC: de, TGT: en} for de, en in PAIRS]


# ---------------------------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------------------------


def _open_write(path: Path):
    return (
        gzip.open(path, "wt", encoding="utf-8", newline="")
        if path.suffix == ".gz"
        else path.open("w", encoding="utf-8", newline="")
    )


def write_jsonl(path: Path, pairs=PAIRS, extra: bool = False) -> Path:
    with _open_write(path) as f:
        for i, (de, en) in enumerate(pairs):
            record = {"translation": {SRC: de, TGT: en}}
            if extra:
                record = {"id": i, "translation": {"fr": "bonjour", TGT: en, SRC: de}, "note": None}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_csv(path: Path, pairs=PAIRS, extra: bool = False) -> Path:
    with _open_write(path) as f:
        writer = csv.writer(f)
        writer.writerow([TGT, "id", SRC] if extra else [SRC, TGT])
        for i, (de, en) in enumerate(pairs):
            writer.writerow([en, str(i), de] if extra else [de, en])
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    with _open_write(path) as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def write_pair(prefix: Path, pairs=PAIRS, gz: bool = False) -> Path:
    suffix = ".gz" if gz else ""
    write_lines(prefix.with_name(f"{prefix.name}.{SRC}{suffix}"), [de for de, _ in pairs])
    write_lines(prefix.with_name(f"{prefix.name}.{TGT}{suffix}"), [en for _, en in pairs])
    return prefix


def rows(dataset: Dataset) -> list[dict[str, str]]:
    return [example["translation"] for example in dataset]


def load_train(path, tmp_path: Path, source_lang: str = SRC, target_lang: str = TGT):
    return load_parallel_data(source_lang, target_lang, train_file=path, cache_dir=tmp_path / "hf-cache")


# ---------------------------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------------------------

FORMATS = {
    "jsonl": lambda d: write_jsonl(d / "train.jsonl"),
    "json": lambda d: write_jsonl(d / "train.json"),
    "jsonl_gz": lambda d: write_jsonl(d / "train.jsonl.gz"),
    "jsonl_extra_keys": lambda d: write_jsonl(d / "train.jsonl", extra=True),
    "csv": lambda d: write_csv(d / "train.csv"),
    "csv_gz": lambda d: write_csv(d / "train.csv.gz"),
    "csv_extra_columns": lambda d: write_csv(d / "train.csv", extra=True),
    "text_pair": lambda d: write_pair(d / "train"),
    "text_pair_gz": lambda d: write_pair(d / "train", gz=True),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_yields_the_same_examples(tmp_path, fmt):
    path = FORMATS[fmt](tmp_path)
    data = load_train(path, tmp_path)
    assert list(data) == ["train"]
    assert data["train"].column_names == ["translation"]
    assert rows(data["train"]) == EXPECTED


def test_formats_have_identical_features_and_the_language_direction_is_respected(tmp_path):
    a = load_train(write_jsonl(tmp_path / "a.jsonl"), tmp_path)["train"]
    b = load_train(write_pair(tmp_path / "b"), tmp_path)["train"]
    c = load_train(write_csv(tmp_path / "c.csv"), tmp_path)["train"]
    assert a.features == b.features == c.features
    reverse = load_train(tmp_path / "b", tmp_path, source_lang=TGT, target_lang=SRC)["train"]
    assert rows(reverse) == EXPECTED  # same dicts; the direction is in the feature's language list
    assert set(reverse.features["translation"].languages) == {SRC, TGT}


def test_splits_from_mixed_formats(tmp_path):
    data = load_parallel_data(
        SRC,
        TGT,
        train_file=write_jsonl(tmp_path / "train.jsonl"),
        validation_file=write_csv(tmp_path / "valid.csv", PAIRS[:3]),
        test_file=str(write_pair(tmp_path / "test", PAIRS[3:], gz=True)),
        cache_dir=tmp_path / "hf-cache",
    )
    assert list(data) == ["train", "validation", "test"]
    assert rows(data["train"]) == EXPECTED
    assert rows(data["validation"]) == EXPECTED[:3]
    assert rows(data["test"]) == EXPECTED[3:]


def test_crlf_bom_and_blank_jsonl_lines(tmp_path):
    (tmp_path / "w.de").write_bytes("\ufeffEin Hund.\r\nZwei Katzen.\r\n".encode())
    (tmp_path / "w.en").write_bytes(b"A dog.\r\nTwo cats.\r\n")
    assert rows(load_train(tmp_path / "w", tmp_path)["train"]) == [
        {SRC: "Ein Hund.", TGT: "A dog."},
        {SRC: "Zwei Katzen.", TGT: "Two cats."},
    ]
    path = tmp_path / "blank.jsonl"
    lines = [json.dumps({"translation": {SRC: de, TGT: en}}) for de, en in PAIRS[:2]]
    path.write_text(lines[0] + "\n\n" + lines[1] + "\n\n", encoding="utf-8")
    assert rows(load_train(path, tmp_path)["train"]) == EXPECTED[:2]


# ---------------------------------------------------------------------------------------------------------------
# Embedded default data
# ---------------------------------------------------------------------------------------------------------------


def _gz_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read().split("\n")[:-1]


def test_default_multi30k():
    data = load_parallel_data("de", "en")
    assert {split: data[split].num_rows for split in data} == {
        "train": 29000,
        "validation": 1014,
        "test": 1000,
    }
    for split, stem in (("train", "train"), ("validation", "val"), ("test", "test_2016_flickr")):
        de = _gz_lines(DEFAULT_DATA_DIR / f"{stem}.de.gz")
        en = _gz_lines(DEFAULT_DATA_DIR / f"{stem}.en.gz")
        assert len(de) == len(en) == data[split].num_rows
        for i in (0, len(de) // 2, len(de) - 1):
            assert data[split][i]["translation"] == {"de": de[i], "en": en[i]}
    reverse = load_parallel_data("en", "de")
    assert reverse["test"][0]["translation"] == data["test"][0]["translation"]


def test_default_data_other_languages_is_an_error():
    with pytest.raises(ValueError, match="Multi30k"):
        load_parallel_data("de", "fr")


def test_same_languages_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        load_parallel_data("en", "en")
    with pytest.raises(ValueError, match="differ"):
        load_parallel_data("de", "de", train_file=write_pair(tmp_path / "train"))


def test_dataset_name_and_files_together_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        load_parallel_data(SRC, TGT, dataset_name="wmt16", train_file=write_pair(tmp_path / "train"))


# ---------------------------------------------------------------------------------------------------------------
# Bad data
# ---------------------------------------------------------------------------------------------------------------


def _jsonl_lines(pairs=PAIRS) -> list[str]:
    return [json.dumps({"translation": {SRC: de, TGT: en}}, ensure_ascii=False) for de, en in pairs]


def _replace(lines: list[str], index: int, new: str) -> list[str]:
    lines = list(lines)
    lines[index] = new
    return lines


def _raise_for(path, tmp_path) -> DataFormatError:
    with pytest.raises(DataFormatError) as info:
        load_train(path, tmp_path)
    return info.value


BAD_LINE_CASES = {
    # name: (file name, index of the bad line (0-based), writer(path, index))
    "jsonl_missing_language": (
        "train.jsonl",
        2,
        lambda p, i: write_lines(p, _replace(_jsonl_lines(), i, json.dumps({"translation": {SRC: "Hallo"}}))),
    ),
    "jsonl_missing_translation_key": (
        "train.jsonl",
        4,
        lambda p, i: write_lines(p, _replace(_jsonl_lines(), i, json.dumps({SRC: "Hallo", TGT: "Hello"}))),
    ),
    "jsonl_invalid_json": (
        "train.jsonl",
        1,
        lambda p, i: write_lines(
            p, _replace(_jsonl_lines(), i, '{"translation": {"de": "Hallo", "en": "Hi"')
        ),
    ),
    "jsonl_not_a_string": (
        "train.json",
        5,
        lambda p, i: write_lines(
            p, _replace(_jsonl_lines(), i, json.dumps({"translation": {SRC: "a", TGT: 3}}))
        ),
    ),
    "jsonl_empty_target": (
        "train.jsonl",
        6,
        lambda p, i: write_lines(
            p, _replace(_jsonl_lines(), i, json.dumps({"translation": {SRC: "a", TGT: " "}}))
        ),
    ),
    "jsonl_gz_invalid_json": (
        "train.jsonl.gz",
        3,
        lambda p, i: write_lines(p, _replace(_jsonl_lines(), i, "not json")),
    ),
    "csv_empty_field": (
        "train.csv",
        3,  # 0-based physical line index; the header is line index 0
        lambda p, i: write_lines(p, [f"{SRC},{TGT}", "a,b", "c,d", ",f", "g,h"]),
    ),
    "csv_wrong_field_count": (
        "train.csv",
        2,
        lambda p, i: write_lines(p, [f"{SRC},{TGT}", "a,b", "c,d,e", "g,h"]),
    ),
    "csv_missing_column": (
        "train.csv",
        0,
        lambda p, i: write_lines(p, [f"{SRC},fr", "a,b"]),
    ),
    "jsonl_latin1_bytes": ("train.jsonl", 2, None),
}


@pytest.mark.parametrize("case", sorted(BAD_LINE_CASES))
def test_bad_line_names_file_and_line(tmp_path, case):
    name, index, writer = BAD_LINE_CASES[case]
    path = tmp_path / name
    if writer is None:  # latin-1 bytes on one line of an otherwise UTF-8 file
        data = "\n".join(_jsonl_lines()).encode("utf-8").split(b"\n")
        data[index] = json.dumps({"translation": {SRC: "Größe", TGT: "size"}}, ensure_ascii=False).encode(
            "latin-1"
        )
        path.write_bytes(b"\n".join(data) + b"\n")
    else:
        writer(path, index)
    error = _raise_for(path, tmp_path)
    assert str(path) in str(error)
    assert f"line {index + 1}:" in str(error)
    assert error.line == index + 1
    assert error.path == str(path)


@pytest.mark.parametrize("side", [SRC, TGT])
@pytest.mark.parametrize("index", [0, 3, 6])
@pytest.mark.parametrize("blank", ["", "   "])
def test_empty_sentence_in_text_pair(tmp_path, side, index, blank):
    pairs = list(PAIRS)
    de, en = pairs[index]
    pairs[index] = (blank, en) if side == SRC else (de, blank)
    prefix = write_pair(tmp_path / "train", pairs)
    error = _raise_for(prefix, tmp_path)
    bad_file = f"{prefix}.{side}"
    assert bad_file in str(error)
    assert f"line {index + 1}:" in str(error)
    assert error.line == index + 1


@pytest.mark.parametrize("gz", [False, True])
def test_undecodable_bytes_in_text_pair(tmp_path, gz):
    prefix = write_pair(tmp_path / "train", gz=gz)
    suffix = ".gz" if gz else ""
    bad = Path(f"{prefix}.{SRC}{suffix}")
    lines = [de.encode("utf-8") for de, _ in PAIRS]
    lines[4] = "Grüße aus Köln".encode("latin-1")
    content = b"".join(line + b"\n" for line in lines)
    if gz:
        bad.write_bytes(gzip.compress(content))
    else:
        bad.write_bytes(content)
    error = _raise_for(prefix, tmp_path)
    assert str(bad) in str(error)
    assert "line 5:" in str(error)
    assert "UTF-8" in str(error)


def test_mismatched_line_counts_names_both_files_and_counts(tmp_path):
    prefix = tmp_path / "train"
    write_lines(Path(f"{prefix}.{SRC}"), [de for de, _ in PAIRS])
    write_lines(Path(f"{prefix}.{TGT}"), [en for _, en in PAIRS[:-2]])
    message = str(_raise_for(prefix, tmp_path))
    assert f"{prefix}.{SRC}" in message and f"{prefix}.{TGT}" in message
    assert f"{len(PAIRS)} lines" in message and f"{len(PAIRS) - 2} lines" in message


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.json.gz", "pair"])
def test_empty_file(tmp_path, name):
    if name == "pair":
        write_lines(tmp_path / f"pair.{SRC}", [de for de, _ in PAIRS])
        empty = tmp_path / f"pair.{TGT}"
        empty.write_bytes(b"")
        path = tmp_path / "pair"
    else:
        empty = path = tmp_path / name
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(b""))
        else:
            path.write_bytes(b"")
    message = str(_raise_for(path, tmp_path))
    assert str(empty) in message
    assert "empty" in message


def test_missing_files(tmp_path):
    for path in (tmp_path / "nope.jsonl", tmp_path / "nope.csv", tmp_path / "nope"):
        error = _raise_for(path, tmp_path)
        assert isinstance(error, DataFileNotFoundError) and isinstance(error, FileNotFoundError)
        assert str(path) in str(error)
    # one side of a plain-text pair present, the other missing: the missing one is named
    write_lines(tmp_path / f"half.{SRC}", ["Hallo"])
    error = _raise_for(tmp_path / "half", tmp_path)
    assert isinstance(error, DataFileNotFoundError)
    assert str(tmp_path / f"half.{TGT}") in str(error)


def test_unknown_extension_lists_allowed_formats(tmp_path):
    path = write_lines(tmp_path / "train.txt", ["Hallo"])
    message = str(_raise_for(path, tmp_path))
    assert str(path) in message
    assert ".txt" in message
    for allowed in (".json", ".jsonl", ".csv", f".{SRC}", f".{TGT}"):
        assert allowed in message
    # a single side of a pair given instead of the prefix gets a hint naming the prefix
    write_pair(tmp_path / "p")
    message = str(_raise_for(tmp_path / f"p.{SRC}", tmp_path))
    assert f"prefix {tmp_path / 'p'}" in message


def test_corrupt_gzip(tmp_path):
    prefix = write_pair(tmp_path / "train", gz=True)
    bad = Path(f"{prefix}.{TGT}.gz")
    bad.write_bytes(b"this is not gzip data\n")
    message = str(_raise_for(prefix, tmp_path))
    assert str(bad) in message and "gzip" in message


def test_data_format_error_is_a_value_error():
    assert issubclass(DataFormatError, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# `dataset_name` (datasets.load_dataset) normalisation, exercised offline with local directories
# ---------------------------------------------------------------------------------------------------------------


def test_dataset_name_with_language_columns(tmp_path):
    root = tmp_path / "ds_columns"
    root.mkdir()
    records = [{"id": i, SRC: de, TGT: en} for i, (de, en) in enumerate(PAIRS)]
    write_lines(root / "train.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    records[1][TGT] = None  # a missing value becomes "" (and is later dropped by filter_by_length)
    write_lines(root / "dev.jsonl", [json.dumps(r, ensure_ascii=False) for r in records[:2]])
    data = load_parallel_data(SRC, TGT, dataset_name=str(root), cache_dir=tmp_path / "hf-cache")
    assert list(data) == ["train", "validation"]
    assert rows(data["train"]) == EXPECTED
    assert rows(data["validation"]) == [EXPECTED[0], {SRC: PAIRS[1][0], TGT: ""}]
    assert data["train"].column_names == ["translation"]


def test_dataset_name_with_translation_column(tmp_path):
    root = tmp_path / "ds_translation"
    root.mkdir()
    write_jsonl(root / "train.jsonl", extra=True)
    write_jsonl(root / "test.jsonl", PAIRS[2:])
    data = load_parallel_data(SRC, TGT, dataset_name=str(root), cache_dir=tmp_path / "hf-cache")
    assert list(data) == ["train", "test"]
    assert rows(data["train"]) == EXPECTED
    assert rows(data["test"]) == EXPECTED[2:]
    with pytest.raises(DataFormatError, match="'it'"):
        load_parallel_data(SRC, "it", dataset_name=str(root), cache_dir=tmp_path / "hf-cache")


def test_dataset_name_without_usable_columns_lists_them(tmp_path):
    root = tmp_path / "ds_bad"
    root.mkdir()
    write_lines(root / "train.csv", ["source,target", "a,b"])
    with pytest.raises(DataFormatError) as info:
        load_parallel_data(SRC, TGT, dataset_name=str(root), cache_dir=tmp_path / "hf-cache")
    assert "source" in str(info.value) and "target" in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizing and filtering
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([text for pair in PAIRS for text in pair] * 3, vocab_size=200, min_frequency=1)


def test_preprocess_function(tmp_path, tokenizer):
    dataset = load_train(write_pair(tmp_path / "train"), tmp_path)["train"]
    fn = make_preprocess_function(tokenizer, SRC, TGT, source_prefix="translate: ")
    tokenized = dataset.map(fn, batched=True, batch_size=3, remove_columns=["translation"])
    assert set(tokenized.column_names) == {"input_ids", "attention_mask", "labels"}
    for example, (de, en) in zip(tokenized, PAIRS, strict=True):
        assert example["input_ids"] == tokenizer("translate: " + de)["input_ids"]
        assert example["attention_mask"] == [1] * len(example["input_ids"])
        assert example["labels"] == tokenizer(text_target=en)["input_ids"]
        assert example["labels"][-1] == EOS_ID and example["input_ids"][-1] == EOS_ID
    # the plain function with fn_kwargs gives the same result
    same = dataset.map(
        preprocess_function,
        batched=True,
        fn_kwargs={
            "tokenizer": tokenizer,
            "source_lang": SRC,
            "target_lang": TGT,
            "source_prefix": "translate: ",
        },
        remove_columns=["translation"],
    )
    assert same[:] == tokenized[:]


def test_preprocess_truncation_keeps_eos(tokenizer):
    batch = {"translation": EXPECTED}
    out = preprocess_function(batch, tokenizer, SRC, TGT, max_source_length=4, max_target_length=3)
    full = preprocess_function(batch, tokenizer, SRC, TGT)
    for ids, full_ids in zip(out["input_ids"], full["input_ids"], strict=True):
        assert len(ids) == min(4, len(full_ids)) and ids[-1] == EOS_ID
    for ids, full_ids in zip(out["labels"], full["labels"], strict=True):
        assert len(ids) == min(3, len(full_ids)) and ids[-1] == EOS_ID
    assert any(len(ids) > 4 for ids in full["input_ids"])  # truncation was exercised


def test_preprocess_with_separate_target_tokenizer(tokenizer):
    target_tokenizer = train_tokenizer([en for _, en in PAIRS] * 3, vocab_size=150, min_frequency=1)
    out = make_preprocess_function(tokenizer, SRC, TGT, target_tokenizer=target_tokenizer)(
        {"translation": EXPECTED}
    )
    assert out["labels"] == [target_tokenizer(text_target=en)["input_ids"] for _, en in PAIRS]
    assert out["input_ids"] == [tokenizer(de)["input_ids"] for de, _ in PAIRS]


def test_filter_by_length():
    input_ids = [[5, 6, 2], [5, 2], [], [5, 6, 7, 8, 2], [2], [5, 2], [5, 6, 7, 2]]
    labels = [[7, 2], [], [7, 2], [7, 2], [7, 2], [2], [7, 8, 9, 10, 2]]
    dataset = Dataset.from_dict({"input_ids": input_ids, "labels": labels, "idx": list(range(len(labels)))})

    def expected(max_src, max_tgt, special):
        def content(ids):
            return any(i not in special for i in ids)

        return [
            i
            for i, (s, t) in enumerate(zip(input_ids, labels, strict=True))
            if content(s)
            and content(t)
            and (max_src is None or len(s) <= max_src)
            and (max_tgt is None or len(t) <= max_tgt)
        ]

    for max_src, max_tgt, special in [(4, 4, ()), (None, None, ()), (3, None, (0, 1, 2, 3)), (None, 5, (2,))]:
        filtered, dropped = filter_by_length(dataset, max_src, max_tgt, special_token_ids=special)
        assert filtered["idx"] == expected(max_src, max_tgt, set(special))
        assert dropped == len(input_ids) - filtered.num_rows
    _, dropped = filter_by_length(dataset, None, None)
    assert dropped == 2  # only the two zero-length sequences
    with pytest.raises(ValueError):
        filter_by_length(dataset, 0, None)
    with pytest.raises(ValueError, match="tokenized"):
        filter_by_length(Dataset.from_dict({"translation": [{"de": "a", "en": "b"}]}), 5, 5)


def test_jsonl_falls_back_to_direct_reading_when_the_datasets_loader_fails(tmp_path, monkeypatch):
    from datasets.exceptions import DatasetGenerationError

    import modeling_s2s.data as data_module

    def failing_load_dataset(*args, **kwargs):
        raise DatasetGenerationError("simulated loader failure")

    monkeypatch.setattr(data_module.datasets, "load_dataset", failing_load_dataset)
    path = write_jsonl(tmp_path / "train.jsonl", extra=True)
    assert rows(load_train(path, tmp_path)["train"]) == EXPECTED


def test_pair_length_keys_sort_by_source_then_target_length_by_default():
    dataset = Dataset.from_dict({
        "input_ids": [[1] * 3, [1] * 9, [1] * 3, [1] * 5],
        "labels": [[1] * 4, [1] * 4, [1] * 7, [1] * 12],
    })
    keys = pair_length_keys(dataset)
    pairs = [(len(s), len(t)) for s, t in zip(dataset["input_ids"], dataset["labels"])]
    assert sorted(range(4), key=keys.__getitem__) == sorted(range(4), key=pairs.__getitem__) == [0, 2, 3, 1]


def test_pair_length_keys_target_first_sorts_by_target_then_source_length():
    dataset = Dataset.from_dict({
        "input_ids": [[1] * 3, [1] * 9, [1] * 2, [1] * 5],
        "labels": [[1] * 4, [1] * 4, [1] * 7, [1] * 1],
    })
    keys = pair_length_keys(dataset, first="target")
    pairs = [(len(t), len(s)) for s, t in zip(dataset["input_ids"], dataset["labels"])]
    assert sorted(range(4), key=keys.__getitem__) == sorted(range(4), key=pairs.__getitem__) == [3, 0, 1, 2]


def test_pair_length_keys_rejects_an_unknown_grouping():
    dataset = Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[1]]})
    with pytest.raises(ValueError, match=r"`length_grouping`='longest' must be one of \('source', 'target'\)"):
        pair_length_keys(dataset, first="longest")


def test_pair_length_keys_needs_tokenized_pairs():
    with pytest.raises(ValueError, match=r"missing columns \['labels'\]"):
        pair_length_keys(Dataset.from_dict({"input_ids": [[1, 2]]}))
