"""Code that exists only for speed, behind `S2SConfig.fast_paths` (default True).

The model (`modeling_s2s.py`) asks each function here first and falls back to its own reference math when it
returns None; with `config.fast_paths = False` it never asks. Each path applies only where it is tested equal to
the reference (tests/test_fast_paths.py), for any dtype, autocast state and device it does not cover it returns None:

- `encoder_rnn`: on CPU, the encoder RNN runs once per distinct source length (each group cut to its length)
  instead of over a packed sequence: PyTorch runs a packed sequence step by step on CPU, an unpacked batch through
  oneDNN's fused RNN kernel (forward and backward).
- `decoder_step` (`FastStep`): the step driver's matmuls. Over several positions the embeddings' share of the first
  layer's gates is one matmul for all positions; an LSTM's input feed / context and hidden state share one matmul
  per step; on x86 CPUs the per-step matmuls go through oneDNN with weights reordered once (`PackedWeights`): in
  fp32, and in bf16 (bf16 weights, or bf16 autocast) on CPUs with native bf16 (AVX512-BF16 / AMX); in training
  with the weight gradients of all steps summed in one matmul (`_DeferredWeightGradient`); in decoding the
  reordered weights are reused by later `generate()` calls while the parameters behind them are unchanged.
- `output_logits`: the output layer through the same reordered weights while decoding.
- int8 decoding (`config.int8_decoding`, fp32 models on x86 CPUs): the decoder's per-step matmuls and the output
  layer in int8 through oneDNN's int8 linear op, weights quantised once per output channel, each step's inputs per
  row (dynamic quantisation; an approximation of the fp32 model, like bf16 weights).
- `span_logits_and_loss`: in training, the output layer only up to each row's last label (padding predicts nothing).
"""

from __future__ import annotations

import functools
import weakref
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .modeling_s2s import S2SDecoder, S2SDecoderCache, S2SForConditionalGeneration

#: Above this many distinct source lengths in a batch, the CPU encoder packs the batch instead of running one RNN
#: call per length (with many more, each call would cover only a few rows).
MAX_LENGTH_GROUPS = 16

#: Up to this many rows (decoding one or two sentences greedily), fp32 matmuls use the plain weights: BLAS's
#: matrix-vector kernels beat reordered weights there.
PLAIN_FP32_ROWS = 2

#: Row counts of bf16 CPU matmuls whose rows change from batch to batch are rounded up to a multiple of this.
BF16_ROW_BUCKET = 64


# ---------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------


def encoder_rnn(rnn: nn.RNNBase, embeddings: torch.Tensor, lengths: torch.Tensor):
    """`S2SEncoder._run_rnn` as one `rnn` call per group of rows of the same length, each cut to that length, or
    None where the reference does as well (GPU, no padding at all, more than `MAX_LENGTH_GROUPS` lengths).

    embeddings: (B, S, E), lengths: (B,) -> outputs (B, S, H) with zeros at the padding, and the final state."""
    total_length = embeddings.shape[1]
    if embeddings.device.type != "cpu" or not isinstance(rnn, (nn.LSTM, nn.GRU)):
        return None
    distinct = lengths.unique().tolist()
    if distinct == [total_length] or len(distinct) > MAX_LENGTH_GROUPS:
        return None
    groups = [(lengths == length).nonzero().squeeze(1) for length in distinct]
    outputs, states = [], []
    for rows, length in zip(groups, distinct):
        group_outputs, group_state = rnn(embeddings[rows, :length])
        outputs.append(F.pad(group_outputs, (0, 0, 0, total_length - length)))
        states.append(group_state)
    restore = torch.cat(groups).argsort()  # rows back in batch order
    if isinstance(states[0], tuple):  # LSTM: (hidden, cell), each (layers·directions, rows, H)
        state = tuple(torch.cat(parts, dim=1)[:, restore] for parts in zip(*states))
    else:
        state = torch.cat(states, dim=1)[:, restore]
    return torch.cat(outputs)[restore], state


# ---------------------------------------------------------------------------------------------------------------
# oneDNN matmuls with reordered weights
# ---------------------------------------------------------------------------------------------------------------


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on `device_type` ("cpu", "cuda"), or None outside autocast."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _onednn_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias, activation: str = "none") -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed_weight, bias, activation, [], "")


class _PackedLinearFunction(torch.autograd.Function):
    """y = x Wᵀ + b through oneDNN with W reordered, in `packed.dtype` (x and b are cast to it, as autocast casts
    them); the input's gradient is a plain matmul, returned in x's dtype.

    With `pairs` (a list shared by every step of one forward), the backward leaves (output gradient, input) in it
    instead of returning gradients for W and b; `_DeferredWeightGradient` turns all pairs into them at once."""

    @staticmethod
    def forward(ctx, x, weight, bias, packed: PackedWeights, name: str, pairs: list | None):
        compute_x = x.to(packed.dtype)
        ctx.save_for_backward(compute_x, weight)
        ctx.packed, ctx.name, ctx.pairs, ctx.input_dtype = packed, name, pairs, x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        compute_bias = bias.to(packed.dtype) if bias is not None else None
        return _onednn_linear(compute_x, packed.reordered(name, weight), compute_bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # a plain matmul: reordering Wᵀ costs more than it saves over ~20 steps
            grad_x = (grad @ ctx.packed.cast(ctx.name, weight)).to(ctx.input_dtype)
        if ctx.pairs is not None:
            ctx.pairs.append((grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])))
            return grad_x, None, None, None, None, None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_weight, grad_bias, None, None, None


class _DeferredWeightGradient(torch.autograd.Function):
    """Identity on a weight (and bias) used by every step of a loop through `_PackedLinearFunction`.

    Autograd runs this node's backward after the backward of every step that used its outputs; those steps left
    their (output gradient (N, out), input (N, in)) pairs in `pairs`. The weight's gradient is then one matmul
    over all steps' rows instead of one small matmul per step plus adding each into the gradient.
    """

    @staticmethod
    def forward(ctx, weight, bias, pairs: list):
        ctx.pairs, ctx.weight_dtype = pairs, weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return (weight.view_as(weight), bias.view_as(bias)) if bias is not None else weight.view_as(weight)

    @staticmethod
    def backward(ctx, *unused_grads):
        if not ctx.pairs:
            return None, None, None
        grads = torch.cat([grad for grad, _ in ctx.pairs])
        inputs = torch.cat([x for _, x in ctx.pairs])
        ctx.pairs.clear()
        grad_weight = (grads.t() @ inputs).to(ctx.weight_dtype)
        grad_bias = grads.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return grad_weight, grad_bias, None


def _fingerprint(tensor: torch.Tensor) -> tuple | None:
    """What changes when `tensor`'s values do: its storage, its version counter (bumped by every in-place
    operation) and a sum over 64 of its elements spread across it (for writes through `.data`, which bypass the
    version counter). None for inference tensors, which keep no version counter."""
    if tensor.is_inference():
        return None
    flat = tensor.detach().reshape(-1)
    sample = float(flat[:: max(1, flat.numel() // 64)].sum())
    return tensor.data_ptr(), tensor._version, sample


@functools.cache
def _cpu_has_onednn_matmuls() -> bool:
    """An x86 CPU with AVX2 or AVX-512 and a PyTorch build with oneDNN's linear ops (fixed for the process)."""
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware (elsewhere oneDNN would emulate them, slower than fp32)."""
    has = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return _cpu_has_onednn_matmuls() and callable(has) and bool(has())


def _matmul_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype matmuls with `weight` run in on CPU: autocast's, where it is on, else the weight's own."""
    autocast = _autocast_dtype("cpu")
    return autocast if autocast is not None and weight.dtype in (torch.float32, torch.bfloat16) else weight.dtype


def onednn_dtype(weight: torch.Tensor) -> torch.dtype | None:
    """The dtype in which matmuls with `weight` (a parameter of the model) go through oneDNN with reordered
    weights, or None for plain matmuls: fp32 (fp32 weights outside autocast) on an x86 CPU with AVX2 or AVX-512;
    bf16 (bf16 weights, or bf16 autocast) on a CPU with native bf16. Never under `torch.compile`."""
    if weight.device.type != "cpu" or torch.compiler.is_compiling() or not _cpu_has_onednn_matmuls():
        return None
    dtype = _matmul_dtype(weight)
    if dtype == torch.float32 or (dtype == torch.bfloat16 and _cpu_has_native_bf16()):
        return dtype
    return None


@functools.cache
def _cpu_has_onednn_int8() -> bool:
    """An x86 CPU where PyTorch's oneDNN int8 linear ops (the kernels of its x86 int8 compiler path) run and give
    the right product for int8 inputs (checked once, on a tiny matmul)."""
    if not (_cpu_has_onednn_matmuls() and hasattr(torch.ops.onednn, "qlinear_pointwise")):
        return False
    x, weight = torch.tensor([[1.0, -2.0], [0.5, 4.0]]), torch.tensor([[1.0, 1.0], [-1.0, 2.0], [0.5, 0.0]])
    try:
        with torch.no_grad():
            product = int8_linear(x, quantize_weight(weight), None)
    except RuntimeError:
        return False
    return torch.allclose(product, x @ weight.t(), atol=0.1)


def decoding_dtype(weight: torch.Tensor, int8: bool) -> torch.dtype | None:
    """`onednn_dtype` for decoding (no gradients): torch.int8 instead of fp32 when `int8` (`config.int8_decoding`)
    is asked for and the CPU has oneDNN's int8 linear ops."""
    dtype = onednn_dtype(weight)
    return torch.int8 if int8 and dtype == torch.float32 and _cpu_has_onednn_int8() else dtype


def int8_decoding_applies(model: S2SForConditionalGeneration) -> bool:
    """Whether `config.int8_decoding = True` would make this model decode in int8 here: fast paths on, fp32 weights
    on a CPU with oneDNN's int8 linear ops."""
    return bool(model.config.fast_paths) and decoding_dtype(model.lm_head.weight, int8=True) == torch.int8


class Int8Weight(NamedTuple):
    """A weight W (N, K) as oneDNN's int8 linear takes it: W ≈ scales[:, None] · q, q int8 in oneDNN's layout."""

    packed: torch.Tensor
    scales: torch.Tensor  # (N,) fp32
    zero_points: torch.Tensor  # (N,) int64 zeros: symmetric quantisation


def quantize_weight(weight: torch.Tensor) -> Int8Weight:
    """Symmetric int8 per output channel: q = round(W / s), s = max|W_n·| / 127 for each row n."""
    weight = weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
    quantized = torch.round(weight / scales[:, None]).to(torch.int8)
    zero_points = torch.zeros(weight.shape[0], dtype=torch.int64)
    return Int8Weight(torch.ops.onednn.qlinear_prepack(quantized, None), scales, zero_points)


def int8_linear(
    x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None, activation: str = "none"
) -> torch.Tensor:
    """y = activation(x Wᵀ + b) with each row of x quantised to int8 with its own scale, symmetric (s_i = max|x_i·|
    / 127), the product accumulated in int32 and returned in fp32. x: (..., K) fp32 -> (..., N).

    Per-row scales keep a row's result independent of the other rows of the batch (a sentence's int8 matmuls do
    not depend on the sentences decoded with it). oneDNN's op takes one input scale, so it runs with scale 1 and
    the rows are scaled afterwards."""
    if activation not in ("none", "tanh"):
        raise ValueError(f"int8_linear: activation {activation!r} is not one of 'none', 'tanh'.")
    rows = x.reshape(-1, x.shape[-1])
    scales = rows.abs().amax(dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127)  # (M, 1)
    quantized = rows.div(scales).round_().to(torch.int8)
    if quantized.shape[0] == 1:  # oneDNN's one-row int8 kernel is far slower for some shapes (50 ms for 256 -> 8000)
        quantized = quantized.expand(2, -1).contiguous()
    output = torch.ops.onednn.qlinear_pointwise(
        quantized, 1.0, 0, weight.packed, weight.scales, weight.zero_points, None, 1.0, 0, torch.float32, "none", [],
        "",
    )[: rows.shape[0]]
    output = torch.addcmul(bias, output, scales) if bias is not None else output.mul_(scales)
    if activation == "tanh":
        output = output.tanh_()
    return output.reshape(*x.shape[:-1], output.shape[-1])


class PackedWeights:
    """Weights reordered once into oneDNN's blocked layout, reused by every step of one decoder call.

    A weight is reordered on first use. In training, the input's gradient is a plain matmul with W (cast once to
    `dtype`) and the weight's gradient one matmul over all steps (`_DeferredWeightGradient`). `is_current` tells
    whether every parameter a weight was derived from is unchanged since, so that decoding can reuse the reordered
    weights from one `generate()` call to the next. Copies and pickles start empty.
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype  # of the reordered weights, the inputs and the outputs (int8: of the weights only)
        self._reordered: dict[str, torch.Tensor | Int8Weight] = {}
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

    def cast(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """`weight` (detached) in `dtype`, cast once per name."""
        if weight.dtype == self.dtype:
            return weight.detach()
        key = f"{name}.cast"
        if key not in self._reordered:
            self._reordered[key] = weight.detach().to(self.dtype)
        return self._reordered[key]

    def reordered(self, name: str, weight: torch.Tensor) -> torch.Tensor | Int8Weight:
        if name not in self._reordered and self.dtype == torch.int8:
            self._reordered[name] = quantize_weight(weight)
        elif name not in self._reordered:
            weight = weight.detach().to(self.dtype).contiguous()
            self._reordered[name] = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        return self._reordered[name]

    def linear(
        self, name: str, x: torch.Tensor, sources: tuple[torch.Tensor | None, ...], derive=None,
        activation: str = "none",
    ) -> torch.Tensor:
        """`F.linear(x, weight, bias)`, then `activation` ("none" or "tanh"). (weight, bias) are `sources` itself, or
        `derive(*sources)` (e.g. two weights side by side). They are made once per `name`: later calls reuse the
        tensors (and their autograd history)."""
        known = self._sources.get(name)
        given = [t for t in sources if t is not None]
        if known is None or any(tensor is not source for (tensor, _), source in zip(known, given, strict=True)):
            # first use, or a module was replaced (e.g. resized): derive and reorder this weight afresh
            for key in (name, f"{name}.cast"):
                self._reordered.pop(key, None)
            self._sources[name] = tuple((t, _fingerprint(t)) for t in given)
            weight_and_bias = derive(*sources) if derive is not None else sources
            self._weights[name] = self._deferring_gradients(name, *weight_and_bias)
        weight, bias = self._weights[name]
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        )
        if not needs_grad and self.dtype == torch.float32 and x.numel() <= PLAIN_FP32_ROWS * x.shape[-1]:
            output = F.linear(x, weight, bias)
            return torch.tanh(output) if activation == "tanh" else output
        if not needs_grad and self.dtype == torch.int8:
            return int8_linear(x, self.reordered(name, weight), bias, activation)
        if not needs_grad:
            bias = bias.to(self.dtype) if bias is not None else None
            return _onednn_linear(x.to(self.dtype), self.reordered(name, weight), bias, activation)
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
        return PackedWeights(self.dtype)  # reordered oneDNN tensors cannot be copied; they are rebuilt on demand

    def __getstate__(self) -> dict:
        return {"dtype": self.dtype}  # nor pickled (torch.save of a whole model): the unpickled object starts empty

    def __setstate__(self, state: dict) -> None:
        self.__init__(state.get("dtype", torch.float32))


# Decoding: the reordered weights of one cache (one generate() call), and of the decoder's last call, reused while
# its parameters are unchanged. Kept beside the objects, not on them, so the model and cache stay plain.
_weights_of_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_weights_of_decoder: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _decoding_weights(decoder: S2SDecoder, cache: S2SDecoderCache, dtype: torch.dtype) -> PackedWeights:
    packed = _weights_of_cache.get(cache)
    if packed is None or packed.dtype != dtype:
        packed = _weights_of_decoder.get(decoder)
        if packed is None or packed.dtype != dtype or not packed.is_current():
            packed = _weights_of_decoder[decoder] = PackedWeights(dtype)
        _weights_of_cache[cache] = packed
    return packed


def _has_float_weights(decoder: S2SDecoder) -> bool:
    # float nn.Linear / RNN weights only: a dynamically quantised or otherwise replaced module keeps its own path
    weight = getattr(decoder.rnn, "weight_ih_l0", None)
    return isinstance(weight, torch.Tensor) and type(decoder.combine) is nn.Linear


def _packed_weights(decoder: S2SDecoder, cache: S2SDecoderCache, positions: int) -> PackedWeights | None:
    """The `PackedWeights` of a decoder call over `positions` target positions, or None for plain matmuls: in
    decoding the cache's (reused between generate() calls); with gradients on, new for each call (an optimizer step
    may change the weights before the next one), and only over several positions (reordering costs more than it
    saves on a single one)."""
    if torch.is_grad_enabled():
        dtype = onednn_dtype(decoder.rnn.weight_ih_l0)
        return PackedWeights(dtype) if dtype is not None and positions > 1 else None
    dtype = decoding_dtype(decoder.rnn.weight_ih_l0, decoder.config.int8_decoding)
    return _decoding_weights(decoder, cache, dtype) if dtype is not None else None


# ---------------------------------------------------------------------------------------------------------------
# Decoder step
# ---------------------------------------------------------------------------------------------------------------


def _merge_lstm(w_ih, w_hh, b_ih, b_hh) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM layer's weights for a single matmul over [x; h]: [W_ih | W_hh] and b_ih + b_hh."""
    return torch.cat([w_ih, w_hh], dim=1), b_ih + b_hh


class FastStep:
    """`modeling_s2s.ReferenceStep` with fewer, larger or pre-packed matmuls (same interface, same results up to
    float rounding): see the module docstring."""

    def __init__(self, decoder: S2SDecoder, embeddings: torch.Tensor, packed: PackedWeights | None):
        from .modeling_s2s import gru_cell, lstm_cell, rnn_layer_weights

        self.decoder, self.embeddings, self.packed = decoder, embeddings, packed
        self.lstm_cell, self.gru_cell = lstm_cell, gru_cell
        rnn = decoder.rnn
        self.weights = [rnn_layer_weights(rnn, layer) for layer in range(rnn.num_layers)]
        self.is_lstm = isinstance(rnn, nn.LSTM)
        self.embedding_gates = self.recurrent_weight = None
        if embeddings.shape[1] > 1:
            w_ih0, w_hh0, b_ih0, _ = self.weights[0]
            size = embeddings.shape[-1]
            # unbind once: indexing [:, t] per step makes autograd zero-fill a (B, T, G) gradient for every step
            self.embedding_gates = F.linear(embeddings, w_ih0[:, :size], b_ih0).unbind(1)  # T x (B, G)
            self.extra_weight = w_ih0[:, size:]  # input feed and/or Bahdanau context columns
            # LSTM: the input feed / context and the hidden state share one matmul per step. Not under autocast
            # without packed weights: autocast caches its casts of parameters only, so it would cast the merged
            # weight at every step (packed weights are cast once, when reordered).
            if self.is_lstm and (packed is not None or _autocast_dtype(w_ih0.device.type) is None):
                self.recurrent_weight = torch.cat([self.extra_weight, w_hh0], dim=1)

    def rnn(self, t: int, extra_inputs: list[torch.Tensor], hidden: list, cell: list) -> tuple[list, list]:
        hidden, cell = list(hidden), list(cell)
        if self.embedding_gates is None:  # one position (decoding): every layer through the packed weights
            x = torch.cat([self.embeddings[:, t], *extra_inputs], dim=-1)
            hidden[0], cell[0] = self._layer(0, x, hidden[0], cell[0], self.packed)
            upper_packed = self.packed
        else:  # several positions (training): only layer 0's recurrent matmul is packed
            hidden[0], cell[0] = self._first_layer_over_positions(t, extra_inputs, hidden[0], cell[0])
            upper_packed = None
        rnn = self.decoder.rnn
        for layer in range(1, len(self.weights)):
            below = F.dropout(hidden[layer - 1], rnn.dropout, rnn.training)
            hidden[layer], cell[layer] = self._layer(layer, below, hidden[layer], cell[layer], upper_packed)
        return hidden, cell

    def _layer(self, layer: int, x: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor | None, packed):
        """One layer on its whole input x; an LSTM in one matmul over [x; h] when the weights are packed."""
        w_ih, w_hh, b_ih, b_hh = self.weights[layer]
        if packed is None:
            input_gates, hidden_gates = F.linear(x, w_ih, b_ih), F.linear(hidden, w_hh, b_hh)
        elif self.is_lstm:
            gates = packed.linear(f"rnn.{layer}", torch.cat([x, hidden], dim=-1), self.weights[layer], _merge_lstm)
            return self.lstm_cell(gates, cell)
        else:
            input_gates = packed.linear(f"rnn.{layer}.ih", x, (w_ih, b_ih))
            hidden_gates = packed.linear(f"rnn.{layer}.hh", hidden, (w_hh, b_hh))
        if self.is_lstm:
            return self.lstm_cell(input_gates + hidden_gates, cell)
        return self.gru_cell(input_gates, hidden_gates, hidden), None

    def _first_layer_over_positions(self, t: int, extra_inputs: list, hidden: torch.Tensor, cell):
        """Layer 0 at position t of several, from the precomputed embedding gates."""
        _, w_hh, _, b_hh = self.weights[0]
        gates = self.embedding_gates[t]
        if self.recurrent_weight is not None:
            recurrent_input = torch.cat([*extra_inputs, hidden], dim=-1)
            if self.packed is None:
                recurrent = F.linear(recurrent_input, self.recurrent_weight, b_hh)
            else:
                recurrent = self.packed.linear("rnn.0.recurrent", recurrent_input, (self.recurrent_weight, b_hh))
            return self.lstm_cell(gates + recurrent, cell)
        if extra_inputs:
            gates = gates + F.linear(torch.cat(extra_inputs, dim=-1), self.extra_weight)
        hidden_gates = F.linear(hidden, w_hh, b_hh)
        if self.is_lstm:
            return self.lstm_cell(gates + hidden_gates, cell)
        return self.gru_cell(gates, hidden_gates, hidden), None

    def combine(self, features: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return torch.tanh(self.decoder.combine(features))
        return self.packed.module("combine", features, self.decoder.combine, activation="tanh")


def decoder_step(decoder: S2SDecoder, embeddings: torch.Tensor, cache: S2SDecoderCache) -> FastStep | None:
    """The step driver's `FastStep` for this call, or None (reference) for an RNN without float weights."""
    if not _has_float_weights(decoder):
        return None
    return FastStep(decoder, embeddings, _packed_weights(decoder, cache, embeddings.shape[1]))


# ---------------------------------------------------------------------------------------------------------------
# Output layer
# ---------------------------------------------------------------------------------------------------------------


def output_logits(model: S2SForConditionalGeneration, hidden: torch.Tensor, cache) -> torch.Tensor | None:
    """Decoding: lm_head(output_projection(a)) through the cache's reordered weights, else None."""
    if torch.is_grad_enabled() or cache is None:
        return None
    packed = _weights_of_cache.get(cache)
    plain_head = type(model.lm_head) is nn.Linear and type(model.output_projection) in (nn.Linear, nn.Identity)
    if (
        packed is None or not plain_head
        or decoding_dtype(model.lm_head.weight, model.config.int8_decoding) != packed.dtype
    ):
        return None
    projected = packed.module("output_projection", hidden, model.output_projection)
    return packed.module("lm_head", projected, model.lm_head)


def span_logits_and_loss(model: S2SForConditionalGeneration, hidden: torch.Tensor, labels: torch.Tensor,
                         num_items_in_batch) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Training: logits (B, T, V) and loss with the output layer run only up to each row's last label that is not
    -100 (the positions after it predict nothing; their logits stay 0), or None when every row ends with a label.

    In bf16 on CPU the rows go through the output layer padded to a multiple of `BF16_ROW_BUCKET` (padding rows
    are ignored by the loss): oneDNN compiles a bf16 matmul kernel for every new shape (tens of ms each), and the
    number of label positions changes with every batch."""
    positions = torch.arange(1, labels.shape[1] + 1, device=labels.device)
    lengths = (labels.ne(-100) * positions).amax(dim=1)
    if bool((lengths == labels.shape[1]).all()):
        return None
    span = positions[None, :] <= lengths[:, None]  # (B, T)
    span_hidden, span_labels = hidden[span], labels[span]  # (N, H), (N,)
    rows = span_hidden.shape[0]
    if _bf16_matmuls_on_cpu(model.lm_head.weight):
        padding = -rows % BF16_ROW_BUCKET
        span_hidden = F.pad(span_hidden, (0, 0, 0, padding))
        span_labels = F.pad(span_labels, (0, padding), value=-100)
    span_logits = model.vocabulary_logits(span_hidden)  # (N', V)
    loss = model.token_loss(span_logits, span_labels, num_items_in_batch)
    logits = span_logits.new_zeros(*labels.shape, span_logits.shape[-1]).index_put_((span,), span_logits[:rows])
    return logits, loss


def _bf16_matmuls_on_cpu(weight: torch.Tensor) -> bool:
    """Whether matmuls with `weight` run in bf16 on CPU (bf16 weights, or bf16 autocast), where PyTorch calls
    oneDNN, which builds a kernel for each new shape; fp32 matmuls go through BLAS routines that need none."""
    return weight.device.type == "cpu" and _matmul_dtype(weight) == torch.bfloat16
