"""Search-space spec -> ``suggest(trial, space)`` -> dict of hyperparameters.

Each entry of ``search_space`` is either searched::

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
    batch_size:    {type: categorical, choices: [8, 16, 32, 64]}
    warmup_ratio:  {type: float, low: 0.0, high: 0.2, step: 0.05}

or fixed, as a plain value (``weight_decay: 0.01``). Names are the training arguments they set; they become
database rows and dashboard labels, so never rename one inside an existing study.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import optuna

from hpsearch.config import HYPERPARAMETERS, check_hyperparameter, did_you_mean
from hpsearch.errors import ConfigError

SPEC_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter."""

    name: str
    type: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, list(self.choices))

    def to_dict(self) -> dict[str, Any]:
        """The spec in canonical form (numbers as numbers, defaults left out), as stored on the study."""
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        spec: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec

    def grid_values(self, source: str = "<config>") -> list[Any]:
        """Every value a grid search visits; floats need a step (a log range has no finite grid)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.step is None and self.type == "float":
            raise ConfigError(
                f"{source}: search_space.{self.name}: the grid sampler needs finite values, got a continuous"
                f"{' log' if self.log else ''} range [{self.low:g}, {self.high:g}];"
                " give `step` or use `type: categorical` with choices"
            )
        step = self.step or 1
        n = int(round((self.high - self.low) / step)) + 1
        # Rounded: 0.1 * 3 is 0.30000000000000004, which would be a grid value no one wrote.
        values = [self.low + i * step for i in range(n)]
        if self.type == "float":
            values = [round(v, 12) for v in values]
        return [v for v in values if v <= self.high]


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fixed: dict[str, Any]
    source: str = "<config>"  # the config file, for messages

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def grid(self) -> dict[str, list[Any]]:
        return {p.name: p.grid_values(self.source) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        """The whole space in canonical form: ``parse_space(space.to_dict())`` gives the same space."""
        return {**{p.name: p.to_dict() for p in self.params}, **self.fixed}

    def grid_size(self) -> int:
        size = 1
        for values in self.grid().values():
            size *= len(values)
        return size


def _number(where: str, value: Any, kind: str) -> float | int:
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads `1e-5` as a string
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if kind == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    return float(value)


def _parse_param(where: str, name: str, spec: dict[str, Any]) -> Param:
    kind = spec.get("type")
    if kind not in SPEC_KEYS:
        raise ConfigError(
            f"{where}: type must be float, int or categorical, got {kind!r}{did_you_mean(str(kind), SPEC_KEYS)}"
            if kind is not None
            else f"{where}: missing `type` (float, int or categorical); a plain value fixes the hyperparameter"
        )
    for key in spec:
        if key not in SPEC_KEYS[kind]:
            raise ConfigError(
                f"{where}: unknown key '{key}' for type {kind}{did_you_mean(str(key), SPEC_KEYS[kind])}"
            )
    wanted = HYPERPARAMETERS[name][0]
    if kind != "categorical" and wanted is not float and not (wanted is int and kind == "int"):
        allowed = "int or categorical" if wanted is int else "categorical"
        raise ConfigError(
            f"{where}: {name} takes {wanted.__name__} values, so type must be {allowed}, got {kind}"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
        checked = tuple(check_hyperparameter(f"{where}.choices", name, c) for c in choices)
        if len(set(map(repr, checked))) != len(checked):  # after coercion: 0.001 and `1e-3` are one value
            raise ConfigError(f"{where}: choices must not repeat, got {choices!r}")
        return Param(name, "categorical", choices=checked)
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}: missing `{key}` for type {kind}")
    low, high = _number(f"{where}.low", spec["low"], kind), _number(f"{where}.high", spec["high"], kind)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, kind)
        if step <= 0:
            raise ConfigError(f"{where}.step: must be > 0, got {step}")
        if log:
            raise ConfigError(f"{where}: use either log or step, not both (got log=true, step={step})")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}: low and high must be finite numbers, got low={low}, high={high}")
    if low >= high:
        raise ConfigError(f"{where}: low must be < high, got low={low}, high={high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got low={low}")
    if step is not None and (Decimal(str(high)) - Decimal(str(low))) % Decimal(str(step)) != 0:
        # Optuna would quietly move `high` (with a warning); say so before any trial runs.
        raise ConfigError(
            f"{where}: high - low must be a multiple of step, got low={low}, high={high}, step={step}"
        )
    check_hyperparameter(f"{where}.low", name, low)
    check_hyperparameter(f"{where}.high", name, high)
    return Param(name, kind, low=low, high=high, log=log, step=step)


def parse_space(raw: dict[str, Any], source: str = "<config>") -> SearchSpace:
    """Validate a ``search_space`` mapping and split it into searched params and fixed values."""
    params, fixed = [], {}
    for name, spec in raw.items():
        where = f"{source}: search_space.{name}"
        if name not in HYPERPARAMETERS:
            raise ConfigError(
                f"{source}: unknown key '{name}' in search_space{did_you_mean(str(name), HYPERPARAMETERS)}"
            )
        if isinstance(spec, dict):
            params.append(_parse_param(where, name, spec))
        else:
            fixed[name] = check_hyperparameter(where, name, spec)
    return SearchSpace(tuple(params), fixed, source)


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for every searched hyperparameter; fixed values pass through unchanged."""
    values = dict(space.fixed)
    for param in space.params:
        values[param.name] = param.suggest(trial)
    return values
