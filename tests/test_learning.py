"""End to end: a tiny attention LSTM trained with `Seq2SeqTrainer` + `DataCollatorForSeq2Seq` learns to reverse
digit strings, measured by exact match of `generate()` on held-out strings."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from conftest import build_digit_tokenizer
from datasets import Dataset
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

from modeling_s2s import S2SConfig, S2SForConditionalGeneration

MIN_LENGTH, MAX_LENGTH = 5, 12
HELD_OUT = 256
STEPS, BATCH_SIZE, LEARNING_RATE = 400, 64, 5e-3


@pytest.fixture
def single_thread():
    # The tiny per-step ops of a recurrent decoder are latency-bound: on a shared 2-core box, two intra-op
    # threads wait on each other (measured ~20x slower than one thread under load), so train on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _digit_strings(rng: random.Random, count: int) -> list[str]:
    return [
        "".join(rng.choice("0123456789") for _ in range(rng.randint(MIN_LENGTH, MAX_LENGTH)))
        for _ in range(count)
    ]


def test_learns_to_reverse_digit_strings(tmp_path, single_thread):
    started = time.perf_counter()
    tokenizer = build_digit_tokenizer()
    rng = random.Random(0)
    held_out = list(dict.fromkeys(_digit_strings(rng, 2 * HELD_OUT)))[:HELD_OUT]
    excluded = set(held_out)
    train = [s for s in _digit_strings(rng, STEPS * BATCH_SIZE) if s not in excluded]

    dataset = Dataset.from_dict(
        {
            "input_ids": tokenizer(train)["input_ids"],
            "labels": tokenizer(text_target=[s[::-1] for s in train])["input_ids"],
        }
    )

    torch.manual_seed(0)
    config = S2SConfig(
        vocab_size=len(tokenizer),
        embedding_size=32,
        hidden_size=64,
        cell_type="lstm",
        attention_type="general",
        input_feeding=True,
        bidirectional_encoder=True,
        bridge="linear",
        dropout=0.0,
        embedding_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    model = S2SForConditionalGeneration(config)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        max_steps=STEPS,
        warmup_steps=20,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_steps=50,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        predict_with_generate=True,
        per_device_eval_batch_size=128,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
    )
    result = trainer.train()
    assert result.training_loss < 1.5
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] / 10, losses

    def exact_match(predictions: list[str]) -> float:
        exact = sum(p == s[::-1] for p, s in zip(predictions, held_out)) / len(held_out)
        wrong = [(s, p) for p, s in zip(predictions, held_out) if p != s[::-1]][:5]
        print(
            f"exact match {exact:.3f} on {len(held_out)} held-out strings, {time.perf_counter() - started:.0f}s"
        )
        assert exact >= 0.98, (exact, wrong)

    # Greedy decoding with generate() on right-padded batches.
    model.eval()
    predictions = []
    for start in range(0, HELD_OUT, 128):
        batch = tokenizer(held_out[start : start + 128], padding=True, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**batch, num_beams=1, max_new_tokens=MAX_LENGTH + 2)
        predictions += tokenizer.batch_decode(generated, skip_special_tokens=True)
    exact_match(predictions)

    # Beam search through the trainer's own evaluation path (predict_with_generate).
    test_set = Dataset.from_dict(
        {
            "input_ids": tokenizer(held_out)["input_ids"],
            "labels": tokenizer(text_target=[s[::-1] for s in held_out])["input_ids"],
        }
    )
    output = trainer.predict(test_set, num_beams=3, max_new_tokens=MAX_LENGTH + 2)
    generated = np.where(output.predictions == -100, tokenizer.pad_token_id, output.predictions)
    exact_match(tokenizer.batch_decode(generated, skip_special_tokens=True))
