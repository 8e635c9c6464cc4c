"""Typed, frozen study configuration, loaded from YAML plus command-line overrides.

A config file has five sections, all optional::

    study:        {name, storage, n_trials, timeout, sampler, pruner, seed, ...}
    model:        {name, max_length}
    data:         {name | train_file, text_column, label_column, ...}
    train:        {n_epochs, device, precision, learning_rate, batch_size, ...}
    search_space: {learning_rate: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}, batch_size: 32, ...}

Every mistake raises :class:`~hpsearch.errors.ConfigError` with the place, the value received, what is allowed
and, for a typo, the likely key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpsearch.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc")
PRUNERS = ("successive-halving", "hyperband", "median", "percentile", "none")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LR_SCHEDULERS = ("linear", "cosine", "constant")
BUILTIN_DATASETS = ("demo",)
STORAGE_ENV = "HPSEARCH_STORAGE"


@dataclass(frozen=True)
class StudySection:
    name: str = "hpsearch"  # study name; defaults to the config file's stem
    storage: str | None = (
        None  # SQLAlchemy URL or journal file; None: $HPSEARCH_STORAGE, else studies/<name>.db
    )
    n_trials: int = 20  # total finished (complete + pruned) trials for the whole study, all workers together
    timeout: float | None = None  # seconds this invocation may search before it stops starting trials
    # epochs all trials may train together, all workers (a device-hours budget); no trial starts past it
    epoch_budget: float | None = None
    sampler: str = "tpe"  # tpe | random | grid | cmaes | gp | qmc
    pruner: str = "successive-halving"  # successive-halving (ASHA) | hyperband | median | percentile | none
    reduction_factor: int = 3  # successive halving / hyperband: a third of a rung's trials go on to the next
    # successive halving: true (what null, the default, means there): a trial not (yet) in the best third at a
    # rung pauses there (checkpointed) and is continued once enough trials have reached the rung to rank it
    # (trials no better than a constant answer: up to reduction_factor go on past the first rung while no
    # trial has beaten it, and at later rungs they wait until the budget is met); false: decided at once, the
    # first ones at a rung going on unopposed (Optuna's rule, the default until 2026-12-07). Evidence:
    # BENCHMARKS.md
    pause_at_rungs: bool | None = None
    seed: int | None = 0  # sampler seed; each extra worker adds its index so workers do not repeat each other
    heartbeat_interval: int = 30  # seconds between a running trial's heartbeats on an RDB store
    grace_period: int | None = None  # seconds without heartbeat before a trial is stale; None: 2 * interval
    max_retries: int = 3  # times a trial whose worker died is re-queued with the same hyperparameters
    # seconds a worker waits for a database server that is away (a restart, a fail-over), at start and mid-run;
    # None: 120 s mid-run, and at start only for a server that answers it is starting up or shutting down
    store_wait: int | None = None
    n_startup_trials: int = 5  # sampler warm-up trials (random) and median/percentile pruner warm-up

    @property
    def grace_seconds(self) -> int:
        """The grace period in force: ``grace_period``, or two heartbeat intervals."""
        return self.grace_period or 2 * self.heartbeat_interval

    @property
    def pauses_at_rungs(self) -> bool:
        """The rung rule in force: successive halving pauses trials at its rungs unless ``pause_at_rungs`` is
        false (left out, it is true); no other pruner pauses."""
        return self.pruner == "successive-halving" and self.pause_at_rungs is not False


@dataclass(frozen=True)
class ModelSection:
    name: str = "tiny"  # `tiny` (built-in, offline), a hub id or a local folder with a saved model
    max_length: int = 128  # tokens per example, longer texts are truncated
    revision: str | None = None  # hub revision (branch, tag or commit) for reproducible downloads


@dataclass(frozen=True)
class DataSection:
    name: str | None = (
        "demo"  # `demo` (built-in, offline) or a hub data set (e.g. `glue`); None with train_file
    )
    subset: str | None = None  # hub configuration, e.g. `sst2`
    train_split: str = "train"
    validation_split: str | None = "validation"  # None or missing: carved from train with the seed
    train_file: str | None = None  # local csv, tsv, json, jsonl or parquet
    validation_file: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None  # second text for pair tasks (NLI, paraphrase)
    label_column: str = "label"
    validation_fraction: float = 0.1  # share of train carved out when there is no validation split
    max_train_samples: int | None = None  # first N training rows (after a seeded shuffle), for quick runs
    max_validation_samples: int | None = None
    demo_size: int = 3000  # examples in the built-in demo data set


@dataclass(frozen=True)
class TrainSection:
    n_epochs: int = 3  # maximum epochs per trial; pruners use epochs as the resource
    device: str = "auto"  # auto: cuda when present, else cpu
    precision: str = (
        "auto"  # auto: bf16 on GPUs that support it, fp16 (with scaler) on older GPUs, fp32 on cpu
    )
    learning_rate: float = 5.0e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    dropout: float = 0.1
    seed: int = 0  # model initialisation and data order of each trial
    lr_scheduler: str = "linear"  # linear | cosine | constant
    max_grad_norm: float = 1.0
    eval_batch_size: int = 128
    group_by_length: bool = True  # batches of similar length: less padding, same statistics
    divergence_stop: bool = (
        True  # stop a trial whose loss turns NaN, explodes or is worse than chance; false: record
    )
    checkpoint_dir: str = "checkpoints"  # per-epoch checkpoints for resuming trials; share it across nodes
    save_best: bool = (
        True  # accepted for configs of earlier versions: the best trial's checkpoint is always kept
    )
    early_eval: float | None = None  # also validate after this share of epoch 1 (step 0), for the pruner


# Hyperparameters a trial may set, and the checks their values must pass.
HYPERPARAMETERS: dict[str, tuple[type, Any]] = {
    "learning_rate": (float, lambda v: v > 0 or "must be > 0"),
    "batch_size": (int, lambda v: v >= 1 or "must be >= 1"),
    "weight_decay": (float, lambda v: v >= 0 or "must be >= 0"),
    "warmup_ratio": (float, lambda v: 0 <= v <= 1 or "must be in [0, 1]"),
    "dropout": (float, lambda v: 0 <= v < 1 or "must be in [0, 1)"),
    "seed": (int, lambda v: v >= 0 or "must be >= 0"),
    "lr_scheduler": (str, lambda v: v in LR_SCHEDULERS or f"must be one of {', '.join(LR_SCHEDULERS)}"),
    "max_grad_norm": (float, lambda v: v > 0 or "must be > 0"),
}

DEFAULT_SEARCH_SPACE: dict[str, Any] = {
    "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
}

SECTIONS = {"study": StudySection, "model": ModelSection, "data": DataSection, "train": TrainSection}


@dataclass(frozen=True)
class Config:
    study: StudySection = field(default_factory=StudySection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    search_space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SEARCH_SPACE))
    source: str = "<defaults>"  # where the config came from, for messages
    # keys a flag set rather than the file ("train.n_epochs": "--set", "study.seed": "--seed"), for messages
    origins: dict[str, str] = field(default_factory=dict, compare=False)

    def named(self, key: str) -> str:
        """How a message names ``key`` (``section.key``): the flag that set it, else the config file."""
        flag = self.origins.get(key)
        if flag == "--set":
            return f"--set {key}"
        return f"{flag} ({key})" if flag else f"{self.source}: {key}"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data, as stored on the study (storage password masked)."""
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out["study"]["storage"] = mask_password(out["study"]["storage"])
        out["search_space"] = dict(self.search_space)
        return out


def sqlite_url(path: str | Path) -> str:
    """The SQLite URL of a file: SQLAlchemy decodes ``%XX`` in it and reads ``?`` as the start of options, so a
    file (or study) name holding either is escaped, to open that very file."""
    return "sqlite:///" + str(Path(path).as_posix()).replace("%", "%25").replace("?", "%3F")


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(sorted(options))}"


def mask_password(url: str | None) -> str | None:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; a password in the query
    (``?password=secret``, which libpq and SQLAlchemy accept) becomes ``?password=***``."""
    if url:
        url = re.sub(r"([?&](?:password|passwd|pwd)=)[^&#]*", r"\1***", url, flags=re.IGNORECASE)
    if not url or "@" not in url:
        return url
    if "://" not in url:  # a malformed URL may still hold a password: hide what lies between ':' and '@'
        return re.sub(r"(:[^:@/]*/*[^:@/]*):[^@]*@", r"\1:***@", url)
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Check one value against a field's annotation; accept `1e-5` (a string to YAML 1.1) as a float."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build_section(source: str, name: str, raw: Any) -> Any:
    cls = SECTIONS[name]
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {name}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown key '{key}' in {name}{did_you_mean(str(key), known)}")
        values[key] = _coerce(f"{source}: {name}.{key}", value, hints[key])
    return cls(**values)


def _check_choice(where: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        hint = did_you_mean(str(value), allowed)
        if "allowed" not in hint:  # a short list: name them all, the guess may be wrong
            hint += f" (allowed: {', '.join(allowed)})"
        raise ConfigError(f"{where}: unknown value {value!r}{hint}")


def _validate(cfg: Config) -> dict[str, Any]:
    """Check every cross-key rule; returns the search space in canonical form."""
    src, s, m, d, t = cfg.source, cfg.study, cfg.model, cfg.data, cfg.train
    _check_choice(f"{src}: study.sampler", s.sampler, SAMPLERS)
    _check_choice(f"{src}: study.pruner", s.pruner, PRUNERS)
    if re.fullmatch(r"cuda:\d+", t.device):  # a worker trains on one GPU: the first it sees
        n = t.device.split(":")[1]
        raise ConfigError(
            f"{src}: train.device: {t.device!r}: a worker uses the first GPU it sees; give `device: cuda` and"
            f" pick GPU {n} with CUDA_VISIBLE_DEVICES={n}, or `hpsearch search --gpus {n}`"
        )
    _check_choice(f"{src}: train.device", t.device, DEVICES)
    _check_choice(f"{src}: train.precision", t.precision, PRECISIONS)
    positive = {
        "study.n_trials": s.n_trials,
        "study.heartbeat_interval": s.heartbeat_interval,
        "model.max_length": m.max_length,
        "data.demo_size": d.demo_size,
        "train.n_epochs": t.n_epochs,
        "train.eval_batch_size": t.eval_batch_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{src}: {key}: must be >= 1, got {value}")
    for key, value in {
        "study.timeout": s.timeout,
        "study.epoch_budget": s.epoch_budget,
        "study.grace_period": s.grace_period,
        "data.max_train_samples": d.max_train_samples,
        "data.max_validation_samples": d.max_validation_samples,
    }.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{src}: {key}: must be > 0 (or left out), got {value}")
    if s.reduction_factor < 2:
        raise ConfigError(
            f"{src}: study.reduction_factor must be >= 2 (got {s.reduction_factor}); 3 keeps a third per rung"
        )
    if s.max_retries < 0 or s.n_startup_trials < 0:
        raise ConfigError(f"{src}: study.max_retries and study.n_startup_trials must be >= 0")
    if s.store_wait is not None and s.store_wait < 0:
        raise ConfigError(f"{src}: study.store_wait: must be >= 0 (0: do not wait), got {s.store_wait}")
    if not s.name.strip():
        raise ConfigError(f"{src}: study.name: must not be empty")
    if "/" in s.name or "\\" in s.name or s.name.strip() in (".", ".."):
        # the name is a file name under studies/ and checkpoints/: a path would write elsewhere
        raise ConfigError(
            f"{src}: study.name: {s.name!r} has path parts; use a plain name such as"
            f" {s.name.replace('/', '-').replace(chr(92), '-').strip('.-') or 'my-study'!r}"
            " (put the store elsewhere with --storage)"
        )
    if s.seed is not None and not 0 <= s.seed < 2**32:
        raise ConfigError(
            f"{src}: study.seed: must be in 0..4294967295 (or null for a random seed), got {s.seed}"
        )
    if t.early_eval is not None and not 0 < t.early_eval < 1:
        raise ConfigError(
            f"{src}: train.early_eval: the share of epoch 1 after which to validate early must be in (0, 1),"
            f" e.g. 0.25; got {t.early_eval} (leave it out for no early evaluation)"
        )
    if s.pause_at_rungs and s.pruner != "successive-halving":
        raise ConfigError(
            f"{src}: study.pause_at_rungs: true pauses trials at successive halving's rungs, but study.pruner"
            f" is {s.pruner!r}, which would ignore it; use `pruner: successive-halving` or leave pause_at_rungs out"
        )
    if t.early_eval is not None and s.pruner in ("none", "hyperband"):
        why = (
            "prunes nothing, so it would only cost a validation"
            if s.pruner == "none"
            else "starts its rungs at epoch 1 and never prunes there"
        )
        raise ConfigError(
            f"{src}: train.early_eval: {t.early_eval} validates part-way through epoch 1 for the pruner, but"
            f" study.pruner {s.pruner!r} {why}; use successive-halving, median or percentile, or leave"
            " early_eval out"
        )
    if not 0 < d.validation_fraction < 1:
        raise ConfigError(f"{src}: data.validation_fraction: must be in (0, 1), got {d.validation_fraction}")
    if d.train_file and d.name:
        raise ConfigError(
            f"{src}: data: give either data.name ({d.name!r}) or data.train_file ({d.train_file!r}), not both;"
            " set `name: null` to use local files"
        )
    if not d.train_file and not d.name:
        raise ConfigError(f"{src}: data: give data.name (`demo` or a hub data set) or data.train_file")
    if d.validation_file and not d.train_file:
        raise ConfigError(f"{src}: data.validation_file needs data.train_file")
    for key in HYPERPARAMETERS:
        check_hyperparameter(f"{src}: train.{key}", key, getattr(t, key))
    from hpsearch.space import parse_space  # the space module owns the search-space rules

    space = parse_space(cfg.search_space, source=src)
    if s.sampler == "grid":
        space.grid()  # a continuous range has no grid: say so now, not after the data loaded
    if s.sampler == "cmaes" and all(p.type == "categorical" for p in space.params):
        # Optuna's CMA-ES draws categorical parameters at random: with no range it would be a random search
        names = ", ".join(p.name for p in space.params) or "nothing"
        raise ConfigError(
            f"{src}: study.sampler: cmaes models float and int ranges only, and search_space searches"
            f" {names} (categorical), which CMA-ES would draw at random; use tpe, gp or random, or search a range"
        )
    return space.to_dict()


def check_writable(path: str | Path, what: str, folder: bool = False) -> None:
    """Refuse before any work a path that cannot be written: a file (with ``folder``, a folder) at ``path``,
    made if missing under the nearest existing folder, which this user must be able to write."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a file; give a folder" if folder else f"a folder; give a file name, e.g. {path / 'out'}"
        raise ConfigError(f"{what} {path}: is {kind}")
    existing = (path if folder else path.parent).resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a folder; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot write under {existing}; give a folder you can write")


def check_hyperparameter(where: str, name: str, value: Any) -> Any:
    """Coerce and range-check one hyperparameter value; returns the coerced value."""
    kind, rule = HYPERPARAMETERS[name]
    value = _coerce(where, value, kind)
    verdict = rule(value)
    if verdict is not True:
        raise ConfigError(f"{where}: {verdict}, got {value!r}")
    return value


def parse_set(items: typing.Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["train.n_epochs=2", "search_space.batch_size=16"]`` -> nested overrides, values parsed as YAML."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.n_epochs=2")
        allowed = [*SECTIONS, "search_space"]
        if section not in allowed:
            raise ConfigError(f"--set {item!r}: unknown section '{section}'{did_you_mean(section, allowed)}")
        try:
            value = yaml.load(text, Loader=_UniqueKeyLoader) if text.strip() else None  # noqa: S506
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc.problem})") from None
        out.setdefault(section, {})[name] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (YAML keeps the last one, silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: explicit keys may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (the first would be ignored)",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found; pass a YAML file such as studies/demo.yaml")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections study, model, data, train, search_space")
    return raw


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: typing.Iterable[str] = (),
) -> Config:
    """Read a config file, apply ``--set`` items and then the explicit flags in ``overrides``.

    ``overrides`` maps study keys (``storage``, ``n_trials``, ...) to values; None values are ignored.
    The storage falls back to ``$HPSEARCH_STORAGE`` and then to ``sqlite:///studies/<name>.db``.
    """
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    allowed = [*SECTIONS, "search_space"]
    for section in raw:
        if section not in allowed:
            raise ConfigError(f"{source}: unknown section '{section}'{did_you_mean(str(section), allowed)}")
    merged: dict[str, Any] = {
        name: dict(raw.get(name) or {}) if isinstance(raw.get(name), dict) else raw.get(name)
        for name in allowed
    }
    for section, values in parse_set(sets).items():
        if merged.get(section) is None:
            merged[section] = {}
        if not isinstance(merged[section], dict):
            raise ConfigError(f"{source}: {section}: expected a mapping of keys, got {merged[section]!r}")
        for key, value in values.items():
            name, dot, spec_key = key.partition(".")
            if section == "search_space" and dot:  # --set search_space.learning_rate.high=1e-2
                spec = merged[section].get(name, DEFAULT_SEARCH_SPACE.get(name))
                if not isinstance(spec, dict):
                    raise ConfigError(
                        f"--set search_space.{key}: search_space.{name} is not a searched range"
                        f" ({spec!r}); set the whole spec, e.g. --set 'search_space.{name}="
                        "{type: float, low: 0.0, high: 0.1}'"
                    )
                merged[section][name] = {**spec, spec_key: value}
            else:
                merged[section][key] = value
    if merged["study"] is None:
        merged["study"] = {}
    if isinstance(merged["study"], dict):
        merged["study"].update({k: v for k, v in (overrides or {}).items() if v is not None})
        if "name" not in merged["study"] and path is not None:
            merged["study"]["name"] = Path(path).stem
    for section, key in (
        ("study", "sampler"),
        ("study", "pruner"),
        ("train", "device"),
        ("train", "precision"),
    ):
        values = merged.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str):
            values[key] = values[key].lower()  # `--sampler TPE` means tpe
    data = merged["data"]
    if isinstance(data, dict) and data.get("train_file") and "name" not in data:
        data["name"] = None  # local files given: the default data set (`demo`) does not apply
    # where a key's value came from, for the error message: --set, then the flags, which win over it
    origins = {
        f"{sec}.{key.partition('.')[0]}": "--set" for sec, values in parse_set(sets).items() for key in values
    }
    origins.update({f"study.{k}": _flag(k) for k, v in (overrides or {}).items() if v is not None})
    try:
        sections = {name: _build_section(source, name, merged[name]) for name in SECTIONS}
        space_raw = merged["search_space"]
        if space_raw is not None and not isinstance(space_raw, dict):
            raise ConfigError(
                f"{source}: search_space: expected a mapping of hyperparameters, got {space_raw!r}"
            )
        space = {**DEFAULT_SEARCH_SPACE, **(space_raw or {})}
        study = sections["study"]
        if study.storage is None:
            storage = os.environ.get(STORAGE_ENV) or sqlite_url(f"studies/{study.name}.db")
            sections["study"] = dataclasses.replace(study, storage=storage)
        cfg = Config(**sections, search_space=space, source=source, origins=origins)
        # `1e-5` (a string to YAML 1.1) is stored as the number it means, so resumed studies compare equal.
        return dataclasses.replace(cfg, search_space=_validate(cfg))
    except ConfigError as e:
        raise ConfigError(_blame_flag(str(e), source, origins)) from None


def _flag(key: str) -> str:
    """The `search` flag that overrides ``study.<key>``."""
    return "--study-name" if key == "name" else "--" + key.replace("_", "-")


def _blame_flag(message: str, source: str, origins: dict[str, str]) -> str:
    """A message about a key that a flag set names that flag, not the config file it did not come from:
    ``studies/demo.yaml: study.seed: ...`` -> ``--seed (study.seed): ...``."""
    for key, flag in origins.items():
        section, _, name = key.partition(".")
        if message.startswith(f"{source}: unknown key '{name}' in {section}"):
            return f"{flag} {key}: " + message[len(f"{source}: ") :]
        for sep in (":", " ", "."):  # `.`: a part of a search_space entry, e.g. search_space.seed.low
            if message.startswith(f"{source}: {key}{sep}"):
                named = f"--set {key}" if flag == "--set" else f"{flag} ({key})"
                return named + message[len(f"{source}: {key}") :]
    return message


def config_from_dict(data: dict[str, Any], source: str = "<study>") -> Config:
    """Rebuild a Config from :meth:`Config.to_dict` output (e.g. the copy stored on a study)."""
    sections = {name: _build_section(source, name, data.get(name)) for name in SECTIONS}
    return Config(
        **sections, search_space=dict(data.get("search_space") or DEFAULT_SEARCH_SPACE), source=source
    )
