"""RNN (LSTM/GRU) encoder–decoder with Luong, Bahdanau and self-attention, as a transformers model.

This file is the reference: the model's math, read bottom-up — decoder inputs → RNN cells → attention → decoder
state (cache) → outputs → pre-trained base → encoder, bridge, decoder → `S2SModel` →
`S2SForConditionalGeneration`. Shapes: B batch, S source length, T target length, H hidden size, E embedding size,
L layers, V vocabulary, h heads.

The decoder has one piece of math per concept (RNN cell, attention, combination into the attentional vector) and
two ways to drive it: a *fused* driver that runs `nn.LSTM`/`nn.GRU` over the whole target in one call (Luong
attention without input feeding: no step depends on the previous attentional vector) and a *step* driver (input
feeding, Bahdanau, and generation, one position at a time, with the recurrent state in `S2SDecoderCache`). Both
use the same parameters; tests pin them equal.

Code that exists only for speed lives elsewhere, behind `config.fast_paths`: `fast_paths.py` (CPU kernels, the
per-length encoder, the training output layer) and `generation_s2s.py` (greedy and beam search in which finished
rows leave the batch). Each hook below falls back to the math here, and tests pin each fast path equal to it.
Input checks (`input_checks.py`) and vocabulary resizing (`resizing.py`) sit in their own small modules too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import ModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_s2s import ATTENTION_TYPES, S2SConfig
from .fast_paths import decoder_step, encoder_rnn, output_logits, span_logits_and_loss
from .generation_s2s import can_decode, decoding_arguments, max_new_tokens_replace_the_default_max_length
from .input_checks import check_attention_mask, check_token_ids
from .resizing import ResizableVocabularyMixin

# -------------------- Decoder inputs ----------------------------------------------------------------------


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Build decoder inputs from labels: `[start] + labels[:-1]`, with `-100` replaced by `pad_token_id`.

    Args:
        labels: (B, T) target ids, `-100` where ignored.
    Returns:
        (B, T) decoder input ids.
    """
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


# -------------------- RNN cells ---------------------------------------------------------------------------
# PyTorch's gate order and parameters, so `nn.LSTM`/`nn.GRU` and these steps share weights.


def lstm_cell(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM update. gates: (B, 4H) = W_ih x + b_ih + W_hh h + b_hh in the order (i, f, g, o); cell: (B, H).

    c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g);  h' = σ(o) ⊙ tanh(c').  Returns (h', c'), each (B, H).
    """
    in_gate, forget_gate, candidate, out_gate = gates.chunk(4, dim=1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
    return torch.sigmoid(out_gate) * torch.tanh(cell), cell


def gru_cell(input_gates: torch.Tensor, hidden_gates: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """One GRU update. input_gates = W_ih x + b_ih, hidden_gates = W_hh h + b_hh: (B, 3H) in the order (r, z, n).

    r = σ(x_r + h_r);  z = σ(x_z + h_z);  n = tanh(x_n + r ⊙ h_n);  h' = (1 − z) ⊙ n + z ⊙ h.  Returns h' (B, H).
    """
    x_reset, x_update, x_new = input_gates.chunk(3, dim=1)
    h_reset, h_update, h_new = hidden_gates.chunk(3, dim=1)
    reset = torch.sigmoid(x_reset + h_reset)
    update = torch.sigmoid(x_update + h_update)
    candidate = torch.tanh(x_new + reset * h_new)
    return (1 - update) * candidate + update * hidden


def rnn_layer_weights(rnn: nn.RNNBase, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(W_ih, W_hh, b_ih, b_hh) of one layer of `rnn`: the parameters `nn.LSTM`/`nn.GRU` itself runs with."""
    return tuple(getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))


# -------------------- Attention -----------------------------------------------------------------------------


@dataclass
class AttentionMemory:
    """Keys and values prepared once per source (or grown step by step for self-attention).

    keys: (B, h, S, d_k) projected/raw keys; values: (B, h, S, d_v).
    """

    keys: torch.Tensor
    values: torch.Tensor

    def append(self, other: AttentionMemory) -> AttentionMemory:
        return AttentionMemory(torch.cat([self.keys, other.keys], dim=2), torch.cat([self.values, other.values], dim=2))

    def apply(self, fn) -> AttentionMemory:
        return AttentionMemory(fn(self.keys), fn(self.values))


def _float_weight(linear: nn.Module) -> torch.Tensor:
    """The weight of an `nn.Linear`, or the dequantised weight of a dynamically quantised one."""
    weight = linear.weight
    return weight().dequantize() if callable(weight) else weight


class S2SAttention(nn.Module):
    """Attention layer usable on its own, like `tf.keras.layers.Attention`.

    Scores (q: query vector, k: key vector):
    - `dot`: q·k (needs `query_size == key_size`)
    - `general`: qᵀWk (Luong 2015)
    - `concat`: vᵀtanh(W[q; k]) (Luong 2015; one bias-free matrix over the concatenation)
    - `additive`: vᵀtanh(W_q q + b + U_k k) (Bahdanau 2015, learned projections)
    - `scaled_dot`: q·k · s, s = 1/√d fixed or learned (`learnable_scale`)
    - `multihead`: `num_heads` scaled-dot heads over learned projections, output projection to `query_size`
    Weights: softmax of the scores over the source, exactly zero at masked positions. Context: Σ weights · values.

    Args:
        attention_type: one of the score names above.
        query_size, key_size: widths of queries and keys; value_size defaults to key_size.
        num_heads: heads for `multihead` (must divide `query_size`), else 1.
        attention_size: width of the tanh layer for `concat`/`additive` (defaults to `query_size`).
        dropout: dropout on the attention weights.
        learnable_scale: learn the scale of `scaled_dot`.
    """

    def __init__(
        self, attention_type: str, query_size: int, key_size: int, value_size: int | None = None,
        num_heads: int = 1, attention_size: int | None = None, dropout: float = 0.0, learnable_scale: bool = False,
    ):
        super().__init__()
        value_size = key_size if value_size is None else value_size
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"`attention_type`={attention_type!r} is not supported; allowed: {ATTENTION_TYPES}.")
        if attention_type in ("dot", "scaled_dot") and query_size != key_size:
            raise ValueError(
                f"attention_type={attention_type!r} needs query_size == key_size; got {query_size} and {key_size}."
            )
        if attention_type == "multihead" and query_size % num_heads:
            raise ValueError(f"`query_size`={query_size} must be divisible by `num_heads`={num_heads}.")
        if attention_type != "multihead" and num_heads != 1:
            raise ValueError(f"`num_heads`={num_heads} needs attention_type='multihead'.")
        self.attention_type = attention_type
        self.num_heads = num_heads
        self.output_size = query_size if attention_type == "multihead" else value_size
        self.dropout = nn.Dropout(dropout)
        attention_size = attention_size or query_size
        if attention_type == "general":
            self.query_proj = nn.Linear(query_size, key_size, bias=False)
        elif attention_type in ("concat", "additive"):
            self.query_proj = nn.Linear(query_size, attention_size, bias=attention_type == "additive")
            self.key_proj = nn.Linear(key_size, attention_size, bias=False)
            self.score_proj = nn.Linear(attention_size, 1, bias=False)
        elif attention_type == "scaled_dot":
            self.fixed_scale = 1.0 / math.sqrt(key_size)
            self.scale = nn.Parameter(torch.tensor(self.fixed_scale)) if learnable_scale else None
        elif attention_type == "multihead":
            self.query_proj = nn.Linear(query_size, query_size, bias=False)
            self.key_proj = nn.Linear(key_size, query_size, bias=False)
            self.value_proj = nn.Linear(value_size, query_size, bias=False)
            self.out_proj = nn.Linear(query_size, query_size, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (B, S, h*d) -> (B, h, S, d)
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)

    def prepare_memory(self, key: torch.Tensor, value: torch.Tensor) -> AttentionMemory:
        """Project keys/values once. key: (B, S, key_size), value: (B, S, value_size) → `AttentionMemory`."""
        if self.attention_type in ("concat", "additive"):
            return AttentionMemory(self.key_proj(key).unsqueeze(1), value.unsqueeze(1))
        if self.attention_type == "multihead":
            return AttentionMemory(self._split_heads(self.key_proj(key)), self._split_heads(self.value_proj(value)))
        if self.attention_type == "general":
            # qᵀWk = q·(Wᵀk): one matmul over the source instead of one per decoder step
            return AttentionMemory((key @ _float_weight(self.query_proj)).unsqueeze(1), value.unsqueeze(1))
        return AttentionMemory(key.unsqueeze(1), value.unsqueeze(1))

    def _scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # query: (B, T, query_size), keys: (B, h, S, d) -> scores: (B, h, T, S)
        kind = self.attention_type
        if kind in ("dot", "general"):  # general: the keys were multiplied by W in `prepare_memory`
            return torch.matmul(query.unsqueeze(1), keys.transpose(-1, -2))
        if kind == "scaled_dot":
            scale = self.scale if self.scale is not None else self.fixed_scale
            return torch.matmul(query.unsqueeze(1), keys.transpose(-1, -2)) * scale
        if kind == "multihead":
            queries = self._split_heads(self.query_proj(query))
            return torch.matmul(queries, keys.transpose(-1, -2)) / math.sqrt(queries.shape[-1])
        # concat / additive: (B, 1, T, 1, A) + (B, 1, 1, S, A) -> (B, 1, T, S)
        hidden = torch.tanh(self.query_proj(query)[:, None, :, None, :] + keys[:, :, None, :, :])
        return self.score_proj(hidden).squeeze(-1)

    def attend(
        self, query: torch.Tensor, memory: AttentionMemory, value_mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from `query` (B, T, query_size) over `memory` (S positions).

        Args:
            value_mask: (B, S), True/1 for real positions; masked positions get exactly zero weight.
            causal: query t (the last T of S positions) sees memory positions ≤ S - T + t.
        Returns:
            context (B, T, output_size) and weights (B, h, T, S).
        """
        scores = self._scores(query, memory.keys)
        mask_value = torch.finfo(scores.dtype).min
        if value_mask is not None:
            scores = scores.masked_fill(~value_mask.bool()[:, None, None, :], mask_value)
        if causal:
            num_queries, num_keys = scores.shape[-2:]
            visible = torch.ones(num_queries, num_keys, dtype=torch.bool, device=scores.device).tril(
                num_keys - num_queries
            )
            scores = scores.masked_fill(~visible, mask_value)
        weights = torch.softmax(scores, dim=-1)
        context = torch.matmul(self.dropout(weights), memory.values)  # (B, h, T, d_v)
        context = context.transpose(1, 2).flatten(2)  # (B, T, h*d_v)
        if self.attention_type == "multihead":
            context = self.out_proj(context)
        return context, weights

    def forward(
        self, query: torch.Tensor, value: torch.Tensor, key: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None, value_mask: torch.Tensor | None = None, causal: bool = False,
        return_attention_scores: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Keras-style call: query (B, T, Dq), value (B, S, Dv), key (B, S, Dk) defaults to value.

        `query_mask` (B, T) zeroes the outputs of padded queries. Returns the context (B, T, output_size) and,
        with `return_attention_scores=True`, also the weights (B, h, T, S).
        """
        memory = self.prepare_memory(value if key is None else key, value)
        context, weights = self.attend(query, memory, value_mask=value_mask, causal=causal)
        if query_mask is not None:
            context = context * query_mask.to(context.dtype).unsqueeze(-1)
        return (context, weights) if return_attention_scores else context


# -------------------- Decoder state -------------------------------------------------------------------------


def _runs_within_groups(indices: torch.Tensor, group: int) -> bool:
    """Whether `indices` (N,) split into runs of `group` consecutive entries, each run inside one group of rows
    (rows g·s … g·s + g - 1 of sentence s)."""
    if indices.numel() % group:
        return False
    groups = indices.view(-1, group) // group
    return torch.equal(groups, groups[:, :1].expand_as(groups))


class S2SDecoderCache:
    """Decoder state carried between `generate()` steps; every tensor is batch-first.

    - hidden: (B, L, H) RNN hidden state per layer; cell: (B, L, H) for LSTM, else None
    - input_feed: (B, H) previous attentional vector (input feeding), else None
    - self_memory: decoder self-attention keys/values over the tokens seen so far, else None
    - source_memory: attention keys/values of the encoder outputs, projected once per source sentence

    Beam search keeps the beams of a sentence next to each other and `reorder_cache`s them in place. The source
    memory holds each sentence once: `rows_per_source` consecutive rows (its beams) share one row of it, since
    beams only ever move within their sentence.
    """

    is_compileable = False
    is_croppable = False

    def __init__(
        self, hidden: torch.Tensor, cell: torch.Tensor | None = None, input_feed: torch.Tensor | None = None,
        self_memory: AttentionMemory | None = None, source_memory: AttentionMemory | None = None,
        seen_tokens: int = 0, rows_per_source: int = 1,
    ):
        self.hidden = hidden
        self.cell = cell
        self.input_feed = input_feed
        self.self_memory = self_memory
        self.source_memory = source_memory
        self.seen_tokens = seen_tokens
        self.rows_per_source = rows_per_source

    def _apply_to_rows(self, fn) -> None:
        self.hidden = fn(self.hidden)
        if self.cell is not None:
            self.cell = fn(self.cell)
        if self.input_feed is not None:
            self.input_feed = fn(self.input_feed)
        if self.self_memory is not None:
            self.self_memory = self.self_memory.apply(fn)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Row i takes the state of row beam_idx[i] (B,); beams stay within their sentence."""
        beam_idx = beam_idx.to(self.hidden.device)
        self._apply_to_rows(lambda t: t.index_select(0, beam_idx))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply_to_rows(lambda t: t.repeat_interleave(repeats, dim=0))
        self.rows_per_source *= repeats  # the new rows of one source sentence stay next to each other

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices` (in that order). With `rows_per_source` = g > 1, a selection in runs of g rows of
        one sentence each keeps sharing the sentence's source row; any other gives every row its own copy first."""
        self._apply_to_rows(lambda t: t[indices])
        if self.source_memory is None:
            return
        group = self.rows_per_source
        if group > 1 and not _runs_within_groups(indices, group):
            self.source_memory = self.source_memory.apply(lambda t: t.repeat_interleave(group, dim=0))
            self.rows_per_source = group = 1
        rows = indices[::group] // group
        self.source_memory = self.source_memory.apply(lambda t: t[rows])

    def crop(self, max_length: int) -> None:
        raise ValueError(
            "S2SDecoderCache holds a recurrent state that cannot be cropped back to an earlier step, so assisted or "
            "speculative decoding is not supported for this model."
        )

    def __len__(self) -> int:
        return self.hidden.shape[1]


# -------------------- Outputs -------------------------------------------------------------------------------


@dataclass
class S2SEncoderOutput(ModelOutput):
    """Encoder outputs (batch-first so that `generate()` can expand them for beams).

    last_hidden_state: (B, S, H) top-layer outputs, zero at padded positions.
    hidden_states: (embeddings (B, S, E), outputs (B, S, H)) when requested.
    final_hidden: (B, L_enc, H) final hidden state per layer (both directions concatenated).
    final_cell: (B, L_enc, H) final LSTM cell state per layer, None for GRU.
    attention_mask: (B, S) 1 for real tokens.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    final_hidden: torch.FloatTensor | None = None
    final_cell: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


@dataclass
class S2SDecoderOutput(ModelOutput):
    """Decoder outputs.

    last_hidden_state: (B, T, H) attentional vectors; cache: `S2SDecoderCache` when `use_cache`;
    hidden_states: (embeddings, attentional vectors); attentions: self-attention weights (B, h, T, T_total);
    cross_attentions: source attention weights (B, h, T, S).
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: S2SDecoderCache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None


# -------------------- Pre-trained base ----------------------------------------------------------------------


class S2SPreTrainedModel(PreTrainedModel):
    config_class = S2SConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["S2SEncoder", "S2SDecoder"]
    _skip_keys_device_placement = ["cache"]
    _is_stateful = True  # the recurrent state cannot be cropped: no assisted decoding

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # transformers' documented per-model initialisation hook: RNN weights ~ U(-init_std, init_std)
        std = self.config.init_std
        if isinstance(module, (nn.LSTM, nn.GRU)):
            for name, param in module.named_parameters():
                if "weight" in name:
                    nn.init.uniform_(param, -std, std)
                else:
                    nn.init.zeros_(param)
        elif isinstance(module, S2SAttention) and getattr(module, "scale", None) is not None:
            nn.init.constant_(module.scale, module.fixed_scale)
        else:
            super()._init_weights(module)

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict:
        # The encoder/decoder embedding sharing is part of the architecture (`share_encoder_decoder_embeddings`),
        # not of `tie_word_embeddings`, which the base class applies to every entry; so expand our own mapping.
        if all_submodels:
            return super().get_expanded_tied_weights_keys(all_submodels=True)
        return dict(self._tied_weights_keys or {})

    def flatten_rnn_parameters(self) -> None:
        """Re-compact RNN weights (cuDNN needs them contiguous after loading, moving or DDP wrapping)."""
        for module in self.modules():
            if isinstance(module, nn.RNNBase):
                module.flatten_parameters()


# -------------------- Encoder, bridge, decoder --------------------------------------------------------------


def _rnn_class(cell_type: str) -> type[nn.RNNBase]:
    return nn.LSTM if cell_type == "lstm" else nn.GRU


class S2SEncoder(nn.Module):
    """Embedding + (bi)directional multi-layer RNN over each row's real tokens, so padding never changes a result."""

    main_input_name = "input_ids"

    def __init__(self, config: S2SConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        directions = 2 if config.bidirectional_encoder else 1
        self.rnn = _rnn_class(config.cell_type)(
            input_size=config.embedding_size,
            hidden_size=config.hidden_size // directions,
            num_layers=config.encoder_layers,
            bidirectional=config.bidirectional_encoder,
            dropout=config.dropout if config.encoder_layers > 1 else 0.0,
            batch_first=True,
        )

    def _final_states(self, state: torch.Tensor) -> torch.Tensor:
        # (L * directions, B, H / directions) -> (B, L, H), directions concatenated per layer
        layers, batch = self.config.encoder_layers, state.shape[1]
        if self.config.bidirectional_encoder:
            state = state.view(layers, 2, batch, -1).permute(0, 2, 1, 3).reshape(layers, batch, -1)
        return state.transpose(0, 1).contiguous()

    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = True,
    ) -> S2SEncoderOutput:
        """Encode a right-padded batch.

        Args:
            input_ids: (B, S) token ids; the mask is derived from `pad_token_id` when `attention_mask` is None.
            attention_mask: (B, S) 1 for real tokens, 0 for padding (right padding only; any numeric dtype).
            inputs_embeds: (B, S, E) instead of `input_ids` (then `attention_mask` defaults to all ones).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds` to the encoder.")
        if input_ids is not None:
            check_token_ids(input_ids, self.config.vocab_size, "input_ids")
            if attention_mask is None:
                attention_mask = input_ids.ne(self.config.pad_token_id)
            inputs_embeds = self.embed_tokens(input_ids)
        elif attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        attention_mask = check_attention_mask(attention_mask, tuple(inputs_embeds.shape[:2]))
        embeddings = self.embedding_dropout(inputs_embeds)
        lengths = attention_mask.sum(dim=1)
        fast = encoder_rnn(self.rnn, embeddings, lengths) if self.config.fast_paths else None
        outputs, state = fast if fast is not None else self._run_rnn(embeddings, lengths)
        hidden, cell = state if isinstance(state, tuple) else (state, None)
        return S2SEncoderOutput(
            last_hidden_state=outputs,
            hidden_states=(embeddings, outputs) if output_hidden_states else None,
            final_hidden=self._final_states(hidden),
            final_cell=self._final_states(cell) if cell is not None else None,
            attention_mask=attention_mask,
        )

    def _run_rnn(self, embeddings: torch.Tensor, lengths: torch.Tensor):
        """The RNN over the real tokens of each row (a packed sequence): (B, S, E), lengths (B,) -> outputs
        (B, S, H) with zeros at the padding, and the final state after each row's last real token."""
        total_length = embeddings.shape[1]
        if bool((lengths == total_length).all()):
            return self.rnn(embeddings)
        packed = pack_padded_sequence(embeddings, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_outputs, state = self.rnn(packed)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=total_length)
        return outputs, state


class S2SBridge(nn.Module):
    """Initial decoder state from the encoder (`config.bridge`): returns hidden, cell as (B, L_dec, H)."""

    def __init__(self, config: S2SConfig):
        super().__init__()
        self.config = config
        if config.bridge == "linear":
            in_size, out_size = config.encoder_layers * config.hidden_size, config.decoder_layers * config.hidden_size
            self.hidden_proj = nn.Linear(in_size, out_size)
            self.cell_proj = nn.Linear(in_size, out_size) if config.cell_type == "lstm" else None

    def forward(self, encoder_outputs: S2SEncoderOutput, attention_mask: torch.Tensor):
        final_hidden, final_cell = encoder_outputs.final_hidden, encoder_outputs.final_cell
        batch, layers = final_hidden.shape[0], self.config.decoder_layers
        is_lstm = self.config.cell_type == "lstm"
        if self.config.bridge == "last":
            return final_hidden, final_cell if is_lstm else None
        if self.config.bridge == "linear":
            hidden = torch.tanh(self.hidden_proj(final_hidden.flatten(1))).view(batch, layers, -1)
            cell = self.cell_proj(final_cell.flatten(1)).view(batch, layers, -1) if is_lstm else None
            return hidden, cell
        zeros = final_hidden.new_zeros(batch, layers, self.config.hidden_size)
        if self.config.bridge == "zero":
            return zeros, zeros if is_lstm else None
        # mean of the encoder outputs over real tokens, for every layer; the LSTM cell starts at zero
        mask = attention_mask.to(encoder_outputs.last_hidden_state.dtype).unsqueeze(-1)
        mean = (encoder_outputs.last_hidden_state * mask).sum(1) / mask.sum(1)
        return mean.unsqueeze(1).expand(batch, layers, -1).contiguous(), zeros if is_lstm else None


def _mask_per_source(mask: torch.Tensor | None, sources: int, group: int) -> torch.Tensor | None:
    """A source mask of one row per sentence: (B, S) from (B, S) or from the (g·B, S) mask of g rows per sentence."""
    if mask is None or mask.shape[0] == sources:
        return mask
    return mask[::group]


def _cat_ragged(step_weights: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-step self-attention weights (B, h, 1, k_t) of growing k_t into (B, h, T, k_T), zero-padded."""
    width = step_weights[-1].shape[-1]
    return torch.cat([F.pad(w, (0, width - w.shape[-1])) for w in step_weights], dim=2)


class ReferenceStep:
    """One target position of the decoder's step driver, from the parameters of `decoder.rnn` and `decoder.combine`
    (`fast_paths.FastStep` computes the same with fewer, larger or pre-packed matmuls).

    embeddings: (B, T, E) of the positions this call decodes.
    """

    def __init__(self, decoder: S2SDecoder, embeddings: torch.Tensor):
        self.decoder = decoder
        self.embeddings = embeddings

    def rnn(self, t: int, extra_inputs: list[torch.Tensor], hidden: list, cell: list) -> tuple[list, list]:
        """Advance every layer by position t. extra_inputs: the (B, H) input feed and/or Bahdanau context;
        hidden, cell: per-layer lists of (B, H) (cell entries None for GRU). Returns the new lists."""
        rnn = self.decoder.rnn
        x = torch.cat([self.embeddings[:, t], *extra_inputs], dim=-1)
        if not hasattr(rnn, "weight_ih_l0"):  # e.g. a dynamically quantised RNN: no float weights, run the module
            return self._run_module(x, hidden, cell)
        hidden, cell = list(hidden), list(cell)
        for layer in range(rnn.num_layers):
            if layer > 0:
                x = F.dropout(hidden[layer - 1], rnn.dropout, rnn.training)
            w_ih, w_hh, b_ih, b_hh = rnn_layer_weights(rnn, layer)
            input_gates, hidden_gates = F.linear(x, w_ih, b_ih), F.linear(hidden[layer], w_hh, b_hh)
            if cell[layer] is not None:
                hidden[layer], cell[layer] = lstm_cell(input_gates + hidden_gates, cell[layer])
            else:
                hidden[layer] = gru_cell(input_gates, hidden_gates, hidden[layer])
        return hidden, cell

    def _run_module(self, x: torch.Tensor, hidden: list, cell: list) -> tuple[list, list]:
        state = torch.stack(hidden)
        state = (state, torch.stack(cell)) if cell[0] is not None else state
        _, state = self.decoder.rnn(x.unsqueeze(1), state)
        hidden, cell = state if isinstance(state, tuple) else (state, None)
        return list(hidden.unbind(0)), list(cell.unbind(0)) if cell is not None else [None] * hidden.shape[0]

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        """a = tanh(W [c; s; h]): features (B, T, 2H or 3H) -> (B, T, H)."""
        return torch.tanh(self.decoder.combine(features))


class S2SDecoder(nn.Module):
    """Attentional RNN decoder (Luong or Bahdanau style, optional input feeding and causal self-attention).

    One step t (Luong): x_t = [emb(y_t); a_{t-1} if input feeding] → h_t = RNN(x_t, h_{t-1})
    → c_t = attn(h_t, source) → a_t = tanh(W[c_t; s_t; h_t]), with s_t the optional self-attention context over
    h_{≤t}. Bahdanau: c_t = attn(h_{t-1}, source) joins the RNN input instead: x_t = [emb(y_t); a_{t-1}; c_t].
    """

    main_input_name = "input_ids"

    def __init__(self, config: S2SConfig, embed_tokens: nn.Embedding):
        super().__init__()
        self.config = config
        self.embed_tokens = embed_tokens
        self.embedding_dropout = nn.Dropout(config.embedding_dropout)
        hidden = config.hidden_size
        rnn_input_size = config.embedding_size
        rnn_input_size += hidden if config.input_feeding else 0
        rnn_input_size += hidden if config.attention_style == "bahdanau" else 0
        self.rnn = _rnn_class(config.cell_type)(
            input_size=rnn_input_size,
            hidden_size=hidden,
            num_layers=config.decoder_layers,
            dropout=config.dropout if config.decoder_layers > 1 else 0.0,
            batch_first=True,
        )
        self.bridge = S2SBridge(config)
        self.attention = self._build_attention(config)
        self.self_attention = self._build_attention(config) if config.decoder_self_attention else None
        combine_inputs = hidden * (3 if config.decoder_self_attention else 2)
        self.combine = nn.Linear(combine_inputs, hidden, bias=False)
        self.output_dropout = nn.Dropout(config.dropout)

    @staticmethod
    def _build_attention(config: S2SConfig) -> S2SAttention:
        return S2SAttention(
            config.attention_type,
            query_size=config.hidden_size,
            key_size=config.hidden_size,
            num_heads=config.attention_heads,
            dropout=config.attention_dropout,
            learnable_scale=config.attention_learnable_scale,
        )

    def init_cache(
        self, encoder_outputs: S2SEncoderOutput, attention_mask: torch.Tensor | None, batch_size: int | None = None
    ) -> S2SDecoderCache:
        """Decoder state before the first target token, for `batch_size` decoder rows (default: one per source).

        The encoder outputs cover B sentences; `batch_size` may be a multiple g·B (beam search: g beams per
        sentence, rows of one sentence next to each other). The state is then repeated per row, while the source
        memory keeps one row per sentence (`S2SDecoderCache.rows_per_source` = g). attention_mask: (B, S) or (g·B, S).
        """
        source = encoder_outputs.last_hidden_state
        sources = source.shape[0]
        rows = batch_size or sources
        if rows % sources:
            raise ValueError(
                f"The decoder got {rows} rows for encoder outputs of {sources} sentences; it needs the same number "
                "of rows, or a multiple of it (beams of each sentence next to each other)."
            )
        group = rows // sources
        hidden, cell = self.bridge(encoder_outputs, _mask_per_source(attention_mask, sources, group))
        if group > 1:
            hidden = hidden.repeat_interleave(group, dim=0)
            cell = cell.repeat_interleave(group, dim=0) if cell is not None else None
        input_feed = hidden.new_zeros(hidden.shape[0], self.config.hidden_size) if self.config.input_feeding else None
        return S2SDecoderCache(
            hidden=hidden,
            cell=cell,
            input_feed=input_feed,
            source_memory=self.attention.prepare_memory(source, source),
            rows_per_source=group,
        )

    def _attend_source(
        self, query: torch.Tensor, cache: S2SDecoderCache, source_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of `query` (N, T, H) over the source: context (N, T, H) and weights (N, h, T, S).

        With g rows per source sentence, the g·T queries of a sentence attend together over its one memory row.
        """
        group = cache.rows_per_source
        memory = cache.source_memory
        mask = _mask_per_source(source_mask, memory.keys.shape[0], group)
        if group == 1:
            return self.attention.attend(query, memory, value_mask=mask)
        rows, length = query.shape[:2]
        context, weights = self.attention.attend(query.reshape(rows // group, group * length, -1), memory, mask)
        # (N/g, g·T, H) -> (N, T, H);  (N/g, h, g·T, S) -> (N, h, T, S)
        weights = weights.unflatten(2, (group, length)).transpose(1, 2).flatten(0, 1)
        return context.reshape(rows, length, -1), weights

    def _self_attend(
        self, rnn_output: torch.Tensor, cache: S2SDecoderCache, key_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Causal self-attention of the new RNN outputs (B, T, H) over all outputs so far; grows the cache."""
        if self.self_attention is None:
            return None, None
        new_memory = self.self_attention.prepare_memory(rnn_output, rnn_output)
        memory = new_memory if cache.self_memory is None else cache.self_memory.append(new_memory)
        cache.self_memory = memory
        if key_mask is not None:
            seen = memory.keys.shape[2] - key_mask.shape[1]
            key_mask = torch.cat([key_mask.new_ones(key_mask.shape[0], seen), key_mask], dim=1)
        return self.self_attention.attend(rnn_output, memory, value_mask=key_mask, causal=True)

    def _attentional_vector(self, step, rnn_output, context, self_context) -> torch.Tensor:
        # (B, T, H) each -> a = tanh(W [c; s; h]): (B, T, H)
        parts = [context, rnn_output] if self_context is None else [context, self_context, rnn_output]
        return self.output_dropout(step.combine(torch.cat(parts, dim=-1)))

    def _forward_fused(self, embeddings, cache, source_mask, decoder_attention_mask):
        """Luong attention without input feeding: the RNN and attention run over all T positions at once."""
        hidden = cache.hidden.transpose(0, 1).contiguous()  # (L, B, H)
        state = (hidden, cache.cell.transpose(0, 1).contiguous()) if cache.cell is not None else hidden
        rnn_output, state = self.rnn(embeddings, state)  # (B, T, H)
        hidden, cell = state if isinstance(state, tuple) else (state, None)
        cache.hidden, cache.cell = hidden.transpose(0, 1), cell.transpose(0, 1) if cell is not None else None
        context, cross_weights = self._attend_source(rnn_output, cache, source_mask)
        self_context, self_weights = self._self_attend(rnn_output, cache, decoder_attention_mask)
        output = self._attentional_vector(ReferenceStep(self, embeddings), rnn_output, context, self_context)
        return output, cross_weights, self_weights

    def _forward_steps(self, embeddings, cache, source_mask, decoder_attention_mask):
        """One RNN step per target position (input feeding, Bahdanau, and incremental generation)."""
        step = decoder_step(self, embeddings, cache) if self.config.fast_paths else None
        step = step or ReferenceStep(self, embeddings)
        hidden = list(cache.hidden.unbind(1))
        cell = list(cache.cell.unbind(1)) if cache.cell is not None else [None] * len(hidden)
        input_feed = cache.input_feed
        bahdanau = self.config.attention_style == "bahdanau"
        outputs, cross_weights, self_weights = [], [], []
        for t in range(embeddings.shape[1]):
            extra_inputs = [] if input_feed is None else [input_feed]
            if bahdanau:
                query = hidden[-1].unsqueeze(1)  # previous top-layer state: (B, 1, H)
                context, weights_t = self._attend_source(query, cache, source_mask)
                extra_inputs.append(context.squeeze(1))
            hidden, cell = step.rnn(t, extra_inputs, hidden, cell)
            rnn_output = hidden[-1].unsqueeze(1)  # (B, 1, H)
            if not bahdanau:
                context, weights_t = self._attend_source(rnn_output, cache, source_mask)
            step_mask = decoder_attention_mask[:, t : t + 1] if decoder_attention_mask is not None else None
            self_context, self_weight = self._self_attend(rnn_output, cache, step_mask)
            output = self._attentional_vector(step, rnn_output, context, self_context)  # (B, 1, H)
            if input_feed is not None:
                input_feed = output.squeeze(1)
            outputs.append(output)
            cross_weights.append(weights_t)
            self_weights.append(self_weight)
        cache.hidden = torch.stack(hidden, dim=1)
        cache.cell = torch.stack(cell, dim=1) if cell[0] is not None else None
        cache.input_feed = input_feed
        self_attention = _cat_ragged(self_weights) if self.self_attention is not None else None
        return torch.cat(outputs, dim=1), torch.cat(cross_weights, dim=2), self_attention

    @deprecate_kwarg("past_key_values", version="6.0.0", new_name="cache")
    def forward(
        self, input_ids: torch.LongTensor | None, encoder_outputs: S2SEncoderOutput,
        encoder_attention_mask: torch.Tensor | None, cache: S2SDecoderCache | None = None,
        decoder_attention_mask: torch.Tensor | None = None, use_cache: bool = False, output_attentions: bool = False,
        output_hidden_states: bool = False, inputs_embeds: torch.FloatTensor | None = None,
    ) -> S2SDecoderOutput:
        """Decode T target positions, continuing from `cache` when given.

        Args:
            input_ids: (B, T) decoder input ids (or `inputs_embeds` (B, T, E) instead).
            encoder_outputs: the encoder's output for the same batch (one row per sentence, or per beam).
            encoder_attention_mask: (B, S) 1 for real source tokens.
            decoder_attention_mask: (B, T) 1 for real target tokens (keys of the self-attention only: padded
                targets sit at the end, which a causal decoder never looks ahead to).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `decoder_input_ids` or `decoder_inputs_embeds` to the decoder.")
        if input_ids is not None:
            check_token_ids(input_ids, self.config.decoder_vocab_size, "decoder_input_ids")
            inputs_embeds = self.embed_tokens(input_ids)
        shape = tuple(inputs_embeds.shape[:2])
        if decoder_attention_mask is not None and tuple(decoder_attention_mask.shape) != shape:
            raise ValueError(
                f"`decoder_attention_mask` has shape {tuple(decoder_attention_mask.shape)} but the decoder inputs "
                f"have shape {shape}."
            )
        if cache is None:
            cache = self.init_cache(encoder_outputs, encoder_attention_mask, batch_size=shape[0])
        embeddings = self.embedding_dropout(inputs_embeds)
        # fused only pays off over several positions; a single position (generation) takes the step driver
        drive = self._forward_fused if self.config.fused_decoder and shape[1] > 1 else self._forward_steps
        outputs, cross_weights, self_weights = drive(embeddings, cache, encoder_attention_mask, decoder_attention_mask)
        cache.seen_tokens += shape[1]
        return S2SDecoderOutput(
            last_hidden_state=outputs,
            cache=cache if use_cache else None,
            hidden_states=(embeddings, outputs) if output_hidden_states else None,
            attentions=(self_weights,) if output_attentions and self_weights is not None else None,
            cross_attentions=(cross_weights,) if output_attentions else None,
        )


# -------------------- Models --------------------------------------------------------------------------------


class S2SModel(S2SPreTrainedModel):
    """The bare encoder–decoder returning the decoder's attentional vectors (`Seq2SeqModelOutput`)."""

    def __init__(self, config: S2SConfig):
        super().__init__(config)
        padding_idx = config.pad_token_id
        if config.share_encoder_decoder_embeddings:
            self.shared = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx)
            encoder_embeddings = decoder_embeddings = self.shared
            self._tied_weights_keys = {
                "encoder.embed_tokens.weight": "shared.weight",
                "decoder.embed_tokens.weight": "shared.weight",
            }
        else:
            encoder_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx)
            decoder_embeddings = nn.Embedding(config.decoder_vocab_size, config.embedding_size, padding_idx)
            self._tied_weights_keys = None
        self.encoder = S2SEncoder(config, encoder_embeddings)
        self.decoder = S2SDecoder(config, decoder_embeddings)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if self.config.share_encoder_decoder_embeddings:
            self.shared = value
            self.decoder.embed_tokens = value
        self.encoder.embed_tokens = value

    def get_decoder_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def set_decoder_input_embeddings(self, value: nn.Embedding) -> None:
        if self.config.share_encoder_decoder_embeddings:
            raise ValueError(
                "The decoder shares its embeddings with the encoder (`share_encoder_decoder_embeddings=True`); "
                "use `set_input_embeddings` instead."
            )
        self.decoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> S2SEncoder:
        return self.encoder

    def get_decoder(self, modality: str | None = None) -> S2SDecoder:
        return self.decoder

    @deprecate_kwarg("past_key_values", version="6.0.0", new_name="cache")
    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: S2SEncoderOutput | None = None, cache: S2SDecoderCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None, decoder_inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None, output_attentions: bool | None = None,
        output_hidden_states: bool | None = None, return_dict: bool | None = None,
    ) -> Seq2SeqModelOutput | tuple:
        """Encode (unless `encoder_outputs` are given) and decode `decoder_input_ids` (B, T) (or
        `decoder_inputs_embeds` (B, T, E)).

        Returns `Seq2SeqModelOutput` with `last_hidden_state` (B, T, H) attentional vectors, `cache`
        (`S2SDecoderCache`) when `use_cache`, `cross_attentions` ((B, h, T, S),) when `output_attentions`.
        """
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError(
                "`decoder_input_ids` are required: pass them, or pass `labels` to S2SForConditionalGeneration "
                "(decoder inputs are then built by shifting the labels right), or call `generate()`."
            )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                                           inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states)
        elif not isinstance(encoder_outputs, S2SEncoderOutput):
            raise ValueError(
                f"`encoder_outputs` must be the S2SEncoderOutput returned by `model.get_encoder()(...)`; got "
                f"{type(encoder_outputs).__name__}, which lacks the final encoder states the decoder starts from."
            )
        source_mask = attention_mask if attention_mask is not None else encoder_outputs.attention_mask
        if cache is not None and not isinstance(cache, S2SDecoderCache):
            cache = None  # e.g. an empty transformers Cache: the recurrent state starts from the bridge
        decoder_outputs = self.decoder(
            decoder_input_ids, encoder_outputs, source_mask, cache=cache, decoder_attention_mask=decoder_attention_mask,
            use_cache=use_cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            inputs_embeds=decoder_inputs_embeds,
        )
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class S2SForConditionalGeneration(ResizableVocabularyMixin, S2SPreTrainedModel, GenerationMixin):
    """Encoder–decoder with a language-modelling head; trains with `labels` and decodes with `generate()`."""

    accepts_loss_kwargs = True

    def __init__(self, config: S2SConfig):
        super().__init__(config)
        self.model = S2SModel(config)
        tied = config.tie_word_embeddings
        needs_projection = tied and config.embedding_size != config.hidden_size
        self.output_projection = (
            nn.Linear(config.hidden_size, config.embedding_size, bias=False) if needs_projection else nn.Identity()
        )
        head_input = config.embedding_size if tied else config.hidden_size
        self.lm_head = nn.Linear(head_input, config.decoder_vocab_size, bias=False)
        embedding_source = "model.shared.weight" if config.share_encoder_decoder_embeddings else (
            "model.decoder.embed_tokens.weight"
        )
        self._tied_weights_keys = {f"model.{k}": f"model.{v}" for k, v in (self.model._tied_weights_keys or {}).items()}
        if tied:
            self._tied_weights_keys["lm_head.weight"] = embedding_source
        generation_config = self.generation_config
        generation_config.num_beams = 5
        generation_config.max_length = 128
        generation_config.early_stopping = True
        self.post_init()

    def get_encoder(self, modality: str | None = None) -> S2SEncoder:
        return self.model.encoder

    def get_decoder(self, modality: str | None = None) -> S2SDecoder:
        return self.model.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def vocabulary_logits(self, hidden: torch.Tensor, cache: S2SDecoderCache | None = None) -> torch.Tensor:
        """(…, H) attentional vectors -> (…, V) logits: lm_head(output_projection(a))."""
        fast = output_logits(self, hidden, cache) if self.config.fast_paths else None
        return fast if fast is not None else self.lm_head(self.output_projection(hidden))

    def token_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        """Cross-entropy of logits (..., V) against labels (...), `-100` ignored, with `config.label_smoothing`:
        summed over tokens, divided by the real-token count of the whole (accumulated) batch when Trainer gives it
        (`num_items_in_batch`), else of this batch."""
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
            label_smoothing=self.config.label_smoothing,
        )
        denominator = num_items_in_batch if num_items_in_batch is not None else labels.ne(-100).sum()
        if torch.is_tensor(denominator):
            denominator = denominator.to(loss.device)
        return loss / denominator

    @deprecate_kwarg("past_key_values", version="6.0.0", new_name="cache")
    def forward(
        self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: S2SEncoderOutput | None = None, cache: S2SDecoderCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None, decoder_inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None, use_cache: bool | None = None,
        output_attentions: bool | None = None, output_hidden_states: bool | None = None,
        return_dict: bool | None = None, num_items_in_batch: int | torch.Tensor | None = None,
    ) -> Seq2SeqLMOutput | tuple:
        """Returns `Seq2SeqLMOutput` with logits (B, T, V) and, given `labels` (B, T) (`-100` ignored), the
        token-averaged cross-entropy `loss`. Without decoder inputs, they are `labels` shifted right.

        With `config.fast_paths`, training mode and `labels`, the output layer runs only up to each row's last
        label that is not -100 (`fast_paths.span_logits_and_loss`); the logits after it are 0."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            check_token_ids(labels, self.config.decoder_vocab_size, "labels", allow_ignore_index=True)
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            decoder_shape = (decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds).shape[:2]
            if tuple(labels.shape) != tuple(decoder_shape):
                raise ValueError(
                    f"`labels` have shape {tuple(labels.shape)} but the decoder inputs have shape "
                    f"{tuple(decoder_shape)}."
                )
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, cache=cache,
            inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds, use_cache=use_cache,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
        )
        hidden = outputs.last_hidden_state
        fast = None
        if labels is not None and self.training and self.config.fast_paths:
            fast = span_logits_and_loss(self, hidden, labels, num_items_in_batch)
        if fast is not None:
            logits, loss = fast
        else:
            logits = self.vocabulary_logits(hidden, outputs.cache)
            loss = self.token_loss(logits, labels, num_items_in_batch) if labels is not None else None
        passed_on = {key: value for key, value in outputs.items() if key != "last_hidden_state"}
        output = Seq2SeqLMOutput(loss=loss, logits=logits, **passed_on)
        return output if return_dict else output.to_tuple()

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """transformers' `generate()`. With `config.fast_paths`, greedy and beam search run through
        `generation_s2s.decode` (transformers' supported `custom_generate` hook) when it returns the same
        sequences; every other option goes to transformers' loops unchanged."""
        if self.config.fast_paths and can_decode(self, generation_config, kwargs):
            kwargs.update(decoding_arguments())
        with max_new_tokens_replace_the_default_max_length(self, generation_config, kwargs):
            return super().generate(inputs, generation_config, **kwargs)


__all__ = [
    "AttentionMemory",
    "S2SAttention",
    "S2SDecoderCache",
    "S2SEncoderOutput",
    "S2SPreTrainedModel",
    "S2SModel",
    "S2SForConditionalGeneration",
    "gru_cell",
    "lstm_cell",
    "shift_tokens_right",
]
