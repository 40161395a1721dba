"""Several processes, one run: what `accelerate launch` needs on machines without GPUs.

`accelerate launch --multi_gpu --num_processes N` (torchrun underneath) starts N processes, but
on a machine without an accelerator device Accelerate sets each of them up as a lone,
undistributed run unless told to use the CPU, and N copies of the same training would then
write the same output directory. peftkit asks for CPU processes (gloo) in that case and refuses
to train when the processes still did not form one group.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env

from peftkit.errors import TrainingError


def launched_world_size() -> int:
    """Processes the launcher (torchrun, `accelerate launch`, mpirun) started for this run."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def prefer_cpu_processes_without_devices() -> None:
    """Under a multi-process launch with no GPU, make Accelerate join the processes over gloo on
    CPU (what its own `--cpu` flag sets; its launcher writes "False" there unless given `--cpu`,
    which would only start one process). Must run before Accelerate's state is first created."""
    if launched_world_size() > 1 and not torch.cuda.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def process_state() -> PartialState:
    """Accelerate's per-process state (rank, main process), joined over gloo on CPU when launched
    as several processes without GPUs. PartialState, unlike Accelerator, does not read
    ACCELERATE_USE_CPU itself, so it is passed on here."""
    prefer_cpu_processes_without_devices()
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def check_processes_joined(num_processes: int) -> None:
    """Stop before training when the launcher started more processes than Accelerate joined."""
    launched = launched_world_size()
    if launched > 1 and num_processes != launched:
        raise TrainingError(
            f"the launcher started {launched} processes but Accelerate joined {num_processes} of them, so "
            f"{launched} independent copies of this run would write the same output. On a machine without "
            "GPUs launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...` "
            "(peftkit sets it itself unless Accelerate's state was created before training started)."
        )


def make_accelerator(*, mixed_precision: str = "no", **kwargs) -> Accelerator:
    """An Accelerator for one training or evaluation, joined over gloo on CPU when launched as
    several processes without GPUs.

    Accelerate keeps its settings in a process-wide singleton that refuses a second
    mixed-precision setting, so a notebook training once in float32 and then in bf16 would
    fail. The per-run settings are dropped first; the process group (PartialState) is kept."""
    prefer_cpu_processes_without_devices()
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, **kwargs)
    check_processes_joined(accelerator.num_processes)
    return accelerator
