"""Checks of the tensors a user passes to the model: each raises `ValueError` naming the argument, the bad value
and what is allowed."""

from __future__ import annotations

import torch


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str, allow_ignore_index: bool = False) -> None:
    """Raise `ValueError` for an empty tensor or ids outside `[0, vocab_size)` (`-100` allowed for labels)."""
    if not torch.is_tensor(ids):
        raise ValueError(f"`{name}` must be a torch.Tensor of token ids; got {type(ids).__name__}.")
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must have shape (batch, length); got shape {tuple(ids.shape)}.")
    if ids.shape[1] == 0 or ids.shape[0] == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(ids.shape)}); every sequence needs at least one token.")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
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


def check_attention_mask(
    mask: torch.Tensor, input_shape: tuple[int, ...], name: str = "attention_mask"
) -> torch.LongTensor:
    """Return `mask` as a long 0/1 tensor; raise `ValueError` unless it is a right-padded (B, S) mask of 0s and 1s
    (any numeric or bool dtype) with at least one real token per row."""
    if tuple(mask.shape) != tuple(input_shape):
        raise ValueError(f"`{name}` has shape {tuple(mask.shape)} but the inputs have shape {tuple(input_shape)}.")
    if not bool(((mask == 0) | (mask == 1)).all()):
        bad = mask[(mask != 0) & (mask != 1)][0].item()
        raise ValueError(f"`{name}` must hold only 0 (padding) and 1 (real token); it holds {bad!r}.")
    mask = mask.long()
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        row = int((lengths == 0).nonzero()[0])
        raise ValueError(f"Row {row} of the source batch is all padding; every sequence needs at least one real token.")
    if mask.shape[1] > 1 and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(
            f"`{name}` must be right-padded (ones, then zeros); left padding is not supported by the RNN encoder. "
            "Use a tokenizer with padding_side='right'."
        )
    return mask
