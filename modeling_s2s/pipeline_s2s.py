"""A text-to-text `Pipeline` for the seq2seq models (transformers v5 removed `translation`/`text2text-generation`).

`S2STextToTextPipeline` tokenizes the inputs, calls ``model.generate`` and decodes the result, like the v4
`TranslationPipeline`: ``pipe("A man .")`` returns ``[{"translation_text": "..."}]`` when the pipeline's task is
``"translation"`` (``"summary_text"`` for ``"summarization"``, ``"generated_text"`` otherwise). Generation
parameters (``num_beams``, ``num_return_sequences``, ``do_sample``, ``top_k``, ``max_new_tokens``, ...) can be
given when the pipeline is built or on each call; ``batch_size`` batches the inputs.

Ways to get one:

* ``import modeling_s2s`` registers it as the task ``"s2s-text2text"``:
  ``pipeline("s2s-text2text", model=model_dir)``;
* instantiate it: ``S2STextToTextPipeline(model=model, tokenizer=tokenizer, task="translation")``;
* a directory written by `save_for_pipeline` (or a saved model directory passed to
  `add_pipeline_to_model_dir`) carries this file as remote code and names it in ``config.custom_pipelines``, so
  ``pipeline("translation", model=model_dir, trust_remote_code=True)`` works without this package installed.

This module is copied into saved model directories as remote code: it imports only `transformers` and `torch`
(and the standard library).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import cached_file

#: Our own registry name; `"translation"` itself can't be registered in transformers v5 (removed task).
PIPELINE_TASK = "s2s-text2text"
#: Subfolder with the target-side tokenizer when source and target vocabularies are separate.
TARGET_TOKENIZER_SUBFOLDER = "target_tokenizer"
#: Output key prefix per task (`"<prefix>_text"`), as in the transformers v4 pipelines.
RETURN_NAMES = {"translation": "translation", "summarization": "summary"}
# Tokenizers without a length limit report a huge `model_max_length` (transformers' VERY_LARGE_INTEGER).
_NO_LIMIT = 10**9


def _return_name(task: str) -> str:
    if task.startswith("translation"):
        return "translation"
    return RETURN_NAMES.get(task, "generated")


def find_target_tokenizer(name_or_path: str, **kwargs: Any) -> Any:
    """The tokenizer in the ``target_tokenizer/`` subfolder of a model directory or Hub repo, else None.

    A Hub repo is looked up as `from_pretrained` does (the local cache when offline); ``kwargs`` (``revision``,
    ``token``, ...) go to `AutoTokenizer.from_pretrained`.
    """
    if os.path.isdir(name_or_path):
        folder = os.path.join(name_or_path, TARGET_TOKENIZER_SUBFOLDER)
        return AutoTokenizer.from_pretrained(folder, **kwargs) if os.path.isdir(folder) else None
    if os.path.isabs(name_or_path) or name_or_path.count("/") > 1 or "\\" in name_or_path:
        return None  # a local path that is gone (e.g. a model saved in a deleted temporary directory), not a repo id
    lookup = {k: v for k, v in kwargs.items() if k in ("revision", "token", "cache_dir", "local_files_only")}
    config_file = cached_file(
        name_or_path, "tokenizer_config.json", subfolder=TARGET_TOKENIZER_SUBFOLDER,
        _raise_exceptions_for_missing_entries=False, _raise_exceptions_for_connection_errors=False, **lookup,
    )
    if config_file is None:
        return None
    return AutoTokenizer.from_pretrained(name_or_path, subfolder=TARGET_TOKENIZER_SUBFOLDER, **kwargs)


def _check_text(text: Any, where: str) -> None:
    """Refuse a non-string (`TypeError`) or an empty / whitespace-only string (`ValueError`), naming ``where``."""
    if not isinstance(text, str):
        raise TypeError(
            f"{S2STextToTextPipeline.__name__} takes a string or a list of strings; {where} is "
            f"{type(text).__name__} ({text!r:.80})."
        )
    if not text.strip():
        raise ValueError(
            f"{where} is empty or whitespace-only ({text!r:.80}); every input needs text to translate."
        )


class S2STextToTextPipeline(Pipeline):
    """Text-to-text generation with an encoder–decoder model (``AutoModelForSeq2SeqLM``).

    Call arguments:
        inputs (`str` or `list[str]`): The source text(s). Every text must contain something besides whitespace:
            an empty or whitespace-only text raises `ValueError` naming its position (``inputs[i]``), as
            ``scripts/translate.py`` refuses an empty line; a non-string raises `TypeError`. An empty list returns
            ``[]`` (one result per input, as transformers' pipelines return nothing for an empty generator or
            dataset) instead of failing inside transformers.
        truncation (`bool`, defaults to `True`): Truncate inputs to ``max_input_length`` tokens (default: the
            tokenizer's ``model_max_length``).
        max_input_length (`int`, *optional*): Maximum number of source tokens (special tokens included).
        return_tensors (`bool`, defaults to `False`): Return ``{"<name>_token_ids": [...]}`` instead of text.
        return_text (`bool`, defaults to `True`): Return ``{"<name>_text": "..."}``.
        clean_up_tokenization_spaces (`bool`, *optional*), skip_special_tokens (`bool`, defaults to `True`):
            Passed to ``tokenizer.decode``.
        **generate_kwargs: Passed to ``model.generate`` (``num_beams``, ``num_return_sequences``, ``do_sample``,
            ``top_k``, ``top_p``, ``temperature``, ``max_new_tokens``, ``max_length``, ``generation_config``, ...).

    Returns:
        For one input, a list with one dict per returned sequence; for a list of inputs, one such list per input,
        flattened to one dict per input when each input has a single result (as in transformers v4).

    Init-only argument ``target_tokenizer``: decodes the generations when source and target vocabularies are
    separate. When omitted, the ``target_tokenizer/`` subfolder of the model's directory or Hub repo is used if present.
    """

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args: Any, target_tokenizer: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise ValueError(f"{type(self).__name__} needs a tokenizer.")
        if not self.model.can_generate():
            raise ValueError(f"{type(self.model).__name__} can't generate; {type(self).__name__} needs a model that can.")
        if not getattr(self.model.config, "is_encoder_decoder", False):
            raise ValueError(f"{type(self).__name__} needs an encoder-decoder model, got {type(self.model).__name__}.")
        self.target_tokenizer = target_tokenizer if target_tokenizer is not None else self._find_target_tokenizer()

    def _find_target_tokenizer(self) -> Any:
        name = getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", None)
        return find_target_tokenizer(str(name)) if name else None

    @property
    def decode_tokenizer(self) -> Any:
        """The tokenizer that decodes the generated ids (the target tokenizer when there is one)."""
        return self.target_tokenizer if self.target_tokenizer is not None else self.tokenizer

    @property
    def return_name(self) -> str:
        return _return_name(self.task or "")

    def _sanitize_parameters(
        self,
        truncation: bool | None = None,
        max_input_length: int | None = None,
        return_tensors: bool | None = None,
        return_text: bool | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        skip_special_tokens: bool | None = None,
        generate_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        preprocess_params: dict[str, Any] = {}
        if truncation is not None:
            preprocess_params["truncation"] = truncation
        if max_input_length is not None:
            preprocess_params["max_input_length"] = max_input_length

        forward_params = dict(generate_kwargs or {})
        forward_params.update(kwargs)

        postprocess_params: dict[str, Any] = {}
        if return_tensors is not None:
            postprocess_params["return_tensors"] = return_tensors
        if return_text is not None:
            postprocess_params["return_text"] = return_text
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        if skip_special_tokens is not None:
            postprocess_params["skip_special_tokens"] = skip_special_tokens
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> list[dict] | list[list[dict]]:
        if isinstance(inputs, list):
            if not inputs:
                return []  # transformers' `Pipeline.__call__` would fail on `inputs[0]`
            for index, item in enumerate(inputs):
                _check_text(item, f"inputs[{index}] (input {index + 1} of {len(inputs)})")
        elif isinstance(inputs, (str, tuple)):
            _check_text(inputs, "the input")
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(isinstance(item, list) and len(item) == 1 for item in result):
            return [item[0] for item in result]
        return result

    def preprocess(
        self, inputs: str, truncation: bool = True, max_input_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        _check_text(inputs, "an input")  # generators and datasets arrive here unchecked
        prefix = self.prefix or ""
        if truncation and max_input_length is None and self.tokenizer.model_max_length > _NO_LIMIT:
            truncation = False  # the tokenizer has no length limit, and an RNN has none either
        encoded = self.tokenizer(
            prefix + inputs,
            truncation=truncation,
            max_length=max_input_length,
            padding=False,
            return_tensors="pt",
        )
        encoded.pop("token_type_ids", None)
        return dict(encoded)

    def _forward(self, model_inputs: dict[str, torch.Tensor], **generate_kwargs: Any) -> dict[str, torch.Tensor]:
        in_batch = model_inputs["input_ids"].shape[0]
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        output = self.model.generate(**model_inputs, **generate_kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        out_batch = sequences.shape[0]
        return {"output_ids": sequences.reshape(in_batch, out_batch // in_batch, *sequences.shape[1:])}

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        return_tensors: bool = False,
        return_text: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
        skip_special_tokens: bool = True,
    ) -> list[dict[str, Any]]:
        records = []
        for output_ids in model_outputs["output_ids"][0]:
            record: dict[str, Any] = {}
            if return_tensors:
                record[f"{self.return_name}_token_ids"] = output_ids.tolist()
            if return_text or not return_tensors:
                record[f"{self.return_name}_text"] = self.decode_tokenizer.decode(
                    output_ids,
                    skip_special_tokens=skip_special_tokens,
                    clean_up_tokenization_spaces=clean_up_tokenization_spaces,
                )
            records.append(record)
        return records


def register_pipeline(task: str = PIPELINE_TASK) -> None:
    """Register `S2STextToTextPipeline` under ``task`` so ``pipeline(task, model=...)`` finds it."""
    PIPELINE_REGISTRY.register_pipeline(
        task, pipeline_class=S2STextToTextPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
    )


def add_pipeline_to_model_dir(model_dir: str | os.PathLike, task: str = "translation") -> str:
    """Make an already saved model directory usable with ``pipeline(task, model=model_dir, trust_remote_code=True)``.

    Adds ``custom_pipelines = {task: {"impl": "pipeline_s2s.S2STextToTextPipeline", "pt": ["AutoModelForSeq2SeqLM"],
    "type": "text"}}`` to its ``config.json`` (other entries are kept; a previous ``custom_pipelines`` is replaced)
    and copies this file next to it as ``pipeline_s2s.py``. Use it on a directory written by
    ``Trainer.save_model()`` / ``save_pretrained``; `save_for_pipeline` does everything in one call. ``task`` may
    be any name, including ones transformers v5 removed (``"translation"``, ``"summarization"``): custom tasks skip
    that check. Returns the directory.
    """
    if not task or not isinstance(task, str):
        raise ValueError(f"`task` must be a non-empty string, got {task!r}.")
    model_dir = os.fspath(model_dir)
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: save the model (save_pretrained) before adding the pipeline.")
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    config["custom_pipelines"] = {
        task: {
            "impl": f"{__name__.rsplit('.', 1)[-1]}.{S2STextToTextPipeline.__name__}",
            "pt": ["AutoModelForSeq2SeqLM"],
            "type": "text",
        }
    }
    # The pipeline's remote code: this file, under its own name (it has no relative imports to follow).
    destination = os.path.join(model_dir, os.path.basename(__file__))
    if os.path.abspath(destination) != os.path.abspath(__file__):
        shutil.copyfile(__file__, destination)
    temporary = config_path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")  # as `PreTrainedConfig.save_pretrained`
    os.replace(temporary, config_path)
    return model_dir


def save_for_pipeline(
    model: Any,
    tokenizer: Any,
    save_directory: str | os.PathLike,
    task: str = "translation",
    *,
    target_tokenizer: Any = None,
    **save_kwargs: Any,
) -> str:
    """Save ``model`` and ``tokenizer`` so that, in a process without this package,
    ``pipeline(task, model=save_directory, trust_remote_code=True)`` (and ``pipeline(model=save_directory,
    trust_remote_code=True)``) builds an `S2STextToTextPipeline`.

    Writes the model (``model.save_pretrained(save_directory, **save_kwargs)``: weights, config with ``auto_map``,
    the modelling remote code, generation config), the tokenizer, ``target_tokenizer`` (if given) in
    ``target_tokenizer/``, then `add_pipeline_to_model_dir` (``config.custom_pipelines`` + ``pipeline_s2s.py``).
    The model's in-memory config gets no ``custom_pipelines``. Returns the directory.
    """
    if not task or not isinstance(task, str):
        raise ValueError(f"`task` must be a non-empty string, got {task!r}.")
    save_directory = os.fspath(save_directory)
    if os.path.isfile(save_directory):
        raise ValueError(f"`save_directory`={save_directory!r} is a file, not a directory.")
    os.makedirs(save_directory, exist_ok=True)
    model.save_pretrained(save_directory, **save_kwargs)
    tokenizer.save_pretrained(save_directory)
    if target_tokenizer is not None:
        target_tokenizer.save_pretrained(os.path.join(save_directory, TARGET_TOKENIZER_SUBFOLDER))
    return add_pipeline_to_model_dir(save_directory, task)


__all__ = [
    "PIPELINE_TASK",
    "S2STextToTextPipeline",
    "add_pipeline_to_model_dir",
    "register_pipeline",
    "save_for_pipeline",
]
