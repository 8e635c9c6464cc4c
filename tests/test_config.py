"""Config rules: every mistake is one ConfigError naming the place, the value and the fix."""

from __future__ import annotations

import pytest
import yaml

from hpsearch.config import STORAGE_ENV, Config, config_from_dict, load_config, mask_password, parse_set
from hpsearch.errors import ConfigError


def write(tmp_path, text: str, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path, text: str, **kwargs) -> Config:
    return load_config(write(tmp_path, text), **kwargs)


def load_mapping(tmp_path, cfg: dict, **kwargs) -> Config:
    return load_text(tmp_path, yaml.safe_dump(cfg), **kwargs)


def test_defaults_fill_every_section(tmp_path):
    cfg = load_text(tmp_path, "")
    assert cfg.study.name == "study"  # the file's stem
    assert cfg.study.storage == "sqlite:///studies/study.db"
    assert (cfg.study.sampler, cfg.study.pruner, cfg.model.name, cfg.data.name) == (
        "tpe",
        "successive-halving",
        "tiny",
        "demo",
    )
    assert cfg.search_space == {
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
    }


BAD_CONFIGS = [
    # (rule, YAML text, words the one-line message must contain)
    ("unknown section", "trian: {n_epochs: 2}", ["unknown section 'trian'", "did you mean 'train'"]),
    ("unknown key", "train: {n_epoch: 2}", ["unknown key 'n_epoch' in train", "did you mean 'n_epochs'"]),
    (
        "unknown study key",
        "study: {n_trial: 2}",
        ["unknown key 'n_trial' in study", "did you mean 'n_trials'"],
    ),
    (
        "unknown search-space key",
        "search_space: {lerning_rate: 0.01}",
        ["unknown key 'lerning_rate' in search_space", "did you mean 'learning_rate'"],
    ),
    (
        "unknown spec key",
        "search_space: {learning_rate: {type: float, low: 0.001, hihg: 0.1}}",
        ["unknown key 'hihg' for type float", "did you mean 'high'"],
    ),
    (
        "unknown spec type",
        "search_space: {learning_rate: {type: flaot, low: 0.001, high: 0.1}}",
        ["type must be float, int or categorical", "did you mean 'float'"],
    ),
    ("missing spec type", "search_space: {learning_rate: {low: 0.001, high: 0.1}}", ["missing `type`"]),
    ("missing high", "search_space: {learning_rate: {type: float, low: 0.001}}", ["missing `high`"]),
    ("int as string", "train: {n_epochs: two}", ["train.n_epochs", "expected an integer", "'two'"]),
    ("int as fraction", "train: {n_epochs: 2.5}", ["train.n_epochs", "expected an integer", "2.5"]),
    ("bool as int", "study: {n_trials: true}", ["study.n_trials", "expected an integer"]),
    (
        "number as text",
        "train: {learning_rate: fast}",
        ["train.learning_rate", "expected a number", "'fast'"],
    ),
    ("flag as text", "train: {group_by_length: maybe}", ["train.group_by_length", "expected true or false"]),
    ("section not a mapping", "train: 3", ["train: expected a mapping"]),
    ("file not a mapping", "- a\n- b\n", ["expected a mapping with sections"]),
    ("zero trials", "study: {n_trials: 0}", ["study.n_trials", "must be >= 1", "got 0"]),
    ("negative timeout", "study: {timeout: -5}", ["study.timeout", "must be > 0"]),
    (
        "low >= high",
        "search_space: {learning_rate: {type: float, low: 0.1, high: 0.001}}",
        ["search_space.learning_rate", "low must be < high", "low=0.1, high=0.001"],
    ),
    ("low == high", "search_space: {batch_size: {type: int, low: 8, high: 8}}", ["low must be < high"]),
    (
        "log with low <= 0",
        "search_space: {weight_decay: {type: float, low: 0.0, high: 0.1, log: true}}",
        ["search_space.weight_decay", "log scale needs low > 0", "low=0.0"],
    ),
    (
        "log and step",
        "search_space: {learning_rate: {type: float, low: 0.001, high: 0.1, log: true, step: 0.001}}",
        ["either log or step"],
    ),
    (
        "step not dividing range",
        "search_space: {warmup_ratio: {type: float, low: 0.0, high: 0.25, step: 0.1}}",
        ["multiple of step"],
    ),
    (
        "non-positive step",
        "search_space: {warmup_ratio: {type: float, low: 0.0, high: 0.2, step: 0}}",
        ["step: must be > 0"],
    ),
    (
        "empty choices",
        "search_space: {batch_size: {type: categorical, choices: []}}",
        ["search_space.batch_size", "choices must be a non-empty list"],
    ),
    (
        "repeated choices",
        "search_space: {batch_size: {type: categorical, choices: [8, 8]}}",
        ["must not repeat"],
    ),
    (
        "choice out of range",
        "search_space: {batch_size: {type: categorical, choices: [0, 8]}}",
        ["batch_size.choices", "must be >= 1", "got 0"],
    ),
    (
        "range out of allowed values",
        "search_space: {dropout: {type: float, low: 0.1, high: 1.5}}",
        ["search_space.dropout.high", "must be in [0, 1)"],
    ),
    (
        "float range for int hyperparameter",
        "search_space: {batch_size: {type: float, low: 8, high: 64}}",
        ["batch_size takes int values", "type must be int or categorical"],
    ),
    (
        "fixed value of wrong type",
        "search_space: {batch_size: many}",
        ["search_space.batch_size", "expected an integer"],
    ),
    ("unknown scheduler", "search_space: {lr_scheduler: cosin}", ["must be one of linear, cosine, constant"]),
    (
        "unknown sampler",
        "study: {sampler: tpr}",
        ["study.sampler", "unknown value 'tpr'", "did you mean 'tpe'"],
    ),
    ("unknown pruner", "study: {pruner: hyperbnd}", ["study.pruner", "did you mean 'hyperband'"]),
    ("reduction factor", "study: {reduction_factor: 1}", ["study.reduction_factor must be >= 2", "got 1"]),
    ("unknown far-off sampler", "study: {sampler: hyperopt}", ["allowed: cmaes, gp, grid, qmc, random, tpe"]),
    (
        "guess lists the choices",
        "study: {sampler: bayes}",
        ["did you mean 'cmaes'? (allowed: tpe, random, grid,"],
    ),
    ("unknown device", "train: {device: gpu}", ["train.device", "unknown value 'gpu'"]),
    (
        "one GPU by number",
        "train: {device: 'cuda:1'}",
        ["train.device: 'cuda:1'", "CUDA_VISIBLE_DEVICES=1", "hpsearch search --gpus 1"],
    ),
    (
        "grid with a continuous log range",
        "study: {sampler: grid}",
        ["search_space.learning_rate", "grid sampler needs finite values", "give `step`"],
    ),
    (
        "both data name and file",
        "data: {name: demo, train_file: a.csv}",
        ["either data.name", "`name: null`"],
    ),
    ("no data at all", "data: {name: null}", ["give data.name"]),
    ("epoch budget", "study: {epoch_budget: 0}", ["study.epoch_budget: must be > 0 (or left out), got 0"]),
    (
        "early eval past epoch 1",
        "train: {early_eval: 1.5}",
        ["train.early_eval", "must be in (0, 1)", "got 1.5"],
    ),
    ("early eval zero", "train: {early_eval: 0}", ["train.early_eval", "must be in (0, 1)", "got 0"]),
    (
        "validation file alone",
        "data: {validation_file: v.csv}",
        ["data.validation_file needs data.train_file"],
    ),
    ("validation fraction", "data: {validation_fraction: 1.5}", ["data.validation_fraction", "(0, 1)"]),
    (
        "pausing with a pruner that has no rungs to pause at",
        "study: {pruner: hyperband, pause_at_rungs: true}",
        ["study.pause_at_rungs", "study.pruner is 'hyperband'", "`pruner: successive-halving`"],
    ),
    (
        "early evaluation with no pruner",
        "study: {pruner: none}\ntrain: {early_eval: 0.25}",
        ["train.early_eval: 0.25", "'none' prunes nothing", "leave early_eval out"],
    ),
    (
        "early evaluation with hyperband",
        "study: {pruner: hyperband}\ntrain: {early_eval: 0.25}",
        ["train.early_eval: 0.25", "'hyperband' starts its rungs at epoch 1"],
    ),
    (
        "cma-es with no range to model",
        "study: {sampler: cmaes}\nsearch_space: {learning_rate: 1.0e-3}",
        ["study.sampler: cmaes models float and int ranges only", "batch_size (categorical)"],
    ),
    (
        "a choice given twice in two spellings",
        "search_space: {learning_rate: {type: categorical, choices: [0.001, 1e-3]}}",
        ["search_space.learning_rate: choices must not repeat"],
    ),
    ("empty study name", "study: {name: ' '}", ["study.name: must not be empty"]),
    ("study name of dots", "study: {name: '..'}", ["study.name", "has path parts"]),
    ("study name with a backslash", "study: {name: 'a\\b'}", ["study.name", "has path parts"]),
    ("negative retries", "study: {max_retries: -1}", ["study.max_retries", "must be >= 0"]),
    ("zero grace period", "study: {grace_period: 0}", ["study.grace_period: must be > 0"]),
    ("zero evaluation batch", "train: {eval_batch_size: 0}", ["train.eval_batch_size: must be >= 1"]),
    ("zero learning rate", "train: {learning_rate: 0}", ["train.learning_rate: must be > 0"]),
    ("dropout of one", "train: {dropout: 1.0}", ["train.dropout: must be in [0, 1)"]),
    ("warm-up past the run", "train: {warmup_ratio: 1.5}", ["train.warmup_ratio: must be in [0, 1]"]),
]


@pytest.mark.parametrize("rule,text,words", BAD_CONFIGS, ids=[row[0] for row in BAD_CONFIGS])
def test_bad_config_raises_one_line_naming_the_problem(tmp_path, rule, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


def test_a_train_file_alone_selects_local_files_not_the_demo_set(tmp_path):
    cfg = load_text(tmp_path, "data: {train_file: a.csv, validation_file: v.csv}")
    assert (cfg.data.name, cfg.data.train_file) == (None, "a.csv")
    # and so does a file given with --set on a config that names no data set
    cfg = load_config(write(tmp_path, "study: {n_trials: 2}"), sets=["data.train_file=b.csv"])
    assert (cfg.data.name, cfg.data.train_file) == (None, "b.csv")


def test_yaml_1_1_exponent_without_dot_is_read_as_a_float(tmp_path):
    # PyYAML follows YAML 1.1, where `1e-5` is the string "1e-5"; users mean the number.
    assert yaml.safe_load("x: 1e-5") == {"x": "1e-5"}
    cfg = load_text(
        tmp_path,
        """
train: {learning_rate: 3e-5, weight_decay: 1e-2}
search_space:
  learning_rate: {type: float, low: 1e-5, high: 1e-1, log: true}
  warmup_ratio: 1e-1
  dropout: {type: categorical, choices: [1e-1, 2e-1]}
""",
    )
    assert cfg.train.learning_rate == 3e-5 and cfg.train.weight_decay == 0.01
    # The stored space holds numbers, not the strings YAML produced.
    assert cfg.search_space["learning_rate"] == {"type": "float", "low": 1e-5, "high": 0.1, "log": True}
    assert cfg.search_space["warmup_ratio"] == 0.1
    assert cfg.search_space["dropout"] == {"type": "categorical", "choices": [0.1, 0.2]}


def test_search_space_is_stored_in_canonical_form(tmp_path):
    explicit = load_text(
        tmp_path, "search_space: {learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: false}}"
    )
    implicit = load_text(tmp_path, "search_space: {learning_rate: {type: float, low: 0.0001, high: 0.01}}")
    assert explicit.search_space == implicit.search_space


@pytest.mark.parametrize(
    "items,expected",
    [
        (["train.n_epochs=2"], {"train": {"n_epochs": 2}}),
        (["study.sampler=random", "study.seed=7"], {"study": {"sampler": "random", "seed": 7}}),
        (["search_space.batch_size=[8, 16]"], {"search_space": {"batch_size": [8, 16]}}),
        (["data.subset="], {"data": {"subset": None}}),
        (["model.name=a=b"], {"model": {"name": "a=b"}}),
    ],
)
def test_parse_set_reads_values_as_yaml(items, expected):
    assert parse_set(items) == expected


@pytest.mark.parametrize(
    "item,words",
    [
        ("n_epochs=2", ["expected section.key=value"]),
        ("train.n_epochs", ["expected section.key=value"]),
        ("trian.n_epochs=2", ["unknown section 'trian'", "did you mean 'train'"]),
        ("train.n_epochs=[1", ["not valid YAML"]),
    ],
)
def test_bad_set_item_is_a_config_error(item, words):
    with pytest.raises(ConfigError) as info:
        parse_set([item])
    for word in words:
        assert word in str(info.value)


def test_set_overrides_the_file_and_flags_override_set(tmp_path):
    path = write(tmp_path, "study: {n_trials: 5, sampler: random}\ntrain: {n_epochs: 4}")
    cfg = load_config(
        path,
        overrides={"n_trials": 9, "sampler": None},
        sets=["study.n_trials=7", "train.n_epochs=2", "study.sampler=qmc"],
    )
    assert cfg.study.n_trials == 9  # flag > --set
    assert cfg.study.sampler == "qmc"  # --set > file; a flag left out (None) changes nothing
    assert cfg.train.n_epochs == 2


def test_set_edits_one_key_of_a_searched_range(tmp_path):
    cfg = load_text(tmp_path, "", sets=["search_space.learning_rate.high=1e-2", "search_space.dropout=0.2"])
    assert cfg.search_space["learning_rate"] == {"type": "float", "low": 1e-5, "high": 0.01, "log": True}
    assert cfg.search_space["dropout"] == 0.2
    with pytest.raises(ConfigError, match="not a searched range"):
        load_text(tmp_path, "", sets=["search_space.dropout.high=0.2"])


def test_a_bad_part_of_a_set_search_space_entry_names_the_set(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set search_space.lr_scheduler.choices: expected a string"):
        load_text(tmp_path, "", sets=["search_space.lr_scheduler={type: categorical, choices: [true]}"])


def test_pause_and_early_eval_go_with_the_pruners_that_use_them(tmp_path):
    for sets in (
        ["study.pause_at_rungs=true", "train.early_eval=0.25"],
        ["study.pruner=median", "train.early_eval=0.25"],
        ["study.pruner=percentile", "train.early_eval=0.25"],
        ["study.pruner=hyperband", "study.pause_at_rungs=false"],
        ["study.sampler=cmaes"],  # learning_rate is a range, batch_size drawn at random (search says so)
    ):
        load_text(tmp_path, "", sets=sets)
    with pytest.raises(ConfigError, match=r"^--pruner \(study.pruner\)|^--set study.pause_at_rungs"):
        load_text(tmp_path, "", sets=["study.pause_at_rungs=true"], overrides={"pruner": "median"})


def test_successive_halving_pauses_by_default_and_other_pruners_need_no_setting(tmp_path):
    """Pausing at rungs is the default since 2026-12-07 (BENCHMARKS.md): left out, successive halving pauses and
    another pruner is not refused for it; false is the rule that decides at once."""
    from hpsearch.study import make_pruner

    assert make_pruner(load_text(tmp_path, "")).pauses
    assert not make_pruner(load_text(tmp_path, "", sets=["study.pause_at_rungs=false"])).pauses
    for pruner in ("median", "percentile", "hyperband", "none"):
        assert not getattr(
            make_pruner(load_text(tmp_path, "", overrides={"pruner": pruner})), "pauses", False
        )


def test_set_typo_in_key_gets_did_you_mean(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'n_epoch' in train; did you mean 'n_epochs'"):
        load_text(tmp_path, "", sets=["train.n_epoch=2"])


@pytest.mark.parametrize(
    "flag,set_item,file,env,expected",
    [
        (
            "sqlite:///flag.db",
            "sqlite:///set.db",
            "sqlite:///file.db",
            "sqlite:///env.db",
            "sqlite:///flag.db",
        ),
        (None, "sqlite:///set.db", "sqlite:///file.db", "sqlite:///env.db", "sqlite:///set.db"),
        (None, None, "sqlite:///file.db", "sqlite:///env.db", "sqlite:///file.db"),
        (None, None, None, "sqlite:///env.db", "sqlite:///env.db"),
        (None, None, None, None, "sqlite:///studies/named.db"),
    ],
    ids=["flag", "set", "file", "env", "default"],
)
def test_storage_precedence(tmp_path, monkeypatch, flag, set_item, file, env, expected):
    if env:
        monkeypatch.setenv(STORAGE_ENV, env)
    else:
        monkeypatch.delenv(STORAGE_ENV, raising=False)
    study = {"name": "named", **({"storage": file} if file else {})}
    cfg = load_mapping(
        tmp_path,
        {"study": study},
        overrides={"storage": flag},
        sets=[f"study.storage={set_item}"] if set_item else [],
    )
    assert cfg.study.storage == expected


def test_study_name_flag_names_the_default_store(tmp_path):
    cfg = load_text(tmp_path, "study: {name: a}", overrides={"name": "b"})
    assert (cfg.study.name, cfg.study.storage) == ("b", "sqlite:///studies/b.db")


@pytest.mark.parametrize(
    "url,masked",
    [
        ("postgresql+psycopg://hp:s3cret@db:5432/hpsearch", "postgresql+psycopg://hp:***@db:5432/hpsearch"),
        ("postgresql://hp:p@ss:w0rd@db/x", "postgresql://hp:***@db/x"),
        ("postgresql://hp@db/x", "postgresql://hp@db/x"),
        ("sqlite:///studies/a.db", "sqlite:///studies/a.db"),
        (None, None),
    ],
)
def test_mask_password(url, masked):
    assert mask_password(url) == masked


def test_stored_config_masks_the_storage_password(tmp_path):
    cfg = load_text(tmp_path, "", overrides={"storage": "postgresql+psycopg://hp:s3cret@db/hpsearch"})
    assert cfg.study.storage.endswith("hp:s3cret@db/hpsearch")  # the real URL is still used to connect
    stored = cfg.to_dict()
    assert stored["study"]["storage"] == "postgresql+psycopg://hp:***@db/hpsearch"
    assert "s3cret" not in repr(stored)


def test_config_round_trips_through_its_stored_form(tmp_path):
    cfg = load_text(
        tmp_path, "train: {n_epochs: 2}\nsearch_space: {dropout: {type: float, low: 0.0, high: 0.3}}"
    )
    again = config_from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found; pass a YAML file"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "study:\n  name: a\ntrain: {n_epochs: 2\nmodel: {name: tiny}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: line ")
    assert "not valid YAML" in str(info.value) and "\n" not in str(info.value)
    tab = write(tmp_path, "study:\n\tname: a\n", "tab.yaml")
    with pytest.raises(ConfigError, match=r"tab\.yaml: line 2: not valid YAML"):
        load_config(tab)


def test_binary_file_is_a_config_error(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x80\x81\xff\x00")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(path)


def test_choice_values_are_case_insensitive():
    cfg = load_config(None, overrides={"sampler": "TPE", "pruner": "Hyperband"}, sets=["train.device=CPU"])
    assert (cfg.study.sampler, cfg.study.pruner, cfg.train.device) == ("tpe", "hyperband", "cpu")
