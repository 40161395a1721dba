"""`peftkit predict DIR --input FILE --output predictions.jsonl`: CSV, JSONL and saved datasets,
answers equal to the task's own model row by row, atomic output, and two processes under
`accelerate launch` writing the very file one process writes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
from datasets import Dataset

from peftkit.cli import main
from peftkit.errors import DataError
from peftkit.serving.batch_predict import DECIMALS, batch_shard, predict_file
from tests.serving.conftest import assert_same_answer, free_port, random_text

ROWS = 23  # not a multiple of the batch size, nor of two processes' share


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(3)
    return [random_text(rng, max_words=12) for _ in range(ROWS)]


def write_csv(path, texts, pairs=None):
    Dataset.from_dict({"text": texts, **({"second": pairs} if pairs else {})}).to_csv(str(path), index=False)
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("task", ["sentiment", "lora_ner"])
def test_every_row_answered_in_order_as_its_own_model(task, model_dir, adapter_dirs, references, texts, tmp_path):
    source = write_csv(tmp_path / "data.csv", texts)
    output = tmp_path / "out" / "predictions.jsonl"
    result = predict_file(str(adapter_dirs[task]), str(source), str(output), model=str(model_dir), batch_size=4)
    assert result["rows"] == ROWS
    answers = read_jsonl(output)
    assert [answer["row"] for answer in answers] == list(range(ROWS))
    for text, answer in zip(texts, answers):
        assert_same_answer(answer, references.answer(task, text), tolerance=2 * 10**-DECIMALS)


def test_answers_carry_an_id_column_and_never_replace_a_file_unasked(model_dir, adapter_dirs, references, texts, tmp_path):
    ids = [f"mail-{index:03d}" for index in reversed(range(ROWS))]  # ids unrelated to row order
    source = tmp_path / "data.csv"
    Dataset.from_dict({"id": ids, "text": texts}).to_csv(str(source), index=False)
    output = tmp_path / "predictions.jsonl"
    predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir), id_column="id", batch_size=5)
    answers = read_jsonl(output)
    assert [(answer["row"], answer["id"]) for answer in answers] == list(enumerate(ids))
    for text, answer in zip(texts, answers):
        assert_same_answer(answer, references.answer("sentiment", text), tolerance=2 * 10**-DECIMALS)

    before = output.read_text()
    with pytest.raises(DataError, match=r"predictions.jsonl already exists; pass --overwrite true"):
        predict_file(str(adapter_dirs["ner"]), str(source), str(output), model=str(model_dir))
    assert output.read_text() == before
    with pytest.raises(DataError, match=r"no column 'key'.*--id-column"):
        predict_file(str(adapter_dirs["ner"]), str(source), str(output), model=str(model_dir), id_column="key", overwrite=True)
    assert output.read_text() == before
    assert main(["predict", str(adapter_dirs["ner"]), "--input", str(source), "--output", str(output),
                 "--model", str(model_dir), "--overwrite", "true"]) == 0
    assert [answer["row"] for answer in read_jsonl(output)] == list(range(ROWS)) and "words" in read_jsonl(output)[0]


def test_jsonl_and_saved_datasets_with_pairs(model_dir, adapter_dirs, references, texts, tmp_path):
    pairs = list(reversed(texts))
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text("".join(json.dumps({"text": a, "second": b}) + "\n" for a, b in zip(texts, pairs)))
    saved = tmp_path / "saved"
    Dataset.from_dict({"text": texts, "second": pairs}).save_to_disk(str(saved))
    outputs = []
    for source in (jsonl, saved):
        output = tmp_path / f"{source.name}.predictions.jsonl"
        predict_file(str(adapter_dirs["topic"]), str(source), str(output), model=str(model_dir), text_pair_column="second")
        outputs.append(output.read_text())
    assert outputs[0] == outputs[1]
    for text, pair, answer in zip(texts, pairs, read_jsonl(tmp_path / "data.jsonl.predictions.jsonl")):
        assert_same_answer(answer, references.answer("topic", text, pair), tolerance=2 * 10**-DECIMALS)


def test_a_bad_row_is_named_and_leaves_no_output(model_dir, adapter_dirs, references, texts, tmp_path):
    source = write_csv(tmp_path / "data.csv", [*texts[:5], " ".join(["movie"] * 80), *texts[5:]])
    output = tmp_path / "predictions.jsonl"
    with pytest.raises(DataError, match=r"row 5 of .*data.csv.*at most 64.*truncate.*--skip-bad-rows true answers the other rows"):
        predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir))
    assert not output.exists() and not list(tmp_path.glob(".predictions*"))
    # An empty cell (None once read) names its row and its column, and how to mend it.
    blank = write_csv(tmp_path / "blank.csv", [*texts[:2], None, *texts[3:]])
    with pytest.raises(DataError, match=r"row 2 of .*blank.csv \(counting data rows from 0.*\): column 'text' is empty: give the text to classify"):
        predict_file(str(adapter_dirs["sentiment"]), str(blank), str(output), model=str(model_dir))
    assert not output.exists()
    with pytest.raises(DataError, match="no column 'sentence'"):
        predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir), text_column="sentence")
    with pytest.raises(DataError, match="does not exist"):
        predict_file(str(adapter_dirs["sentiment"]), str(tmp_path / "nope.csv"), str(output), model=str(model_dir))
    # Asked to skip bad rows, the long one is answered by its error, as the server would, and the others are predicted.
    result = predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir), skip_bad_rows=True)
    answers = read_jsonl(output)
    assert result["refused"] == 1 and [answer["row"] for answer in answers] == list(range(ROWS + 1))
    assert answers[5] == {"row": 5, "error": {"code": "text_too_long", "message": answers[5]["error"]["message"]}}
    assert "at most 64" in answers[5]["error"]["message"] and all("label" in answer for i, answer in enumerate(answers) if i != 5)
    for text, answer in zip(texts, answers[:5] + answers[6:]):
        assert_same_answer(answer, references.answer("sentiment", text), tolerance=2 * 10**-DECIMALS)
    output.unlink()
    # Asked to truncate, the long row is cut and says so.
    predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir), truncate=True)
    assert [answer["truncated"] for answer in read_jsonl(output)] == [False] * 5 + [True] + [False] * (ROWS - 5)


def test_shards_are_whole_batches_covering_every_row_once():
    for rows, batch, world in [(23, 4, 2), (23, 4, 3), (3, 4, 2), (0, 4, 2), (100, 7, 4)]:
        shards = [batch_shard(rows, batch, rank, world) for rank in range(world)]
        assert [row for shard in shards for row in shard] == list(range(rows))
        assert all(shard.start % batch == 0 for shard in shards if len(shard))


def test_the_cli_writes_the_file(model_dir, adapter_dirs, texts, tmp_path, capsys):
    source = write_csv(tmp_path / "data.csv", texts)
    output = tmp_path / "predictions.jsonl"
    assert main(["predict", str(adapter_dirs["ner"]), "--input", str(source), "--output", str(output),
                 "--model", str(model_dir), "--batch-size", "8"]) == 0
    assert f"{ROWS} predictions written" in capsys.readouterr().out
    assert len(read_jsonl(output)) == ROWS
    assert main(["predict", str(adapter_dirs["ner"]), "--input", str(source)]) == 2
    assert "--output" in capsys.readouterr().err


def test_two_processes_write_the_file_one_process_writes(model_dir, adapter_dirs, texts, tmp_path):
    source = write_csv(tmp_path / "data.csv", texts)
    args = ["-m", "peftkit", "predict", str(adapter_dirs["lora_ner"]), "--input", str(source),
            "--model", str(model_dir), "--batch-size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)
    one = subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one.jsonl")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
         *args, "--output", str(tmp_path / "two.jsonl")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("predictions written") == 1  # only the main process writes
    assert "by 2 process(es)" in two.stdout and "by 1 process(es)" in one.stdout
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert len(read_jsonl(tmp_path / "two.jsonl")) == ROWS


def test_predict_refuses_a_missing_or_unexpected_pair_as_the_server_does(model_dir, adapter_dirs, texts, tmp_path, capsys):
    """The server's missing_text_pair / unexpected_text_pair checks, in the flags' words, one text or a file."""
    topic, sentiment, ner = (["predict", str(adapter_dirs[name]), "--model", str(model_dir)] for name in ("topic", "sentiment", "ner"))
    assert main([*topic, "--text", "a movie"]) == 2
    assert "classifies pairs of texts, but no text_pair was given: add --text-pair beside --text" in capsys.readouterr().err
    for single in (sentiment, ner):
        assert main([*single, "--text", "a movie", "--text-pair", "the plot"]) == 2
        assert "classifies single texts, but a text_pair was given: drop --text-pair" in capsys.readouterr().err
    assert main([*topic, "--text", "a movie", "--text-pair", "the plot"]) == 0
    capsys.readouterr()

    source = write_csv(tmp_path / "data.csv", texts, pairs=texts)
    output = tmp_path / "predictions.jsonl"
    with pytest.raises(DataError, match="add --text-pair-column beside --text-column"):
        predict_file(str(adapter_dirs["topic"]), str(source), str(output), model=str(model_dir))
    with pytest.raises(DataError, match="drop --text-pair-column"):
        predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir), text_pair_column="second")
    assert not output.exists()


def test_predict_text_answers_checks_and_truncates_as_the_server_does(model_dir, adapter_dirs, references, capsys):
    """`peftkit predict --text` encodes as the server does: the same probabilities and tags, an empty text
    refused, an over-long one refused unless --truncate (it was cut silently at the training length)."""
    from peftkit.cli import predict_command

    text, long_text = "the movie was great", " ".join(["movie"] * 80)  # 82 tokens; the tiny model reads 64
    for name, kwargs in [("sentiment", {}), ("topic", {"text_pair": "the plot"}), ("ner", {})]:
        answer = predict_command(str(adapter_dirs[name]), text=text, model=str(model_dir), **kwargs)
        expected = references.answer(name, text, kwargs.get("text_pair"))
        if "label" in expected:
            assert answer["label"] == expected["label"]
            for label, probability in expected["probabilities"].items():
                assert answer["probabilities"][label] == pytest.approx(probability, abs=1e-5)
        else:
            assert answer["tags"] == [word["label"] for word in expected["words"]]
    capsys.readouterr()
    # A file's name given as --text is classified as text, with a note saying how to predict its rows.
    assert main(["predict", str(adapter_dirs["sentiment"]), "--model", str(model_dir), "--text", str(model_dir / "config.json")]) == 0
    assert "is also the name of a file; its name was classified, not its rows. To predict every row, pass --input" in capsys.readouterr().err
    for bad in ("", "   "):
        assert main(["predict", str(adapter_dirs["sentiment"]), "--model", str(model_dir), "--text", bad]) == 2
        assert "--text is empty: pass the text to classify" in capsys.readouterr().err
    assert main(["predict", str(adapter_dirs["sentiment"]), "--model", str(model_dir), "--text", long_text]) == 2
    assert "82 tokens long and this model reads at most 64: shorten it, or pass --truncate" in capsys.readouterr().err
    cut = predict_command(str(adapter_dirs["sentiment"]), text=long_text, model=str(model_dir), truncate=True)
    assert "truncated" in capsys.readouterr().out
    expected = references.answer("sentiment", long_text, truncate=True)
    assert cut["label"] == expected["label"] and cut["probability"] == pytest.approx(expected["score"], abs=1e-5)


def test_the_columns_default_to_those_the_adapter_was_trained_on_and_a_probe_is_refused_first(
        model_dir, adapter_dirs, references, texts, tmp_path):
    import shutil

    from peftkit.errors import AdapterFileError

    adapter = tmp_path / "sentiment"
    shutil.copytree(adapter_dirs["sentiment"], adapter)
    config_path = adapter / "adapter_config.json"
    record = json.loads(config_path.read_text())
    record["task"]["columns"] = {"text_column": "review"}  # as if trained on a file whose texts are under "review"
    config_path.write_text(json.dumps(record))
    source = tmp_path / "reviews.csv"
    Dataset.from_dict({"review": texts}).to_csv(str(source), index=False)
    predict_file(str(adapter), str(source), str(tmp_path / "out.jsonl"), model=str(model_dir))
    for text, answer in zip(texts, read_jsonl(tmp_path / "out.jsonl")):
        assert_same_answer(answer, references.answer("sentiment", text), tolerance=2 * 10**-DECIMALS)
    # A frozen-feature probe is refused for what it is, before its columns or the file are looked at.
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "adapter_config.json").write_text(json.dumps({"peft_type": "FEATURE_PROBE", "task": record["task"]}))
    with pytest.raises(AdapterFileError, match="is a frozen-feature probe"):
        predict_file(str(probe), str(tmp_path / "missing.csv"), str(tmp_path / "p.jsonl"))


def test_a_csvs_cells_are_read_as_written(model_dir, adapter_dirs, references, tmp_path):
    """ "NA", "null", "None" are texts, not missing cells, and an id "007" stays "007": answers join back by key."""
    source = tmp_path / "weird.csv"
    source.write_text("id,text\n007,NA\n0123,null\n1e3,None\nx,N/A\n")
    output = tmp_path / "out.jsonl"
    predict_file(str(adapter_dirs["sentiment"]), str(source), str(output), model=str(model_dir), id_column="id")
    answers = read_jsonl(output)
    assert [answer["id"] for answer in answers] == ["007", "0123", "1e3", "x"]
    for text, answer in zip(["NA", "null", "None", "N/A"], answers):
        assert_same_answer(answer, references.answer("sentiment", text), tolerance=2 * 10**-DECIMALS)
