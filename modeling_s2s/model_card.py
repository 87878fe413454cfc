"""Model cards (``README.md`` with Hub metadata) for trained seq2seq models.

:func:`render_model_card` fills ``model_cards/template.md`` (a Jinja2 template, rendered by
:meth:`huggingface_hub.ModelCard.from_template`) and writes ``README.md`` into the model directory. The YAML front
matter is built with :class:`huggingface_hub.ModelCardData` and :class:`huggingface_hub.EvalResult`, so the
``model-index`` block has the structure the Hub expects. :func:`parse_model_card` reads a card back.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = [
    "DEFAULT_LICENSE",
    "DEFAULT_TEMPLATE_PATH",
    "MODEL_CARD_NAME",
    "parse_model_card",
    "render_model_card",
]

#: The card's file name in a model directory / Hub repository.
MODEL_CARD_NAME = "README.md"
#: Multi30k may only be used for non-commercial research and education, so models trained on it default to this.
DEFAULT_LICENSE = "cc-by-nc-4.0"
#: The template in the source tree (``<repo>/model_cards/template.md``); a non-editable install carries a copy in
#: ``<prefix>/share/modeling-s2s/model_cards/`` (pyproject ``data-files``).
SOURCE_TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "model_cards" / "template.md"
INSTALLED_TEMPLATE_PATH = Path(sys.prefix) / "share" / "modeling-s2s" / "model_cards" / "template.md"
DEFAULT_TEMPLATE_PATH = SOURCE_TEMPLATE_PATH if SOURCE_TEMPLATE_PATH.is_file() else INSTALLED_TEMPLATE_PATH

LANGUAGE_NAMES = {
    "cs": "Czech", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "it": "Italian",
    "nl": "Dutch", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "tr": "Turkish", "zh": "Chinese",
}
EXAMPLE_SENTENCES = {
    "en": "A man in a blue shirt is riding a bicycle down the street.",
    "de": "Ein Mann in einem blauen Hemd fährt mit dem Fahrrad die Straße entlang.",
    "fr": "Un homme en chemise bleue descend la rue à vélo.",
    "cs": "Muž v modré košili jede na kole po ulici.",
}
#: Metric display names; the keys (lowercase) are the metric types written to ``model-index``.
INDEX_METRICS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER", "comet": "COMET", "meteor": "METEOR"}
#: Non-metric entries of a `Trainer` metrics dict, left out of the results table.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "total_flos", "num_parameters")
#: Training arguments shown in the main table, in this order; the others go in a collapsed table.
KEY_TRAINING_ARGS = (
    "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "per_device_eval_batch_size", "learning_rate", "lr_scheduler_type", "warmup_ratio", "warmup_steps",
    "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "optim", "max_grad_norm",
    "label_smoothing_factor", "seed", "fp16", "bf16", "eval_strategy", "eval_steps", "save_strategy",
    "load_best_model_at_end", "metric_for_best_model", "predict_with_generate", "generation_num_beams",
    "generation_max_length",
)
#: Arguments never written to a card: secrets and local paths.
_HIDDEN_ARG_PATTERN = re.compile(r"token|secret|password|output_dir|logging_dir|cache_dir", re.IGNORECASE)
_SECRET_FLAG_PATTERN = re.compile(r"(--[\w-]*(?:token|secret|password)[\w-]*(?:=|\s+))(\S+)", re.IGNORECASE)
_SPLIT_PREFIXES = ("eval_", "test_", "validation_", "predict_", "train_")
_MULTI30K_SPLITS = {"validation": "val", "test": "test_2016_flickr"}
_ARCHITECTURE_KEYS = (
    "cell_type", "encoder_layers", "decoder_layers", "bidirectional_encoder", "embedding_size", "hidden_size",
    "bridge", "attention_type", "attention_style", "attention_heads", "attention_learnable_scale", "input_feeding",
    "decoder_self_attention", "vocab_size", "decoder_vocab_size", "share_encoder_decoder_embeddings",
    "tie_word_embeddings", "dropout", "embedding_dropout", "attention_dropout", "label_smoothing", "init_std",
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
)
_GENERATION_KEYS = ("num_beams", "max_length", "max_new_tokens", "length_penalty", "early_stopping", "do_sample")


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    raise TypeError(f"`config` must be a PreTrainedConfig or a dict, got {type(config).__name__}.")


def _cell(value: Any) -> str:
    """A value as Markdown table cell text."""
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    else:
        text = str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return f"`{text}`" if text and "`" not in text else text


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


def _redact_command(command: str) -> str:
    return _SECRET_FLAG_PATTERN.sub(lambda match: match.group(1) + "***", command)


def _format_runtime(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"`train_runtime_s`={seconds!r} must be a non-negative number of seconds.")
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{seconds:,.1f} s ({hours}:{minutes:02d}:{secs:02d})"


def _metric_key(name: str, split: str) -> str:
    key = name.lower()
    for prefix in (f"{split.lower()}_", *_SPLIT_PREFIXES):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _normalise_metrics(metrics: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, float]]:
    """``{split: {metric: value}}`` with metric names lowercased and split prefixes (``eval_``...) removed."""
    result: dict[str, dict[str, float]] = {}
    for split, values in (metrics or {}).items():
        if not isinstance(values, Mapping):
            raise TypeError(
                f"`metrics` must map split names to dicts of metric values, e.g. {{'test': {{'bleu': 30.1}}}}; "
                f"got {values!r} for split {split!r}."
            )
        cleaned: dict[str, float] = {}
        for name, value in values.items():
            key = _metric_key(str(name), str(split))
            if key.endswith(_NOT_METRICS) or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                raise ValueError(f"Metric {name!r} of split {split!r} is {value!r}, not a finite number.")
            cleaned[key] = float(value)
        if cleaned:
            result[str(split)] = cleaned
    return result


def _language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.split("_")[0].split("-")[0].lower(), code)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_generation_config(output_dir: Path) -> dict[str, Any]:
    data = _read_json(output_dir / "generation_config.json") or {}
    return {key: data[key] for key in _GENERATION_KEYS if key in data}


def render_model_card(
    output_dir: str | os.PathLike,
    *,
    config: Any,
    source_lang: str,
    target_lang: str,
    dataset_name: str = "multi30k",
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    training_args: Mapping[str, Any] | None = None,
    train_runtime_s: float | None = None,
    num_parameters: int | None = None,
    hub_model_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    command: str | None = None,
    dataset_type: str | None = None,
    dataset_config: str | None = None,
    default_data: bool | None = None,
    pipeline_task: str = "translation",
    template_path: str | os.PathLike | None = None,
) -> str:
    """Write ``output_dir/README.md``, a Hub model card, and return its text.

    Args:
        output_dir: The model directory (created if missing). Its ``generation_config.json``, if present, adds the
            default decoding settings to the card.
        config: The model's `S2SConfig` (or its dict) for the architecture table and tags.
        source_lang, target_lang: Language codes (``"en"``, ``"de"``), written to the ``language`` metadata.
        dataset_name: The training data: ``"multi30k"`` (the bundled default data), a Hub dataset id or a file name.
        metrics: ``{split: {metric: value}}``, e.g. ``{"test": {"bleu": 35.2, "chrf": 61.0}, "validation": {...}}``.
            Metric names may carry `Trainer` prefixes (``eval_bleu``). BLEU, chrF (and TER/COMET/METEOR) go to
            ``model-index``; every numeric metric goes to the results table.
        training_args: Training arguments (e.g. ``TrainingArguments.to_dict()``). Keys that look like secrets or
            local paths (``*token*``, ``output_dir``, ...) are left out; the usual hyperparameters come first.
        train_runtime_s: Training time in seconds.
        num_parameters: Number of model parameters.
        hub_model_id: ``"user/name"``; used in the usage examples (the local directory otherwise) and as model name.
        license: Hub license id; Multi30k's terms (non-commercial research/education) give the default
            ``cc-by-nc-4.0``.
        command: The training command line (``--*token*`` values are masked).
        dataset_type: Dataset id for ``model-index`` (default ``"multi30k"`` or ``dataset_name``).
        dataset_config: Dataset configuration for ``model-index`` (e.g. ``"de-en"``), if any.
        default_data: Whether the training data is the bundled Multi30k (adds its description, terms of use and
            citation); when `None`, true exactly when ``dataset_name`` is ``"multi30k"``.
        pipeline_task: The task name that ``pipeline(..., trust_remote_code=True)`` uses in the usage example.
            When ``output_dir/config.json`` exists, its ``custom_pipelines`` decide instead: its task name, or, when
            it has none (the pipeline was not added with ``pipeline_s2s.add_pipeline_to_model_dir``), an example
            of the package's ``"s2s-text2text"`` pipeline in place of the remote-code one.
        template_path: Jinja2 template (default ``model_cards/template.md``).

    Returns:
        The card's text (YAML front matter + Markdown), as written to ``README.md``.
    """
    if not source_lang or not target_lang:
        raise ValueError("`source_lang` and `target_lang` must be non-empty language codes.")
    template = Path(template_path) if template_path is not None else DEFAULT_TEMPLATE_PATH
    if not template.is_file():
        raise FileNotFoundError(
            f"Model card template {template} not found; pass `template_path=` (the template lives in "
            "model_cards/template.md of the modeling_s2s source tree)."
        )
    output_dir = Path(output_dir)
    cfg = _config_dict(config)
    cell_type = str(cfg.get("cell_type", "lstm")).lower()
    is_default = default_data if default_data is not None else dataset_name.strip().lower() == "multi30k"
    dataset_display = "Multi30k" if is_default else dataset_name
    index_dataset_type = dataset_type or ("multi30k" if is_default else dataset_name)
    model_name = hub_model_id.rstrip("/").split("/")[-1] if hub_model_id else (output_dir.resolve().name or "model")
    repo_id = hub_model_id or str(output_dir)
    pair = f"{source_lang}-{target_lang}"

    # --- metrics: model-index entries and the results table ---------------------------------------------------
    split_metrics = _normalise_metrics(metrics)
    eval_results = []
    for split, values in split_metrics.items():
        for key, value in values.items():
            if key not in INDEX_METRICS:
                continue
            eval_results.append(
                EvalResult(
                    task_type="translation",
                    task_name=f"Translation {pair}",
                    dataset_type=index_dataset_type,
                    dataset_name=f"{dataset_display} ({pair})",
                    dataset_config=dataset_config,
                    dataset_split=split,
                    metric_type=key,
                    metric_value=round(value, 4),
                    metric_name=f"{split.capitalize()} {INDEX_METRICS[key]}",
                )
            )
    metric_keys: list[str] = []
    for values in split_metrics.values():
        metric_keys.extend(key for key in values if key not in metric_keys)
    metric_keys.sort(key=lambda key: (list(INDEX_METRICS).index(key) if key in INDEX_METRICS else len(INDEX_METRICS), key))
    metric_names = [INDEX_METRICS.get(key, key) for key in metric_keys]
    metric_rows = []
    for split, values in split_metrics.items():
        label = split
        if is_default and split in _MULTI30K_SPLITS:
            label = f"{split} (`{_MULTI30K_SPLITS[split]}`)"
        metric_rows.append((label, [f"{values[key]:.2f}" if key in values else "–" for key in metric_keys]))

    card_data = ModelCardData(
        language=[source_lang, target_lang],
        license=license,
        library_name="transformers",
        pipeline_tag="translation",
        datasets=[index_dataset_type],
        metrics=["bleu", "chrf"],
        tags=["translation", "seq2seq", "rnn", cell_type, "attention", "modeling-s2s"],
        model_name=model_name,
        eval_results=eval_results or None,
    )

    # --- architecture and training tables ---------------------------------------------------------------------
    architecture_rows = [(f"`{key}`", _cell(cfg[key])) for key in _ARCHITECTURE_KEYS if key in cfg]
    if num_parameters is not None:
        architecture_rows.append(("parameters", f"{int(num_parameters):,}"))
    architecture_rows.extend(
        (f"generation `{key}`", _cell(value)) for key, value in _read_generation_config(output_dir).items()
    )
    visible_args = {
        str(key): value
        for key, value in (training_args or {}).items()
        if not _is_empty(value) and not _HIDDEN_ARG_PATTERN.search(str(key))
    }
    training_rows = [(f"`{key}`", _cell(visible_args[key])) for key in KEY_TRAINING_ARGS if key in visible_args]
    other_training_rows = [
        (f"`{key}`", _cell(value)) for key, value in sorted(visible_args.items()) if key not in KEY_TRAINING_ARGS
    ]

    # --- usage: does the directory ship the remote-code pipeline (pipeline_s2s.add_pipeline_to_model_dir)? ----
    remote_pipeline = True  # the card may be written before the model; then trust `pipeline_task`
    saved_config = _read_json(output_dir / "config.json")
    if saved_config is not None:
        custom = saved_config.get("custom_pipelines") or {}
        remote_pipeline = bool(custom)
        if len(custom) == 1:
            pipeline_task = next(iter(custom))

    # --- prose ------------------------------------------------------------------------------------------------
    hidden = cfg.get("hidden_size")
    layers = cfg.get("encoder_layers", 1)
    if cfg.get("bidirectional_encoder", True):
        encoder_description = (
            f"{layers}-layer bidirectional {cell_type.upper()} ({hidden // 2 if hidden else '?'} units per direction)"
        )
    else:
        encoder_description = f"{layers}-layer {cell_type.upper()} ({hidden} units)"
    decoder_description = f"{cfg.get('decoder_layers', 1)}-layer {cell_type.upper()} ({hidden} units)"
    attention_description = f"{cfg.get('attention_style', 'luong').capitalize()}-style, `{cfg.get('attention_type')}` score"
    if cfg.get("attention_type") == "multihead":
        attention_description += f", {cfg.get('attention_heads')} heads"
    if cfg.get("input_feeding"):
        attention_description += ", input feeding"
    if cfg.get("decoder_self_attention"):
        attention_description += ", plus causal self-attention over the decoder's outputs"
    summary = (
        f"An attention-based {cell_type.upper()} encoder–decoder that translates {_language_name(source_lang)} into "
        f"{_language_name(target_lang)}, trained on {dataset_display}."
    )
    test_scores = split_metrics.get("test", {})
    if "bleu" in test_scores:
        summary += f" Test BLEU {test_scores['bleu']:.2f}"
        summary += f", chrF {test_scores['chrf']:.2f}." if "chrf" in test_scores else "."

    card = ModelCard.from_template(
        card_data,
        template_path=str(template),
        title=f"{model_name}: {cell_type.upper()} with attention, {source_lang} → {target_lang}",
        summary=summary,
        model_type=cfg.get("model_type", "attention_s2s"),
        cell_type_upper=cell_type.upper(),
        encoder_description=encoder_description,
        decoder_description=decoder_description,
        attention_description=attention_description,
        source_lang=source_lang,
        target_lang=target_lang,
        source_language=_language_name(source_lang),
        target_language=_language_name(target_lang),
        dataset_display=dataset_display,
        default_data=is_default,
        num_parameters_str=f"{int(num_parameters):,}" if num_parameters is not None else None,
        architecture_rows=architecture_rows,
        training_rows=training_rows,
        other_training_rows=other_training_rows,
        train_runtime_str=_format_runtime(train_runtime_s),
        command=_redact_command(command) if command else None,
        metric_names=metric_names,
        metric_rows=metric_rows,
        repo_id=repo_id,
        example=EXAMPLE_SENTENCES.get(source_lang.split("_")[0].lower(), "Your text here."),
        pipeline_task=pipeline_task,
        remote_pipeline=remote_pipeline,
        pipeline_output_key="translation_text" if pipeline_task.startswith("translation") else "generated_text",
        model_name=model_name,
    )
    # Tidy the template's optional blocks: at most one blank line in a row, and a final newline (Jinja drops it).
    card.text = re.sub(r"\n{3,}", "\n\n", card.text).rstrip("\n") + "\n"
    output_dir.mkdir(parents=True, exist_ok=True)
    card.save(output_dir / MODEL_CARD_NAME)
    return (output_dir / MODEL_CARD_NAME).read_text(encoding="utf-8")


def parse_model_card(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """Read a model card (a ``README.md`` or the directory holding it).

    Returns:
        ``(metadata, markdown)``: the YAML front matter as a dict (``model-index`` included, as written) and the
        Markdown body.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No model card at {path}.")
    card = ModelCard.load(path)
    return card.data.to_dict(), card.text
