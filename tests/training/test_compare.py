"""``peftkit compare``: settings chosen on a dev split carved from the training data, seeds,
mean ± std from the kept runs, each method in its own process, ratios to full fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import ViTConfig, ViTModel

from peftkit.cli import eval_command, main
from peftkit.peft_model import read_adapter_config
from peftkit.data import TaskConfig, carve_dev_split, load_task
from peftkit.data.images import image_processor_for
from peftkit.errors import AdapterFileError, MethodConfigError, PeftkitError, TrainingError
from peftkit.data.tasks import kind_of_task
from peftkit.training.compare import IMAGE_METHODS, TEXT_METHODS, compare_command, markdown_table
from tests.data.test_images import make_folder
from tests.tiny_models import save_tiny_bert_checkpoint

WORDS = {"pos": ["the movie was great", "a good plot", "great actor"], "neg": ["the movie was terrible", "a bad plot", "bad actor"]}


@pytest.fixture
def model_and_task(tmp_path) -> tuple[Path, Path]:
    """A tiny BERT and one CSV (no validation file: the validation split is held out per seed),
    every row a distinct text so that dev, validation and training rows can be told apart."""
    model_dir = save_tiny_bert_checkpoint(tmp_path / "tiny-bert")
    rows = ["text,label"] + [f"{text} {'the ' * i}{'a ' * j},{label}" for label, texts in WORDS.items()
                             for i, text in enumerate(texts) for j in range(5)]
    task = tmp_path / "reviews.csv"
    task.write_text("\n".join(rows) + "\n")
    return model_dir, task


def test_compare_chooses_on_dev_reports_validation_and_keeps_every_run(model_and_task, tmp_path):
    model_dir, task = model_and_task
    output = tmp_path / "cmp"
    result = compare_command(
        methods="linear,full", model=str(model_dir), task=str(task), output=str(output),
        epochs=2, batch_size=4, max_train_examples=None, max_length=16, quick=True, seed=3,
    )
    saved = json.loads((output / "compare.json").read_text())
    rows = {row["method"]: row for row in saved["rows"]}
    assert [row["method"] for row in result["rows"]] == ["linear", "full"] == list(rows)
    assert saved["seeds"] == [3, 4] and saved["quick"] and saved["grids"]["linear"] == {"learning_rate": [1e-2, 3e-2]}
    for method, row in rows.items():
        runs = saved["runs"][method]
        # the two-point grid at the first seed, then the winner once more: 3 runs, all kept in compare.json
        assert len(runs) == 3 == row["runs"] and [run["seed"] for run in runs] == [3, 3, 4]
        first = runs[:2]
        best = max(first, key=lambda run: (run["dev_metric"], -run["dev_loss"]))
        assert best["selected"] and best["settings"] == row["chosen"] and not [r for r in first if r is not best][0]["selected"]
        kept = [run for run in runs if run["kept"]]
        assert [run["seed"] for run in kept] == [3, 4] and all(run["settings"] == row["chosen"] for run in kept)
        reported = [run["reported_metric"] for run in kept]
        assert row["metric"] == pytest.approx(np.mean(reported)) and row["metric_per_seed"] == reported
        assert row["metric_std"] == pytest.approx(np.std(reported, ddof=1))
        for run in kept:
            # the dev split (and the rows trained on) never overlap the reported validation split
            loaded = load_task(TaskConfig(task=str(task), seed=run["seed"]))
            fit, dev = carve_dev_split(loaded, 0.2, run["seed"])
            assert (len(fit.train), len(dev)) == (run["num_train_examples"], run["dev_examples"])
            assert not set(dev["text"]) & set(loaded.validation["text"])
            assert not set(fit.train["text"]) & set(loaded.validation["text"])
            # the reported figure is the kept adapter's score on the validation split
            assert eval_command(run["run_dir"])["accuracy"] == pytest.approx(run["reported_metric"])
        loser = next(run for run in runs if not run["kept"])
        assert not (Path(loser["run_dir"]) / "adapter_model.safetensors").exists()
        # Pointed at the compare, a method's directory or a grid point that lost, an error names the kept runs.
        kept_dirs = ", ".join(str(output / method / Path(run["run_dir"]).name) for run in kept)
        with pytest.raises(AdapterFileError, match="is a grid point `peftkit compare` did not choose") as lost:
            read_adapter_config(loser["run_dir"])
        assert lost.value.args[0].endswith(f"the chosen setting's runs are: {kept_dirs}.")
        with pytest.raises(AdapterFileError, match=f"holds one method of a `peftkit compare`, not an adapter; point at one of its kept runs: {kept_dirs}"):
            read_adapter_config(output / method)
        with pytest.raises(AdapterFileError, match="is a `peftkit compare` directory, not an adapter"):
            read_adapter_config(output)
        assert (Path(loser["run_dir"]) / "metrics.json").is_file()
        assert not (Path(kept[0]["run_dir"]) / "checkpoint").exists()  # resumable state of finished runs is dropped
    assert rows["linear"]["trainable_parameters"] == 66
    assert rows["full"]["trainable_parameters"] > 100 * rows["linear"]["trainable_parameters"]
    assert rows["full"]["step_time_vs_full"] == 1.0 and rows["full"]["peak_memory_vs_full"] == 1.0
    assert rows["linear"]["adapter_bytes"] < rows["full"]["adapter_bytes"] / 10
    assert rows["full"]["backbone_weights_rewritten_per_switch"] > 0 == rows["linear"]["backbone_weights_rewritten_per_switch"]
    table = (output / "compare.md").read_text()
    assert table == markdown_table(saved["rows"]) and "| linear |" in table and " ± " in table
    validation_size = len(load_task(TaskConfig(task=str(task), seed=3)).validation)
    assert all(row["reported_examples"] == validation_size and row["dev_examples"] > 0 for row in saved["rows"])
    assert "How to read it:" in table and f"on {validation_size:,d} validation examples" in table
    assert (output / "compare.png").stat().st_size > 1000
    # Each epoch's line names the split it scored: the dev split, not the reported validation split.
    log = (output / "linear.log").read_text()
    assert "epoch 1/2: train loss" in log and ", dev accuracy " in log and ", validation accuracy " not in log


def save_tiny_vit(directory: Path) -> Path:
    config = ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, num_channels=3)
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(directory)  # a backbone: compare gives it fresh heads
    image_processor_for(config).save_pretrained(directory)
    return directory


def test_compare_on_images_runs_vpt_shallow_and_deep(tmp_path):
    images = make_folder(tmp_path / "animals", per_class=10)
    assert kind_of_task(str(images)) == kind_of_task("mnist") == "image-classification"
    assert kind_of_task("bbc-news") == "text-classification"
    assert "vpt-deep" in IMAGE_METHODS.split(",") and "vpt-deep" not in TEXT_METHODS.split(",")
    result = compare_command(
        methods="vpt-shallow,vpt-deep", model=str(save_tiny_vit(tmp_path / "vit")), task=str(images),
        output=str(tmp_path / "cmp"), epochs=1, batch_size=4, max_train_examples=None, seeds=1, quick=True,
    )
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"vpt-shallow", "vpt-deep"}
    # deep adds prompts at both layers, shallow at the first only: 10 prompts × 32 per extra layer
    assert rows["vpt-deep"]["trainable_parameters"] - rows["vpt-shallow"]["trainable_parameters"] == 10 * 32
    for row in rows.values():
        assert row["metric_std"] is None and len(result["runs"][row["method"]]) == 2
        assert set(row["chosen"]) == {"learning_rate"}


def test_compare_refuses_a_non_empty_output_an_unknown_method_and_reports_a_failing_one(model_and_task, tmp_path):
    model_dir, task = model_and_task
    output = tmp_path / "cmp"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(TrainingError, match="not empty"):
        compare_command(methods="linear", model=str(model_dir), task=str(task), output=str(output))
    with pytest.raises(MethodConfigError, match="unknown method 'no-such-method'"):
        compare_command(methods="linear,no-such-method", model=str(model_dir), task=str(task), output=str(tmp_path / "b"))
    with pytest.raises(TrainingError, match=r"(?s)training vpt failed.*Vision Transformer"):  # VPT needs a ViT, not BERT
        compare_command(methods="vpt", model=str(model_dir), task=str(task), output=str(tmp_path / "c"), quick=True, seeds=1)
    assert not (tmp_path / "b").exists()


def test_compare_is_a_cli_command(model_and_task, tmp_path, capsys):
    model_dir, task = model_and_task
    assert main(["compare", "--task", str(task), "--text-column", "body"]) == 2
    assert ("""peftkit compare has no flag --text-column: --text-column is a flag of `peftkit train`, which compare passes """
            """to every method as a JSON list: --extra-train-args '["--text-column", "VALUE"]'.""") in capsys.readouterr().err
    assert main(["compare", "--methods", "", "--model", str(model_dir), "--task", str(task), "--output", str(tmp_path / "c")]) == 2
    assert "--methods is empty" in capsys.readouterr().err
    assert main(["compare", "--methods", "linear", "--seeds", "0", "--task", str(task), "--output", str(tmp_path / "d")]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err


def test_compare_on_an_image_task_without_model_builds_the_default_backbone_once(tmp_path, monkeypatch, capsys):
    from peftkit.training import pretrain
    from tests.tiny_models import TINY_VIT_PRETRAIN

    monkeypatch.setenv(pretrain.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(pretrain.PRETRAIN_OPTIONS_ENV, json.dumps(TINY_VIT_PRETRAIN))
    result = compare_command(methods="linear,vpt", task="digits", output=str(tmp_path / "cmp"), epochs=1,
                             batch_size=16, max_train_examples=64, max_eval_examples=32, quick=True, seeds=1)
    backbone = str(pretrain.default_backbone_dir())
    assert capsys.readouterr().err.count("building the default image backbone once") == 1  # here, not per method
    assert result["train_args"][:2] == ["--model", backbone]
    for method in ("linear", "vpt"):
        kept = [run for run in result["runs"][method] if run["kept"]]
        config = json.loads((Path(kept[0]["run_dir"]) / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == backbone
        assert "building" not in (tmp_path / "cmp" / f"{method}.log").read_text()


def test_the_default_output_is_named_like_the_train_runs_task(model_and_task, tmp_path, monkeypatch):
    """``--task reviews.csv`` compares into runs/compare-reviews, as `peftkit train` names runs/<method>-reviews."""
    import peftkit.training.compare as compare_module

    model_dir, task = model_and_task
    outputs = []
    monkeypatch.setattr(compare_module, "compare", lambda names, train_args, output, **_: outputs.append(Path(output)))
    monkeypatch.chdir(task.parent)
    for written in (task.name, str(task)):
        compare_command(methods="linear", model=str(model_dir), task=written, quick=True)
    assert outputs == [Path("runs") / "compare-reviews"] * 2


def test_compare_runs_from_a_folder_holding_a_folder_named_peftkit(model_and_task, tmp_path, monkeypatch):
    """A user one level above their clone: `python -m` in the method's process must not import the
    clone's folder (a namespace package without the installed code) instead of peftkit."""
    model_dir, task = model_and_task
    (tmp_path / "work" / "peftkit").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "work")
    result = compare_command(methods="linear", model=str(model_dir), task=str(task), output="cmp", quick=True, seeds=1, epochs=1)
    assert [row["method"] for row in result["rows"]] == ["linear"] and 0.0 <= result["rows"][0]["metric"] <= 1.0


def test_resume_reads_back_finished_runs_retrains_cut_off_ones_and_refuses_other_flags(model_and_task, tmp_path):
    model_dir, task = model_and_task
    output = tmp_path / "cmp"
    common = dict(model=str(model_dir), task=str(task), output=str(output), epochs=1, batch_size=4,
                  max_train_examples=None, max_length=16, quick=True)
    first = compare_command(methods="linear", **common)
    linear_runs = {run["run_dir"]: run for run in first["runs"]["linear"]}
    # A compare killed during its second method: the first method's runs finished, one of them is
    # cut off (no metrics.json yet), and no compare.json was written.
    (output / "compare.json").unlink()
    cut_off = Path(first["runs"]["linear"][-1]["run_dir"])
    (cut_off / "metrics.json").unlink()
    stamps = {run_dir: (Path(run_dir) / "metrics.json").stat().st_mtime_ns for run_dir in linear_runs if Path(run_dir) != cut_off}

    with pytest.raises(TrainingError, match="not empty"):  # without --resume an existing compare is never touched
        compare_command(methods="linear,full", **common)
    resumed = compare_command(methods="linear,full", resume=True, **common)

    assert [row["method"] for row in resumed["rows"]] == ["linear", "full"]
    again = {run["run_dir"]: run for run in resumed["runs"]["linear"]}
    assert set(again) == set(linear_runs)
    for run_dir, stamp in stamps.items():  # read back, not trained again: same file, same figures
        assert (Path(run_dir) / "metrics.json").stat().st_mtime_ns == stamp
        assert again[run_dir]["reported_metric"] == linear_runs[run_dir]["reported_metric"]
    assert (cut_off / "metrics.json").is_file() and again[str(cut_off)]["reported_metric"] is not None
    assert "finished before, read back" in (output / "linear.log").read_text()
    assert len(resumed["runs"]["full"]) == 3 and (output / "compare.json").is_file()

    with pytest.raises(TrainingError, match=r"cannot resume linear .*--max-length 16 then, 24 now\). resume with the same flags"):
        compare_command(methods="linear", resume=True, **{**common, "max_length": 24})
    with pytest.raises(TrainingError, match="give one of them"):
        compare_command(methods="linear", resume=True, overwrite=True, **common)


def test_compare_gives_pefts_methods_their_recipe_grids_and_refuses_unfit_ones_up_front(model_and_task, tmp_path, monkeypatch):
    import peftkit.training.compare as compare_module
    from peftkit import recipes

    model_dir, task = model_and_task
    calls = []
    monkeypatch.setattr(compare_module, "compare", lambda names, train_args, output, **kwargs: calls.append(kwargs))
    methods = ["ia3", "prompt-tuning", "p-tuning"]
    for quick in (False, True):
        compare_command(methods=",".join(methods), model=str(model_dir), task=str(task), output=str(tmp_path / "c"), quick=quick)
        assert calls[-1]["grids"] == {name: recipes.selection_grid(name, quick) for name in methods}
        assert calls[-1]["grids"]["prompt-tuning"]["learning_rate"] == recipes.SELECTION_GRIDS["prompt-tuning"]["quick" if quick else "full"]["learning_rate"]
    assert calls[0]["settings"]["epochs"] == {name: recipes.recipe(name)["epochs"] for name in methods}

    calls.clear()
    with pytest.raises(MethodConfigError, match="prefix-tuning cannot adapt a 'bert' model.*past_key_values"):
        compare_command(methods="lora,prefix-tuning", model=str(model_dir), task=str(task), output=str(tmp_path / "d"))
    conll = tmp_path / "ner.conll"
    conll.write_text("john\tB-PER\nlives\tO\n\nparis\tB-LOC\n")
    with pytest.raises(MethodConfigError, match="p-tuning cannot train token classification"):
        compare_command(methods="ia3,p-tuning", model=str(model_dir), task=str(conll), output=str(tmp_path / "e"))
    assert not calls and not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    # A tagging task gives each method its kind's longer budget (recipes.KIND_RECIPES); --quick still caps it.
    for quick in (False, True):
        compare_command(methods="ia3,lora", model=str(model_dir), task=str(conll), output=str(tmp_path / "f"), quick=quick)
        budget = {name: recipes.recipe(name, "token-classification")["epochs"] for name in ("ia3", "lora")}
        assert calls[-1]["settings"]["epochs"] == ({name: 2 for name in budget} if quick else budget)
        assert budget["lora"] > recipes.recipe("lora")["epochs"]


def test_compare_trains_pefts_methods_side_by_side(model_and_task, tmp_path):
    from peftkit.recipes import SELECTION_GRIDS

    model_dir, task = model_and_task
    output = tmp_path / "cmp"
    result = compare_command(methods="ia3,prompt-tuning", model=str(model_dir), task=str(task), output=str(output),
                             epochs=1, batch_size=4, max_train_examples=None, max_length=16, quick=True, seeds=1,
                             extra_train_args=["--max-steps", "2"])
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["ia3", "prompt-tuning"]
    for method, row in rows.items():
        assert 0 < row["trainable_parameters"] and 0.0 <= row["metric"] <= 1.0
        kept = [run for run in result["runs"][method] if run["kept"]]
        assert json.loads((Path(kept[0]["run_dir"]) / "adapter_config.json").read_text())["peft_type"] == {"ia3": "IA3", "prompt-tuning": "PROMPT_TUNING"}[method]
        assert row["chosen"]["learning_rate"] in SELECTION_GRIDS[method]["quick"]["learning_rate"]
    # Merged, IA3 rewrites its target weights (counted through PEFT's own merge); prompt tuning has nothing to merge.
    assert rows["ia3"]["backbone_weights_rewritten_if_merged"] > 0 and rows["prompt-tuning"]["backbone_weights_rewritten_if_merged"] == 0


def test_the_tables_note_says_one_seed_has_no_spread():
    from peftkit.training.compare import markdown_table

    row = {"method": "pasta", "primary_metric": "f1", "metric": 0.5, "seeds": [0]}
    assert "One seed (no spread: pass --seeds 2 or more for a std)" in markdown_table([row])
    assert "Mean ± sample standard deviation over 3 seeds" in markdown_table([{**row, "seeds": [0, 1, 2]}])


def summary_row(method, metric, std, parameters, *, best_epochs=(3, 3), epochs_run=(5, 5), stopped_early=(True, True), dev=161):
    return {"method": method, "primary_metric": "accuracy", "metric": metric, "metric_std": std, "seeds": [0, 1],
            "trainable_parameters": parameters, "trainable_percent": parameters / 1e5, "majority_baseline": 0.25,
            "reported_examples": 440, "dev_examples": dev, "best_epochs": list(best_epochs), "epochs_run": list(epochs_run),
            "stopped_early": list(stopped_early), "median_step_seconds": 0.5, "peak_memory_mb": 900.0,
            "step_time_vs_full": None, "peak_memory_vs_full": None, "adapter_bytes_vs_full": None}


def test_the_reading_notes_say_what_the_table_can_and_cannot_tell():
    from peftkit.training.compare import reading_notes

    rows = [summary_row("full", 0.960, 0.004, 22_000_000), summary_row("pasta", 0.955, 0.006, 6_533),
            summary_row("lora", 0.957, 0.010, 75_000, best_epochs=(5, 4), stopped_early=(False, False)),
            summary_row("bitfit", 0.930, 0.005, 28_000, best_epochs=(5, 5), stopped_early=(False, False)),
            summary_row("feature-probe", 0.950, 0.002, 1_925, best_epochs=(0, 0), epochs_run=(0, 0), stopped_early=(False, False))]
    notes = reading_notes(rows)
    assert notes[0] == "Predicting the majority class scores 0.2500 accuracy on 440 validation examples; one example there is 0.0023 of accuracy."
    # pasta (0.005 below, its std 0.006) and lora (0.003 below) are within one std of full; the probe (0.010) and bitfit are not.
    assert notes[1] == ("Within one std of the best (full): lora, pasta. The table does not separate these; of them pasta "
                        "trains the fewest parameters (6,533, 0.0653%).")
    assert notes[2] == ("Each std rests on 2 runs, so it is itself uncertain and the one-std comparisons above are rough: "
                        "--seeds 3 or more makes them firmer.")
    assert notes[3:5] == ["lora: 1 of 2 kept runs was still improving at its last epoch (5): more --epochs may raise it, so its row is a floor.",
                         "bitfit: every kept run was still improving at its last epoch (5): more --epochs may raise it, so its row is a floor."]
    assert notes[5].startswith("feature-probe is a scikit-learn logistic regression") and "`serve` and `predict --input` do not load it" in notes[5]
    edge = reading_notes([{**rows[0], "chosen": {"learning_rate": 0.003}, "chosen_at_grid_edge": {"learning_rate": "largest"}}])
    assert "full: its learning rate was chosen at the grid's largest value (0.003): a value beyond the grid may do better" in edge[-1]
    # A clear leader, a small dev split, and one seed.
    clear = reading_notes([summary_row("full", 0.96, 0.004, 10, dev=20), summary_row("pasta", 0.90, 0.01, 5, dev=20)])
    assert "full leads by 0.0600 over pasta, more than one std of either." in clear
    assert clear[-1].startswith("Settings were chosen and runs stopped on 20 dev examples")
    chance = reading_notes([{**summary_row("pasta", 0.59, 0.25, 5_378), "kept_runs": ["pasta/lr=0.03_seed=0", "pasta/lr=0.03_seed=1"]},
                            {**summary_row("lora", 0.40, 0.01, 75_000), "kept_runs": ["lora/lr=0.01_seed=0"]}])
    assert ("pasta (0.5900 ± 0.2500) is within one std of predicting the majority class (0.2500): on this data it shows "
            "nothing learnt; do not deploy it.") not in chance  # 0.34 above it, more than its std
    assert chance[-1] == ("The adapters are each method's kept runs (any seed of its chosen setting), in the compare's --output directory. "
                          "The best method that trains one is pasta (0.5900): pasta/lr=0.03_seed=0, pasta/lr=0.03_seed=1.")
    at_chance = reading_notes([{**summary_row("pasta", 0.30, 0.10, 5_378), "kept_runs": ["pasta/lr=0.01_seed=0"]},
                               summary_row("feature-probe", 0.27, 0.05, 385)])
    assert at_chance[1:] == [
        "pasta (0.3000 ± 0.1000) is within one std of predicting the majority class (0.2500): on this data it shows nothing "
        "learnt; do not deploy it.",
        "feature-probe (0.2700 ± 0.0500) is within one std of predicting the majority class (0.2500): on this data it shows "
        "nothing learnt; do not deploy it.",
        "Each std rests on 2 runs, so it is itself uncertain and the one-std comparisons above are rough: --seeds 3 or more "
        "makes them firmer.",
        "feature-probe is a scikit-learn logistic regression on pooled frozen features: `peftkit eval` and `predict --text` "
        "run it, but `serve` and `predict --input` do not load it.",
        "No method that trains an adapter scores more than one std above the majority class: none is worth deploying on this "
        "evidence. More training rows, more --epochs or a look at the labels come first."]
    single = reading_notes([summary_row("full", 0.96, None, 10), summary_row("pasta", 0.95, None, 5)])
    assert "with one seed there is no spread to judge a gap by: pass --seeds 3" in single[1]
    assert "How to read it:" in markdown_table(rows) and notes[1] in markdown_table(rows)


def test_the_plot_without_full_fine_tuning_draws_measured_costs(tmp_path):
    from peftkit.training.compare import plot_comparison

    rows = [summary_row("pasta", 0.99, 0.05, 6_533), summary_row("feature-probe", 0.5, 0.0, 1_925)]
    rows[1]["median_step_seconds"] = None  # no gradient steps
    plot_comparison(rows, tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_a_choice_at_the_end_of_a_grid_of_three_or_more_is_flagged():
    from peftkit.training.compare import _chosen_at_grid_edge

    def selection(chosen, grid):
        return {"chosen": {"learning_rate": chosen}, "runs": [{"settings": {"learning_rate": lr}, "seed": 0} for lr in grid]
                + [{"settings": {"learning_rate": chosen}, "seed": 1}]}

    assert _chosen_at_grid_edge(selection(3e-3, [3e-4, 1e-3, 3e-3])) == {"learning_rate": "largest"}
    assert _chosen_at_grid_edge(selection(3e-4, [3e-4, 1e-3, 3e-3])) == {"learning_rate": "smallest"}
    assert _chosen_at_grid_edge(selection(1e-3, [3e-4, 1e-3, 3e-3])) == {}
    assert _chosen_at_grid_edge(selection(1e-2, [1e-2, 3e-2])) == {}  # a 2-point grid (--quick) always picks an end


def test_the_notes_and_plot_take_each_seeds_own_validation_split(tmp_path):
    """A single-file task holds out a validation split per seed: the baseline and the split's size
    are given as the seeds' range, not as the first seed's."""
    from peftkit.training.compare import _majority_baseline, plot_comparison, reading_notes

    row = {**summary_row("pasta", 0.82, 0.02, 5_378), "majority_baseline": 0.52,
           "majority_baseline_per_seed": [0.52, 0.50], "reported_examples": 25, "reported_examples_per_seed": [25, 26]}
    assert reading_notes([row])[0] == ("Predicting the majority class scores 0.5000–0.5200 accuracy on each seed's own "
                                       "validation split (25–26 examples); one example there is 0.0385–0.0400 of accuracy.")
    assert _majority_baseline([row]) == ("the majority class", pytest.approx(0.51), 0.50, 0.52)
    plot_comparison([row], tmp_path / "compare.png")
    assert (tmp_path / "compare.png").stat().st_size > 1000
    # Rows written before the per-seed lists read as one split.
    old = {key: value for key, value in row.items() if not key.endswith("_per_seed")}
    assert reading_notes([old])[0].startswith("Predicting the majority class scores 0.5200 accuracy on 25 validation examples")


def test_a_probes_own_choice_of_c_at_the_end_of_its_grid_is_flagged_and_a_tie_said_so():
    from peftkit.training.compare import _chosen_in_runs_at_grid_edge, reading_notes

    def run(chosen, scores):
        return {"chosen_in_run": {"C": chosen}, "grid_in_run": [{"C": c, "dev_metric": m} for c, m in scores.items()]}

    tied = [run(1e-4, {1e-4: 1.0, 1e-2: 1.0, 1.0: 1.0}), run(1e-4, {1e-4: 1.0, 1e-2: 0.9, 1.0: 0.9})]
    edge = _chosen_in_runs_at_grid_edge(tied)
    assert edge == {"C": {"end": "smallest", "runs": 2, "of": 2, "values": [1e-4, 1e-4], "tied": True}}
    note = reading_notes([{**summary_row("feature-probe", 0.9, 0.01, 385), "chosen_in_runs_at_grid_edge": edge}])
    assert any(line.startswith("feature-probe: its C was chosen at its grid's smallest value in 2 of 2 runs (0.0001, 0.0001), "
                               "where dev accuracy tied") and "near-uniform class probabilities" in line for line in note)
    largest = _chosen_in_runs_at_grid_edge([run(1.0, {1e-4: 0.5, 1e-2: 0.7, 1.0: 0.8}), run(1e-2, {1e-4: 0.5, 1e-2: 0.8, 1.0: 0.7})])
    assert largest == {"C": {"end": "largest", "runs": 1, "of": 2, "values": [1.0], "tied": False}}
    assert _chosen_in_runs_at_grid_edge([run(1e-2, {1e-4: 0.5, 1e-2: 0.8, 1.0: 0.7})]) == {}
    assert _chosen_in_runs_at_grid_edge([{"chosen_in_run": None}]) == {}  # a trained method chooses nothing in its run


def test_a_compare_that_fails_before_any_run_finished_names_extra_train_args_and_leaves_nothing(model_and_task, tmp_path):
    """The run's error names a `peftkit train` flag (--text-column): compare says how to pass it; the
    directory it made holds nothing finished, so it is removed and the corrected command runs."""
    model_dir, task = model_and_task
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(task.read_text().replace("text,label", "body,label", 1))
    output = tmp_path / "cmp"
    common = dict(methods="linear", model=str(model_dir), task=str(renamed), output=str(output), epochs=1, batch_size=4,
                  max_train_examples=None, max_length=16, quick=True, seeds=1)
    with pytest.raises(TrainingError, match=r"""(?s)no column 'text'.*--text-column is a flag of `peftkit train`, which compare """
                       r"""passes to every method as a JSON list: --extra-train-args '\["--text-column", "VALUE"\]'.*"""
                       r"""No run had finished, so what it wrote in .*cmp was removed"""):
        compare_command(**common)
    assert not output.exists()
    output.mkdir()  # a directory the user made stays, empty
    with pytest.raises(TrainingError, match="No run had finished"):
        compare_command(**common)
    assert output.is_dir() and not any(output.iterdir())
    # The next missing column's hint shows the whole list: the flags already given and the new one.
    renamed.write_text(task.read_text().replace("text,label", "body,class", 1))
    with pytest.raises(TrainingError, match=r"""--extra-train-args '\["--text-column", "body", "--label-column", "VALUE"\]'"""):
        compare_command(**common, extra_train_args=["--text-column", "body"])
    # A named flag given with a wrong value is shown with VALUE, not with the value that failed.
    with pytest.raises(TrainingError, match=r"""--extra-train-args '\["--text-column", "VALUE", "--label-column", "VALUE"\]'"""):
        compare_command(**common, extra_train_args=["--text-column", "bdy"])
    renamed.write_text(task.read_text().replace("text,label", "body,label", 1))
    result = compare_command(**common, extra_train_args=["--text-column", "body"])
    assert [row["method"] for row in result["rows"]] == ["linear"]
    # Up front, before any run: a flag `peftkit train` lacks, and a list that is not JSON.
    with pytest.raises(PeftkitError, match="peftkit train has no flag --text-colum: did you mean --text-column"):
        compare_command(**{**common, "output": str(tmp_path / "b")}, extra_train_args=["--text-colum", "body"])
    with pytest.raises(TrainingError, match=r"got '\[--text-column,body\]', which is not a JSON list"):
        compare_command(**{**common, "output": str(tmp_path / "b")}, extra_train_args=["[--text-column,body]"])
    assert not (tmp_path / "b").exists()


def test_resume_starts_a_method_again_under_new_flags_when_none_of_its_runs_finished(tmp_path):
    from peftkit.training.compare import _prepare_method_dir

    method_dir = tmp_path / "linear"
    (method_dir / "lr=0.01_seed=0").mkdir(parents=True)  # cut off before its metrics.json
    (method_dir / "spec.json").write_text(json.dumps({"train_args": ["--max-length", "16"]}))
    _prepare_method_dir(method_dir, ["--max-length", "16"], "linear", resume=True)
    assert (method_dir / "lr=0.01_seed=0").is_dir()  # same flags: the cut-off run continues
    _prepare_method_dir(method_dir, ["--max-length", "24"], "linear", resume=True)
    assert method_dir.is_dir() and not any(method_dir.iterdir())  # other flags, nothing finished: start again
    (method_dir / "spec.json").write_text(json.dumps({"train_args": ["--max-length", "16"]}))
    (method_dir / "lr=0.01_seed=0").mkdir()
    (method_dir / "lr=0.01_seed=0" / "metrics.json").write_text("{}")
    with pytest.raises(TrainingError, match="its runs were trained with other flags"):
        _prepare_method_dir(method_dir, ["--max-length", "24"], "linear", resume=True)
