"""Batch prediction over a file: ``peftkit predict DIR --input data.csv --output predictions.jsonl``.

Reads a CSV, JSONL or ``datasets`` directory (save_to_disk), answers every row as the server
would (peftkit.serving.rows: same tokenization, same answer fields, probabilities rounded to
``DECIMALS`` places) and writes one JSON line per input row, in input order, atomically.

Under ``accelerate launch --num_processes N`` each process predicts a contiguous share made of
whole batches (so every batch holds the same rows as in a one-process run), the answers are
gathered in rank order, and only the main process writes: the file equals the one a single
process writes. A bad row fails the whole run, on every process at once (errors are gathered
too, so no process waits forever for one that gave up), and leaves no output file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from peftkit.errors import DataError, RequestError

DECIMALS = 6  # probabilities in the file; more digits would only record float noise


def read_rows(path: str | Path):
    """The rows of a CSV/TSV/JSON(L) file or of a save_to_disk directory, as a ``datasets.Dataset``."""
    from datasets import Dataset, DatasetDict, load_from_disk

    from peftkit.data.tasks import is_saved_dataset, read_table

    path = Path(path)
    if not path.exists():
        raise DataError(f"--input {path} does not exist; give a CSV/JSONL file or a directory written by save_to_disk.")
    if path.is_dir():
        if not is_saved_dataset(path):
            raise DataError(f"--input {path} is a directory but not a saved dataset (no state.json/dataset_dict.json); "
                            "give a CSV/JSONL file or a directory written by Dataset.save_to_disk.")
        saved = load_from_disk(str(path))
        if isinstance(saved, DatasetDict):
            if len(saved) != 1:
                raise DataError(f"--input {path} holds the splits {list(saved)}; save the one to predict on its own "
                                "(dataset[split].save_to_disk(...)).")
            saved = next(iter(saved.values()))
        assert isinstance(saved, Dataset)
        return saved
    return read_table(path, as_text=True)


def _round(answer: Any) -> Any:
    if isinstance(answer, float):
        return round(answer, DECIMALS)
    if isinstance(answer, dict):
        return {key: _round(value) for key, value in answer.items()}
    if isinstance(answer, list):
        return [_round(value) for value in answer]
    return answer


def batch_shard(num_rows: int, batch_size: int, rank: int, world_size: int) -> range:
    """Rows of process ``rank``: a contiguous run of whole batches (the last one may be short)."""
    num_batches = math.ceil(num_rows / batch_size)
    first = num_batches * rank // world_size
    last = num_batches * (rank + 1) // world_size
    return range(min(first * batch_size, num_rows), min(last * batch_size, num_rows))


def predict_file(
    adapter: str,
    input: str,
    output: str,
    *,
    model: str | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    id_column: str | None = None,
    batch_size: int = 32,
    truncate: bool = False,
    overwrite: bool = False,
    skip_bad_rows: bool = False,
) -> dict[str, Any]:
    """Predict every row of ``input`` with the adapter in ``adapter``; write ``output`` (JSONL).

    ``text_column`` / ``text_pair_column`` default to the columns the adapter was trained on (else "text").
    Each line is one input row's answer, in input order, led by ``"row"`` (its 0-based index in ``input``) and,
    with ``id_column``, that column's value under its own name, so answers join back to the input by key.
    With ``skip_bad_rows`` a row the server would refuse (empty, over-long without ``truncate``) is
    answered by ``{"row", "error": {"code", "message"}}``, as the server fails only that request, and the
    others are predicted. Returns {"rows", "refused", "output", "num_processes"}. Raises DataError for an
    existing ``output`` (unless ``overwrite``), an unreadable input, a missing column, a bad row naming it
    (unless ``skip_bad_rows``), or an image adapter."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from peftkit.files import atomic_write
    from peftkit.loading import load_adapter, read_task_info
    from peftkit.peft_model import read_adapter_config, refuse_feature_probe
    from peftkit.serving.rows import SERVED_KINDS, Fields, TaskSpec, answer_row, check_text_pair, encode_row, model_max_length, pad_rows
    from peftkit.training.distributed import process_state

    if batch_size < 1:
        raise DataError(f"--batch-size must be at least 1, got {batch_size}.")
    # What the adapter is, before the file is read: a feature probe is refused whatever the columns.
    refuse_feature_probe(read_adapter_config(adapter), adapter)
    task = read_task_info(adapter)
    trained = task.get("columns") or {}
    text_column = text_column or trained.get("text_column") or "text"
    if text_pair_column is None and task.get("is_pair"):
        text_pair_column = trained.get("text_pair_column")
    if Path(output).exists() and not overwrite:
        raise DataError(f"--output {output} already exists; pass --overwrite true to replace it, or name a new file.")
    state = process_state()
    rows = read_rows(input)
    missing = [column for column in (text_column, text_pair_column, id_column) if column and column not in rows.column_names]
    if missing:
        flag = "--id-column" if missing[0] == id_column else "--text-column / --text-pair-column"
        raise DataError(f"--input {input} has no column {missing[0]!r} (columns: {rows.column_names}); "
                        f"name the right one with {flag}.")
    adapted, tokenizer, info = load_adapter(adapter, model)
    if info["kind"] not in SERVED_KINDS:
        raise DataError(f"batch prediction reads texts; {adapter} is a {info['kind']} adapter. Use --image for one image.")
    spec = TaskSpec(Path(adapter).name, info["kind"], tuple(info["label_names"]), bool(info.get("is_pair")), "", 0)
    # Whole-file refusals name the flags; a refused row names the column to mend.
    flags = Fields(text="--text-column", text_pair="--text-pair-column", truncate="--truncate", verb="give")
    columns = dataclasses.replace(flags, text=f"column {text_column!r}", text_pair=f"column {text_pair_column!r}")
    try:  # the whole file at once, naming the flag, before any row is read
        check_text_pair(spec.name, spec.takes_pairs, text_pair_column is not None, fields=flags)
    except RequestError as error:
        raise DataError(str(error)) from None
    device = state.device  # this process's device under accelerate launch (its GPU, or the CPU)
    adapted.to(device)
    max_length = model_max_length(tokenizer, adapted.config)

    shard = batch_shard(len(rows), batch_size, state.process_index, state.num_processes)
    answers: list[dict[str, Any]] = []
    failure = None
    progress = tqdm(total=len(shard), desc="predicting", unit="row", disable=not state.is_main_process)
    try:
        for start in range(shard.start, shard.stop, batch_size):
            batch = rows[start : min(start + batch_size, shard.stop)]
            pairs = batch[text_pair_column] if text_pair_column else [None] * len(batch[text_column])
            encoded, answered = {}, {}  # by offset in the batch
            for offset, (text, text_pair) in enumerate(zip(batch[text_column], pairs)):
                try:
                    encoded[offset] = encode_row(tokenizer, spec, text, text_pair, max_length=max_length,
                                                 truncate=truncate, fields=columns)
                except RequestError as error:
                    where = f"row {start + offset} of {input} (counting data rows from 0, as the answers' \"row\" does)"
                    if not skip_bad_rows:
                        raise DataError(f"{where}: {error} (--skip-bad-rows true answers the other rows)") from None
                    answered[offset] = {"error": {"code": error.code, "message": str(error)}}
            if encoded:
                inputs = pad_rows(tokenizer, list(encoded.values()), device)
                with torch.no_grad():
                    logits = adapted(**inputs).logits
                for index, (offset, row) in enumerate(encoded.items()):
                    row_logits = logits[index]
                    if row_logits.dim() == 2:  # token classification: the row's own tokens, without padding
                        row_logits = row_logits[inputs["attention_mask"][index].bool()]
                    answered[offset] = _round(answer_row(spec, row_logits, row))
            for offset in range(len(batch[text_column])):
                key = {"row": start + offset, **({id_column: batch[id_column][offset]} if id_column else {})}
                answers.append({**key, **answered[offset]})
            progress.update(len(answered))
    except DataError as error:
        failure = str(error)
    finally:
        progress.close()

    # Every process reaches the gather, failed or not, so none waits for one that stopped.
    gathered = gather_object([(state.process_index, answers, failure)]) if state.num_processes > 1 else [(0, answers, failure)]
    failures = [message for _, _, message in gathered if message]
    if failures:
        raise DataError(failures[0])
    refused = sum(1 for _, shard_answers, _ in gathered for answer in shard_answers if "error" in answer)
    if state.is_main_process:
        lines = [json.dumps(answer, ensure_ascii=False) for _, shard_answers, _ in sorted(gathered, key=lambda g: g[0])
                 for answer in shard_answers]

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write("".join(line + "\n" for line in lines))

        atomic_write(output, write)
        print(f"{len(lines) - refused} predictions written to {output} by {state.num_processes} process(es)"
              + (f", and {refused} refused row(s), each answered by its \"error\"" if refused else ""))
    return {"rows": len(rows), "refused": refused, "output": str(output), "num_processes": state.num_processes}
