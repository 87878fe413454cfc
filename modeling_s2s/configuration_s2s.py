"""Configuration of the attention-based RNN sequence-to-sequence model."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import re
from typing import Any

from transformers import GenerationConfig, PreTrainedConfig

CELL_TYPES = ("lstm", "gru")
BRIDGES = ("zero", "last", "mean", "linear")
ATTENTION_TYPES = ("dot", "general", "concat", "additive", "scaled_dot", "multihead")
ATTENTION_STYLES = ("luong", "bahdanau")


#: Fields that must be real `bool`s (no truthy strings or ints: `bidirectional_encoder="False"` is an error).
BOOL_FIELDS = (
    "share_encoder_decoder_embeddings", "tie_word_embeddings", "bidirectional_encoder", "attention_learnable_scale",
    "input_feeding", "decoder_self_attention", "use_cache", "fast_paths", "int8_decoding",
)
#: Bool fields inherited from `PreTrainedConfig`, where transformers also allows `None` ("use the default").
OPTIONAL_BOOL_FIELDS = ("return_dict", "output_hidden_states", "output_attentions")

# Keys that are not in the installed `PreTrainedConfig`'s fields, `__init__` signature or `to_dict()` but that
# transformers passes to a config's `__init__` through `from_pretrained`/`from_dict`, or that config.json files
# written by other tools and by older transformers versions (v4 `PretrainedConfig.__init__` arguments) hold. The
# keys of the installed transformers are added at run time (`accepted_extra_keys`).
_PASS_THROUGH_KEYS = frozenset({
    # from_pretrained / from_dict / __post_init__ keywords
    "torch_dtype", "dtype", "name_or_path", "num_labels", "attn_implementation", "experts_implementation",
    "output_attentions", "per_layer_config", "rope_scaling", "rope_theta", "model_type", "transformers_version",
    # written into config.json by save_pretrained of remote-code models, quantizers and pipelines
    "auto_map", "custom_pipelines", "quantization_config", "architectures",
    # transformers v4 `PretrainedConfig.__init__` arguments (present in configs saved with v4)
    "return_dict", "output_hidden_states", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads",
    "chunk_size_feed_forward", "is_decoder", "cross_attention_hidden_size", "add_cross_attention",
    "tie_encoder_decoder", "finetuning_task", "id2label", "label2id", "task_specific_params", "problem_type",
    "tokenizer_class", "prefix", "sep_token_id", "gradient_checkpointing",
})


def _type_name(value: object) -> str:
    return type(value).__name__


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"`{name}`={value!r} is not supported; allowed values are {', '.join(map(repr, allowed))}.")


def _check_bool(name: str, value: object, optional: bool = False) -> None:
    if not isinstance(value, bool) and not (optional and value is None):
        allowed = "True, False or None" if optional else "True or False"
        raise ValueError(
            f"`{name}`={value!r} ({_type_name(value)}) must be a bool ({allowed}); strings and numbers are not "
            "converted."
        )


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`={value!r} ({_type_name(value)}) must be a positive integer (an int >= 1).")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}`={value!r} ({_type_name(value)}) must be a number (int or float) in [0, 1).")


def _check_token_id(name: str, value: object, vocab_size: int, required: bool = False, why: str = "") -> None:
    if value is None:
        if required:
            raise ValueError(f"`{name}`=None is not allowed: {why}; give a token id in [0, {vocab_size - 1}].")
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(
            f"`{name}`={value!r} ({_type_name(value)}) must be a token id (int) in [0, {vocab_size - 1}] (the "
            f"vocabulary size is {vocab_size})."
        )


@functools.lru_cache(maxsize=1)
def accepted_extra_keys() -> frozenset[str]:
    """Keyword arguments `S2SConfig` accepts besides its own: everything the installed transformers'
    `PreTrainedConfig` knows or writes into config.json (its dataclass fields, ``__init__`` parameters,
    ``to_dict()`` keys, settable properties, the keys its ``__post_init__`` pops), the generation keys older
    saves may hold (`GenerationConfig`), and `_PASS_THROUGH_KEYS`. Keys that begin with ``_`` are transformers
    bookkeeping (``_name_or_path``, ``_commit_hash``, ...) and are accepted separately."""
    keys = set(_PASS_THROUGH_KEYS)
    if dataclasses.is_dataclass(PreTrainedConfig):
        keys.update(field.name for field in dataclasses.fields(PreTrainedConfig))
    parameters = inspect.signature(PreTrainedConfig.__init__).parameters.values()
    keys.update(p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self")
    keys.update(PreTrainedConfig().to_dict())
    keys.update(
        name for name, member in inspect.getmembers(PreTrainedConfig)
        if isinstance(member, property) and member.fset is not None
    )
    keys.update(getattr(PreTrainedConfig, "attribute_map", {}))
    for method in ("__post_init__", "__init__", "from_dict"):
        try:
            source = inspect.getsource(getattr(PreTrainedConfig, method))
        except (OSError, TypeError):
            continue
        keys.update(re.findall(r"kwargs\.(?:pop|get)\(\s*[\"'](\w+)[\"']", source))
    getter = getattr(GenerationConfig, "_get_default_generation_params", None)
    if getter is not None:
        keys.update(getter())
    keys.update(GenerationConfig().to_dict())
    return frozenset(keys)


def _own_parameters(cls: type) -> list[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]


def _check_known_keys(cls: type, kwargs: dict[str, Any]) -> None:
    accepted = accepted_extra_keys() | set(cls.attribute_map)
    unknown = [key for key in kwargs if not key.startswith("_") and key not in accepted]
    if not unknown:
        return
    own = _own_parameters(cls)
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, own, n=1) or difflib.get_close_matches(key, sorted(accepted), n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        problems.append(f"`{key}`={kwargs[key]!r}{hint}")
    raise ValueError(
        f"{cls.__name__} got unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(problems)}. "
        f"Allowed: {', '.join(own)} (and the PreTrainedConfig keys transformers writes into config.json)."
    )


class S2SConfig(PreTrainedConfig):
    r"""
    Configuration of an RNN (LSTM/GRU) encoder–decoder with attention ([`S2SModel`],
    [`S2SForConditionalGeneration`]). Every value is validated on construction (and after `from_pretrained` /
    `from_dict` applied their keyword overrides); a bad value raises `ValueError` naming the argument, the value
    and what is allowed. Types are checked, not coerced: bool fields take only `True`/`False`, int fields reject
    floats and bools, float fields take an int or a float (not a bool or a string).

    Unknown keyword arguments (e.g. a misspelt `hiden_size`) raise `ValueError` naming the key and the closest
    valid name. Every key that transformers' `PreTrainedConfig` itself knows or writes into `config.json`
    (`transformers_version`, `architectures`, `auto_map`, `model_type`, `dtype`/`torch_dtype`, `id2label`,
    `return_dict`, `output_attentions`, ...), the generation keys older saves may hold (`num_beams`, `max_length`,
    ...; transformers ignores them here, use the `GenerationConfig`) and keys beginning with `_` (transformers
    bookkeeping) are accepted, so saved configurations keep loading.

    Args:
        vocab_size (`int`, defaults to 8000):
            Source vocabulary size (and target vocabulary size when `decoder_vocab_size` is `None`).
        decoder_vocab_size (`int`, *optional*):
            Target vocabulary size when source and target use separate vocabularies. Requires
            `share_encoder_decoder_embeddings=False` when it differs from `vocab_size`.
        share_encoder_decoder_embeddings (`bool`, defaults to `True`):
            One embedding matrix for encoder and decoder inputs (joint vocabulary).
        tie_word_embeddings (`bool`, defaults to `True`):
            The output projection (`lm_head`) reuses the decoder input embedding matrix. When
            `embedding_size != hidden_size` a bias-free `hidden_size -> embedding_size` projection is inserted
            before `lm_head`.
        embedding_size (`int`, defaults to 256): Token embedding width.
        hidden_size (`int`, defaults to 512):
            Width of the encoder outputs (both directions together when bidirectional), of the decoder RNN and of
            the attentional vector.
        encoder_layers (`int`, defaults to 1): Stacked encoder RNN layers.
        decoder_layers (`int`, defaults to 1): Stacked decoder RNN layers.
        cell_type (`str`, defaults to `"lstm"`): `"lstm"` or `"gru"`, used by encoder and decoder.
        bidirectional_encoder (`bool`, defaults to `True`):
            Each direction has `hidden_size // 2` units, so `hidden_size` must be even.
        bridge (`str`, defaults to `"linear"`):
            How the encoder's final states start the decoder: `"zero"` (zeros), `"last"` (final states copied layer
            by layer; needs `encoder_layers == decoder_layers`), `"mean"` (mean of the encoder outputs over real
            tokens, for every decoder layer), `"linear"` (tanh of a learned projection of all final encoder states).
        attention_type (`str`, defaults to `"general"`):
            Score function: `"dot"` (q·k), `"general"` (qᵀWk), `"concat"` (vᵀtanh(W[q; k]), Luong 2015),
            `"additive"` (vᵀtanh(W_q q + b + U_k k), Bahdanau 2015), `"scaled_dot"` (q·k/√d, optionally with a learned
            scale), `"multihead"` (scaled dot over `attention_heads` learned projections).
        attention_heads (`int`, defaults to 1): Heads for `"multihead"`; must divide `hidden_size`.
        attention_learnable_scale (`bool`, defaults to `False`):
            For `"scaled_dot"`: learn the score scale (initialised at 1/√d), like Keras `Attention(use_scale=True)`.
        attention_style (`str`, defaults to `"luong"`):
            `"luong"`: attend from the current decoder state and output the attentional vector tanh(W[c; h]);
            `"bahdanau"`: attend from the previous decoder state and feed the context into the RNN input.
        input_feeding (`bool`, defaults to `True`):
            Feed the previous attentional vector into the next RNN input (Luong 2015). Without it, a Luong decoder runs
            its RNN over the whole target in one call during training (the fused path).
        decoder_self_attention (`bool`, defaults to `False`):
            Causal self-attention over the decoder's previous RNN outputs, combined with the source context.
        dropout (`float`, defaults to 0.2): Between RNN layers and on the attentional vector.
        embedding_dropout (`float`, defaults to 0.2): On token embeddings.
        attention_dropout (`float`, defaults to 0.0): On attention weights (training only).
        label_smoothing (`float`, defaults to 0.0): Label smoothing of the cross-entropy loss.
        init_std (`float`, defaults to 0.1):
            Linear and embedding weights ~ N(0, init_std); RNN weights ~ U(-init_std, init_std).
        pad_token_id, bos_token_id, eos_token_id, decoder_start_token_id (`int`):
            Special token ids (defaults 0, 1, 2, 1: `<pad>`, `<s>`, `</s>`, decoder start = `<s>`). `pad_token_id`
            and `decoder_start_token_id` are required (not `None`): the model pads with, masks and ignores in the
            loss the pad id, and starts every target with the decoder start id. `bos_token_id` may be `None` (the
            model does not use it); `eos_token_id` may be `None` (generation then stops only at its length limit)
            or a list of ids.
        use_cache (`bool`, defaults to `True`): Return the recurrent decoder state for incremental decoding.
        fast_paths (`bool`, defaults to `True`):
            Use the speed-only code paths of `modeling_s2s/fast_paths.py` (oneDNN matmuls with reordered weights,
            per-length encoder runs on CPU, ...) where they apply; each falls back to the reference math otherwise
            and is tested equal to it. Set False to run the plain reference model (e.g. to check a result or to
            compare speed).
        int8_decoding (`bool`, defaults to `False`):
            Decode (no gradients) an fp32 model with int8 matmuls on x86 CPUs: the decoder's per-step matmuls and
            the output layer through oneDNN's int8 linear op, weights quantised once per output channel, each
            step's inputs per row (dynamic quantisation). An approximation, like decoding with bf16 weights;
            needs `fast_paths`. Elsewhere (GPU, training, bf16 weights, CPUs without oneDNN) it has no effect.
        is_encoder_decoder (`bool`, defaults to `True`): Must be `True` (the model is an encoder–decoder).
    """

    model_type = "attention_s2s"
    keys_to_ignore_at_inference = ["cache", "encoder_last_hidden_state"]
    attribute_map = {"num_hidden_layers": "decoder_layers"}

    def __init__(
        self,
        vocab_size: int = 8000,
        decoder_vocab_size: int | None = None,
        share_encoder_decoder_embeddings: bool = True,
        tie_word_embeddings: bool = True,
        embedding_size: int = 256,
        hidden_size: int = 512,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        cell_type: str = "lstm",
        bidirectional_encoder: bool = True,
        bridge: str = "linear",
        attention_type: str = "general",
        attention_heads: int = 1,
        attention_learnable_scale: bool = False,
        attention_style: str = "luong",
        input_feeding: bool = True,
        decoder_self_attention: bool = False,
        dropout: float = 0.2,
        embedding_dropout: float = 0.2,
        attention_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        init_std: float = 0.1,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        use_cache: bool = True,
        fast_paths: bool = True,
        int8_decoding: bool = False,
        is_encoder_decoder: bool = True,
        **kwargs,
    ):
        _check_known_keys(type(self), kwargs)
        self.vocab_size = vocab_size
        self.decoder_vocab_size = decoder_vocab_size if decoder_vocab_size is not None else vocab_size
        self.share_encoder_decoder_embeddings = share_encoder_decoder_embeddings
        self.embedding_size = embedding_size
        self.hidden_size = hidden_size
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.cell_type = cell_type
        self.bidirectional_encoder = bidirectional_encoder
        self.bridge = bridge
        self.attention_type = attention_type
        self.attention_heads = attention_heads
        self.attention_learnable_scale = attention_learnable_scale
        self.attention_style = attention_style
        self.input_feeding = input_feeding
        self.decoder_self_attention = decoder_self_attention
        self.dropout = dropout
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.label_smoothing = label_smoothing
        self.init_std = init_std
        self.decoder_start_token_id = decoder_start_token_id
        self.use_cache = use_cache
        self.fast_paths = fast_paths
        self.int8_decoding = int8_decoding
        # Check the values before `PreTrainedConfig.__init__` runs its own validators, which fail with unrelated
        # errors on some bad values (e.g. `vocab_size="8000"`); again below, after it set the inherited fields.
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad_token_id, bos_token_id, eos_token_id
        self.is_encoder_decoder, self.tie_word_embeddings = is_encoder_decoder, tie_word_embeddings
        self.validate_s2s()
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_s2s()

    @property
    def fused_decoder(self) -> bool:
        """Whether training runs the decoder RNN over the whole target at once (no step dependency)."""
        return self.attention_style == "luong" and not self.input_feeding

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        # `from_dict` (behind `from_pretrained`) sets keyword overrides as attributes after `__init__` validated:
        # check the result again, so `from_pretrained(path, dropout="0.1")` is refused as `S2SConfig(dropout="0.1")` is.
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result).validate_s2s()
        return result

    def validate_s2s(self) -> None:
        """Check every model hyperparameter; raise `ValueError` naming the argument, the value and what is allowed."""
        for name in BOOL_FIELDS:
            _check_bool(name, getattr(self, name))
        for name in OPTIONAL_BOOL_FIELDS:
            _check_bool(name, getattr(self, name, None), optional=True)
        if self.is_encoder_decoder is not True:
            raise ValueError(
                f"`is_encoder_decoder`={self.is_encoder_decoder!r} must be True: this model is an encoder-decoder."
            )
        for name in ("vocab_size", "decoder_vocab_size", "embedding_size", "hidden_size", "encoder_layers",
                     "decoder_layers", "attention_heads"):
            _check_positive_int(name, getattr(self, name))
        for name in ("dropout", "embedding_dropout", "attention_dropout", "label_smoothing"):
            _check_probability(name, getattr(self, name))
        init_std = self.init_std
        if (
            isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not math.isfinite(init_std)
            or init_std <= 0
        ):
            raise ValueError(
                f"`init_std`={init_std!r} ({_type_name(init_std)}) must be a positive finite number (int or float)."
            )
        _check_choice("cell_type", self.cell_type, CELL_TYPES)
        _check_choice("bridge", self.bridge, BRIDGES)
        _check_choice("attention_type", self.attention_type, ATTENTION_TYPES)
        _check_choice("attention_style", self.attention_style, ATTENTION_STYLES)
        if self.bidirectional_encoder and self.hidden_size % 2:
            raise ValueError(
                f"`hidden_size`={self.hidden_size} must be even with `bidirectional_encoder=True`: each direction "
                "gets hidden_size // 2 units."
            )
        if self.attention_type == "multihead" and self.hidden_size % self.attention_heads:
            raise ValueError(
                f"`hidden_size`={self.hidden_size} must be divisible by `attention_heads`={self.attention_heads} "
                "for multi-head attention."
            )
        if self.attention_type != "multihead" and self.attention_heads != 1:
            raise ValueError(
                f"`attention_heads`={self.attention_heads} only applies to attention_type='multihead'; "
                f"attention_type={self.attention_type!r} has exactly 1 head."
            )
        if self.bridge == "last" and self.encoder_layers != self.decoder_layers:
            raise ValueError(
                f"`bridge`='last' copies encoder states layer by layer, so `encoder_layers`={self.encoder_layers} "
                f"must equal `decoder_layers`={self.decoder_layers}; use bridge='linear' or 'mean' otherwise."
            )
        if self.share_encoder_decoder_embeddings and self.decoder_vocab_size != self.vocab_size:
            raise ValueError(
                f"`decoder_vocab_size`={self.decoder_vocab_size} differs from `vocab_size`={self.vocab_size}, which "
                "needs `share_encoder_decoder_embeddings=False`."
            )
        _check_token_id(
            "pad_token_id", self.pad_token_id, min(self.vocab_size, self.decoder_vocab_size), required=True,
            why="the model needs a pad id (to pad batches, to derive the attention mask and to mask the loss)",
        )
        _check_token_id(
            "decoder_start_token_id", self.decoder_start_token_id, self.decoder_vocab_size, required=True,
            why="the model needs the id that starts every target sequence (training and generation)",
        )
        _check_token_id("bos_token_id", self.bos_token_id, self.decoder_vocab_size)
        eos = self.eos_token_id
        if isinstance(eos, list) and not eos:
            raise ValueError("`eos_token_id`=[] must be None, a token id or a non-empty list of token ids.")
        for item in eos if isinstance(eos, list) else [eos]:
            _check_token_id("eos_token_id", item, self.decoder_vocab_size)


__all__ = ["S2SConfig"]
