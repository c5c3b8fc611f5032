"""Label words, ``--prompt auto``, label-word heads, ``--mode zeroshot`` and ``--layer auto`` on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lastpool import Classifier
from lastpool.cli import main
from lastpool.errors import ConfigError
from lastpool.models.label_head import content_free_bias, word_token_ids
from lastpool.text.label_words import AUTO_TEMPLATE, auto_prompt, label_words, parse_label_names, plain_words
from lastpool.text.tokenizers import TEXT_SLOT, load_pretrained_tokenizer
from tests.conftest import demo_sample, write_csv
from tests.test_pretrained import TINY, llama_folder  # noqa: F401 - a fixture

CODES = {"negative": "0", "neutral": "1", "positive": "2"}


def test_label_names_become_plain_words() -> None:
    assert plain_words("PlayMusic") == "play music"
    assert plain_words("visual-studio") == "visual studio"
    assert plain_words("search_creative_work") == "search creative work"
    assert label_words(["0", "1"], {"0": "bad"}) == ["bad", "1"]
    with pytest.raises(ConfigError, match="does not have: 7"):
        label_words(["0", "1"], {"7": "x"})


def test_label_names_parse_pairs_and_files(tmp_path: Path) -> None:
    assert parse_label_names("0=negative, 1 = very positive") == {"0": "negative", "1": "very positive"}
    path = tmp_path / "names.txt"
    path.write_text("# words for the codes\n0=bad\n\n1=good  # a comment\n", encoding="utf-8")
    assert parse_label_names(str(path)) == {"0": "bad", "1": "good"}
    for bad, message in (("nofile.txt", "neither"), ("0=a,0=b", "named twice"), ("0=a,=b", "expected")):
        with pytest.raises(ConfigError, match=message):
            parse_label_names(bad)


def test_auto_prompt_asks_what_the_text_is_about_and_fits(llama_folder: Path) -> None:  # noqa: F811
    tokenizer = load_pretrained_tokenizer(str(llama_folder))
    prompt = auto_prompt(tokenizer, 128)
    assert prompt == AUTO_TEMPLATE and prompt.count(TEXT_SLOT) == 1 and prompt.startswith(TEXT_SLOT)
    assert auto_prompt(tokenizer, 6) == TEXT_SLOT  # no room: the bare text


def test_content_free_bias_divides_out_the_prior() -> None:
    """softmax(logits + bias) is the distribution divided by the content-free prior, renormalised."""
    content_free = torch.tensor([[2.0, 0.0, -1.0], [1.0, 0.5, -1.0]])
    prior = torch.softmax(content_free, dim=-1).mean(dim=0)
    logits = torch.tensor([0.3, 0.2, 0.1])
    calibrated = torch.softmax(logits + content_free_bias(content_free), dim=-1)
    expected = torch.softmax(logits, dim=-1) / prior
    assert torch.allclose(calibrated, expected / expected.sum(), atol=1e-6)


def _coded(texts: list[str], labels: list[str]) -> tuple[list[str], list[str]]:
    return texts, [CODES[label] for label in labels]


def test_head_init_labels_starts_from_the_label_words_rows(llama_folder: Path) -> None:  # noqa: F811
    texts, labels = _coded(*demo_sample())
    names = {code: word for word, code in CODES.items()}
    clf = Classifier(model=str(llama_folder), head_init="labels", label_names=names, **{**TINY, "lr": 1e-12})
    clf.fit(texts, labels)
    assert clf.model is not None and clf.encoder is not None
    tokenizer = clf.encoder.tokenizer
    embeddings = clf.model.backbone.model.get_input_embeddings().weight  # tied: the LM head's rows
    expected = torch.stack([embeddings[word_token_ids(tokenizer, names[label])].mean(dim=0)
                            for label in clf.labels])
    assert torch.allclose(clf.model.head.weight, expected, atol=1e-4)  # lr 1e-12: still where it started


def test_zeroshot_makes_a_model_folder_that_every_command_takes(tmp_path: Path, llama_folder: Path) -> None:  # noqa: F811
    """No training, a normal model folder: the head is the label words' rows, its bias the contextual
    calibration; predict / eval read it back with the same probabilities."""
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    run = tmp_path / "zs"
    assert main(["train", "--model", str(llama_folder), "--data", str(data), "--mode", "zeroshot",
                 "--precision", "fp32", "--out", str(run), "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 0 and metrics["epochs_run"] == 0
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0
    clf = Classifier.load(run)
    assert clf.spec is not None and clf.spec.mode == "zeroshot" and clf.spec.head_bias
    again = Classifier.load(run)
    assert np.allclose(clf.predict_proba(texts[:5]), again.predict_proba(texts[:5]))
    assert main(["eval", str(run), "--data", str(data), "--json"]) == 0


def test_zeroshot_and_label_heads_need_a_pretrained_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    for flags in (["--mode", "zeroshot"], ["--head-init", "labels"]):
        assert main(["train", "--data", str(data), "--out", str(tmp_path / "x"), "-q", *flags]) == 2
        assert "needs a pretrained --model" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_layer_auto_scores_every_block_and_keeps_the_best(tmp_path: Path, llama_folder: Path,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """One score per block, the chosen block is the best one, the model keeps only the blocks up to it,
    and the saved model predicts what the fitted one does; the scores reach metrics.json and the report."""
    monkeypatch.setenv("LASTPOOL_CACHE", str(tmp_path / "cache"))
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    run = tmp_path / "run"
    assert main(["train", "--model", str(llama_folder), "--data", str(data), "--mode", "probe", "--layer", "auto",
                 "--precision", "fp32", "--epochs", "3", "--out", str(run), "-q"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    scores = metrics["layer_scores"]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    chosen = int(np.argmax(scores)) + 1
    spec = json.loads((run / "model" / "lastpool.json").read_text())
    assert spec["backbone"]["layer"] == (None if chosen == 2 else chosen)
    assert "Layer choice" in (run / "report.md").read_text()
    assert (run / "plots" / "layer_scores.png").is_file()


def test_layer_scores_are_computed_once_per_input_in_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tuner's trials ask for the same layer search again: the second ask is answered without fitting a
    probe, with the same scores; other labels or another seed are searched afresh."""
    from lastpool.training import layer_search

    features = torch.randn(24, 3, 8, generator=torch.Generator().manual_seed(0))
    labels = [0, 1, 2] * 8
    fits = []
    real = layer_search._cross_validated
    monkeypatch.setattr(layer_search, "_cross_validated", lambda *a: fits.append(a[2]) or real(*a))
    monkeypatch.setattr(layer_search, "_SCORED", {})
    first = layer_search.score_layers(features, labels, seed=5)
    assert layer_search.score_layers(features.clone(), list(labels), seed=5) == first and len(fits) == 1
    layer_search.score_layers(features, labels, seed=6)
    layer_search.score_layers(features, labels[1:] + labels[:1], seed=5)
    assert len(fits) == 3 and len(first) == 3


def test_layer_auto_refused_for_scratch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts, labels = demo_sample()
    data = write_csv(tmp_path / "d.csv", texts, labels)
    assert main(["train", "--data", str(data), "--layer", "auto", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "--layer applies to pretrained models" in capsys.readouterr().err
