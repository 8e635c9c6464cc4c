"""Text classification data: the built-in demo set, local files or a hub data set, through ``datasets``.

``load_data`` returns plain lists (texts, optional text pairs, label ids) for train and validation, with the
label names; ``tokenize`` turns them into token ids once per worker process and caches the result, so trials
after the first pay nothing for it.
"""

from __future__ import annotations

import codecs
import collections
import csv
import difflib
import gc
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpsearch.config import BUILTIN_DATASETS, DataSection, did_you_mean
from hpsearch.errors import ConfigError

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
MAX_CLASSES = 1000


@dataclass(frozen=True)
class Split:
    texts: list[str]
    pairs: list[str] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)

    def vocabulary_texts(self) -> list[str]:
        """Every text the model reads: for a pair task the second texts too (the built-in tiny model learns
        its WordPiece vocabulary from these; without them a hypothesis's own words were [UNK])."""
        return self.texts + (self.pairs or [])

    def examples(self) -> list[tuple[str, str | None]]:
        """(text, pair) per row; the pair is None for single texts."""
        return list(zip(self.texts, self.pairs or [None] * len(self.texts), strict=True))


@dataclass(frozen=True)
class TextData:
    train: Split
    validation: Split
    label_names: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def validation_seen_in_train(self) -> int:
        """Validation examples that are also training examples (the same text, and pair): repeated rows in a file
        the validation split was carved from, or two files that share rows. The model is scored on what it
        trained on, so the validation error flatters memorising."""
        seen = set(self.train.examples())
        return sum(e in seen for e in self.validation.examples())

    def majority_error(self) -> float:
        """Validation error of always predicting the most common training class: the bar to beat."""
        counts = [0] * self.num_labels
        for y in self.train.labels:
            counts[y] += 1
        top = max(range(self.num_labels), key=counts.__getitem__)
        return 1 - sum(y == top for y in self.validation.labels) / len(self.validation)

    def constant_error(self) -> float:
        """The lowest validation error a constant prediction scores: 1 - the largest validation class's share.
        Where the validation rows' most common class is not the training set's (balanced classes, a small
        validation set), a model that collapsed onto it scores under the majority-class error without having
        learned anything."""
        counts = [0] * self.num_labels
        for y in self.validation.labels:
            counts[y] += 1
        return 1 - max(counts) / len(self.validation)

    def other_constant_error(self) -> float | None:
        """``constant_error`` where it is under the majority-class error (to the 4 places shown), so a report
        names both bars; None where the two are the same."""
        constant = self.constant_error()
        return constant if round(constant, 4) < round(self.majority_error(), 4) else None


# --- the built-in demo data set ---------------------------------------------------------------------------

_POSITIVE = (
    "good great excellent wonderful delightful charming moving brilliant superb enjoyable fresh funny".split()
)
_NEGATIVE = "bad awful boring dull terrible tedious clumsy weak bland painful stale messy".split()
_SUBJECTS = (
    "the movie|this film|the story|the acting|the plot|the ending|the soundtrack|the script|the cast".split(
        "|"
    )
)
_VERBS = "is|was|felt|seemed|turned out".split("|")
_ADVERBS = ["", "", "very ", "really ", "quite ", "truly ", "rather "]
_NEGATIONS = ["not ", "never ", "hardly "]
_FILLERS = ["", "", "", " overall", " to me", " at times", " for a sequel", " in the end"]


def make_demo_dataset(n: int, seed: int = 0, noise: float = 0.05) -> dict[str, list[str]]:
    """A learnable sentiment-like task: lexicon words, negation that flips them, a contrast clause
    (``..., but ...``) whose second half decides, and ``noise`` of labels flipped at random.

    Bag-of-words cannot solve the negations and contrasts, so a model must learn word order, and the
    learning rate decides whether it does within a few epochs. Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)

    def clause() -> tuple[str, bool]:
        positive = rng.random() < 0.5
        word = rng.choice(_POSITIVE if positive else _NEGATIVE)
        negated = rng.random() < 0.35
        adverb = rng.choice(_ADVERBS)
        negation = rng.choice(_NEGATIONS) if negated else ""
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {negation}{adverb}{word}{rng.choice(_FILLERS)}"
        return text, positive != negated

    texts, labels, seen = [], [], set()
    while len(texts) < n:
        text, positive = clause()
        if rng.random() < 0.3:
            second, positive = clause()
            text = f"{text} , but {second}"
        if rng.random() < noise:
            positive = not positive
        if text in seen:  # no repeated rows: the validation split would score sentences the model trained on
            continue
        seen.add(text)
        texts.append(text + " .")
        labels.append("positive" if positive else "negative")
    return {"text": texts, "label": labels}


# --- loading ----------------------------------------------------------------------------------------------


def _check_utf8(file: Path, path: str, where: str) -> None:
    """Text files must be UTF-8: a Latin-1/cp1252 CSV failed with the parser's "Invalid UTF8 sequence at string
    index 0", and a cp1252 JSONL loaded and crashed later on its first accented text."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with file.open("rb") as f:
        head = f.read(2)
        if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise ConfigError(f"{where}: {path} is UTF-16 text; save it as UTF-8 (Excel: CSV UTF-8)")
        f.seek(0)
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line += chunk.count(b"\n", 0, max(exc.start - (len(exc.object) - len(chunk)), 0))
                raise ConfigError(
                    f"{where}: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line});"
                    " save it as UTF-8, e.g. `iconv -f cp1252 -t utf-8 IN > OUT` for a Windows/Latin-1 file"
                ) from None
            line += chunk.count(b"\n")


# A field that CSV quoting wrapped, with a doubled quote inside: `"say ""hi"""` (pandas or the csv module
# writing a TSV). SST-2's bare quotes (`"quoted start`) never look like this.
_CSV_QUOTED = re.compile(r'"(?:[^"]|"")*""(?:[^"]|"")*"', re.DOTALL)


def _csv_quoted(dataset) -> bool:
    """Whether a TSV read without quoting was written with CSV quoting: a field wrapped and its quotes doubled,
    or a column whose every value is wrapped in quotes (QUOTE_ALL)."""
    for column, feature in dataset.features.items():
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            continue
        values = [v for v in dataset[column] if v]
        wrapped = [len(v) > 1 and v[0] == v[-1] == '"' for v in values]
        if values and all(wrapped):
            return True
        if any(v[0] == '"' and _CSV_QUOTED.fullmatch(v) for v in values):
            return True
    return False


def _root(exc: BaseException) -> BaseException:
    """The parser's own error under the ones datasets wraps it in."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def _load_file(path: str, where: str):
    import datasets

    file = Path(path).expanduser()
    if file.is_dir():
        inside = sorted(f.name for f in file.iterdir() if f.suffix.lower() in FILE_FORMATS)[:3]
        raise ConfigError(
            f"{where}: {path} is a folder, not a file; name the data file"
            + (f" in it ({', '.join(inside)})" if inside else "")
        )
    if not file.is_file():
        relative = "" if file.is_absolute() else f" (paths are relative to the current folder, {Path.cwd()})"
        raise ConfigError(f"{where}: file not found: {path}{relative}")
    fmt = FILE_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise ConfigError(
            f"{where}: unsupported file type '{file.suffix}' ({path}); use {', '.join(FILE_FORMATS)}"
        )
    if file.stat().st_size == 0:
        raise ConfigError(f"{where}: {path} is empty (0 bytes): there are no rows to read")
    if fmt != "parquet":
        _check_utf8(file, path, where)
    kwargs: dict[str, Any] = {}
    if fmt == "csv":
        # Text is text: keep "NA"/"null" as words; a TSV has no quoting (SST-2 has bare quotes).
        kwargs = {"keep_default_na": False}
        if file.suffix.lower() == ".tsv":
            kwargs.update(delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        try:
            loaded = datasets.load_dataset(fmt, data_files=str(file), split="train", **kwargs)
        except Exception as exc:
            if fmt != "csv" or "Failed to parse string" not in str(_root(exc)):
                raise
            loaded = None
        if loaded is None:
            # pandas typed a column from the first 10,000 rows (0/1 labels); a later row does not fit (an
            # empty cell, a word): read the file in one piece so the checks below name that row. The failed
            # read left its file open to the garbage collector: close it without a ResourceWarning.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()
            kwargs["chunksize"] = max(file.stat().st_size, 10_000)
            loaded = datasets.load_dataset(fmt, data_files=str(file), split="train", **kwargs)
        if kwargs.get("quoting") == csv.QUOTE_NONE and _csv_quoted(loaded):  # written as CSV with tabs
            del kwargs["quoting"]
            loaded = datasets.load_dataset(fmt, data_files=str(file), split="train", **kwargs)
    except Exception as exc:  # datasets raises many types for a malformed file
        root = _root(exc)
        why = " ".join(str(root).split())[:300] or type(root).__name__
        if "corresponds to no data" in why:
            why = "it has no data rows (only a header, or nothing)"
        hint = "" if root is exc else f" ({str(exc).splitlines()[0][:120]})"
        raise ConfigError(f"{where}: could not read {path}: {why}{hint}") from None
    # A header written `text, label` or padded in a spreadsheet: the column is `label`, not ` label`.
    names = loaded.column_names
    padded = {c: c.strip() for c in names if c != c.strip() and c.strip() and c.strip() not in names}
    return loaded.rename_columns(padded) if padded else loaded


def _load_hub(cfg: DataSection):
    import datasets

    from hpsearch.models import quiet_hub

    try:
        with quiet_hub():  # one error line, not two warning lines per retry of every file it asks for
            loaded = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as exc:
        close = difflib.get_close_matches(cfg.name.lower(), BUILTIN_DATASETS, n=1, cutoff=0.6)
        hint = (
            f"; did you mean the built-in '{close[0]}'?"
            if close
            else "; check the name, your network or HF_DATASETS_OFFLINE"
        )
        raise ConfigError(
            f"data.name: could not load data set {cfg.name!r}"
            f"{f' (subset {cfg.subset!r})' if cfg.subset else ''}: {str(exc).splitlines()[0][:300]}{hint}"
        ) from None
    if cfg.train_split not in loaded:
        raise ConfigError(
            f"data.train_split: no split {cfg.train_split!r}{did_you_mean(cfg.train_split, loaded)}"
        )
    validation = None
    if cfg.validation_split:
        if cfg.validation_split not in loaded:
            raise ConfigError(
                f"data.validation_split: no split {cfg.validation_split!r}{did_you_mean(cfg.validation_split, loaded)}"
                "; set it to null to carve one from train"
            )
        validation = loaded[cfg.validation_split]
    return loaded[cfg.train_split], validation


def _raw_splits(cfg: DataSection, seed: int):
    """(train, validation or None) as ``datasets.Dataset`` objects."""
    import datasets

    # hpsearch prints its own progress; datasets' bars would bury the one-line errors on stderr.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(
        datasets.logging.CRITICAL
    )  # its ERROR lines repeat the error hpsearch reports

    if cfg.train_file:
        train = _load_file(cfg.train_file, "data.train_file")
        validation = _load_file(cfg.validation_file, "data.validation_file") if cfg.validation_file else None
        return train, validation
    if cfg.name == "demo":
        data = make_demo_dataset(cfg.demo_size, seed=1234)
        return datasets.Dataset.from_dict(data), None
    return _load_hub(cfg)


def _check_columns(cfg: DataSection, dataset, which: str) -> None:
    for key in ("text_column", "text_pair_column", "label_column"):
        column = getattr(cfg, key)
        if column is not None and column not in dataset.column_names:
            raise ConfigError(
                f"data.{key}: no column {column!r} in the {which} data{did_you_mean(column, dataset.column_names)}"
            )


ROW = "__hpsearch_row__"  # a row's index in its file (or hub split) before sampling and splitting


def _row(cfg: DataSection, dataset, which: str, i: int) -> str:
    """Where row ``i`` of ``dataset`` (sampled, perhaps carved from the training file) came from: ``train row
    49 (line 51 of train.tsv)``."""
    row = dataset[ROW][i]
    file = cfg.validation_file if which == "validation" and cfg.validation_file else cfg.train_file
    suffix = Path(file).suffix.lower() if file else ""
    if suffix in (".csv", ".tsv"):
        return f"{which} row {row} (line {row + 2} of {file})"  # after the header line
    if suffix == ".jsonl":
        return f"{which} row {row} (line {row + 1} of {file})"
    return f"{which} row {row}"


def _texts(cfg: DataSection, dataset, column: str, which: str) -> list[str]:
    values = list(dataset[column])
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            key = "text_column" if column == cfg.text_column else "text_pair_column"
            fix = (
                "remove or fill empty rows"
                if value is None or isinstance(value, str)
                else f"is {column!r} the text column? check data.{key}"
            )
            raise ConfigError(
                f"data.{key}: {_row(cfg, dataset, which, i)} of column {column!r} holds {value!r}, not text; {fix}"
            )
    return values


def _label_key(value) -> str:
    """A label's class name: `1.0` is class `1`, and `pos ` (a stray space in a hand-edited file) is `pos`."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value).strip()


def _label_names(cfg: DataSection, train) -> list[str]:
    train_labels = list(train[cfg.label_column])
    names = getattr(train.features[cfg.label_column], "names", None)
    if names:  # a datasets ClassLabel already maps ids to names
        return list(names)
    for i, value in enumerate(train_labels):
        if (
            value is None
            or isinstance(value, float)
            and not value.is_integer()
            or isinstance(value, (list, dict))
            or isinstance(value, str)
            and not value.strip()
        ):
            raise ConfigError(
                f"data.label_column: {_row(cfg, train, 'train', i)} has label {value!r}; labels must be classes"
                " (integers or strings), not continuous values or empty cells"
            )
    distinct = sorted(
        {_label_key(v) for v in train_labels},
        key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s),
    )
    if len(distinct) < 2:
        raise ConfigError(
            f"data.label_column {cfg.label_column!r}: only one class ({distinct[0]!r}); need at least 2"
        )
    if len(distinct) > MAX_CLASSES or len(distinct) > 0.5 * len(train_labels):
        raise ConfigError(
            f"data.label_column {cfg.label_column!r}: {len(distinct)} distinct values in {len(train_labels)} rows"
            " (e.g. " + ", ".join(repr(d) for d in distinct[:3]) + "); these are not class labels"
            "; check that the column holds classes"
        )
    spellings = collections.defaultdict(list)
    for name in distinct:
        spellings[name.casefold()].append(name)
    for names_of_one in spellings.values():
        if len(names_of_one) > 1:  # `pos`, `Pos`, `POS`: one class in the file's eyes, three to a model
            first = next(i for i, v in enumerate(train_labels) if _label_key(v) == names_of_one[1])
            raise ConfigError(
                f"data.label_column {cfg.label_column!r}: classes {', '.join(repr(n) for n in names_of_one)}"
                f" differ only in case (e.g. {_row(cfg, train, 'train', first)}); write each class one way"
            )
    return distinct


def _labels(cfg: DataSection, dataset, names: list[str], which: str) -> list[int]:
    index = {name: i for i, name in enumerate(names)}
    feature = dataset.features[cfg.label_column]
    if getattr(feature, "names", None):
        ids = list(dataset[cfg.label_column])
        unlabelled = [i for i, y in enumerate(ids) if not 0 <= y < len(names)]
        if unlabelled:  # ClassLabel's -1: no gold label (hub test splits, SNLI's disputed pairs)
            raise ConfigError(
                f"data.label_column: {_row(cfg, dataset, which, unlabelled[0])} has label id {ids[unlabelled[0]]}"
                f" ({len(unlabelled)} of {len(ids)} rows), outside the {len(names)} classes: rows without a"
                " gold label (-1); drop them, or use a split that has labels"
            )
        return ids
    out = []
    for i, value in enumerate(list(dataset[cfg.label_column])):
        key = _label_key(value)
        if key not in index:
            raise ConfigError(
                f"data.label_column: {_row(cfg, dataset, which, i)} has label {value!r}, which the training data"
                " never uses"
                f" (classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
                + (
                    "; raise data.max_train_samples so every class is sampled"
                    if cfg.max_train_samples
                    else ""
                )
            )
        out.append(index[key])
    return out


def _split(cfg: DataSection, dataset, names: list[str], which: str) -> Split:
    texts = _texts(cfg, dataset, cfg.text_column, which)
    pairs = _texts(cfg, dataset, cfg.text_pair_column, which) if cfg.text_pair_column else None
    return Split(texts, pairs, _labels(cfg, dataset, names, which))


def load_data(cfg: DataSection, seed: int = 0) -> TextData:
    """Load, check and split the data named by ``cfg``; every problem is a :class:`ConfigError`.

    The same ``seed`` gives every worker the same split and subsample, whatever node it runs on.
    """
    train, validation = _raw_splits(cfg, seed)
    _check_columns(cfg, train, "train")
    train = train.add_column(ROW, list(range(len(train))))  # for error messages: the row before sampling
    if validation is not None:
        validation = validation.add_column(ROW, list(range(len(validation))))
    if validation is None:
        if len(train) < 10:
            raise ConfigError(
                f"data: only {len(train)} training rows; need at least 10 to carve a validation split"
            )
        parts = train.train_test_split(test_size=cfg.validation_fraction, seed=seed)
        train, validation = parts["train"], parts["test"]
    _check_columns(cfg, validation, "validation")
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        train = train.shuffle(seed=seed).select(range(cfg.max_train_samples))
    if cfg.max_validation_samples and cfg.max_validation_samples < len(validation):
        validation = validation.shuffle(seed=seed).select(range(cfg.max_validation_samples))
    names = _label_names(cfg, train)
    data = TextData(_split(cfg, train, names, "train"), _split(cfg, validation, names, "validation"), names)
    _check_stray_classes(cfg, data, train)
    return data


STRAY_ROWS = 2  # a class with at most this many training rows and no validation row is taken for a typo


def _check_stray_classes(cfg: DataSection, data: TextData, train) -> None:
    """A label used by one or two training rows and no validation row (a typo such as `7` or `positve`
    among 0/1) would silently add a class the model cannot learn and the validation error never scores."""
    if len(data.train) <= 20 * STRAY_ROWS:
        return
    scored = set(data.validation.labels)
    for label, n in collections.Counter(data.train.labels).items():
        if n <= STRAY_ROWS and label not in scored:
            raise ConfigError(
                f"data.label_column: class {data.label_names[label]!r} has only {n} training row(s), such as"
                f" {_row(cfg, train, 'train', data.train.labels.index(label))}, and no validation row: a typo in"
                " the label? fix or drop the row"
                + (", or raise data.max_train_samples" if cfg.max_train_samples else "")
            )


# --- tokenization, once per worker -------------------------------------------------------------------------

_TOKENIZED: dict[tuple, tuple[dict[str, list], dict[str, list]]] = {}


def tokenize(data: TextData, tokenizer, max_length: int, key: Any) -> tuple[dict[str, list], dict[str, list]]:
    """Unpadded ``input_ids`` (and ``token_type_ids`` for text pairs) of train and validation; batches pad
    themselves. Cached under ``key`` for the life of the worker process."""
    # The texts are part of the key: the same config with another study seed carves another split, and
    # encodings of one split paired with labels of the other would train on noise without a word.
    texts = (
        tuple(data.train.texts),
        tuple(data.train.pairs or ()),
        tuple(data.validation.texts),
        tuple(data.validation.pairs or ()),
    )
    cache_key = (key, max_length, id(tokenizer), hash(texts))
    # Segment ids only where the tokenizer gives them to the model (BERT, ELECTRA, DeBERTa), as it will for the
    # saved model: GPT-2 would add token embeddings for them, ALBERT and RoBERTa's tokenizers in transformers 5 leave
    # them out, so a model trained with them would be read without.
    segments = "token_type_ids" in tokenizer.model_input_names
    if cache_key not in _TOKENIZED:

        def encode(split: Split) -> dict[str, list]:
            encoded = tokenizer(
                split.texts,
                split.pairs,
                truncation=True,
                max_length=max_length,
                return_attention_mask=False,
                return_token_type_ids=split.pairs is not None and segments,
            )
            return {k: encoded[k] for k in ("input_ids", "token_type_ids") if k in encoded}

        _TOKENIZED[cache_key] = (encode(data.train), encode(data.validation))
    return _TOKENIZED[cache_key]
