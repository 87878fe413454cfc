"""A plain PyTorch implementation of the benchmark architecture: the naive baseline.

Written the way a typical tutorial writes an attentional LSTM encoder–decoder (Luong et al. 2015), with no
precomputation and no fused paths:

- one `nn.Embedding` shared by source, target and (tied) output layer;
- encoder: `nn.LSTM`, bidirectional, `hidden_size // 2` units per direction, over a packed batch;
- bridge: h0 = tanh(W_h [h_fwd; h_bwd] + b_h), c0 = W_c [c_fwd; c_bwd] + b_c;
- decoder: `nn.LSTMCell` stepped in a Python loop, one target token at a time; with input feeding its input
  is [emb(y_t); a_{t-1}] (a_0 = 0);
- Luong "general" attention: score(h_t, h̄_s) = (W_a h_t)·h̄_s, softmax over real source positions,
  c_t = Σ_s α_ts h̄_s;
- attentional vector a_t = dropout(tanh(W_c [c_t; h_t]));
- output layer: logits = E · (P a_t), E the embedding matrix (tied) and P a bias-free hidden→embedding
  projection (needed because embedding_size != hidden_size);
- loss: token-averaged cross-entropy over non-padding target tokens (with the model's label smoothing).

Every step embeds its token, concatenates the input, runs the cell (input and recurrent matmuls), attends and
combines; the output layer runs once over the stacked attentional vectors (as most tutorials' loss does).

This is the same architecture as `S2SForConditionalGeneration` with `configuration/models/base.json` (and
`base_fused.json` with `input_feeding=False`); `ReferenceSeq2Seq.from_s2s(model)` copies an S2S model's
weights so both compute the same loss and the same greedy translations (see
tests/test_benchmarks_reference.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class ReferenceSeq2Seq(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 256,
        hidden_size: int = 512,
        input_feeding: bool = True,
        dropout: float = 0.2,
        embedding_dropout: float = 0.2,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.vocab_size, self.hidden_size, self.input_feeding = vocab_size, hidden_size, input_feeding
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.label_smoothing = label_smoothing
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=pad_id)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.encoder = nn.LSTM(embedding_size, hidden_size // 2, bidirectional=True, batch_first=True)
        self.bridge_h = nn.Linear(hidden_size, hidden_size)
        self.bridge_c = nn.Linear(hidden_size, hidden_size)
        cell_input = embedding_size + (hidden_size if input_feeding else 0)
        self.decoder_cell = nn.LSTMCell(cell_input, hidden_size)
        self.attention_in = nn.Linear(hidden_size, hidden_size, bias=False)  # W_a of the general score
        self.attention_out = nn.Linear(2 * hidden_size, hidden_size, bias=False)  # W_c of tanh(W_c[c; h])
        self.dropout = nn.Dropout(dropout)
        self.output_projection = (
            nn.Linear(hidden_size, embedding_size, bias=False) if embedding_size != hidden_size else nn.Identity()
        )
        self.generator = nn.Linear(embedding_size, vocab_size, bias=False)
        self.generator.weight = self.embedding.weight  # tied output layer

    # -- building blocks -----------------------------------------------------------------------------------

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor):
        """src: (B, S) right-padded ids, src_mask: (B, S) 1 for real tokens.
        Returns encoder outputs (B, S, H) and the decoder's initial (h0, c0), each (B, H)."""
        lengths = src_mask.sum(dim=1)
        embedded = self.embedding_dropout(self.embedding(src))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_outputs, (h_n, c_n) = self.encoder(packed)
        outputs, _ = pad_packed_sequence(packed_outputs, batch_first=True, total_length=src.size(1))
        h0 = torch.tanh(self.bridge_h(torch.cat([h_n[0], h_n[1]], dim=-1)))
        c0 = self.bridge_c(torch.cat([c_n[0], c_n[1]], dim=-1))
        return outputs, (h0, c0)

    def decode_step(self, y_t, state, input_feed, encoder_outputs, src_mask):
        """One decoder step. y_t: (B,) previous target token. Returns a_t (B, H) and the new (h, c)."""
        embedded = self.embedding_dropout(self.embedding(y_t))
        cell_input = torch.cat([embedded, input_feed], dim=-1) if self.input_feeding else embedded
        h, c = self.decoder_cell(cell_input, state)
        query = self.attention_in(h)  # (B, H)
        scores = torch.bmm(encoder_outputs, query.unsqueeze(2)).squeeze(2)  # (B, S)
        scores = scores.masked_fill(src_mask == 0, float("-inf"))
        weights = F.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), encoder_outputs).squeeze(1)  # (B, H)
        attentional = self.dropout(torch.tanh(self.attention_out(torch.cat([context, h], dim=-1))))
        return attentional, (h, c)

    def logits(self, attentional: torch.Tensor) -> torch.Tensor:
        return self.generator(self.output_projection(attentional))

    # -- training and decoding -----------------------------------------------------------------------------

    def forward(self, input_ids, attention_mask, labels):
        """Teacher-forced loss. labels: (B, T) target ids ending in </s>, -100 at padding."""
        encoder_outputs, state = self.encode(input_ids, attention_mask)
        batch, steps = labels.shape
        decoder_inputs = torch.cat(
            [labels.new_full((batch, 1), self.bos_id), labels[:, :-1].masked_fill(labels[:, :-1] == -100, self.pad_id)],
            dim=1,
        )
        input_feed = encoder_outputs.new_zeros(batch, self.hidden_size)
        outputs = []
        for t in range(steps):
            attentional, state = self.decode_step(decoder_inputs[:, t], state, input_feed, encoder_outputs, attention_mask)
            input_feed = attentional
            outputs.append(attentional)
        logits = self.logits(torch.stack(outputs, dim=1))  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), labels.reshape(-1), ignore_index=-100,
                               label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def greedy(self, input_ids, attention_mask, max_new_tokens: int = 80, min_new_tokens: int = 0) -> torch.Tensor:
        """Greedy translation: (B, n) generated ids (ending with </s>, then padding), no start token."""
        encoder_outputs, state = self.encode(input_ids, attention_mask)
        batch = input_ids.size(0)
        y = input_ids.new_full((batch,), self.bos_id)
        input_feed = encoder_outputs.new_zeros(batch, self.hidden_size)
        finished = torch.zeros(batch, dtype=torch.bool)
        generated = []
        for t in range(max_new_tokens):
            attentional, state = self.decode_step(y, state, input_feed, encoder_outputs, attention_mask)
            input_feed = attentional
            scores = self.logits(attentional)
            if t < min_new_tokens:
                scores[:, self.eos_id] = float("-inf")
            y = scores.argmax(dim=-1).masked_fill(finished, self.pad_id)
            generated.append(y)
            finished |= y == self.eos_id
            if bool(finished.all()):
                break
        return torch.stack(generated, dim=1)

    # -- weights from the transformers model ---------------------------------------------------------------

    @classmethod
    def from_s2s(cls, model) -> ReferenceSeq2Seq:
        """The reference with an `S2SForConditionalGeneration`'s weights (the architectures must match)."""
        config = model.config
        supported = (
            config.cell_type == "lstm" and config.bidirectional_encoder and config.encoder_layers == 1
            and config.decoder_layers == 1 and config.attention_type == "general" and config.attention_style == "luong"
            and config.bridge == "linear" and not config.decoder_self_attention and config.tie_word_embeddings
            and config.share_encoder_decoder_embeddings
        )
        if not supported:
            raise ValueError("The reference implements only the benchmark architecture (see the module docstring).")
        reference = cls(
            config.vocab_size, config.embedding_size, config.hidden_size, config.input_feeding, config.dropout,
            config.embedding_dropout, config.pad_token_id, config.decoder_start_token_id, config.eos_token_id,
            config.label_smoothing,
        )
        source = dict(model.named_parameters())
        targets = {
            "embedding.weight": "model.shared.weight",
            "bridge_h.weight": "model.decoder.bridge.hidden_proj.weight",
            "bridge_h.bias": "model.decoder.bridge.hidden_proj.bias",
            "bridge_c.weight": "model.decoder.bridge.cell_proj.weight",
            "bridge_c.bias": "model.decoder.bridge.cell_proj.bias",
            "attention_in.weight": "model.decoder.attention.query_proj.weight",
            "attention_out.weight": "model.decoder.combine.weight",
        }
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            targets[f"decoder_cell.{name}"] = f"model.decoder.rnn.{name}_l0"
            for suffix in ("_l0", "_l0_reverse"):
                targets[f"encoder.{name}{suffix}"] = f"model.encoder.rnn.{name}{suffix}"
        if config.embedding_size != config.hidden_size:
            targets["output_projection.weight"] = "output_projection.weight"
        with torch.no_grad():
            params = dict(reference.named_parameters())
            for target, name in targets.items():
                params[target].copy_(source[name])
        return reference
