"""Configuration of the attention-based RNN sequence-to-sequence model."""

from __future__ import annotations

from transformers import PreTrainedConfig

CELL_TYPES = ("lstm", "gru")
BRIDGES = ("zero", "last", "mean", "linear")
ATTENTION_TYPES = ("dot", "general", "concat", "additive", "scaled_dot", "multihead")
ATTENTION_STYLES = ("luong", "bahdanau")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}`={value!r} is not supported; allowed values are {', '.join(map(repr, allowed))}.")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}`={value!r} must be a positive integer (>= 1).")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}`={value!r} must be a number in [0, 1).")


def _check_token_id(name: str, value: object, vocab_size: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(f"`{name}`={value!r} must be a token id in [0, {vocab_size - 1}] (the vocabulary size is {vocab_size}).")


class S2SConfig(PreTrainedConfig):
    r"""
    Configuration of an RNN (LSTM/GRU) encoder–decoder with attention ([`S2SModel`],
    [`S2SForConditionalGeneration`]). Every value is validated on construction; a bad value raises `ValueError`
    naming the argument, the value and what is allowed.

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
            Special token ids (defaults 0, 1, 2, 1: `<pad>`, `<s>`, `</s>`, decoder start = `<s>`).
        use_cache (`bool`, defaults to `True`): Return the recurrent decoder state for incremental decoding.
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
        is_encoder_decoder: bool = True,
        **kwargs,
    ):
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

    def validate_s2s(self) -> None:
        """Check every model hyperparameter; raise `ValueError` naming the argument, the value and what is allowed."""
        for name in ("vocab_size", "decoder_vocab_size", "embedding_size", "hidden_size", "encoder_layers",
                     "decoder_layers", "attention_heads"):
            _check_positive_int(name, getattr(self, name))
        for name in ("dropout", "embedding_dropout", "attention_dropout", "label_smoothing"):
            _check_probability(name, getattr(self, name))
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) or self.init_std <= 0:
            raise ValueError(f"`init_std`={self.init_std!r} must be a positive number.")
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
        _check_token_id("pad_token_id", self.pad_token_id, min(self.vocab_size, self.decoder_vocab_size))
        for name in ("bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            for item in value if isinstance(value, list) else [value]:
                _check_token_id(name, item, self.decoder_vocab_size)


__all__ = ["S2SConfig"]
