"""The naive benchmark baseline (benchmarks/reference_model.py) is the same architecture as the S2S model: with
copied weights it computes the same loss, the same gradients and the same greedy translations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from modeling_s2s import S2SConfig, S2SForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from reference_model import ReferenceSeq2Seq  # noqa: E402

VOCAB, PAD, BOS, EOS = 30, 0, 1, 2


def _model(input_feeding: bool) -> S2SForConditionalGeneration:
    torch.manual_seed(0)
    config = S2SConfig(
        label_smoothing=0.1 if input_feeding else 0.0, vocab_size=VOCAB, embedding_size=8, hidden_size=12, input_feeding=input_feeding, dropout=0.2,
        embedding_dropout=0.2, init_std=0.3, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
        decoder_start_token_id=BOS,
    )
    return S2SForConditionalGeneration(config).eval()


def _batch():
    generator = torch.Generator().manual_seed(1)
    source_lengths, target_lengths = [7, 3, 5, 1], [4, 6, 2, 5]
    input_ids = torch.full((4, 7), PAD)
    attention_mask = torch.zeros(4, 7, dtype=torch.long)
    labels = torch.full((4, 6), -100)
    for row, (s, t) in enumerate(zip(source_lengths, target_lengths)):
        input_ids[row, :s] = torch.randint(3, VOCAB, (s,), generator=generator)
        attention_mask[row, :s] = 1
        labels[row, : t - 1] = torch.randint(3, VOCAB, (t - 1,), generator=generator)
        labels[row, t - 1] = EOS
    return input_ids, attention_mask, labels


@pytest.mark.parametrize("input_feeding", [True, False], ids=["input_feeding", "fused"])
def test_reference_matches_s2s_loss_gradients_and_greedy(input_feeding):
    model = _model(input_feeding)
    reference = ReferenceSeq2Seq.from_s2s(model).eval()
    input_ids, attention_mask, labels = _batch()

    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    reference_loss = reference(input_ids, attention_mask, labels)
    torch.testing.assert_close(reference_loss, loss, rtol=1e-5, atol=1e-6)

    loss.backward()
    reference_loss.backward()
    torch.testing.assert_close(reference.decoder_cell.weight_hh.grad, model.model.decoder.rnn.weight_hh_l0.grad,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(reference.embedding.weight.grad, model.model.shared.weight.grad, rtol=1e-4, atol=1e-6)

    generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=1, do_sample=False,
                               max_new_tokens=6)
    reference_generated = reference.greedy(input_ids, attention_mask, max_new_tokens=6)
    width = reference_generated.shape[1]
    assert torch.equal(generated[:, 1 : 1 + width], reference_generated)
