"""Data: the built-in demo set, local files in every format, label mapping, splits, tokenization once."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hpsearch.config import DataSection
from hpsearch.data import load_data, make_demo_dataset, tokenize
from hpsearch.errors import ConfigError
from hpsearch.models import train_tiny_tokenizer

ROWS = [  # (text, topic) for a 3-class task with string labels
    (f"{w} {n}", topic)
    for n in range(20)
    for w, topic in (
        ("goal scored in the match", "sport"),
        ("shares fell on the market", "business"),
        ("new phone chip released", "tech"),
    )
]


def test_demo_data_set_is_deterministic_and_balanced():
    a, b = make_demo_dataset(1000), make_demo_dataset(1000)
    assert a == b
    assert make_demo_dataset(1000, seed=1) != a
    counts = Counter(a["label"])
    assert set(counts) == {"positive", "negative"}
    assert 0.4 < counts["positive"] / 1000 < 0.6
    assert len(set(a["text"])) > 900  # varied sentences, not a handful repeated
    assert any(" not " in t or " never " in t for t in a["text"]) and any(", but" in t for t in a["text"])


def test_demo_section_loads_with_a_carved_validation_split():
    data = load_data(DataSection(name="demo", demo_size=400), seed=0)
    assert (len(data.train), len(data.validation)) == (360, 40)
    assert data.label_names == ["negative", "positive"]
    assert set(data.train.labels) == {0, 1}
    assert 0.3 < data.majority_error() <= 0.5


def test_the_best_constant_answer_may_be_another_class_than_the_training_majority():
    """The demo's split for seed 3: the training set's majority class is the validation set's minority, so a
    model that always answers the other class scores 0.49 without learning anything, under the 0.51 bar."""
    data = load_data(DataSection(name="demo"), seed=3)
    assert (round(data.majority_error(), 4), round(data.constant_error(), 4)) == (0.51, 0.49)
    assert data.other_constant_error() == data.constant_error()  # reports name both bars
    same = load_data(DataSection(name="demo"), seed=0)
    assert same.constant_error() == same.majority_error() and same.other_constant_error() is None


def write_table(path, rows, text="text", label="label"):
    import pandas as pd

    frame = pd.DataFrame({text: [r[0] for r in rows], label: [r[1] for r in rows]})
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".json":
        path.write_text(json.dumps(frame.to_dict(orient="records")), encoding="utf-8")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_local_file_formats_load_with_string_labels_mapped(tmp_path, suffix):
    train = write_table(tmp_path / f"train{suffix}", ROWS, text="utterance", label="intent")
    validation = write_table(tmp_path / f"validation{suffix}", ROWS[:9], text="utterance", label="intent")
    cfg = DataSection(
        name=None,
        train_file=str(train),
        validation_file=str(validation),
        text_column="utterance",
        label_column="intent",
    )
    data = load_data(cfg)
    assert data.label_names == ["business", "sport", "tech"]
    assert len(data.train) == 60 and len(data.validation) == 9
    assert data.train.texts[0] == ROWS[0][0]  # no split was carved: order kept
    assert [data.label_names[y] for y in data.validation.labels] == [r[1] for r in ROWS[:9]]


def test_tsv_keeps_quotes_and_na_words_as_text(tmp_path):
    path = tmp_path / "train.tsv"
    lines = ["sentence\tlabel"] + [
        f'"quoted start {i}\t{i % 2}' if i % 5 == 0 else f"NA {i}\t{i % 2}" for i in range(40)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_data(DataSection(name=None, train_file=str(path), text_column="sentence"))
    texts = data.train.texts + data.validation.texts
    assert len(texts) == 40
    assert '"quoted start 0' in texts and "NA 1" in texts


def test_integer_labels_are_ordered_numerically(tmp_path):
    rows = [(f"text number {i}", [2, 10, 1][i % 3]) for i in range(60)]
    path = write_table(tmp_path / "train.csv", rows)
    data = load_data(DataSection(name=None, train_file=str(path)))
    assert data.label_names == ["1", "2", "10"]


def test_validation_split_is_carved_with_the_seed(tmp_path):
    path = write_table(tmp_path / "train.csv", ROWS)
    cfg = DataSection(name=None, train_file=str(path), validation_fraction=0.2)
    first, again, other = load_data(cfg, seed=3), load_data(cfg, seed=3), load_data(cfg, seed=4)
    assert first == again
    assert (len(first.train), len(first.validation)) == (48, 12)
    assert first.validation.texts != other.validation.texts
    assert not set(first.train.texts) & set(first.validation.texts)


def test_max_samples_take_a_seeded_subset(tmp_path):
    path = write_table(tmp_path / "train.csv", ROWS)
    cfg = DataSection(name=None, train_file=str(path), max_train_samples=20, max_validation_samples=5)
    data = load_data(cfg, seed=0)
    assert (len(data.train), len(data.validation)) == (20, 5)
    assert load_data(cfg, seed=0) == data
    everything = load_data(DataSection(name=None, train_file=str(path)), seed=0)
    assert set(data.train.texts) <= set(everything.train.texts)
    # A cap above the size changes nothing.
    bigger = DataSection(name=None, train_file=str(path), max_train_samples=10_000)
    assert load_data(bigger, seed=0) == everything


def test_empty_text_is_rejected(tmp_path):
    path = write_table(tmp_path / "train.csv", [*ROWS, ("  ", "tech")])
    with pytest.raises(ConfigError, match="data.text_column: .*holds '  ', not text"):
        load_data(DataSection(name=None, train_file=str(path)))


def test_malformed_file_is_a_config_error(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="data.train_file: could not read"):
        load_data(DataSection(name=None, train_file=str(path)))


def test_text_pairs_produce_token_type_ids(tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {
            "premise": [f"a man plays {i}" for i in range(40)],
            "hypothesis": [f"someone plays {i}" if i % 2 else f"nobody sleeps {i}" for i in range(40)],
            "label": ["entailment" if i % 2 else "contradiction" for i in range(40)],
        }
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    cfg = DataSection(
        name=None,
        train_file=str(tmp_path / "train.csv"),
        text_column="premise",
        text_pair_column="hypothesis",
    )
    data = load_data(cfg)
    assert data.train.pairs is not None and len(data.train.pairs) == len(data.train.texts)
    tokenizer = train_tiny_tokenizer(data.train.texts + data.train.pairs)
    train, validation = tokenize(data, tokenizer, 32, "pairs")
    assert set(train) == {"input_ids", "token_type_ids"} and "token_type_ids" in validation
    types, ids = train["token_type_ids"][0], train["input_ids"][0]
    assert len(types) == len(ids) and types[0] == 0 and types[-1] == 1  # [CLS] a [SEP] b [SEP]
    # The search's tiny model learns its vocabulary from both texts: "nobody" is in hypotheses only.
    from hpsearch.config import ModelSection
    from hpsearch.models import get_factory

    factory = get_factory(ModelSection(name="tiny"), data.label_names, data.train.vocabulary_texts(), cfg)
    assert factory.tokenizer.tokenize("nobody sleeps") == ["nobody", "sleeps"]


def test_single_texts_have_no_token_type_ids_and_respect_max_length():
    data = load_data(DataSection(name="demo", demo_size=200))
    tokenizer = train_tiny_tokenizer(data.train.texts)
    train, _ = tokenize(data, tokenizer, 8, "single")
    assert set(train) == {"input_ids"}
    assert max(len(ids) for ids in train["input_ids"]) == 8
    assert (
        tokenizer.decode(train["input_ids"][0], skip_special_tokens=True).split()[0]
        == data.train.texts[0].split()[0]
    )


def test_tokenization_is_cached_per_worker():
    data = load_data(DataSection(name="demo", demo_size=200))
    tokenizer = train_tiny_tokenizer(data.train.texts)
    first = tokenize(data, tokenizer, 32, "cached")
    assert tokenize(data, tokenizer, 32, "cached") is first
    assert tokenize(data, tokenizer, 16, "cached") is not first


def test_tokenization_cache_tells_apart_splits_of_the_same_config():
    # Same data section, other seed: another carved split. Its encodings must be its own.
    cfg = DataSection(name="demo", demo_size=200)
    a, b = load_data(cfg, seed=0), load_data(cfg, seed=1)
    tokenizer = train_tiny_tokenizer(a.train.texts)
    enc_a, enc_b = tokenize(a, tokenizer, 32, cfg), tokenize(b, tokenizer, 32, cfg)
    assert enc_b[0]["input_ids"] == tokenizer(b.train.texts, truncation=True, max_length=32)["input_ids"]
    assert enc_a[0]["input_ids"] != enc_b[0]["input_ids"]


@pytest.mark.parametrize(
    "name,words",
    [
        ("glue", ["data.name: could not load data set 'glue' (subset 'sst2')", "HF_DATASETS_OFFLINE"]),
        ("Demo", ["did you mean the built-in 'demo'?"]),
    ],
)
def test_hub_data_set_offline_is_one_line(monkeypatch, name, words):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError) as info:
        load_data(DataSection(name=name, subset="sst2" if name == "glue" else None))
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_hub_retries_are_not_printed_before_the_one_line(monkeypatch, capfd):
    """Offline, huggingface_hub logs each retry of each file twice (22 lines for glue) before the error; a hub
    download cannot happen here, so load_dataset is replaced by one that logs and fails as it does."""
    import logging

    import datasets

    def unreachable(*args, **kwargs):
        for attempt in range(1, 6):
            logging.getLogger("huggingface_hub.utils._http").warning(
                "'[Errno -2] Name or service not known' thrown while requesting HEAD ... [Retry %d/5]",
                attempt,
            )
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    level = logging.getLogger("huggingface_hub").level
    with pytest.raises(ConfigError, match="could not load data set 'glue'"):
        load_data(DataSection(name="glue", subset="sst2"))
    out, err = capfd.readouterr()
    assert "Retry" not in out + err
    assert logging.getLogger("huggingface_hub").level == level  # put back as it was


@pytest.mark.parametrize("stray", ["7", "positve"])
def test_a_stray_label_is_refused_not_made_a_class(tmp_path, stray):
    """One row labelled `7` (or `positve`) among 0/1 labels would add a third class no validation row scores."""
    lines = [f"w{i} text\t{i % 2}\n" for i in range(60)]
    rows, scored = "".join(lines), "".join(lines[:20])
    (tmp_path / "train.tsv").write_text(f"sentence\tlabel\n{rows}stray row\t{stray}\n")
    (tmp_path / "validation.tsv").write_text("sentence\tlabel\n" + scored)
    cfg = DataSection(
        name=None,
        train_file=str(tmp_path / "train.tsv"),
        validation_file=str(tmp_path / "validation.tsv"),
        text_column="sentence",
    )
    with pytest.raises(ConfigError) as info:
        load_data(cfg)
    assert (
        f"class {stray!r} has only 1 training row(s), such as train row 60 (line 62 of {tmp_path / 'train.tsv'}),"
        " and no validation row"
    ) in str(info.value)
    # a rare class that validation rows also use is a real class
    (tmp_path / "validation.tsv").write_text(f"sentence\tlabel\n{scored}other row\t{stray}\n")
    assert len(load_data(cfg).label_names) == 3


def test_a_bad_row_is_named_by_its_line_in_the_file_after_sampling_and_splitting(tmp_path):
    """The checks run on the sampled, shuffled rows (and the validation rows carved from the training file);
    the message still names the row's line in the file, not its place in the shuffled sample."""
    lines = [f"w{i} text\t{i % 2}\n" if i != 73 else "\t1\n" for i in range(100)]
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + "".join(lines))
    cfg = DataSection(name=None, train_file=str(tmp_path / "train.tsv"), text_column="sentence")
    with pytest.raises(ConfigError) as info:
        load_data(cfg)
    assert f"row 73 (line 75 of {tmp_path / 'train.tsv'}) of column 'sentence'" in str(info.value)


def test_rows_without_a_gold_label_are_refused_with_the_fix(tmp_path):
    """A ClassLabel column stores "no label" as -1 (hub test splits, SNLI's disputed pairs)."""
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    datasets.Dataset.from_dict(
        {"text": [f"w{i} x" for i in range(40)], "label": [i % 2 for i in range(40)]}, features=features
    ).to_parquet(tmp_path / "train.parquet")
    datasets.Dataset.from_dict(
        {"text": [f"v{i}" for i in range(10)], "label": [0] * 7 + [-1] * 3}, features=features
    ).to_parquet(tmp_path / "validation.parquet")
    cfg = DataSection(
        name=None,
        train_file=str(tmp_path / "train.parquet"),
        validation_file=str(tmp_path / "validation.parquet"),
    )
    with pytest.raises(ConfigError, match=r"validation row 7 has label id -1 \(3 of 10 rows\).*drop them"):
        load_data(cfg)


def test_stray_spaces_in_labels_do_not_make_classes(tmp_path):
    """`pos ` from a hand-edited file is `pos`: as its own class it split one class in two without a word."""
    rows = [(f"text {i}", ["pos", "neg"][i % 2] + (" " if i % 7 == 0 else "")) for i in range(60)]
    data = load_data(DataSection(name=None, train_file=str(write_table(tmp_path / "train.csv", rows))))
    assert data.label_names == ["neg", "pos"]
    assert Counter(data.train.labels + data.validation.labels) == {0: 30, 1: 30}


def test_classes_that_differ_only_in_case_are_refused(tmp_path):
    rows = [(f"text {i}", ["pos", "neg", "POS"][i % 3]) for i in range(60)]
    path = write_table(tmp_path / "train.csv", rows)
    with pytest.raises(
        ConfigError, match=r"classes 'POS', 'pos' differ only in case \(e.g. train row \d+ \(line"
    ):
        load_data(DataSection(name=None, train_file=str(path)))


@pytest.mark.parametrize(
    "name,encoding,words",
    [
        ("train.csv", "latin-1", "is not UTF-8 text (byte 0xe9 on line 5); save it as UTF-8"),
        (
            "train.jsonl",
            "cp1252",
            "is not UTF-8 text (byte 0xe9 on line 4); save it as UTF-8",
        ),  # loaded, then crashed
        ("train.tsv", "utf-16", "is UTF-16 text; save it as UTF-8"),
    ],
)
def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path, name, encoding, words):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        lines = [
            json.dumps({"text": f"café {i}" if i == 3 else f"w{i}", "label": i % 2}, ensure_ascii=False)
            for i in range(40)
        ]
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        lines = [f"text{sep}label"] + [f"{'café' if i == 3 else 'w'} {i}{sep}{i % 2}" for i in range(40)]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    with pytest.raises(ConfigError) as info:
        load_data(DataSection(name=None, train_file=str(path)))
    assert words in str(info.value)


def test_a_tsv_written_with_csv_quoting_is_read_unquoted(tmp_path):
    """pandas and the csv module quote a TSV field holding a quote (`"she said ""hi"" 0"`); read bare, that
    field kept its wrapping quotes and doubled ones. A file with every field quoted (QUOTE_ALL) too."""
    import csv

    import pandas as pd

    texts = [f'she said "hi" {i}' if i % 4 == 0 else f"plain {i}" for i in range(40)]
    frame = pd.DataFrame({"text": texts, "label": ["pos", "neg"] * 20})
    frame.to_csv(tmp_path / "minimal.tsv", sep="\t", index=False)
    frame.to_csv(tmp_path / "all.tsv", sep="\t", index=False, quoting=csv.QUOTE_ALL)
    for name in ("minimal.tsv", "all.tsv"):
        data = load_data(DataSection(name=None, train_file=str(tmp_path / name)))
        assert sorted(data.train.texts + data.validation.texts) == sorted(texts)
        assert data.label_names == ["neg", "pos"]


def test_spaces_around_header_names_are_ignored(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text, label\n" + "".join(f"w{i} text,{i % 2}\n" for i in range(40)), encoding="utf-8")
    data = load_data(DataSection(name=None, train_file=str(path)))
    assert data.label_names == ["0", "1"] and len(data.train) + len(data.validation) == 40


def test_a_late_row_that_does_not_fit_its_column_type_is_named(tmp_path):
    """pandas types a column from its first 10,000 rows: an empty label after them was `Failed to parse string:
    '' as a scalar of type int64`, with no row."""
    lines = [f"w{i} text,{'' if i == 10_200 else i % 2}\n" for i in range(10_300)]
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(lines), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"train row 10200 \(line 10202 of .*\) has label ''"):
        load_data(DataSection(name=None, train_file=str(tmp_path / "train.csv")))


def test_paths_folders_and_empty_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_table(tmp_path / "train.csv", ROWS)
    assert len(load_data(DataSection(name=None, train_file="~/train.csv")).label_names) == 3
    with pytest.raises(
        ConfigError,
        match=r"data.train_file: .* is a folder, not a file; name the data file in it \(train.csv\)",
    ):
        load_data(DataSection(name=None, train_file=str(tmp_path)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"empty.jsonl is empty \(0 bytes\)"):  # was `StopIteration`
        load_data(DataSection(name=None, train_file=str(tmp_path / "empty.jsonl")))


def test_a_column_of_numbers_as_text_points_at_the_text_column(tmp_path):
    path = write_table(tmp_path / "train.csv", [(i * 7, ["a", "b"][i % 2]) for i in range(40)])
    with pytest.raises(
        ConfigError, match="holds .*, not text; is 'text' the text column\\? check data.text_column"
    ):
        load_data(DataSection(name=None, train_file=str(path)))


def test_a_data_set_by_name_loads_through_the_hub_path_from_a_local_folder(tmp_path):
    """`data.name` goes through `datasets.load_dataset`, as a hub id does; a DatasetDict saved to a folder keeps
    its ClassLabel names and its splits, and a missing split is named with the fix."""
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )

    def split(n, prefix):
        texts = [f"{'good' if i % 2 else 'bad'} {prefix}{i}" for i in range(n)]
        return datasets.Dataset.from_dict(
            {"sentence": texts, "label": [i % 2 for i in range(n)]}, features=features
        )

    datasets.DatasetDict(train=split(60, "t"), validation=split(20, "v")).save_to_disk(tmp_path / "sst")
    data = load_data(DataSection(name=str(tmp_path / "sst"), text_column="sentence"))
    assert data.label_names == ["negative", "positive"]
    assert (len(data.train), len(data.validation)) == (60, 20)
    assert data.validation.texts[1] == "good v1" and data.validation.labels[1] == 1
    datasets.DatasetDict(train=split(60, "t"), heldout=split(20, "v")).save_to_disk(tmp_path / "other")
    with pytest.raises(
        ConfigError,
        match=r"data.validation_split: no split 'validation'.*set it to null to carve one from train",
    ):
        load_data(DataSection(name=str(tmp_path / "other"), text_column="sentence"))
