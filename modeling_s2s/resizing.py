"""Resizing the vocabularies of `S2SForConditionalGeneration` (source, target, `lm_head`), with public PyTorch only."""

from __future__ import annotations

import math

import torch
from torch import nn


def _resized_embedding(old: nn.Embedding, size: int, init_std: float, mean_resizing: bool) -> nn.Embedding:
    """A copy of `old` with `size` rows: existing rows kept, new rows ~ N(mean of the old rows if `mean_resizing`
    else 0, init_std)."""
    weight = old.weight
    new = nn.Embedding(size, weight.shape[1], old.padding_idx, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        kept = min(size, weight.shape[0])
        center = weight.mean(dim=0) if mean_resizing else torch.zeros_like(weight[0])
        new.weight.normal_(0.0, init_std).add_(center)
        new.weight[:kept] = weight[:kept]
    return new


class ResizableVocabularyMixin:
    """`resize_token_embeddings` (source, and with a joint vocabulary the target and `lm_head`) and
    `resize_decoder_token_embeddings` (separate target vocabulary) for `S2SForConditionalGeneration`."""

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the source embeddings (with a joint vocabulary also the decoder side and `lm_head`) to
        `new_num_tokens`, rounded up to a multiple of `pad_to_multiple_of`; existing rows are kept."""
        old = self.get_input_embeddings()
        size = old.weight.shape[0] if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            size = math.ceil(size / pad_to_multiple_of) * pad_to_multiple_of
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"`new_num_tokens`={new_num_tokens!r} must be a positive integer.")
        if size == old.weight.shape[0]:
            return old
        new = _resized_embedding(old, size, self.config.init_std, mean_resizing)
        self.set_input_embeddings(new)
        self.config.vocab_size = size
        if self.config.share_encoder_decoder_embeddings:
            self.config.decoder_vocab_size = size
            self._resize_lm_head(size)
        self.tie_weights()
        return new

    def resize_decoder_token_embeddings(self, new_num_tokens: int, mean_resizing: bool = True) -> nn.Embedding:
        """Resize the target vocabulary (decoder embeddings and `lm_head`) when vocabularies are separate."""
        if self.config.share_encoder_decoder_embeddings:
            raise ValueError(
                "`resize_decoder_token_embeddings` needs `share_encoder_decoder_embeddings=False`; with a joint "
                "vocabulary use `resize_token_embeddings`."
            )
        old = self.model.get_decoder_input_embeddings()
        new = _resized_embedding(old, new_num_tokens, self.config.init_std, mean_resizing)
        self.model.set_decoder_input_embeddings(new)
        self.config.decoder_vocab_size = new_num_tokens
        self._resize_lm_head(new_num_tokens)
        self.tie_weights()
        return new

    def _resize_lm_head(self, size: int) -> None:
        old = self.lm_head
        new = nn.Linear(old.in_features, size, bias=False, device=old.weight.device, dtype=old.weight.dtype)
        if not self.config.tie_word_embeddings:  # a tied head takes the embedding matrix in `tie_weights`
            with torch.no_grad():
                new.weight.normal_(0.0, self.config.init_std)
                kept = min(size, old.weight.shape[0])
                new.weight[:kept] = old.weight[:kept]
        self.lm_head = new
