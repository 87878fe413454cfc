"""Input-checking contract of `generate()` and `forward()` that the model file must meet.

These tests state the contract; the model code (`modeling_s2s/modeling_s2s.py`) implements it. At the time they
were written some of them failed on purpose (see each test's docstring).
"""

from __future__ import annotations

import pytest
import torch
from conftest import BOS, GRID, grid_id, make_model, random_ids

LENGTHS = [6, 3, 5]  # right-padded: rows 1 and 2 have padding


def _decoder_inputs(batch: int, length: int = 4) -> torch.Tensor:
    ids = torch.randint(4, 20, (batch, length), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = BOS
    return ids


@pytest.mark.parametrize("num_beams", [0, -1])
def test_generate_rejects_a_non_positive_num_beams(num_beams):
    """`num_beams=0` used to fail deep inside beam search with "slice step cannot be zero"; the contract is a
    `ValueError` naming `num_beams`, the value and what is allowed."""
    model = make_model()
    ids, mask = random_ids(LENGTHS)
    with pytest.raises(ValueError) as info, torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, num_beams=num_beams, max_new_tokens=4)
    message = str(info.value)
    assert "num_beams" in message and str(num_beams) in message, message


@pytest.mark.parametrize("options", [GRID[0], GRID[3], GRID[12]], ids=grid_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bool, torch.int32])
def test_any_0_1_attention_mask_dtype_works_like_a_long_mask(options, dtype):
    """A float (or bool, int32) 0/1 `attention_mask` on a padded CPU batch gives the same output as the long
    mask, through `model(...)` and through `generate()` (greedy and beam search)."""
    model = make_model(**options)
    ids, mask = random_ids(LENGTHS)
    assert (mask == 0).any()  # padded
    other = mask.to(dtype)
    decoder_input_ids = _decoder_inputs(len(LENGTHS))
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_input_ids).logits
        got = model(input_ids=ids, attention_mask=other, decoder_input_ids=decoder_input_ids).logits
        torch.testing.assert_close(got, expected)
        for num_beams in (1, 3):
            kwargs = dict(input_ids=ids, num_beams=num_beams, max_new_tokens=6)
            long_out = model.generate(attention_mask=mask, **kwargs)
            other_out = model.generate(attention_mask=other, **kwargs)
            assert torch.equal(other_out, long_out), (num_beams, other_out, long_out)
