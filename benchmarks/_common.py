"""Shared pieces of the benchmark scripts: machine report, the `fast_paths` switch, cached tokenizer, Multi30k
batches, presets, memory, matmul peak and table printing. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import random
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache"
PRESET_DIR = REPO_ROOT / "configuration" / "models"
PRESETS = ("tiny", "small", "base", "base_fused")
SOURCE_LANG, TARGET_LANG = "de", "en"


# ---------------------------------------------------------------------------------------------------------------
# Machine and command
# ---------------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def setup_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def print_header(title: str) -> None:
    import transformers

    print(f"# {title}")
    print(f"command:   {command_line()}")
    print(f"machine:   {cpu_model()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"software:  python {platform.python_version()}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    print(f"load avg:  {load_average()} (1/5/15 min) at start")
    print(flush=True)


def print_footer() -> None:
    print(f"\nload avg:  {load_average()} (1/5/15 min) at end", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (pastes into the README as is)."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("| " + " | ".join(c.rjust(w) if index else c.ljust(w) for c, w in zip(row, widths)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Data, tokenizer and models
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def fast_paths(model, enabled: bool):
    """Inside the block, `model.config.fast_paths = enabled`; restored after it. True: the model's speed-only code
    paths (modeling_s2s/fast_paths.py: oneDNN matmuls with reordered weights, deferred weight gradients, the
    per-length CPU encoder, the label-span output layer; generation_s2s.py: greedy and beam loops where finished
    rows leave the batch). False: the plain reference model and transformers' own generation loops.

    `model` is the model or any of its modules with a `config` (encoder, decoder: they share the model's config
    object). A copy of the model (`copy.deepcopy`, quantised or bf16 copies) has its own config."""
    config = model.config
    saved = config.fast_paths
    config.fast_paths = enabled
    try:
        yield model
    finally:
        config.fast_paths = saved


#: Row label of the comparison run with `config.fast_paths = False`.
FAST_PATHS_OFF = "fast_paths=False"


def load_pairs(split: str) -> tuple[list[str], list[str]]:
    from modeling_s2s.data import load_parallel_data

    dataset = load_parallel_data(SOURCE_LANG, TARGET_LANG)[split]
    pairs = dataset["translation"]
    return [p[SOURCE_LANG] for p in pairs], [p[TARGET_LANG] for p in pairs]


def get_tokenizer(model_dir: str | None = None, vocab_size: int = 8000):
    """The tokenizer saved with `model_dir`, else a joint BPE tokenizer trained once on the Multi30k train split
    and cached under benchmarks/.cache/."""
    from transformers import AutoTokenizer

    if model_dir:
        import modeling_s2s  # noqa: F401  (registers the config, so the directory's remote code is not needed)

        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    path = CACHE_DIR / f"tokenizer-{SOURCE_LANG}-{TARGET_LANG}-bpe{vocab_size}"
    if (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(path))
    from modeling_s2s.tokenization import train_tokenizer

    sources, targets = load_pairs("train")
    tokenizer = train_tokenizer([t for pair in zip(sources, targets) for t in pair], vocab_size=vocab_size)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def preset_kwargs(preset: str) -> dict[str, Any]:
    return json.loads((PRESET_DIR / f"{preset}.json").read_text())


def build_model(preset: str, tokenizer, seed: int = 0, **overrides):
    """A freshly initialised `S2SForConditionalGeneration` of a preset, sized and special ids from the tokenizer
    (as `modeling_s2s.job.build_config` does)."""
    from modeling_s2s import S2SConfig, S2SForConditionalGeneration
    from modeling_s2s.job import vocabulary_from_tokenizer

    kwargs = {**preset_kwargs(preset), **vocabulary_from_tokenizer(tokenizer), **overrides}
    torch.manual_seed(seed)
    return S2SForConditionalGeneration(S2SConfig(**kwargs))


def load_model(model_dir: str):
    from transformers import AutoModelForSeq2SeqLM

    import modeling_s2s  # noqa: F401  (registers the auto classes)

    # The directory's auto_map points at copied remote code; use the installed, registered classes instead.
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, trust_remote_code=False)
    model.eval()
    return model


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts))["input_ids"]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) ids and 0/1 mask."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def training_batches(
    tokenizer, batch_size: int = 64, seed: int = 0, mega: int = 50, grouping: str = "source"
) -> list[dict[str, torch.Tensor]]:
    """All Multi30k training pairs as length-grouped batches (like `group_by_length` in the package's trainer:
    shuffled, cut into mega-batches of `mega` batches, sorted within each by `modeling_s2s.data.pair_length_keys`
    with `first=grouping`, i.e. `--length_grouping`), then shuffled."""
    from datasets import Dataset

    from modeling_s2s.data import pair_length_keys

    sources, targets = load_pairs("train")
    source_ids, target_ids = tokenize(tokenizer, sources), tokenize(tokenizer, targets)
    order = list(range(len(source_ids)))
    rng = random.Random(seed)
    rng.shuffle(order)
    groups = []
    span = batch_size * mega
    keys = pair_length_keys(Dataset.from_dict({"input_ids": source_ids, "labels": target_ids}), first=grouping)
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=keys.__getitem__, reverse=True)
        groups += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    groups = [g for g in groups if len(g) == batch_size]
    rng.shuffle(groups)
    batches = []
    for group in groups:
        input_ids, attention_mask = pad_batch([source_ids[i] for i in group], tokenizer.pad_token_id)
        labels, label_mask = pad_batch([target_ids[i] for i in group], tokenizer.pad_token_id)
        labels = labels.masked_fill(label_mask == 0, -100)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


def decoding_batches(
    tokenizer, texts: Sequence[str], batch_size: int, sort: bool = True
) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(original indices, input_ids, attention_mask) per batch; sorted by source length when `sort` (as NMT
    toolkits translate), so padding stays small."""
    ids = tokenize(tokenizer, texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True) if sort else list(range(len(ids)))
    result = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in index], tokenizer.pad_token_id)
        result.append((index, input_ids, mask))
    return result


def count_generated_tokens(sequences: torch.Tensor, pad_id: int, eos_id: int, has_start: bool = True) -> int:
    """Output tokens of generated rows: up to and including the first `</s>`, without the decoder start token."""
    body = sequences[:, 1:] if has_start else sequences
    total = 0
    for row in body.tolist():
        n = 0
        for token in row:
            n += 1
            if token == eos_id:
                break
        while n and row[n - 1] == pad_id and pad_id != eos_id:
            n -= 1
        total += n
    return total


def strip_generated(row: Sequence[int], pad_id: int, eos_id: int) -> list[int]:
    """Tokens of one generated row (start token already removed) before `</s>`, without padding."""
    out = []
    for token in row:
        if token == eos_id:
            break
        if token != pad_id:
            out.append(token)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Memory and peak FLOP/s
# ---------------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb() -> float:
    """Current resident set size (MiB)."""
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident set size since the process started or the last `reset_peak_rss()` (MiB)."""
    return _status_kb("VmHWM") / 1024


def trim_memory() -> None:
    """Give the allocator's free memory back to the OS (glibc `malloc_trim`), so that the RSS growth of the next
    run reflects the memory it needs rather than what earlier runs left in the heap."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Trim the heap and reset the kernel's peak-RSS mark (Linux `clear_refs` 5); False where not allowed.
    Measure with `peak_rss_mb() - rss_mb()` taken right after this."""
    gc.collect()
    trim_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_isolated(function: Callable[..., Any], *args: Any) -> Any:
    """Run `function(*args)` in a fresh spawned interpreter and return its result (memory is then measured
    without the allocator caches and arenas of earlier runs in this process)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def matmul_peak_gflops(
    threads: int, size: int = 2048, seconds: float = 2.0, dtype: torch.dtype = torch.float32
) -> float:
    """Achieved GFLOP/s (int8: GOP/s) of a large square matmul at the current thread count: the practical peak
    that MFU is measured against (the best of several repeats, to be robust to other load on the machine).
    fp32 / bf16: `torch.mm`; int8: oneDNN's int8 linear (what `config.int8_decoding` runs) on int8 inputs."""
    matmul = _int8_matmul(size) if dtype == torch.int8 else _float_matmul(size, dtype)
    for _ in range(3):
        matmul()
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(3):
            matmul()
        elapsed = time.perf_counter() - start
        best = max(best, 3 * 2 * size**3 / elapsed / 1e9)
    return best


def _float_matmul(size: int, dtype: torch.dtype):
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    out = torch.empty(size, size, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def _int8_matmul(size: int):
    from modeling_s2s.fast_paths import quantize_weight

    weight = quantize_weight(torch.randn(size, size))
    x = torch.randint(-127, 128, (size, size), dtype=torch.int8)
    scale, zero_point = torch.tensor(0.01), torch.zeros((), dtype=torch.int64)
    return lambda: torch.ops.onednn.qlinear_pointwise.tensor(
        x, scale, zero_point, weight.packed, weight.scales, weight.zero_points, None, 1.0, 0, torch.float32, "none",
        [], "",
    )
