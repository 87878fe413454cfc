"""RNN (LSTM/GRU) encoder–decoder with Luong, Bahdanau and self-attention, as a transformers model.

Read bottom-up: helpers → attention → decoder cache → outputs → pre-trained base → encoder, bridge, decoder →
`S2SModel` → `S2SForConditionalGeneration`. Shapes: B batch, S source length, T target length, H hidden size,
E embedding size, L layers, V vocabulary, h heads.

The decoder has one piece of math per concept (RNN cell, attention, combination into the attentional
vector) and two ways to drive it: a *fused* path that runs the RNN over the whole target in one call
(Luong attention without input feeding: no step depends on the previous attentional vector) and a *step*
path (input feeding, Bahdanau). Both use the same modules, and generation uses the step/fused code with the
recurrent state kept in `S2SDecoderCache`, so each new token costs one RNN step plus attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation import logits_process as hf_processors
from transformers.generation import stopping_criteria as hf_criteria
from transformers.generation.stopping_criteria import EosTokenCriteria
from transformers.generation.utils import GenerateBeamEncoderDecoderOutput, GenerateEncoderDecoderOutput
from transformers.modeling_outputs import ModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_s2s import ATTENTION_TYPES, S2SConfig

# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


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


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str, allow_ignore_index: bool = False) -> None:
    """Raise `ValueError` for an empty tensor or ids outside `[0, vocab_size)` (`-100` allowed for labels)."""
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch, length); got shape {tuple(ids.shape)}.")
    if ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(ids.shape)}); every sequence needs at least one token.")
    if ids.dtype.is_floating_point:
        raise ValueError(f"`{name}` must hold integer token ids; got dtype {ids.dtype}.")
    if torch.compiler.is_compiling():
        return  # reading values back to Python would break the compiled graph; eager calls check them
    checked = ids[ids != -100] if allow_ignore_index else ids
    if checked.numel() == 0:
        return
    low, high = int(checked.min()), int(checked.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        allowed = f"[0, {vocab_size - 1}]" + (" or -100 (ignored)" if allow_ignore_index else "")
        raise ValueError(f"`{name}` contains token id {bad}, outside the vocabulary: allowed ids are {allowed}.")


def check_attention_mask(mask: torch.Tensor, input_shape: tuple[int, ...], name: str = "attention_mask") -> None:
    """Raise `ValueError` unless `mask` is a right-padded (B, S) 0/1 mask with at least one real token per row."""
    if tuple(mask.shape) != tuple(input_shape):
        raise ValueError(f"`{name}` has shape {tuple(mask.shape)} but the inputs have shape {tuple(input_shape)}.")
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"Row {row} of the source batch is all padding; every sequence needs at least one real token.")
    if mask.shape[1] > 1 and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(
            f"`{name}` must be right-padded (ones, then zeros); left padding is not supported by the packed RNN "
            "encoder. Use a tokenizer with padding_side='right'."
        )


# ---------------------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------------------


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

    Args:
        attention_type: one of the score names above.
        query_size, key_size: widths of queries and keys; value_size defaults to key_size.
        num_heads: heads for `multihead` (must divide `query_size`), else 1.
        attention_size: width of the tanh layer for `concat`/`additive` (defaults to `query_size`).
        dropout: dropout on the attention weights.
        learnable_scale: learn the scale of `scaled_dot`.
    """

    def __init__(
        self,
        attention_type: str,
        query_size: int,
        key_size: int,
        value_size: int | None = None,
        num_heads: int = 1,
        attention_size: int | None = None,
        dropout: float = 0.0,
        learnable_scale: bool = False,
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
            return query.unsqueeze(1) @ keys.transpose(-1, -2)
        if kind == "scaled_dot":
            scale = self.scale if self.scale is not None else self.fixed_scale
            return (query.unsqueeze(1) @ keys.transpose(-1, -2)) * scale
        if kind == "multihead":
            queries = self._split_heads(self.query_proj(query))
            return (queries @ keys.transpose(-1, -2)) / math.sqrt(queries.shape[-1])
        # concat / additive: (B, 1, T, 1, A) + (B, 1, 1, S, A) -> (B, 1, T, S)
        hidden = torch.tanh(self.query_proj(query)[:, None, :, None, :] + keys[:, :, None, :, :])
        return self.score_proj(hidden).squeeze(-1)

    def attend(
        self,
        query: torch.Tensor,
        memory: AttentionMemory,
        value_mask: torch.Tensor | None = None,
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
        context = self.dropout(weights) @ memory.values  # (B, h, T, d_v)
        context = context.transpose(1, 2).flatten(2)  # (B, T, h*d_v)
        if self.attention_type == "multihead":
            context = self.out_proj(context)
        return context, weights

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        key: torch.Tensor | None = None,
        query_mask: torch.Tensor | None = None,
        value_mask: torch.Tensor | None = None,
        causal: bool = False,
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


# ---------------------------------------------------------------------------------------------------------------
# Recurrent decoder state
# ---------------------------------------------------------------------------------------------------------------


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on `device_type` ("cpu", "cuda"), or None outside autocast."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: one function per device type
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if not enabled:
        return None
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device_type)
    return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


def _onednn_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias, activation: str = "none") -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, activation, [], "")


class _PackedLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b through oneDNN with reordered weights: W for the forward, Wᵀ for the input's gradient.

    With `pairs` (a list shared by every step of one forward), the backward leaves (output gradient, input) in it
    instead of returning gradients for W and b; `_DeferredWeightGradient` turns all pairs into them at once."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed: PackedWeights, name: str, pairs: list | None):
        ctx.save_for_backward(x, weight)
        ctx.packed, ctx.name, ctx.has_bias, ctx.pairs = packed, name, bias is not None, pairs
        return _onednn_linear(x, packed.reordered(name, weight), bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_linear(grad, ctx.packed.reordered(f"{ctx.name}.T", weight.t()), None)
        if ctx.pairs is not None:
            ctx.pairs.append((grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])))
            return grad_x, None, None, None, None, None
        if ctx.needs_input_grad[1]:
            grad_weight = grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_weight, grad_bias, None, None, None


class _DeferredWeightGradient(torch.autograd.Function):
    """Identity on a weight (and bias) used by every step of a loop through `_PackedLinearFunction`.

    Autograd runs this node's backward after the backward of every step that used its outputs; those steps left
    their (output gradient (N, out), input (N, in)) pairs in `pairs`. The weight's gradient is then one matmul
    over all steps' rows instead of one small matmul per step (64 rows: K = 64) plus adding each into the
    gradient: ≈ 1.3× faster for those matmuls on the project's CPU.
    """

    @staticmethod
    def forward(ctx, weight, bias, pairs: list):
        ctx.pairs, ctx.has_bias = pairs, bias is not None
        return (weight.view_as(weight), bias.view_as(bias)) if bias is not None else weight.view_as(weight)

    @staticmethod
    def backward(ctx, *unused_grads):
        if not ctx.pairs:
            return None, None, None
        grads = torch.cat([grad for grad, _ in ctx.pairs])
        inputs = torch.cat([x for _, x in ctx.pairs])
        ctx.pairs.clear()
        return grads.t() @ inputs, grads.sum(0) if ctx.has_bias else None, None


def _fingerprint(tensor: torch.Tensor) -> tuple | None:
    """What changes when `tensor`'s values do: its storage, its version counter (bumped by every in-place
    operation) and a sum over 64 of its elements spread across it (for writes through `.data`, which bypass the
    version counter). None for inference tensors, which keep no version counter."""
    if tensor.is_inference():
        return None
    flat = tensor.detach().reshape(-1)
    sample = float(flat[:: max(1, flat.numel() // 64)].sum())
    return tensor.data_ptr(), tensor._version, sample


class PackedWeights:
    """Weights reordered once into oneDNN's blocked layout, reused by every step of one decoder call.

    The decoder's step loop multiplies the same weights by a few dozen rows per step (training with input
    feeding, and decoding); with the weight reordered once, oneDNN does that 1.3–1.6× faster than the default
    fp32 matmul (MKL) on the project's AMD AVX-512 machine (`benchmarks/README.md`, fifth session). Used for fp32
    on CPU outside autocast (`available`), in training too (the input's gradient goes through the reordered Wᵀ,
    the weight's gradient is a plain matmul); results equal `F.linear` up to float rounding. A weight is
    reordered on first use; copies start empty. `is_current` tells whether every parameter a weight was derived
    from is unchanged since, so that decoding can reuse the reordered weights from one `generate()` call to the
    next.
    """

    def __init__(self):
        self._reordered: dict[str, torch.Tensor] = {}
        self._weights: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._pairs: dict[str, list] = {}  # per weight in training: the steps' (output gradient, input) pairs
        self._sources: dict[str, tuple[tuple[torch.Tensor, tuple | None], ...]] = {}  # parameters, fingerprints

    def is_current(self) -> bool:
        """Whether every parameter behind the weights reordered so far still holds what it held then."""
        return all(
            fingerprint is not None and _fingerprint(tensor) == fingerprint
            for sources in self._sources.values()
            for tensor, fingerprint in sources
        )

    @staticmethod
    def available(weight: torch.Tensor) -> bool:
        """Whether the decoder's matmuls with `weight` (a parameter of the model) can go through oneDNN: fp32 on
        an x86 CPU with AVX2 or AVX-512 (where it was measured), outside autocast and `torch.compile`."""
        return (
            weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and _autocast_dtype("cpu") is None
            and not torch.compiler.is_compiling()
            and torch.backends.mkldnn.is_available()
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
        )

    def reordered(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if name not in self._reordered:
            self._reordered[name] = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        return self._reordered[name]

    def linear(
        self, name: str, x: torch.Tensor, sources: tuple[torch.Tensor | None, ...], derive=None,
        activation: str = "none",
    ) -> torch.Tensor:
        """`F.linear(x, weight, bias)`, then `activation` ("none" or "tanh"). (weight, bias) are `sources` itself, or
        `derive(*sources)` (e.g. two weights side by side). They are made once per `name`: later calls reuse the
        tensors (and their autograd history)."""
        if name not in self._weights:
            self._sources[name] = tuple((t, _fingerprint(t)) for t in sources if t is not None)
            weight_and_bias = derive(*sources) if derive is not None else sources
            self._weights[name] = self._deferring_gradients(name, *weight_and_bias)
        weight, bias = self._weights[name]
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        )
        if not needs_grad:
            return _onednn_linear(x, self.reordered(name, weight), bias, activation)
        output = _PackedLinearFunction.apply(x, weight, bias, self, name, self._pairs.get(name))
        return torch.tanh(output) if activation == "tanh" else output

    def _deferring_gradients(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None):
        """(weight, bias) as the steps should use them: behind a `_DeferredWeightGradient` when they need a
        gradient, so the steps' contributions become one matmul."""
        if not (torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))):
            return weight, bias
        self._pairs[name] = []
        anchored = _DeferredWeightGradient.apply(weight, bias, self._pairs[name])
        return anchored if bias is not None else (anchored, None)

    def module(self, name: str, x: torch.Tensor, module: nn.Module, activation: str = "none") -> torch.Tensor:
        """Apply an `nn.Linear` (or `nn.Identity`) `module` to `x`."""
        if isinstance(module, nn.Identity):
            return torch.tanh(x) if activation == "tanh" else x
        return self.linear(name, x, (module.weight, module.bias), activation=activation)

    def __deepcopy__(self, memo) -> PackedWeights:
        return PackedWeights()  # reordered oneDNN tensors cannot be copied; they are rebuilt on demand

    def __getstate__(self) -> dict:
        return {}  # nor pickled (torch.save of a whole model): the unpickled object starts empty

    def __setstate__(self, state: dict) -> None:
        self.__init__()


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
    - source_memory: attention keys/values of the encoder outputs, projected once per source
    - packed_weights: the decoder's and output layer's weights reordered for oneDNN (`PackedWeights`) when
      decoding without gradients in fp32 on CPU, else None; the decoder hands the same object to later caches
      while the weights are unchanged (`S2SDecoder._reusable_packed_weights`)

    Beam search calls `reorder_cache` in place. `source_memory` is not reordered there: beams only ever move
    within one example, and every beam of an example holds the same encoder outputs. In beam search it holds each
    source sentence once: `rows_per_source` consecutive rows (the beams) share one row of `source_memory`.

    Greedy search and sampling drop rows that have finished (`drop_finished_rows`): the cache then holds only
    the rows listed in `active_rows` (indices into `generate()`'s batch), and the model computes only those.
    """

    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        hidden: torch.Tensor,
        cell: torch.Tensor | None = None,
        input_feed: torch.Tensor | None = None,
        self_memory: AttentionMemory | None = None,
        source_memory: AttentionMemory | None = None,
        seen_tokens: int = 0,
    ):
        self.hidden = hidden
        self.cell = cell
        self.input_feed = input_feed
        self.self_memory = self_memory
        self.source_memory = source_memory
        self.seen_tokens = seen_tokens
        self.active_rows: torch.Tensor | None = None
        self.packed_weights: PackedWeights | None = None
        self.rows_per_source = 1

    def _apply(self, fn, include_source: bool) -> None:
        self.hidden = fn(self.hidden)
        if self.cell is not None:
            self.cell = fn(self.cell)
        if self.input_feed is not None:
            self.input_feed = fn(self.input_feed)
        if self.self_memory is not None:
            self.self_memory = self.self_memory.apply(fn)
        if include_source and self.source_memory is not None:
            self.source_memory = self.source_memory.apply(fn)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Row i takes the state of row beam_idx[i] (B,), indices over `generate()`'s whole batch."""
        beam_idx = beam_idx.to(self.hidden.device)
        if self.active_rows is not None:
            # Beams move within one sentence and sentences leave whole: active rows take their state from
            # active rows; map those batch indices to positions in the shrunken state.
            beam_idx = torch.searchsorted(self.active_rows, beam_idx[self.active_rows])
        self._apply(lambda t: t.index_select(0, beam_idx), include_source=False)

    def drop_finished_rows(self, finished: torch.Tensor) -> None:
        """Forget the state of rows that have finished. finished: (B,) bool over `generate()`'s whole batch."""
        rows = self.active_rows
        if rows is None:
            rows = torch.arange(finished.shape[0], device=finished.device)
        keep = (~finished[rows]).nonzero().squeeze(1)
        if keep.numel() == rows.numel():
            return
        self.batch_select_indices(keep)
        self.active_rows = rows[keep]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0), include_source=False)
        self.rows_per_source *= repeats  # the new rows of one source sentence stay next to each other

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows `indices` (in that order). With `rows_per_source` = g > 1, a selection in runs of g rows of
        one sentence each keeps sharing the sentence's source row; any other gives every row its own copy first."""
        self._apply(lambda t: t[indices], include_source=False)
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


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Pre-trained base
# ---------------------------------------------------------------------------------------------------------------


class S2SPreTrainedModel(PreTrainedModel):
    config_class = S2SConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["S2SEncoder", "S2SDecoder"]
    _skip_keys_device_placement = ["cache"]
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
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

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The decoder state is recurrent; generate() must not build a key/value cache for it.
        return False

    def flatten_rnn_parameters(self) -> None:
        """Re-compact RNN weights (cuDNN needs them contiguous after loading, moving or DDP wrapping)."""
        for module in self.modules():
            if isinstance(module, nn.RNNBase):
                module.flatten_parameters()


# ---------------------------------------------------------------------------------------------------------------
# Encoder, bridge, decoder
# ---------------------------------------------------------------------------------------------------------------


#: Above this many distinct source lengths in a batch, the CPU encoder packs the batch instead of running one RNN
#: call per length (measured faster with up to 16 lengths in batches of 64, `benchmarks/bench_encoder.py`; with
#: many more, each call would cover only a few rows).
MAX_LENGTH_GROUPS = 16


def _rnn_class(cell_type: str) -> type[nn.RNNBase]:
    return nn.LSTM if cell_type == "lstm" else nn.GRU


class S2SEncoder(nn.Module):
    """Embedding + (bi)directional multi-layer RNN over packed sequences, so padding never changes a result."""

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
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = True,
    ) -> S2SEncoderOutput:
        """Encode a right-padded batch.

        Args:
            input_ids: (B, S) token ids; the mask is derived from `pad_token_id` when `attention_mask` is None.
            attention_mask: (B, S) 1 for real tokens, 0 for padding (right padding only).
            inputs_embeds: (B, S, E) instead of `input_ids` (then `attention_mask` defaults to all ones).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds` to the encoder.")
        if input_ids is not None:
            check_token_ids(input_ids, self.config.vocab_size, "input_ids")
            if attention_mask is None:
                attention_mask = input_ids.ne(self.config.pad_token_id).long()
            inputs_embeds = self.embed_tokens(input_ids)
        elif attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        check_attention_mask(attention_mask, tuple(inputs_embeds.shape[:2]))
        embeddings = self.embedding_dropout(inputs_embeds)
        outputs, state = self._run_rnn(embeddings, attention_mask.sum(dim=1))
        hidden, cell = state if isinstance(state, tuple) else (state, None)
        return S2SEncoderOutput(
            last_hidden_state=outputs,
            hidden_states=(embeddings, outputs) if output_hidden_states else None,
            final_hidden=self._final_states(hidden),
            final_cell=self._final_states(cell) if cell is not None else None,
            attention_mask=attention_mask,
        )


    def _run_rnn(self, embeddings: torch.Tensor, lengths: torch.Tensor):
        """The RNN over the real tokens of each row: (B, S, E), lengths (B,) -> outputs (B, S, H) with zeros at
        the padding, and the final state after each row's last real token."""
        total_length = embeddings.shape[1]
        if bool((lengths == total_length).all()):
            return self.rnn(embeddings)
        if embeddings.device.type == "cpu":
            distinct = lengths.unique()
            if len(distinct) <= MAX_LENGTH_GROUPS and int(distinct[0]) > 0:
                return self._rnn_per_length(embeddings, lengths, distinct.tolist())
        packed = pack_padded_sequence(embeddings, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_outputs, state = self.rnn(packed)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=total_length)
        return outputs, state

    def _rnn_per_length(self, embeddings: torch.Tensor, lengths: torch.Tensor, distinct: list[int]):
        """`_run_rnn` as one call per group of rows of the same length, each cut to that length: the same result
        as packing. On CPU a packed sequence runs PyTorch's step-by-step RNN, while an unpacked batch runs
        oneDNN's fused RNN kernel (forward and backward): the encoder's forward and backward are 1.24–1.54×
        faster this way with 2–5 lengths per batch and 1.26–1.37× with 13–16 (`benchmarks/bench_encoder.py`)."""
        total_length = embeddings.shape[1]
        groups = [(lengths == length).nonzero().squeeze(1) for length in distinct]
        outputs, states = [], []
        for rows, length in zip(groups, distinct):
            group_outputs, group_state = self.rnn(embeddings[rows, :length])
            outputs.append(F.pad(group_outputs, (0, 0, 0, total_length - length)))
            states.append(group_state)
        restore = torch.cat(groups).argsort()  # rows back in batch order
        if isinstance(states[0], tuple):  # LSTM: (hidden, cell), each (layers·directions, rows, H)
            state = tuple(torch.cat(parts, dim=1)[:, restore] for parts in zip(*states))
        else:
            state = torch.cat(states, dim=1)[:, restore]
        return torch.cat(outputs)[restore], state


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


class S2SDecoder(nn.Module):
    """Attentional RNN decoder (Luong or Bahdanau style, optional input feeding and causal self-attention).

    One step t (Luong): x_t = [emb(y_t); a_{t-1} if input feeding] → h_t = RNN(x_t) → c_t = attn(h_t, source)
    → a_t = tanh(W[c_t; s_t; h_t]) with s_t the optional self-attention context over h_{≤t}.
    Bahdanau: c_t = attn(h_{t-1}, source) joins the RNN input instead, and a_t = tanh(W[c_t; s_t; h_t]).
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
        self._decoding_weights: PackedWeights | None = None  # reordered by the last generate() call

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

    # -- shared pieces --------------------------------------------------------------------------------------

    def init_cache(
        self, encoder_outputs: S2SEncoderOutput, attention_mask: torch.Tensor | None, batch_size: int | None = None
    ) -> S2SDecoderCache:
        """Decoder state before the first target token, for `batch_size` decoder rows (default: one per source).

        The encoder outputs cover B sentences; `batch_size` may be a multiple g·B (beam search: g beams per
        sentence, rows of one sentence next to each other). The state is then repeated per row, while the source
        memory keeps one row per sentence (`S2SDecoderCache.rows_per_source` = g). attention_mask: (B, S) or (g·B, S).
        """
        source = encoder_outputs.last_hidden_state
        group = self._rows_per_source(batch_size or source.shape[0], source.shape[0])
        hidden, cell = self.bridge(encoder_outputs, _mask_per_source(attention_mask, source.shape[0], group))
        if group > 1:
            hidden = hidden.repeat_interleave(group, dim=0)
            cell = cell.repeat_interleave(group, dim=0) if cell is not None else None
        input_feed = hidden.new_zeros(hidden.shape[0], self.config.hidden_size) if self.config.input_feeding else None
        cache = S2SDecoderCache(
            hidden=hidden,
            cell=cell,
            input_feed=input_feed,
            source_memory=self.attention.prepare_memory(source, source),
        )
        cache.rows_per_source = group
        return cache

    @staticmethod
    def _rows_per_source(batch_size: int, sources: int) -> int:
        if batch_size % sources:
            raise ValueError(
                f"The decoder got {batch_size} rows for encoder outputs of {sources} sentences; it needs the same "
                f"number of rows, or a multiple of it (beams of each sentence next to each other)."
            )
        return batch_size // sources

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

    def _packed_weights(self, cache: S2SDecoderCache, positions: int) -> PackedWeights | None:
        """The `PackedWeights` of a call over `positions` target positions: kept in the cache across the steps of
        decoding; with gradients on, new for each call (an optimizer step may change the weights before the next
        one), and only for several positions (reordering costs more than it saves on a single one)."""
        if not self._can_pack_weights():
            return None
        if torch.is_grad_enabled():
            return PackedWeights() if positions > 1 else None
        if cache.packed_weights is None:
            cache.packed_weights = self._reusable_packed_weights()
        return cache.packed_weights

    def _reusable_packed_weights(self) -> PackedWeights:
        """The decoding `PackedWeights` of the previous call while every parameter behind them is unchanged, else
        new ones. Reordering the weights costs about as much as a few decoding steps (most of a one-sentence
        `generate()` call's overhead), so calls after the first skip it."""
        if self._decoding_weights is None or not self._decoding_weights.is_current():
            self._decoding_weights = PackedWeights()
        return self._decoding_weights

    def _can_pack_weights(self) -> bool:
        # float nn.Linear / RNN weights only: a dynamically quantised or otherwise replaced module keeps its own path
        weight = getattr(self.rnn, "weight_ih_l0", None)
        return (
            isinstance(weight, torch.Tensor)
            and type(self.combine) is nn.Linear
            and PackedWeights.available(weight)
        )

    def _attentional_vector(
        self,
        rnn_output: torch.Tensor,
        context: torch.Tensor,
        self_context: torch.Tensor | None,
        packed: PackedWeights | None = None,
    ) -> torch.Tensor:
        # (B, T, H) each -> a = tanh(W [c; s; h]): (B, T, H)
        parts = [context, rnn_output] if self_context is None else [context, self_context, rnn_output]
        combined = torch.cat(parts, dim=-1)
        if packed is not None:
            return self.output_dropout(packed.module("combine", combined, self.combine, activation="tanh"))
        return self.output_dropout(torch.tanh(self.combine(combined)))

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

    @staticmethod
    def _to_rnn_state(cache: S2SDecoderCache):
        hidden = cache.hidden.transpose(0, 1).contiguous()  # (L, B, H)
        return (hidden, cache.cell.transpose(0, 1).contiguous()) if cache.cell is not None else hidden

    @staticmethod
    def _store_rnn_state(cache: S2SDecoderCache, state) -> None:
        hidden, cell = state if isinstance(state, tuple) else (state, None)
        cache.hidden = hidden.transpose(0, 1)
        cache.cell = cell.transpose(0, 1) if cell is not None else None

    # -- the two drivers ------------------------------------------------------------------------------------

    def _forward_fused(self, embeddings, cache, source_mask, decoder_attention_mask):
        """Luong attention without input feeding: the RNN and attention run over all T steps at once (matmuls large
        enough for the default kernels, so no `PackedWeights`)."""
        rnn_output, state = self.rnn(embeddings, self._to_rnn_state(cache))  # (B, T, H)
        self._store_rnn_state(cache, state)
        context, cross_weights = self._attend_source(rnn_output, cache, source_mask)
        self_context, self_weights = self._self_attend(rnn_output, cache, decoder_attention_mask)
        return self._attentional_vector(rnn_output, context, self_context), cross_weights, self_weights

    def _step_weights(self) -> list[tuple[torch.Tensor, ...]]:
        """Per layer (w_ih, w_hh, b_ih, b_hh) of `self.rnn`, the same parameters the fused path uses."""
        rnn = self.rnn
        return [
            tuple(getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for layer in range(rnn.num_layers)
        ]

    def _forward_steps(self, embeddings, cache, source_mask, decoder_attention_mask, packed):
        """One RNN step per target position (input feeding, Bahdanau, and incremental generation).

        The cell is computed from `self.rnn`'s parameters (`_lstm_cell`/`_gru_cell`). Over several positions the
        embeddings' share of the first layer's gates is projected for all T steps in one matmul, so only the
        recurrent part, input feed and Bahdanau context are per-step work; a single position (generation) takes
        one matmul over the whole RNN input. A dynamically quantised `self.rnn` (`torch.ao` `quantize_dynamic`)
        has no float weights to read: it is then called one step at a time. `packed`: `PackedWeights` for the
        step matmuls, or None for `F.linear`.
        """
        if packed is not None and embeddings.shape[1] == 1:
            step_cell = self._packed_step_cell(embeddings, packed)
        else:
            step_cell = self._step_cell(embeddings, packed)
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
            hidden, cell = step_cell(t, extra_inputs, hidden, cell)
            rnn_output = hidden[-1].unsqueeze(1)  # (B, 1, H)
            if not bahdanau:
                context, weights_t = self._attend_source(rnn_output, cache, source_mask)
            step_mask = decoder_attention_mask[:, t : t + 1] if decoder_attention_mask is not None else None
            self_context, self_weight = self._self_attend(rnn_output, cache, step_mask)
            output = self._attentional_vector(rnn_output, context, self_context, packed)  # (B, 1, H)
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

    def _step_cell(self, embeddings: torch.Tensor, packed: PackedWeights | None = None):
        """A function (t, extra_inputs, hidden, cell) -> (hidden, cell) advancing every layer by position t
        (it may update the `hidden`/`cell` lists in place).

        embeddings: (B, T, E); extra_inputs: the (B, H) input feed and/or Bahdanau context of step t; hidden and
        cell: per-layer lists of (B, H) (cell entries None for GRU). With `packed`, an LSTM's per-step matmul of
        the first layer goes through oneDNN.
        """
        if not hasattr(self.rnn, "weight_ih_l0"):
            return self._module_step_cell(embeddings)
        weights = self._step_weights()
        w_ih0, w_hh0, b_ih0, b_hh0 = weights[0]
        embedding_size = embeddings.shape[-1]
        w_extra = w_ih0[:, embedding_size:]  # input feed and/or Bahdanau context columns
        is_lstm = self.config.cell_type == "lstm"
        cell_fn = _lstm_cell if is_lstm else _gru_cell
        if embeddings.shape[1] == 1:
            embedding_gates, w_recurrent = None, None
        else:
            # unbind once: indexing [:, t] per step makes autograd zero-fill a (B, T, G) gradient for every step
            embedding_gates = F.linear(embeddings, w_ih0[:, :embedding_size], b_ih0).unbind(1)  # T x (B, G)
            # LSTM: the input feed / Bahdanau context and the hidden state share one matmul per step. Not under
            # autocast: it caches its casts of parameters only, so it would cast the merged weight at every step
            # (and casting it once ourselves would sum its gradient over the steps in low precision).
            merge = is_lstm and _autocast_dtype(w_ih0.device.type) is None
            w_recurrent = torch.cat([w_extra, w_hh0], dim=1) if merge else None

        def first_layer(t, extra_inputs, hidden, cell):
            if embedding_gates is None:  # one position: the whole RNN input in one matmul
                gates = F.linear(torch.cat([embeddings[:, t], *extra_inputs], dim=-1), w_ih0, b_ih0)
                return cell_fn(gates, hidden, cell, w_hh0, b_hh0)
            if w_recurrent is not None:
                recurrent_input = torch.cat([*extra_inputs, hidden], dim=-1)
                if packed is None:
                    return _lstm_pointwise(embedding_gates[t] + F.linear(recurrent_input, w_recurrent, b_hh0), cell)
                recurrent = packed.linear("rnn.0.recurrent", recurrent_input, (w_recurrent, b_hh0))
                return _lstm_pointwise(embedding_gates[t] + recurrent, cell)
            gates = embedding_gates[t]
            if extra_inputs:
                gates = gates + F.linear(torch.cat(extra_inputs, dim=-1), w_extra)
            return cell_fn(gates, hidden, cell, w_hh0, b_hh0)

        def step(t, extra_inputs, hidden, cell):
            hidden[0], cell[0] = first_layer(t, extra_inputs, hidden[0], cell[0])
            for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights[1:], start=1):
                below = F.dropout(hidden[layer - 1], self.rnn.dropout, self.training)
                hidden[layer], cell[layer] = cell_fn(F.linear(below, w_ih, b_ih), hidden[layer], cell[layer], w_hh, b_hh)
            return hidden, cell

        return step

    def _packed_step_cell(self, embeddings: torch.Tensor, packed: PackedWeights):
        """`_step_cell` for decoding with `PackedWeights`: every matmul goes through oneDNN, and an LSTM layer
        takes its input and recurrent share in one matmul over [x; h] (weights [W_ih | W_hh], bias b_ih + b_hh)."""
        weights = self._step_weights()
        is_lstm = self.config.cell_type == "lstm"

        def layer_step(layer, x, hidden, cell):
            w_ih, w_hh, b_ih, b_hh = weights[layer]
            if is_lstm:
                gates = packed.linear(f"rnn.{layer}", torch.cat([x, hidden], dim=-1), weights[layer], _merge_lstm)
                return _lstm_pointwise(gates, cell)
            x_gates = packed.linear(f"rnn.{layer}.ih", x, (w_ih, b_ih))
            return _gru_pointwise(x_gates, packed.linear(f"rnn.{layer}.hh", hidden, (w_hh, b_hh)), hidden), None

        def step(t, extra_inputs, hidden, cell):
            x = torch.cat([embeddings[:, t], *extra_inputs], dim=-1)
            for layer in range(len(weights)):
                if layer > 0:
                    x = F.dropout(hidden[layer - 1], self.rnn.dropout, self.training)
                hidden[layer], cell[layer] = layer_step(layer, x, hidden[layer], cell[layer])
            return hidden, cell

        return step

    def _module_step_cell(self, embeddings: torch.Tensor, packed=None):
        """Step function that calls `self.rnn` itself on one position (for RNN modules without float weights;
        `packed` is not used: such a module has no weights to reorder)."""

        def step(t, extra_inputs, hidden, cell):
            step_input = torch.cat([embeddings[:, t], *extra_inputs], dim=-1).unsqueeze(1)  # (B, 1, rnn input)
            state = torch.stack(hidden)
            state = (state, torch.stack(cell)) if cell[0] is not None else state
            _, state = self.rnn(step_input, state)
            hidden, cell = state if isinstance(state, tuple) else (state, None)
            return list(hidden.unbind(0)), list(cell.unbind(0)) if cell is not None else [None] * hidden.shape[0]

        return step

    @deprecate_kwarg("past_key_values", version="6.0.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_outputs: S2SEncoderOutput,
        encoder_attention_mask: torch.Tensor,
        cache: S2SDecoderCache | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> S2SDecoderOutput:
        """Decode T target positions, continuing from `cache` when given.

        Args:
            input_ids: (B, T) decoder input ids.
            encoder_outputs: the encoder's output for the same batch (beam-expanded in generation).
            encoder_attention_mask: (B, S) 1 for real source tokens.
            decoder_attention_mask: (B, T) 1 for real target tokens (keys of the self-attention only: padded
                targets sit at the end, which a causal decoder never looks ahead to).
        """
        check_token_ids(input_ids, self.config.decoder_vocab_size, "decoder_input_ids")
        if decoder_attention_mask is not None and tuple(decoder_attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"`decoder_attention_mask` has shape {tuple(decoder_attention_mask.shape)} but `decoder_input_ids` "
                f"have shape {tuple(input_ids.shape)}."
            )
        if cache is None:
            cache = self.init_cache(encoder_outputs, encoder_attention_mask, batch_size=input_ids.shape[0])
        embeddings = self.embedding_dropout(self.embed_tokens(input_ids))
        # Fused only pays off over several positions; a single position (generation) takes the step path.
        fused = self.config.fused_decoder and input_ids.shape[1] > 1
        if fused:
            outputs, cross_weights, self_weights = self._forward_fused(
                embeddings, cache, encoder_attention_mask, decoder_attention_mask
            )
        else:
            outputs, cross_weights, self_weights = self._forward_steps(
                embeddings, cache, encoder_attention_mask, decoder_attention_mask,
                self._packed_weights(cache, input_ids.shape[1]),
            )
        cache.seen_tokens += input_ids.shape[1]
        return S2SDecoderOutput(
            last_hidden_state=outputs,
            cache=cache if use_cache else None,
            hidden_states=(embeddings, outputs) if output_hidden_states else None,
            attentions=(self_weights,) if output_attentions and self_weights is not None else None,
            cross_attentions=(cross_weights,) if output_attentions else None,
        )


# Stopping criteria and logits processors that judge each row by its own tokens and scores alone (no state per
# batch position): with only these, finished rows can leave the batch without changing the other rows' outputs.
_ROW_LOCAL_STOPPING_CRITERIA = (
    hf_criteria.MaxLengthCriteria,
    hf_criteria.MaxTimeCriteria,
    hf_criteria.EosTokenCriteria,
    hf_criteria.StopStringCriteria,
)
_ROW_LOCAL_PROCESSORS = (
    hf_processors.MinLengthLogitsProcessor,
    hf_processors.MinNewTokensLengthLogitsProcessor,
    hf_processors.TemperatureLogitsWarper,
    hf_processors.RepetitionPenaltyLogitsProcessor,
    hf_processors.NoRepeatNGramLogitsProcessor,
    hf_processors.SequenceBiasLogitsProcessor,
    hf_processors.NoBadWordsLogitsProcessor,
    hf_processors.ForcedBOSTokenLogitsProcessor,
    hf_processors.ForcedEOSTokenLogitsProcessor,
    hf_processors.InfNanRemoveLogitsProcessor,
    hf_processors.ExponentialDecayLengthPenalty,
    hf_processors.LogitNormalization,
    hf_processors.SuppressTokensAtBeginLogitsProcessor,
    hf_processors.SuppressTokensLogitsProcessor,
)


def _is_row_local_processor(processor) -> bool:
    # A repetition penalty may carry a prompt length per batch row.
    per_row_prompt = torch.is_tensor(getattr(processor, "prompt_ignore_length", None))
    return type(processor) in _ROW_LOCAL_PROCESSORS and not per_row_prompt


@dataclass
class _LiveBeams:
    """Beam search state of some sentences, in transformers' names (`GenerationMixin._beam_search`); k beams.

    `sentences` (n,) are their indices in generate()'s batch; every other field has n rows: running_sequences and
    sequences (finished hypotheses) (n, k, max_length), running_beam_scores, beam_scores and is_sent_finished
    (n, k), running_beam_indices and beam_indices (n, k, max_length - prompt), is_early_stop_heuristic_unsatisfied
    (n, 1).
    """

    sentences: torch.Tensor
    running_sequences: torch.Tensor
    running_beam_scores: torch.Tensor
    running_beam_indices: torch.Tensor
    sequences: torch.Tensor
    beam_scores: torch.Tensor
    beam_indices: torch.Tensor
    is_sent_finished: torch.Tensor
    is_early_stop_heuristic_unsatisfied: torch.Tensor

    @classmethod
    def start(cls, input_ids, batch_size: int, num_beams: int, max_length: int, fill_value) -> _LiveBeams:
        """The state before the first step, as transformers initialises it. input_ids: (B·k, t) prompts."""
        device, prompt_length = input_ids.device, input_ids.shape[1]
        sequences = torch.full((batch_size, num_beams, max_length), int(fill_value), dtype=torch.long, device=device)
        sequences[:, :, :prompt_length] = input_ids.view(batch_size, num_beams, -1)
        running_scores = torch.zeros(batch_size, num_beams, device=device)
        running_scores[:, 1:] = -1e9  # only the first beam is expanded at the first step
        indices = torch.full((batch_size, num_beams, max_length - prompt_length), -1, dtype=torch.int32, device=device)
        return cls(
            sentences=torch.arange(batch_size, device=device),
            running_sequences=sequences,
            running_beam_scores=running_scores,
            running_beam_indices=indices,
            sequences=sequences.clone(),
            beam_scores=torch.full((batch_size, num_beams), -1e9, device=device),
            beam_indices=indices.clone(),
            is_sent_finished=torch.zeros(batch_size, num_beams, dtype=torch.bool, device=device),
            is_early_stop_heuristic_unsatisfied=torch.ones(batch_size, 1, dtype=torch.bool, device=device),
        )

    def select(self, index: torch.Tensor) -> _LiveBeams:
        return _LiveBeams(**{field.name: getattr(self, field.name)[index] for field in fields(self)})

    def store(self, other: _LiveBeams) -> None:
        """Copy the finished hypotheses of `other`'s sentences into this whole-batch state."""
        for name in ("sequences", "beam_scores", "beam_indices"):
            getattr(self, name)[other.sentences] = getattr(other, name)

    def output(self, generation_config, prompt_length: int, cache) -> torch.LongTensor | GenerateBeamEncoderDecoderOutput:
        """transformers' result: the best `num_return_sequences` hypotheses per sentence, cropped to the longest."""
        count = generation_config.num_return_sequences
        sequences = self.sequences[:, :count].flatten(0, 1)
        beam_indices = self.beam_indices[:, :count].flatten(0, 1)
        generated = int(((beam_indices + 1).bool()).sum(dim=1).max())
        sequences, beam_indices = sequences[:, : prompt_length + generated], beam_indices[:, :generated]
        if generation_config.return_dict_in_generate:
            return GenerateBeamEncoderDecoderOutput(sequences=sequences, beam_indices=beam_indices, cache=cache)
        return sequences


def _every_nth_row(encoder_outputs: S2SEncoderOutput, n: int) -> S2SEncoderOutput:
    """Rows 0, n, 2n, ... of every tensor in `encoder_outputs` (undoes transformers' per-beam repetition)."""
    return S2SEncoderOutput(
        **{key: value[::n] if torch.is_tensor(value) else value for key, value in encoder_outputs.items()}
    )


def _mask_per_source(mask: torch.Tensor | None, sources: int, group: int) -> torch.Tensor | None:
    """A source mask of one row per sentence: (B, S) from (B, S) or from the (g·B, S) mask of g rows per sentence."""
    if mask is None or mask.shape[0] == sources:
        return mask
    return mask[::group]


def _label_span_mask(labels: torch.Tensor) -> torch.Tensor | None:
    """(B, T) bool mask of the positions up to each row's last label that is not -100, or None when every row
    has a label at its last position. The positions after it predict nothing."""
    positions = torch.arange(1, labels.shape[1] + 1, device=labels.device)
    lengths = (labels.ne(-100) * positions).amax(dim=1)
    if bool((lengths == labels.shape[1]).all()):
        return None
    return positions[None, :] <= lengths[:, None]


def _lstm_cell(gates_x, hidden, cell, w_hh, b_hh):
    """One LSTM step with PyTorch's gate order (i, f, g, o). gates_x: (B, 4H) input share incl. b_ih."""
    return _lstm_pointwise(gates_x + F.linear(hidden, w_hh, b_hh), cell)


def _merge_lstm(w_ih, w_hh, b_ih, b_hh) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM layer's weights for a single matmul over [x; h]: [W_ih | W_hh] and b_ih + b_hh."""
    return torch.cat([w_ih, w_hh], dim=1), b_ih + b_hh


def _lstm_pointwise(gates, cell):
    """The LSTM update from all pre-activations (B, 4H) and the previous cell (B, H) -> (hidden, cell)."""
    in_gate, forget_gate, candidate, out_gate = gates.chunk(4, dim=1)
    cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
    return torch.sigmoid(out_gate) * torch.tanh(cell), cell


def _gru_cell(gates_x, hidden, cell, w_hh, b_hh):
    """One GRU step with PyTorch's gate order (r, z, n); `cell` is unused (None)."""
    return _gru_pointwise(gates_x, F.linear(hidden, w_hh, b_hh), hidden), None


def _gru_pointwise(gates_x, gates_h, hidden):
    """The GRU update from the input's and the hidden state's pre-activations (B, 3H) each -> hidden (B, H)."""
    x_reset, x_update, x_new = gates_x.chunk(3, dim=1)
    h_reset, h_update, h_new = gates_h.chunk(3, dim=1)
    reset = torch.sigmoid(x_reset + h_reset)
    update = torch.sigmoid(x_update + h_update)
    candidate = torch.tanh(x_new + reset * h_new)
    return (1 - update) * candidate + update * hidden


def _cat_ragged(step_weights: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-step self-attention weights (B, h, 1, k_t) of growing k_t into (B, h, T, k_T), zero-padded."""
    width = step_weights[-1].shape[-1]
    return torch.cat([F.pad(w, (0, width - w.shape[-1])) for w in step_weights], dim=2)


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


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
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: S2SEncoderOutput | None = None,
        cache: S2SDecoderCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> Seq2SeqModelOutput | tuple:
        """Encode (unless `encoder_outputs` are given) and decode `decoder_input_ids` (B, T).

        Returns `Seq2SeqModelOutput` with `last_hidden_state` (B, T, H) attentional vectors, `cache`
        (`S2SDecoderCache`) when `use_cache`, `cross_attentions` ((B, h, T, S),) when `output_attentions`.
        """
        use_cache = self.config.use_cache if use_cache is None else use_cache
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        if decoder_input_ids is None:
            raise ValueError(
                "`decoder_input_ids` are required: pass them, or pass `labels` to S2SForConditionalGeneration "
                "(decoder inputs are then built by shifting the labels right), or call `generate()`."
            )
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                output_hidden_states=output_hidden_states,
            )
        elif not isinstance(encoder_outputs, S2SEncoderOutput):
            raise ValueError(
                f"`encoder_outputs` must be the S2SEncoderOutput returned by `model.get_encoder()(...)`; got "
                f"{type(encoder_outputs).__name__}, which lacks the final encoder states the decoder starts from."
            )
        source_mask = attention_mask if attention_mask is not None else encoder_outputs.attention_mask
        if cache is not None and not isinstance(cache, S2SDecoderCache):
            cache = None  # e.g. an empty transformers Cache: the recurrent state starts from the bridge
        decoder_outputs = self.decoder(
            decoder_input_ids,
            encoder_outputs,
            source_mask,
            cache=cache,
            decoder_attention_mask=decoder_attention_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
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


class S2SForConditionalGeneration(S2SPreTrainedModel, GenerationMixin):
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
        self._set_default_generation_config()
        # Scratch state of one beam search call (see `_beam_search`): which sentences are settled, (B,) bool.
        self._drop_settled_beams = False
        self._settled_sentences: torch.Tensor | None = None
        self.post_init()

    def _set_default_generation_config(self) -> None:
        generation_config = self.generation_config
        generation_config.num_beams = 5
        generation_config.max_length = 128
        generation_config.early_stopping = True

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

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, *args):
        """Resize the source embeddings; with a joint vocabulary, also the decoder side and `lm_head`."""
        old_embeddings = self.get_input_embeddings()
        new_embeddings = self._get_resized_embeddings(old_embeddings, new_num_tokens, pad_to_multiple_of)
        self.set_input_embeddings(new_embeddings)
        size = new_embeddings.weight.shape[0]
        if self.config.share_encoder_decoder_embeddings:
            self.config.decoder_vocab_size = size
            self._resize_lm_head(size)
        return new_embeddings

    def _resize_lm_head(self, size: int) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head = nn.Linear(self.lm_head.in_features, size, bias=False, device=self.lm_head.weight.device)
        else:
            self.lm_head = self._get_resized_lm_head(self.lm_head, size)

    def resize_decoder_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Resize the target vocabulary (decoder embeddings and `lm_head`) when vocabularies are separate."""
        if self.config.share_encoder_decoder_embeddings:
            raise ValueError(
                "`resize_decoder_token_embeddings` needs `share_encoder_decoder_embeddings=False`; with a joint "
                "vocabulary use `resize_token_embeddings`."
            )
        new_embeddings = self._get_resized_embeddings(self.model.get_decoder_input_embeddings(), new_num_tokens)
        self.model.set_decoder_input_embeddings(new_embeddings)
        self.config.decoder_vocab_size = new_num_tokens
        self._resize_lm_head(new_num_tokens)
        self.tie_weights()
        return new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def _vocabulary_logits(self, hidden: torch.Tensor, cache: S2SDecoderCache | None) -> torch.Tensor:
        """(B, T, H) attentional vectors -> (B, T, V) logits, through the cache's `PackedWeights` when it has them."""
        # the cache's packed weights serve decoding; with gradients on they may be stale after an optimizer step
        packed = cache.packed_weights if isinstance(cache, S2SDecoderCache) and not torch.is_grad_enabled() else None
        plain_head = type(self.lm_head) is nn.Linear and type(self.output_projection) in (nn.Linear, nn.Identity)
        if packed is None or not plain_head:
            return self.lm_head(self.output_projection(hidden))
        return packed.module("lm_head", packed.module("output_projection", hidden, self.output_projection), self.lm_head)

    def _span_logits_and_loss(self, hidden, labels, label_span, num_items_in_batch):
        """Logits (B, T, V) and loss with the output layer run only inside `label_span` (B, T): it is the largest
        matmul of a step, and the positions after a row's last label predict nothing (their logits stay 0)."""
        span_logits = self._vocabulary_logits(hidden[label_span], None)  # (N, V)
        loss = self._loss(span_logits, labels[label_span], num_items_in_batch)
        logits = span_logits.new_zeros(*labels.shape, span_logits.shape[-1]).index_put_((label_span,), span_logits)
        return logits, loss

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        # logits (..., V) and labels (...). Sum over tokens, divided by the real-token count of the whole
        # (accumulated) batch when Trainer gives it.
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
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: S2SEncoderOutput | None = None,
        cache: S2SDecoderCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> Seq2SeqLMOutput | tuple:
        """Returns `Seq2SeqLMOutput` with logits (B, T, V) and, given `labels` (B, T) (`-100` ignored), the
        token-averaged cross-entropy `loss`. Without `decoder_input_ids`, they are `labels` shifted right.

        In training mode with `labels`, the output layer (the largest matmul) runs only up to each row's last label
        that is not -100 (the padding of a batch is skipped); the logits after it are 0."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        label_span = None
        if labels is not None:
            check_token_ids(labels, self.config.decoder_vocab_size, "labels", allow_ignore_index=True)
            use_cache = False
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(
                    f"`labels` have shape {tuple(labels.shape)} but the decoder inputs have shape "
                    f"{tuple(decoder_input_ids.shape)}."
                )
            if self.training:
                label_span = _label_span_mask(labels)
        active_rows = cache.active_rows if isinstance(cache, S2SDecoderCache) else None
        if active_rows is not None:
            return self._forward_active_rows(
                decoder_input_ids, attention_mask, encoder_outputs, cache, return_dict
            )
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        if label_span is not None:
            logits, loss = self._span_logits_and_loss(outputs.last_hidden_state, labels, label_span, num_items_in_batch)
        else:
            logits = self._vocabulary_logits(outputs.last_hidden_state, outputs.cache)
            loss = self._loss(logits, labels, num_items_in_batch) if labels is not None else None
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )
        return output if return_dict else output.to_tuple()

    # -- generation: finished rows leave the batch -------------------------------------------------------------

    def _sample(
        self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False, streamer=None,
        **model_kwargs,
    ):
        """transformers' greedy search / sampling, with finished rows dropped from the decoder state.

        transformers keeps computing a row after it has produced EOS (and pads its output) until the last row of
        the batch ends. Here finished rows cost nothing, and the generated tokens are the same:
        - greedy search with only row-local processors and stopping criteria (`_rows_can_leave_the_batch`) runs
          `_greedy_search_shrinking_batch`, where finished rows leave every per-step tensor;
        - otherwise transformers' loop runs, and the decoder state of every row that an `EosTokenCriteria` has
          finished is dropped (`S2SDecoderCache.drop_finished_rows`): the model computes only the rest.
        Per-step attentions and hidden states cover the whole batch, so asking for them keeps every row.
        """
        eos_token_ids = next((c.eos_token_id for c in stopping_criteria if isinstance(c, EosTokenCriteria)), None)
        if eos_token_ids is not None and self._may_drop_rows(generation_config, synced_gpus):
            lean = streamer is None and self._rows_can_leave_the_batch(
                logits_processor, stopping_criteria, generation_config, model_kwargs
            )
            if lean:
                return self._greedy_search_shrinking_batch(
                    input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs
                )
            model_kwargs["finished_rows_eos_token_ids"] = eos_token_ids
        return super()._sample(
            input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=synced_gpus,
            streamer=streamer, **model_kwargs,
        )

    @staticmethod
    def _rows_can_leave_the_batch(logits_processor, stopping_criteria, generation_config, model_kwargs) -> bool:
        """Whether greedy or beam search may run on the unfinished rows (sentences) alone: no sampling, every
        processor and stopping criterion judges a row by that row's tokens and scores only, and nothing is asked
        for per step (scores, logits) or for every row."""
        per_step_outputs = generation_config.return_dict_in_generate and (
            generation_config.output_scores or generation_config.output_logits
        )
        if generation_config.do_sample or per_step_outputs:
            return False
        if model_kwargs.get("decoder_attention_mask") is not None or not model_kwargs.get("use_cache", True):
            return False
        return all(_is_row_local_processor(p) for p in logits_processor) and all(
            type(c) in _ROW_LOCAL_STOPPING_CRITERIA for c in stopping_criteria
        )

    def _greedy_search_shrinking_batch(
        self, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs
    ) -> torch.LongTensor | GenerateEncoderDecoderOutput:
        """Greedy search over the rows that have not finished; the same tokens as transformers' `_sample`.

        input_ids: (B, t) decoder prompt. Returns (B, t + n) sequences, where n is the step at which the last row
        finished; a row that finished earlier is padded with `pad_token_id`, as transformers pads it. Each step
        runs the decoder, the processors, argmax and the stopping criteria on the unfinished rows only.
        """
        batch_size, length = input_ids.shape
        outputs = self._prefill(input_ids, generation_config, model_kwargs)  # the whole prompt, every row
        cache = outputs.cache
        encoder_outputs = model_kwargs["encoder_outputs"]
        source_mask = model_kwargs.get("attention_mask")
        if source_mask is None:
            source_mask = encoder_outputs.attention_mask
        pad_token_id = int(generation_config._pad_token_tensor)
        sequences = F.pad(input_ids, (0, max(generation_config.max_length - length, 0)), value=pad_token_id)
        alive = torch.arange(batch_size, device=input_ids.device)
        logits = outputs.logits[:, -1].float()
        del outputs
        while True:
            scores = logits_processor(sequences[alive, :length], logits)
            next_tokens = scores.argmax(dim=-1)
            if length >= sequences.shape[1]:  # no room left: a stopping criterion other than max_length decides
                sequences = F.pad(sequences, (0, sequences.shape[1]), value=pad_token_id)
            sequences[alive, length] = next_tokens
            length += 1
            finished = stopping_criteria(sequences[alive, :length], None)
            if bool(finished.all()):
                break
            if bool(finished.any()):
                keep = (~finished).nonzero().squeeze(1)
                alive, next_tokens = alive[keep], next_tokens[keep]
                source_mask = source_mask[keep] if source_mask is not None else None
                cache.batch_select_indices(keep)
            step = self.model.decoder(
                next_tokens[:, None], encoder_outputs, source_mask, cache=cache, use_cache=True
            )
            logits = self._vocabulary_logits(step.last_hidden_state[:, -1], cache).float()
        sequences = sequences[:, :length]
        if generation_config.return_dict_in_generate:
            return GenerateEncoderDecoderOutput(sequences=sequences, cache=cache)
        return sequences

    def _beam_search(
        self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False, **model_kwargs
    ):
        """transformers' beam search, with the beams of settled sentences costing nothing.

        transformers keeps running every beam until the last sentence of the batch is settled. A sentence is
        settled once its finished hypotheses can no longer change; the returned hypotheses are the same when it
        stops being computed:
        - with only row-local processors and stopping criteria and no per-step outputs, beam search runs
          `_beam_search_shrinking_batch`, where settled sentences leave every per-step tensor;
        - otherwise transformers' loop runs, and from the step after a sentence settles
          (`_beam_search_has_unfinished_sequences` sees it) its beams leave the decoder state
          (`S2SDecoderCache.drop_finished_rows`). Beam sampling and per-step attentions/hidden states keep every beam.

        transformers repeats the encoder outputs once per beam; the decoder gets them once per sentence instead
        (`S2SDecoder.init_cache`), so the beams of a sentence attend over one copy of its source memory.
        """
        may_drop = self._may_drop_rows(generation_config, synced_gpus)
        if may_drop:  # with per-step tensors transformers also returns the encoder outputs: keep them per beam
            model_kwargs["encoder_outputs"] = _every_nth_row(model_kwargs["encoder_outputs"], generation_config.num_beams)
            lean = not generation_config.low_memory and self._rows_can_leave_the_batch(
                logits_processor, stopping_criteria, generation_config, model_kwargs
            )
            if lean:
                return self._beam_search_shrinking_batch(
                    input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs
                )
        self._drop_settled_beams = may_drop and not generation_config.do_sample
        try:
            return super()._beam_search(
                input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=synced_gpus,
                **model_kwargs,
            )
        finally:
            self._drop_settled_beams, self._settled_sentences = False, None

    def _beam_search_shrinking_batch(
        self, input_ids, logits_processor, stopping_criteria, generation_config, model_kwargs
    ) -> torch.LongTensor | GenerateBeamEncoderDecoderOutput:
        """transformers' beam search (`GenerationMixin._beam_search`) over the sentences that are not settled.

        Every step goes through transformers' own helpers (top-k continuations, running beams, finished hypotheses,
        early-stop heuristic), so hypotheses, scores and beam indices are transformers'; but the logits, log-softmax,
        top-k and decoder state of a step cover only the sentences whose finished hypotheses can still change. A
        settled sentence's hypotheses are final: they are stored and the sentence leaves. input_ids: (B·k, t).
        Returns what transformers returns without per-step outputs: sequences (B·r, t + n) (r =
        `num_return_sequences`) and, in a dict, their beam indices.
        """
        config = generation_config
        num_beams, max_length, prompt_length = config.num_beams, config.max_length, input_ids.shape[1]
        batch_size = input_ids.shape[0] // num_beams
        eos_token_id, pad_token_id = config._eos_token_tensor, config._pad_token_tensor
        beams_to_keep = max(2, 1 + (eos_token_id.shape[0] if eos_token_id is not None else 0)) * num_beams
        top_num_beam_mask = torch.arange(beams_to_keep, device=input_ids.device) < num_beams
        fill_value = pad_token_id or eos_token_id[0] if eos_token_id is not None else -1  # as transformers fills
        live = _LiveBeams.start(input_ids, batch_size, num_beams, max_length, fill_value)
        final = _LiveBeams.start(input_ids, batch_size, num_beams, max_length, fill_value)
        outputs = self._prefill(input_ids, config, model_kwargs)  # every beam of every sentence
        cache, logits = outputs.cache, outputs.logits[:, -1]
        del outputs
        encoder_outputs = model_kwargs["encoder_outputs"]
        source_mask = model_kwargs.get("attention_mask")
        if source_mask is None and encoder_outputs.attention_mask is not None:
            source_mask = encoder_outputs.attention_mask.repeat_interleave(num_beams, dim=0)
        cur_len = prompt_length
        while True:
            count = live.sentences.shape[0]
            log_probs = logits_processor(
                live.running_sequences[:, :, :cur_len].flatten(0, 1), F.log_softmax(logits.float(), dim=-1)
            )
            # in place: the log-probabilities are this step's own tensor (values as transformers' out-of-place sum)
            accumulated = log_probs.view(count, num_beams, -1).add_(live.running_beam_scores[:, :, None]).view(count, -1)
            topk_log_probs, topk_sequences, topk_beam_indices = self._get_top_k_continuations(
                accumulated_log_probs=accumulated, running_sequences=live.running_sequences,
                running_beam_indices=live.running_beam_indices, cur_len=cur_len, decoder_prompt_len=prompt_length,
                do_sample=False, beams_to_keep=beams_to_keep, num_beams=num_beams, batch_size=count,
            )
            # beam indices count over generate()'s whole batch: live sentence i is sentence `live.sentences[i]`
            offset = (live.sentences - torch.arange(count, device=logits.device)) * num_beams
            topk_beam_indices[:, :, cur_len - prompt_length] += offset[:, None].to(topk_beam_indices.dtype)
            hits = stopping_criteria(topk_sequences[:, :, : cur_len + 1].flatten(0, 1), None).view(count, -1)
            live.running_sequences, live.running_beam_scores, live.running_beam_indices = (
                self._get_running_beams_for_next_iteration(
                    topk_log_probs, topk_sequences, topk_beam_indices, hits, num_beams
                )
            )
            live.sequences, live.beam_scores, live.beam_indices, live.is_sent_finished = self._update_finished_beams(
                sequences=live.sequences, topk_running_sequences=topk_sequences, beam_scores=live.beam_scores,
                topk_log_probs=topk_log_probs, beam_indices=live.beam_indices,
                topk_running_beam_indices=topk_beam_indices,
                is_early_stop_heuristic_unsatisfied=live.is_early_stop_heuristic_unsatisfied,
                is_sent_finished=live.is_sent_finished, next_token_hits_stopping_criteria=hits,
                top_num_beam_mask=top_num_beam_mask, num_beams=num_beams, cur_len=cur_len,
                decoder_prompt_len=prompt_length, length_penalty=config.length_penalty,
                early_stopping=config.early_stopping,
            )
            # this step's parent beams, as rows of the (shrunken) cache
            parents = live.running_beam_indices[..., cur_len - prompt_length] - offset[:, None]
            cur_len += 1
            live.is_early_stop_heuristic_unsatisfied = self._check_early_stop_heuristic(
                live.is_early_stop_heuristic_unsatisfied, live.running_beam_scores, live.beam_scores,
                live.is_sent_finished, cur_len, max_length, prompt_length, config.early_stopping, config.length_penalty,
            )
            searching = GenerationMixin._beam_search_has_unfinished_sequences(
                live.is_early_stop_heuristic_unsatisfied, live.is_sent_finished, hits, config.early_stopping
            )
            settled = live.is_sent_finished.all(dim=-1) & (
                (config.early_stopping is True) | ~live.is_early_stop_heuristic_unsatisfied.squeeze(-1)
            )
            if not bool(searching) or bool(settled.all()):
                final.store(live)
                break
            cache.reorder_cache(parents.flatten().to(torch.long))
            if bool(settled.any()):
                final.store(live.select(settled.nonzero().squeeze(1)))
                keep = (~settled).nonzero().squeeze(1)
                live = live.select(keep)
                rows = (keep[:, None] * num_beams + torch.arange(num_beams, device=keep.device)).flatten()
                cache.batch_select_indices(rows)
                source_mask = source_mask[rows] if source_mask is not None else None
            tokens = live.running_sequences[:, :, cur_len - 1].reshape(-1, 1)
            step = self.model.decoder(tokens, encoder_outputs, source_mask, cache=cache, use_cache=True)
            logits = self._vocabulary_logits(step.last_hidden_state[:, -1], cache)
        return final.output(config, prompt_length, cache)

    @staticmethod
    def _may_drop_rows(generation_config, synced_gpus: bool) -> bool:
        # Per-step attentions/hidden states are returned for the whole batch. With `synced_gpus` every process
        # must run the whole model (its collectives) on every step, even once all its rows are done.
        wants_per_step_tensors = generation_config.output_attentions or generation_config.output_hidden_states
        return not (wants_per_step_tensors or synced_gpus)

    def _beam_search_has_unfinished_sequences(
        self, is_early_stop_heuristic_unsatisfied, is_sent_finished, next_token_hits_stopping_criteria, early_stopping
    ):
        # Called once per step after the step's finished hypotheses are updated: (B, 1) and (B, num_beams) flags.
        if self._drop_settled_beams:
            cannot_improve = ~is_early_stop_heuristic_unsatisfied.squeeze(-1)
            self._settled_sentences = is_sent_finished.all(dim=-1) & ((early_stopping is True) | cannot_improve)
        return super()._beam_search_has_unfinished_sequences(
            is_early_stop_heuristic_unsatisfied, is_sent_finished, next_token_hits_stopping_criteria, early_stopping
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: S2SDecoderCache | None = None,
        finished_rows_eos_token_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> dict:
        """Drop finished rows from the cache, then prepare the inputs as transformers does.

        Greedy/sampling: rows whose newest token (B, t)[:, -1] is EOS. Beam search: the beams of settled sentences.
        """
        if isinstance(cache, S2SDecoderCache):
            if finished_rows_eos_token_ids is not None:
                finished = torch.isin(input_ids[:, -1], finished_rows_eos_token_ids.to(input_ids.device))
                cache.drop_finished_rows(finished)
            elif self._settled_sentences is not None:
                num_beams = input_ids.shape[0] // self._settled_sentences.shape[0]
                cache.drop_finished_rows(self._settled_sentences.repeat_interleave(num_beams))
        return super().prepare_inputs_for_generation(input_ids, cache=cache, **kwargs)

    def _forward_active_rows(
        self,
        decoder_input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None,
        encoder_outputs: S2SEncoderOutput | None,
        cache: S2SDecoderCache,
        return_dict: bool,
    ) -> Seq2SeqLMOutput | tuple:
        """Decode only the rows the cache still holds; finished rows get logits that make `pad` certain.

        decoder_input_ids: (B, T) and attention_mask: (B, S) over the whole batch; logits: (B, T, V).
        """
        if encoder_outputs is None:
            raise ValueError(
                "This cache has dropped finished rows (`active_rows`); pass the whole batch's `encoder_outputs` "
                "with it, as generate() does."
            )
        rows = cache.active_rows
        batch_size, length = decoder_input_ids.shape
        active_logits = None
        if rows.numel() > 0:
            source_mask = attention_mask if attention_mask is not None else encoder_outputs.attention_mask
            if source_mask is not None:  # the encoder's own mask has one row per sentence, not per beam
                source_mask = source_mask.repeat_interleave(batch_size // source_mask.shape[0], dim=0)[rows]
            outputs = self.model(
                decoder_input_ids=decoder_input_ids[rows],
                attention_mask=source_mask,
                encoder_outputs=encoder_outputs,
                cache=cache,
                use_cache=True,
                return_dict=True,
            )
            active_logits = self._vocabulary_logits(outputs.last_hidden_state, cache)
        dtype = active_logits.dtype if active_logits is not None else self.dtype
        logits = torch.full(
            (batch_size, length, self.config.decoder_vocab_size), torch.finfo(dtype).min,
            dtype=dtype, device=decoder_input_ids.device,
        )
        logits[..., self.config.pad_token_id] = 0.0
        if active_logits is not None:
            logits.index_copy_(0, rows, active_logits)
        output = Seq2SeqLMOutput(
            logits=logits, cache=cache, encoder_last_hidden_state=encoder_outputs.last_hidden_state
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "AttentionMemory",
    "S2SAttention",
    "S2SDecoderCache",
    "S2SEncoderOutput",
    "S2SPreTrainedModel",
    "S2SModel",
    "S2SForConditionalGeneration",
    "shift_tokens_right",
]
