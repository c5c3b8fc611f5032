"""Defaults per model kind and mode: unset settings follow the recipe row, the user's settings win, the saved
config says which came from the table, and the training length follows the data (with early stopping)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lastpool import Classifier
from lastpool.cli import main
from lastpool.config import RunConfig, make_config, resolve_config
from lastpool.recipes import DEFAULT_MODES, PAIRS, RECIPE_FIELDS, RECIPES, auto_epochs, recipe, recipe_table
from tests.conftest import REPO, TINY_FLAGS, TINY_KW, demo_sample, write_csv
from tests.test_pretrained import llama_folder  # noqa: F401 - a fixture


@pytest.mark.parametrize(("model", "mode"), [("scratch", "full"), ("m.gguf", "full"), ("m.gguf", "lora"),
                                             ("m.gguf", "probe"), ("m.gguf", "top-3"), ("m.gguf", "zeroshot")])
def test_unset_settings_follow_the_row_of_kind_and_mode(model: str, mode: str) -> None:
    cfg = make_config({"model": model, "mode": mode})
    row = recipe(model, mode)
    assert row, "every (kind, mode) pair has a row"
    assert {name: getattr(cfg, name) for name in row} == row
    assert cfg.from_recipe == sorted(row)


def test_what_the_user_sets_wins_and_is_not_listed_as_from_the_table() -> None:
    cfg = make_config({"model": "m.gguf", "mode": "lora", "lr": 2e-4, "epochs": 3})
    assert cfg.lr == 2e-4 and cfg.epochs == 3
    assert "lr" not in cfg.from_recipe and "epochs" not in cfg.from_recipe
    assert cfg.lora_r == RECIPES[("pretrained", "lora")]["lora_r"] and "lora_r" in cfg.from_recipe


def test_pretrained_defaults_export_and_scratch_defaults_stay() -> None:
    """Every pretrained mode that trains gets a bias-free head (so `export --format hf` accepts it); the
    from-scratch defaults are the ones the field defaults always were."""
    for mode in ("full", "lora", "top-2"):
        assert make_config({"model": "m.gguf", "mode": mode}).head_bias is False
    scratch = RunConfig()
    assert scratch.lr == 1e-3 and scratch.epochs == 10 and scratch.label_smoothing == 0.1


def test_a_saved_config_resolves_again_for_another_mode(tmp_path: Path) -> None:
    """Settings that came from the table are not frozen into a reused config file: with another mode they
    take that mode's row; settings the user chose stay."""
    path = tmp_path / "config.yaml"
    from lastpool.config import dump_yaml

    path.write_text(dump_yaml(make_config({"model": "m.gguf", "mode": "full", "batch_size": 8})))
    cfg = resolve_config(str(path), {"mode": "lora"})
    assert cfg.lr == RECIPES[("pretrained", "lora")]["lr"] and cfg.batch_size == 8
    same = resolve_config(str(path), {})
    assert same == make_config({"model": "m.gguf", "mode": "full", "batch_size": 8})


def test_classifier_overrides_re_resolve_the_table() -> None:
    base = RunConfig()
    clf = Classifier(config=base, model="m.gguf", mode="probe")
    assert clf.config.lr == RECIPES[("pretrained", "probe")]["lr"] and clf.config.layer == "auto"


def test_auto_epochs_follow_data_size_and_labels() -> None:
    few_per_class = auto_epochs(4000, 150, 16)
    many_per_class = auto_epochs(4000, 3, 16)
    assert 2 <= many_per_class < few_per_class <= 20
    assert auto_epochs(40, 2, 16) >= auto_epochs(4000, 2, 16)  # tiny data: enough steps in all


def test_readme_shows_the_recipe_table() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert recipe_table() in readme, "README's recipe table is stale: paste lastpool.recipes.recipe_table()"
    assert all(f"`{name}`" in recipe_table() for name in RECIPE_FIELDS)


def test_config_yaml_records_resolved_epochs_and_the_table_fields(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    flags = [flag for flag in TINY_FLAGS]
    flags[flags.index("--epochs") + 1] = "auto"
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "-q", *flags]) == 0
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["epochs"] == auto_epochs(54, 3, 16)  # 60 texts less a 10% validation split
    assert "lr" in saved["from_recipe"] and "epochs" not in saved["from_recipe"]


def test_patience_stops_when_validation_stops_improving() -> None:
    """With a learning rate too small to change a prediction, epoch 1 stays the best: patience 2 stops
    the run after epoch 3 instead of running all 10, and the best epoch's weights are kept."""
    texts, labels = demo_sample()
    kw = {**TINY_KW, "epochs": 10, "lr": 1e-12, "token_dropout": 0.0, "dropout": 0.0}
    clf = Classifier(patience=2, **kw).fit(texts, labels)
    assert clf.result is not None
    assert len(clf.result.history) == 3 and clf.result.best_epoch == 1
    full = Classifier(**kw).fit(texts, labels)
    assert full.result is not None and len(full.result.history) == 10


def test_metrics_hold_the_bag_of_words_baseline(tmp_path: Path) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "a"), "-q", *TINY_FLAGS]) == 0
    baseline = json.loads((tmp_path / "a" / "metrics.json").read_text())["baseline"]
    assert 0.0 <= baseline["accuracy"] <= 1.0 and "macro_f1" in baseline
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "b"), "-q", "--no-baseline",
                 *TINY_FLAGS]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["baseline"] is None


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_default_pretrained_runs_export_to_transformers(tmp_path: Path, llama_folder: Path, mode: str) -> None:  # noqa: F811
    """No flag but the mode (and a short run): `export --format hf` accepts the result."""
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    run = tmp_path / "run"
    assert main(["train", "--model", str(llama_folder), "--data", str(data), "--mode", mode, "--epochs", "1",
                 "--out", str(run), "-q"]) == 0
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


def test_no_mode_means_the_kinds_default_mode_and_the_user_mode_wins() -> None:
    scratch, pretrained = make_config({}), make_config({"model": "m.gguf"})
    assert scratch.mode == "full" and pretrained.mode == "top-4"
    assert "mode" in scratch.from_recipe and "mode" in pretrained.from_recipe
    assert pretrained.lr == RECIPES[("pretrained", "top")]["lr"]  # the default mode's own row
    chosen = make_config({"model": "m.gguf", "mode": "full"})
    assert chosen.mode == "full" and "mode" not in chosen.from_recipe
    # A mode that came from the table is re-resolved when the model changes.
    assert Classifier(config=scratch, model="m.gguf").config.mode == "top-4"


def test_text_pairs_default_to_twice_the_trained_blocks_deeper_and_the_user_still_wins() -> None:
    """Rows that are text pairs take the pair default for a pretrained model (the ``top`` row's optimiser,
    ending at two thirds of the depth), and nothing changes for a from-scratch model or what the user named."""
    pairs = make_config({"model": "m.gguf", "text_pair_col": "b"})
    assert pairs.mode == DEFAULT_MODES[("pretrained", True)] == "top-8" and "mode" in pairs.from_recipe
    assert pairs.layer == PAIRS[("pretrained", "top")]["layer"] == "2/3" and "layer" in pairs.from_recipe
    assert pairs.lr == RECIPES[("pretrained", "top")]["lr"]
    assert make_config({"model": "m.gguf", "text_pair_col": "b", "mode": "top-4"}).layer == "2/3"
    assert make_config({"model": "m.gguf", "text_pair_col": "b", "layer": "middle"}).layer == "middle"
    assert make_config({"model": "m.gguf", "text_pair_col": "b", "mode": "lora"}).layer is None
    scratch_pairs = make_config({"text_pair_col": "b"})
    assert scratch_pairs.mode == "full" and scratch_pairs.layer is None
    assert make_config({"model": "m.gguf", "text_pair_col": "b", "mode": "top-4"}).mode == "top-4"
    moved = Classifier(config=scratch_pairs, model="m.gguf").config
    assert moved.mode == "top-8" and moved.layer == "2/3"


def test_pairs_given_to_fit_alone_resolve_the_recipe_again_and_keep_what_the_user_set() -> None:
    """``fit(text_pairs=...)`` with no ``text_pair_col``: the settings the table chose for single texts are
    chosen again for pairs (mode and layer); a setting the user gave stays."""
    from lastpool.classifier import _recipe_for_pairs

    single = make_config({"model": "m.gguf", "lr": 1e-4})
    assert single.mode == "top-4" and single.layer == "middle"
    again = _recipe_for_pairs(single, pairs=True)
    assert (again.mode, again.layer, again.lr) == ("top-8", "2/3", 1e-4)
    assert {"mode", "layer"} <= set(again.from_recipe) and "lr" not in again.from_recipe
    back = _recipe_for_pairs(make_config({"model": "m.gguf", "text_pair_col": "b"}), pairs=False)
    assert (back.mode, back.layer) == ("top-4", "middle")
    named = _recipe_for_pairs(make_config({"model": "m.gguf", "mode": "top-2"}), pairs=True)
    assert (named.mode, named.layer) == ("top-2", "2/3")


def test_fusion_follows_the_baseline_and_stays_out_of_zero_shot() -> None:
    """Fusion is on wherever a bag-of-words model is fitted and the run trains; without the baseline it is
    off (nothing to fuse with) unless asked for, which is an error, as it is for zero-shot."""
    assert make_config({}).fuse_baseline is True
    assert make_config({"model": "m.gguf"}).fuse_baseline is True
    off = make_config({"baseline": False})
    assert off.fuse_baseline is False and "fuse_baseline" in off.from_recipe
    assert make_config({"model": "m.gguf", "mode": "zeroshot"}).fuse_baseline is False
    from lastpool.errors import ConfigError

    with pytest.raises(ConfigError, match="fuse_baseline needs the baseline"):
        make_config({"baseline": False, "fuse_baseline": True})
    with pytest.raises(ConfigError, match="mode zeroshot trains nothing"):
        make_config({"model": "m.gguf", "mode": "zeroshot", "fuse_baseline": True})
