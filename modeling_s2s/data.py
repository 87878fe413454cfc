"""Loading parallel text for the training and evaluation scripts.

Every loader returns a :class:`datasets.DatasetDict` with (a subset of) the splits ``"train"``,
``"validation"`` and ``"test"``, in which every example has exactly one column::

    {"translation": {source_lang: "...", target_lang: "..."}}

(the same layout as the WMT datasets on the Hugging Face Hub, feature type :class:`datasets.Translation`).

Sources, in order of precedence:

* ``dataset_name``: any dataset :func:`datasets.load_dataset` can load (Hub id or local directory). A
  ``translation`` column is kept; otherwise two columns named by the languages are combined into one.
* ``train_file`` / ``validation_file`` / ``test_file``, each one of

  - JSON lines (``.json`` / ``.jsonl``, optionally ``.gz``): one ``{"translation": {"de": ..., "en": ...}}``
    object per line (other keys are ignored, blank lines are skipped);
  - CSV (``.csv``, optionally ``.gz``) with a header row naming (at least) the two language columns;
  - a plain-text pair given by its common *prefix*: ``path/train`` means ``path/train.<source_lang>`` and
    ``path/train.<target_lang>`` (each may also end in ``.gz``), one sentence per line, line *i* of one
    file being the translation of line *i* of the other.

* nothing: the Multi30k (Task 1, de-en) copy embedded in the package (:data:`DEFAULT_DATA_DIR`).

Files are checked before they are loaded, and bad data raises :class:`DataFormatError` naming the file and the
1-based line number.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, DatasetDict, Features, Translation, Value
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "CSV_EXTENSIONS",
    "DEFAULT_DATA_DIR",
    "DEFAULT_LANGUAGES",
    "DEFAULT_SPLIT_FILES",
    "JSON_EXTENSIONS",
    "DataFileNotFoundError",
    "DataFormatError",
    "filter_by_length",
    "load_parallel_data",
    "make_preprocess_function",
    "preprocess_function",
    "read_text_lines",
    "translation_features",
]

#: Directory of the embedded Multi30k Task 1 copy (``<split>.<lang>.gz``, see its README for origin and terms).
DEFAULT_DATA_DIR: Path = Path(__file__).resolve().parent / "default_data" / "multi30k"
#: Languages available in the embedded data.
DEFAULT_LANGUAGES: tuple[str, ...] = ("de", "en")
#: Split name -> file stem in :data:`DEFAULT_DATA_DIR`.
DEFAULT_SPLIT_FILES: dict[str, str] = {"train": "train", "validation": "val", "test": "test_2016_flickr"}

#: Extensions read as JSON lines (each may be followed by ``.gz``).
JSON_EXTENSIONS: tuple[str, ...] = (".json", ".jsonl")
#: Extensions read as CSV (each may be followed by ``.gz``).
CSV_EXTENSIONS: tuple[str, ...] = (".csv",)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Split names of Hub datasets that are mapped onto ours (first match wins).
_SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("validation", "valid", "dev", "val"),
    "test": ("test",),
}

PathLike = str | os.PathLike


class DataFormatError(ValueError):
    """Bad or missing data. The message names the file and, where it applies, the 1-based line number.

    Attributes:
        path: The offending file (``None`` when the problem is not tied to one file).
        line: The 1-based line number (``None`` when the problem is not tied to one line).
    """

    def __init__(self, message: str, *, path: PathLike | None = None, line: int | None = None) -> None:
        self.path: str | None = os.fspath(path) if path is not None else None
        self.line: int | None = line
        if path is not None:
            where = f"{self.path}, line {line}" if line is not None else f"{self.path}"
            message = f"{where}: {message}"
        super().__init__(message)


class DataFileNotFoundError(DataFormatError, FileNotFoundError):
    """A data file does not exist (also a :class:`FileNotFoundError`)."""


def translation_features(source_lang: str, target_lang: str) -> Features:
    """The features of every split returned by :func:`load_parallel_data`."""
    return Features({"translation": Translation(languages=[source_lang, target_lang])})


# --------------------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def _base_suffix(path: Path) -> str:
    """The extension without a trailing ``.gz`` (``a.jsonl.gz`` -> ``.jsonl``)."""
    return Path(path.stem).suffix if _is_gzip(path) else path.suffix


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a UTF-8 file (``.gz`` is decompressed).

    The line terminator (``\\n`` or ``\\r\\n``) is removed, nothing else. A UTF-8 byte order mark at the start
    is dropped. Raises :class:`DataFormatError` for undecodable bytes, a corrupt gzip stream or an empty file.
    """
    if not path.is_file():
        raise DataFileNotFoundError(
            "file not found" if not path.exists() else "not a regular file", path=path
        )
    opener: Callable[..., Any] = gzip.open if _is_gzip(path) else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for raw in f:
                lineno += 1
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(
                        f"invalid UTF-8 (byte {raw[e.start : e.start + 1]!r} at byte offset {e.start} of the line); "
                        "files must be UTF-8 encoded",
                        path=path,
                        line=lineno,
                    ) from None
                yield lineno, text
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataFormatError(f"not a valid gzip file ({e})", path=path) from None
    if lineno == 0:
        raise DataFormatError("the file is empty", path=path)


def read_text_lines(path: PathLike, *, allow_empty_lines: bool = False) -> list[str]:
    """Read a UTF-8 text file (optionally ``.gz``) into a list of lines without their line terminators.

    Raises:
        DataFormatError: missing or empty file, undecodable bytes, or (unless ``allow_empty_lines``) a line that
            is empty or only whitespace; the message names the file and the line.
    """
    path = Path(path)
    lines: list[str] = []
    for lineno, text in _iter_lines(path):
        if not allow_empty_lines and not text.strip():
            raise DataFormatError("empty line (every line must hold a sentence)", path=path, line=lineno)
        lines.append(text)
    return lines


def _find_with_gz(path: Path) -> Path | None:
    """``path`` if it exists, else ``path.gz`` if that exists, else ``None``."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() else None


def _read_text_pair(source_path: Path, target_path: Path) -> tuple[list[str], list[str]]:
    sources = read_text_lines(source_path)
    targets = read_text_lines(target_path)
    if len(sources) != len(targets):
        raise DataFormatError(
            f"the files of a parallel pair have different line counts: {source_path} has {len(sources)} lines "
            f"but {target_path} has {len(targets)} lines (line i of one must be the translation of line i of "
            "the other)",
            path=source_path,
        )
    return sources, targets


def _validate_jsonl(path: Path, source_lang: str, target_lang: str) -> int:
    """Check a JSON lines file line by line; return the number of examples."""
    count = 0
    for lineno, text in _iter_lines(path):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"invalid JSON ({e.msg} at column {e.colno}); expected JSON lines, one object per line like "
                f'{{"translation": {{"{source_lang}": "...", "{target_lang}": "..."}}}}',
                path=path,
                line=lineno,
            ) from None
        if not isinstance(record, dict):
            raise DataFormatError(
                f"expected a JSON object with a 'translation' key, got a JSON {type(record).__name__}",
                path=path,
                line=lineno,
            )
        if "translation" not in record:
            raise DataFormatError(
                f"missing the 'translation' key (keys on this line: {sorted(record)})", path=path, line=lineno
            )
        pair = record["translation"]
        if not isinstance(pair, dict):
            raise DataFormatError(
                f"'translation' must be an object mapping languages to sentences, got {type(pair).__name__}",
                path=path,
                line=lineno,
            )
        for lang in (source_lang, target_lang):
            if lang not in pair:
                raise DataFormatError(
                    f"the 'translation' object has no {lang!r} key (languages on this line: {sorted(pair)})",
                    path=path,
                    line=lineno,
                )
            value = pair[lang]
            if not isinstance(value, str):
                raise DataFormatError(
                    f"translation[{lang!r}] must be a string, got {type(value).__name__}",
                    path=path,
                    line=lineno,
                )
            if not value.strip():
                raise DataFormatError(f"empty {lang!r} sentence", path=path, line=lineno)
        count += 1
    if count == 0:
        raise DataFormatError("the file holds no examples (only blank lines)", path=path)
    return count


def _validate_csv(path: Path, source_lang: str, target_lang: str) -> int:
    """Check a CSV file (header row + one example per record); return the number of examples."""
    lines = (text + "\n" for _, text in _iter_lines(path))
    reader = csv.reader(lines)
    header: list[str] | None = None
    count = 0
    while True:
        start = reader.line_num + 1  # first physical line of the next record (records may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataFormatError(f"malformed CSV ({e})", path=path, line=start) from None
        if not row:  # blank line
            continue
        if header is None:
            header = row
            duplicates = sorted({c for c in header if header.count(c) > 1})
            if duplicates:
                raise DataFormatError(
                    f"duplicate column names in the header: {duplicates}", path=path, line=start
                )
            missing = [lang for lang in (source_lang, target_lang) if lang not in header]
            if missing:
                raise DataFormatError(
                    f"the header row has no column named {' or '.join(map(repr, missing))} (columns: {header}); "
                    "a CSV file needs one column per language, named by the language code",
                    path=path,
                    line=start,
                )
            indices = {lang: header.index(lang) for lang in (source_lang, target_lang)}
            continue
        if len(row) != len(header):
            raise DataFormatError(
                f"expected {len(header)} fields (as in the header), found {len(row)}", path=path, line=start
            )
        for lang, index in indices.items():
            if not row[index].strip():
                raise DataFormatError(f"empty {lang!r} sentence", path=path, line=start)
        count += 1
    if header is None:
        raise DataFormatError("the file is empty (no header row)", path=path)
    if count == 0:
        raise DataFormatError("the file has a header row but no examples", path=path)
    return count


# --------------------------------------------------------------------------------------------------------------
# Building datasets
# --------------------------------------------------------------------------------------------------------------


def _from_pairs(
    sources: Sequence[str], targets: Sequence[str], source_lang: str, target_lang: str
) -> Dataset:
    return Dataset.from_dict(
        {"translation": [{source_lang: s, target_lang: t} for s, t in zip(sources, targets, strict=True)]},
        features=translation_features(source_lang, target_lang),
    )


def _text(value: Any) -> str:
    """Missing values (``None``) of datasets from `load_dataset` become ``""`` (dropped by `filter_by_length`)."""
    return "" if value is None else value


def _select_languages(dataset: Dataset, source_lang: str, target_lang: str) -> Dataset:
    """Reduce the ``translation`` column to the two languages and drop every other column."""

    def select(batch: dict[str, list[Any]]) -> dict[str, list[dict[str, str]]]:
        return {
            "translation": [
                {source_lang: _text(t[source_lang]), target_lang: _text(t[target_lang])}
                for t in batch["translation"]
            ]
        }

    return dataset.map(
        select,
        batched=True,
        remove_columns=[c for c in dataset.column_names if c != "translation"],
        features=translation_features(source_lang, target_lang),
        desc="Selecting languages",
    )


def _columns_to_translation(dataset: Dataset, source_lang: str, target_lang: str) -> Dataset:
    """Combine two columns named by the languages into a ``translation`` column."""

    def combine(batch: dict[str, list[Any]]) -> dict[str, list[dict[str, str]]]:
        return {
            "translation": [
                {source_lang: _text(s), target_lang: _text(t)}
                for s, t in zip(batch[source_lang], batch[target_lang], strict=True)
            ]
        }

    return dataset.map(
        combine,
        batched=True,
        remove_columns=dataset.column_names,
        features=translation_features(source_lang, target_lang),
        desc="Building the translation column",
    )


def _check_count(dataset: Dataset, expected: int, path: Path) -> Dataset:
    if dataset.num_rows != expected:  # the checker and the datasets loader disagree: better fail than guess
        raise DataFormatError(
            f"the datasets loader read {dataset.num_rows} examples but the file holds {expected}; "
            "check quoting / line breaks inside values",
            path=path,
        )
    return dataset


def _load_jsonl(path: Path, source_lang: str, target_lang: str, cache_dir: PathLike | None) -> Dataset:
    expected = _validate_jsonl(path, source_lang, target_lang)
    try:
        raw = datasets.load_dataset(
            "json", data_files={"train": str(path)}, split="train", cache_dir=_str_or_none(cache_dir)
        )
    except (
        DatasetGenerationError
    ) as e:  # e.g. other keys whose types vary between lines; the checker has the data
        logger.warning("datasets could not load %s (%s); reading it directly.", path, e.__cause__ or e)
        sources, targets = [], []
        for _, text in _iter_lines(path):
            if text.strip():
                pair = json.loads(text)["translation"]
                sources.append(pair[source_lang])
                targets.append(pair[target_lang])
        return _from_pairs(sources, targets, source_lang, target_lang)
    return _check_count(_select_languages(raw, source_lang, target_lang), expected, path)


def _load_csv(path: Path, source_lang: str, target_lang: str, cache_dir: PathLike | None) -> Dataset:
    expected = _validate_csv(path, source_lang, target_lang)
    raw = datasets.load_dataset(
        "csv",
        data_files={"train": str(path)},
        split="train",
        cache_dir=_str_or_none(cache_dir),
        usecols=[source_lang, target_lang],
        # Read every value as text: no "NA" -> NaN, no "120" -> int.
        features=Features({source_lang: Value("string"), target_lang: Value("string")}),
        keep_default_na=False,
        na_filter=False,
        encoding="utf-8-sig",
    )
    return _check_count(_columns_to_translation(raw, source_lang, target_lang), expected, path)


def _str_or_none(path: PathLike | None) -> str | None:
    return os.fspath(path) if path is not None else None


def _allowed_formats(source_lang: str, target_lang: str) -> str:
    exts = ", ".join(f"{e}[.gz]" for e in JSON_EXTENSIONS + CSV_EXTENSIONS)
    return (
        f"allowed: JSON lines ({', '.join(JSON_EXTENSIONS)}), CSV ({', '.join(CSV_EXTENSIONS)}) - i.e. {exts} - "
        f"or the common prefix PATH of a plain-text pair PATH.{source_lang}[.gz] + PATH.{target_lang}[.gz]"
    )


def _load_file(
    path_like: PathLike, source_lang: str, target_lang: str, cache_dir: PathLike | None
) -> Dataset:
    """Load one split from a JSON lines file, a CSV file or a plain-text pair prefix."""
    path = Path(path_like)
    base = _base_suffix(path).lower()
    if path.is_file() and base in JSON_EXTENSIONS:
        return _load_jsonl(path, source_lang, target_lang, cache_dir)
    if path.is_file() and base in CSV_EXTENSIONS:
        return _load_csv(path, source_lang, target_lang, cache_dir)

    # A plain-text pair: `path` is the prefix.
    source_path = _find_with_gz(path.with_name(f"{path.name}.{source_lang}"))
    target_path = _find_with_gz(path.with_name(f"{path.name}.{target_lang}"))
    if source_path is not None and target_path is not None:
        sources, targets = _read_text_pair(source_path, target_path)
        return _from_pairs(sources, targets, source_lang, target_lang)
    if source_path is not None or target_path is not None:
        present = source_path if source_path is not None else target_path
        missing_lang = target_lang if source_path is not None else source_lang
        missing = path.with_name(f"{path.name}.{missing_lang}")
        raise DataFileNotFoundError(
            f"file not found, but {present} exists: a plain-text pair needs both {missing} (or {missing}.gz) "
            f"and {present}",
            path=missing,
        )
    if path.is_file():
        hint = ""
        for lang in (source_lang, target_lang):
            for suffix in (f".{lang}", f".{lang}.gz"):
                if path.name.endswith(suffix):
                    prefix = path.with_name(path.name[: -len(suffix)])
                    hint = f"; for a plain-text pair pass the prefix {prefix} (without the language suffix)"
        raise DataFormatError(
            f"unknown file extension {''.join(path.suffixes) or '(none)'!r}; {_allowed_formats(source_lang, target_lang)}"
            f"{hint}",
            path=path,
        )
    if base in JSON_EXTENSIONS + CSV_EXTENSIONS:
        raise DataFileNotFoundError("file not found", path=path)
    raise DataFileNotFoundError(
        f"file not found (neither a file nor the prefix of {path.name}.{source_lang}[.gz] + "
        f"{path.name}.{target_lang}[.gz]); {_allowed_formats(source_lang, target_lang)}",
        path=path,
    )


def _load_default(source_lang: str, target_lang: str) -> DatasetDict:
    if {source_lang, target_lang} != set(DEFAULT_LANGUAGES):
        raise ValueError(
            f"The embedded default data (Multi30k) is {'/'.join(DEFAULT_LANGUAGES)} only, but source_lang="
            f"{source_lang!r} and target_lang={target_lang!r} were asked for. Pass `dataset_name` or "
            "`train_file`/`validation_file`/`test_file` for other languages."
        )
    splits = {}
    for split, stem in DEFAULT_SPLIT_FILES.items():
        sources, targets = _read_text_pair(
            DEFAULT_DATA_DIR / f"{stem}.{source_lang}.gz", DEFAULT_DATA_DIR / f"{stem}.{target_lang}.gz"
        )
        splits[split] = _from_pairs(sources, targets, source_lang, target_lang)
    return DatasetDict(splits)


def _translation_languages(dataset: Dataset) -> list[str]:
    feature = dataset.features["translation"]
    if isinstance(feature, Translation):
        return list(feature.languages)
    if isinstance(feature, dict):
        return list(feature)
    first = dataset[0]["translation"] if dataset.num_rows else {}
    return list(first) if isinstance(first, Mapping) else []


def _normalise_hub_split(dataset: Dataset, source_lang: str, target_lang: str, where: str) -> Dataset:
    columns = dataset.column_names
    if "translation" in columns:
        languages = _translation_languages(dataset)
        missing = [lang for lang in (source_lang, target_lang) if lang not in languages]
        if missing:
            raise DataFormatError(
                f"{where}: the 'translation' column has no {' or '.join(map(repr, missing))} "
                f"(languages: {languages})"
            )
        feature = dataset.features["translation"]
        if isinstance(feature, Translation) and set(feature.languages) == {source_lang, target_lang}:
            extra = [c for c in columns if c != "translation"]
            return dataset.remove_columns(extra) if extra else dataset
        return _select_languages(dataset, source_lang, target_lang)
    if source_lang in columns and target_lang in columns:
        return _columns_to_translation(dataset, source_lang, target_lang)
    raise DataFormatError(
        f"{where}: no 'translation' column and no columns named {source_lang!r} and {target_lang!r} "
        f"(columns: {columns})"
    )


def _load_hub(
    dataset_name: str,
    dataset_config_name: str | None,
    source_lang: str,
    target_lang: str,
    cache_dir: PathLike | None,
) -> DatasetDict:
    raw = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=_str_or_none(cache_dir))
    if not isinstance(
        raw, DatasetDict
    ):  # pragma: no cover - load_dataset without `split` returns a DatasetDict
        raw = DatasetDict({"train": raw})
    name = dataset_name + (f" ({dataset_config_name})" if dataset_config_name else "")
    splits = {}
    for split, aliases in _SPLIT_ALIASES.items():
        found = next((alias for alias in aliases if alias in raw), None)
        if found is not None:
            splits[split] = _normalise_hub_split(
                raw[found], source_lang, target_lang, f"{name}, split {found!r}"
            )
    if not splits:
        raise DataFormatError(f"{name}: none of the splits {list(raw)} is a train/validation/test split")
    ignored = [s for s in raw if s not in {a for aliases in _SPLIT_ALIASES.values() for a in aliases}]
    if ignored:
        logger.info("Ignoring splits %s of %s.", ignored, name)
    return DatasetDict(splits)


def load_parallel_data(
    source_lang: str,
    target_lang: str,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: PathLike | None = None,
    validation_file: PathLike | None = None,
    test_file: PathLike | None = None,
    cache_dir: PathLike | None = None,
) -> DatasetDict:
    """Load parallel text as a :class:`~datasets.DatasetDict` of ``{"translation": {src: ..., tgt: ...}}``.

    Args:
        source_lang, target_lang: Language codes (keys of the ``translation`` dicts, column names of CSV files,
            suffixes of plain-text files).
        dataset_name, dataset_config_name: A dataset for :func:`datasets.load_dataset` (Hub id or local path).
            Splits named ``train``, ``validation`` (or ``valid``/``dev``/``val``) and ``test`` are returned.
        train_file, validation_file, test_file: Local data (JSON lines, CSV or a plain-text pair prefix, see the
            module docstring). Any subset may be given.
        cache_dir: Cache directory for :func:`datasets.load_dataset`.

    Returns:
        The splits ``"train"``, ``"validation"``, ``"test"`` that exist. Without ``dataset_name`` and files this
        is the embedded Multi30k (29000 / 1014 / 1000 pairs, de/en only).

    Raises:
        ValueError: ``source_lang == target_lang``, both a dataset name and files, or non-de/en languages with
            the embedded data.
        DataFormatError: Missing, empty or malformed data (message names the file and line).
    """
    for name, lang in (("source_lang", source_lang), ("target_lang", target_lang)):
        if not isinstance(lang, str) or not lang.strip() or any(sep in lang for sep in ("/", "\\", os.sep)):
            raise ValueError(f"`{name}` must be a non-empty language code, got {lang!r}.")
    if source_lang == target_lang:
        raise ValueError(f"`source_lang` and `target_lang` must differ, both are {source_lang!r}.")
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    given = {split: path for split, path in files.items() if path is not None}
    if dataset_name is not None:
        if given:
            raise ValueError(
                f"Give either `dataset_name` ({dataset_name!r}) or data files ({', '.join(given)}), not both."
            )
        return _load_hub(dataset_name, dataset_config_name, source_lang, target_lang, cache_dir)
    if dataset_config_name is not None:
        raise ValueError("`dataset_config_name` needs `dataset_name`.")
    if given:
        return DatasetDict(
            {split: _load_file(path, source_lang, target_lang, cache_dir) for split, path in given.items()}
        )
    return _load_default(source_lang, target_lang)


# --------------------------------------------------------------------------------------------------------------
# Tokenizing and filtering
# --------------------------------------------------------------------------------------------------------------


def preprocess_function(
    examples: Mapping[str, Sequence[Any]],
    tokenizer: PreTrainedTokenizerBase,
    source_lang: str,
    target_lang: str,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    source_prefix: str = "",
    target_tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict[str, list[list[int]]]:
    """Tokenize a batch of ``{"translation": [...]}`` examples into ``input_ids``, ``attention_mask``, ``labels``.

    For :meth:`datasets.Dataset.map` with ``batched=True`` (pass the other arguments with ``fn_kwargs``, or use
    :func:`make_preprocess_function`). Sources are ``source_prefix + sentence``. A ``max_*_length`` of ``None``
    means no truncation on that side; otherwise sequences are truncated to that many tokens (special tokens
    included, so the appended ``</s>`` is kept). ``target_tokenizer`` (separate vocabularies) tokenizes the
    labels; by default ``tokenizer`` does both, with ``text_target=`` for the labels.
    """
    pairs = examples["translation"]
    sources = [source_prefix + pair[source_lang] for pair in pairs]
    targets = [pair[target_lang] for pair in pairs]
    model_inputs = tokenizer(sources, max_length=max_source_length, truncation=max_source_length is not None)
    label_tokenizer = target_tokenizer if target_tokenizer is not None else tokenizer
    labels = label_tokenizer(
        text_target=targets, max_length=max_target_length, truncation=max_target_length is not None
    )
    return {
        "input_ids": model_inputs["input_ids"],
        "attention_mask": model_inputs["attention_mask"],
        "labels": labels["input_ids"],
    }


def make_preprocess_function(
    tokenizer: PreTrainedTokenizerBase,
    source_lang: str,
    target_lang: str,
    max_source_length: int | None = None,
    max_target_length: int | None = None,
    source_prefix: str = "",
    target_tokenizer: PreTrainedTokenizerBase | None = None,
) -> Callable[[Mapping[str, Sequence[Any]]], dict[str, list[list[int]]]]:
    """Bind :func:`preprocess_function`'s arguments; use as ``dataset.map(fn, batched=True, remove_columns=...)``."""

    def preprocess(examples: Mapping[str, Sequence[Any]]) -> dict[str, list[list[int]]]:
        return preprocess_function(
            examples,
            tokenizer,
            source_lang,
            target_lang,
            max_source_length=max_source_length,
            max_target_length=max_target_length,
            source_prefix=source_prefix,
            target_tokenizer=target_tokenizer,
        )

    return preprocess


LENGTH_GROUPINGS = ("source", "target")


def check_length_grouping(value: str) -> str:
    """`value` if it is one of `LENGTH_GROUPINGS`, else a ValueError naming it and the allowed values."""
    if value not in LENGTH_GROUPINGS:
        raise ValueError(f"`length_grouping`={value!r} must be one of {LENGTH_GROUPINGS}.")
    return value


def pair_length_keys(dataset: Dataset, first: str = "source") -> list[int]:
    """Length-grouping keys of tokenized pairs: by source length, then target length (or the other way round).

    `first="source"` (the default) sorts as transformers' `group_by_length` does, by the length of `input_ids`,
    and breaks ties by target length. `first="target"` gives batches of targets of nearly equal length (on
    Multi30k 3 % of the target positions are padding instead of 30 %; both train at about the same speed, since
    with the default fast paths the output layer runs only inside the label spans); in 25-minute bf16 runs it
    gave lower BLEU than source-first batches, in an fp32 run higher (benchmarks/RESULTS_quality.md).

    Returns one int per example that sorts as `(len(input_ids), len(labels))`, or as
    `(len(labels), len(input_ids))` with `first="target"`.
    """
    check_length_grouping(first)
    missing = [c for c in ("input_ids", "labels") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"pair_length_keys needs a tokenized dataset; missing columns {missing}.")
    sources = [len(ids) for ids in dataset["input_ids"]]
    targets = [len(ids) for ids in dataset["labels"]]
    major, minor = (sources, targets) if first == "source" else (targets, sources)
    width = max(minor, default=0) + 1
    return [m * width + n for m, n in zip(major, minor)]


def filter_by_length(
    dataset: Dataset,
    max_source_length: int | None,
    max_target_length: int | None,
    *,
    special_token_ids: Iterable[int] = (),
) -> tuple[Dataset, int]:
    """Drop tokenized pairs whose ``input_ids`` or ``labels`` are too long or empty.

    Args:
        dataset: A tokenized dataset with ``input_ids`` and ``labels`` columns.
        max_source_length, max_target_length: Maximum lengths in tokens (special tokens included); ``None`` means
            no limit on that side.
        special_token_ids: Ids that do not count as content when deciding whether a side is empty (pass
            ``tokenizer.all_special_ids`` so that a lone ``</s>`` counts as empty). Without them only
            zero-length sequences are empty.

    Returns:
        ``(filtered_dataset, number_of_dropped_examples)``.
    """
    for name, value in (("max_source_length", max_source_length), ("max_target_length", max_target_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
    missing = [c for c in ("input_ids", "labels") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"filter_by_length needs a tokenized dataset; missing columns {missing}.")
    special = frozenset(special_token_ids)

    def has_content(ids: Sequence[int]) -> bool:
        return any(i not in special for i in ids) if special else len(ids) > 0

    def keep(input_ids: list[list[int]], labels: list[list[int]]) -> list[bool]:
        return [
            has_content(src)
            and has_content(tgt)
            and (max_source_length is None or len(src) <= max_source_length)
            and (max_target_length is None or len(tgt) <= max_target_length)
            for src, tgt in zip(input_ids, labels, strict=True)
        ]

    filtered = dataset.filter(
        keep, batched=True, input_columns=["input_ids", "labels"], desc="Filtering by length"
    )
    return filtered, dataset.num_rows - filtered.num_rows
