"""Speed of whichever `modeling_s2s` is importable, through public API only, so that two versions of the code can be
compared on one machine (run it alternately with each on PYTHONPATH; a git worktree of the other commit works):

- training: target tokens/s over the same 10 Multi30k batches of 64 (after 2 warm-up steps), base and base_fused
  presets, fp32 and CPU bf16 autocast, AdamW;
- decoding: `generate()` output tokens/s, greedy and beam 5, batch 64 over 192 test sentences, and the median ms per
  sentence at batch 1 over 12 sentences; an untrained base model with `max_new_tokens=15` (it never ends early);
  then batch 64 again with int8 decoding (`config.int8_decoding`, in versions that have it) and with the model's
  weights in bf16 (`model.to(torch.bfloat16)`).

`--reference` runs the same measurements with `config.fast_paths=False` (the reference model and transformers' own
generation loops), for the fast paths' speed-up on this machine.

Each decoding figure takes the fastest of 3 repeats per batch (per sentence at batch 1), each training figure the
faster of 2 passes over the batches with fresh models, so that a busy moment of a shared machine is not counted.

    git worktree add /tmp/before <commit>
    for i in 1 2; do PYTHONPATH=/tmp/before python benchmarks/bench_versions.py; python benchmarks/bench_versions.py; done
    for i in 1 2; do python benchmarks/bench_versions.py; python benchmarks/bench_versions.py --reference; done

Prints one JSON line per run (and the machine). Use a quiet machine: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _common import cpu_model, get_tokenizer, load_average, load_pairs  # noqa: E402

import modeling_s2s  # noqa: E402
from modeling_s2s import S2SConfig, S2SForConditionalGeneration  # noqa: E402

PRESETS = Path(__file__).resolve().parent.parent / "configuration" / "models"
TRAIN_BATCHES, BATCH = 12, 64
FAST_PATHS = True  # False with --reference


def preset_model(tokenizer, name: str) -> S2SForConditionalGeneration:
    kwargs = json.loads((PRESETS / f"{name}.json").read_text())
    kwargs.update(vocab_size=len(tokenizer), decoder_vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  decoder_start_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    model = S2SForConditionalGeneration(S2SConfig(**kwargs))
    if not FAST_PATHS:
        model.config.fast_paths = False
    return model


def training_batches(tokenizer) -> list[dict[str, torch.Tensor]]:
    sources, targets = load_pairs("train")
    batches = []
    for start in range(0, TRAIN_BATCHES * BATCH, BATCH):
        pairs = sorted(zip(sources[start : start + BATCH], targets[start : start + BATCH]), key=lambda p: len(p[0]))
        inputs = tokenizer([s for s, _ in pairs], padding=True, return_tensors="pt")
        labels = tokenizer([t for _, t in pairs], padding=True, return_tensors="pt")["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100
        batches.append(dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels))
    return batches


def train_step(model, optimizer, batch, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def generate(model, tokenizer, sentences: list[str], beams: int) -> torch.Tensor:
    inputs = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.generate(**inputs, num_beams=beams, max_new_tokens=15, do_sample=False)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def batch64_tokens_per_second(model, tokenizer, test: list[str], beams: int) -> float:
    seconds, generated = 0.0, 0
    for start in range(0, len(test), BATCH):
        chunk = test[start : start + BATCH]
        output = generate(model, tokenizer, chunk, beams)
        generated += int((output[:, 1:] != tokenizer.pad_token_id).sum())
        seconds += min(timed(lambda c=chunk, k=beams: generate(model, tokenizer, c, k)) for _ in range(3))
    return generated / seconds


def measure_versions(tokenizer, batches, test: list[str]) -> dict[str, float]:
    results = {}
    tokens = sum(int((b["labels"] != -100).sum()) for b in batches[2:])
    for name in ("base", "base_fused"):
        for bf16 in (False, True):
            passes = []
            for _ in range(2):
                model = preset_model(tokenizer, name).train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
                seconds = [timed(lambda b=b, m=model, o=optimizer, f=bf16: train_step(m, o, b, f)) for b in batches]
                passes.append(sum(seconds[2:]))
            results[f"train {name} {'bf16' if bf16 else 'fp32'} tok/s"] = round(tokens / min(passes))
    model = preset_model(tokenizer, "base").eval()
    for beams in (1, 5):
        results[f"decode beam{beams} b64 tok/s"] = round(batch64_tokens_per_second(model, tokenizer, test, beams))
        latencies = sorted(
            min(timed(lambda s=s, k=beams: generate(model, tokenizer, [s], k)) for _ in range(3)) for s in test[:12]
        )
        results[f"decode beam{beams} b1 ms/sentence"] = round(1000 * latencies[len(latencies) // 2], 1)
    if "int8_decoding" in S2SConfig().to_dict():  # versions that have int8 decoding
        model.config.int8_decoding = True
        for beams in (1, 5):
            results[f"decode int8 beam{beams} b64 tok/s"] = round(batch64_tokens_per_second(model, tokenizer, test, beams))
        model.config.int8_decoding = False
    model = model.to(torch.bfloat16)
    for beams in (1, 5):
        results[f"decode bf16 weights beam{beams} b64 tok/s"] = round(
            batch64_tokens_per_second(model, tokenizer, test, beams)
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", action="store_true", help="config.fast_paths=False (the reference model)")
    args = parser.parse_args()
    global FAST_PATHS
    FAST_PATHS = not args.reference
    torch.set_num_threads(args.threads)
    print(f"# {cpu_model()}, {args.threads} threads, load average {load_average()}", flush=True)
    tokenizer = get_tokenizer()
    batches = training_batches(tokenizer)
    test = load_pairs("test")[0][: 3 * BATCH]
    results = measure_versions(tokenizer, batches, test)
    code = str(Path(modeling_s2s.__file__).parent) + (" fast_paths=False" if args.reference else "")
    print(json.dumps({"modeling_s2s": code, **results}))


if __name__ == "__main__":
    main()
