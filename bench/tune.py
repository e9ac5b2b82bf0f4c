"""Tuning as part of the protocol: every configuration gets the same budget of trials.

``--tune lr=1e-4:1e-1:log --trials 8``: a *configuration* here is a cell without its seed and without
the tuned keys. For each one, Optuna samples ``trials`` values of the tuned keys (quasi-random Sobol
points by default, ``--sampler tpe`` for TPE; the sampler is seeded, so the same command gives the
same trials). Each trial is an ordinary cell (its sampled values are part of its identity) trained on
the first seed and scored on the *validation* split (``val_acc``, or ``val_loss`` minimised). Then the
best trial's values are trained with every seed: those ``final`` rows are the configuration's result.
The test split is never used to choose.

Optuna's storage is a SQLite database in the run directory (``tuning.db``, one Optuna study per
configuration), so an interrupted tuning run resumes: finished trials are kept, a trial whose cell
finished but was not yet told is told from its record, a trial that was running is retried with the
same values, and the final cells run once (they resume like any cell).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import PARAM_KINDS, RECIPE_FIELDS, Cell
from bench.errors import BenchError, OptionError

SAMPLERS = ("qmc", "tpe")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
DB_FILE = "tuning.db"
INT_FIELDS = ("batch_size", "epochs")
NAME_FIELDS = ("optimizer", "schedule")


@dataclass(frozen=True)
class Space:
    """The range of one tuned key: ``low..high`` (``log`` scale), or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    integer: bool = False

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return "|".join(map(str, self.choices))
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")


def parse_space(key: str, spec: Any) -> Space:
    """``"1e-4:1e-1:log"``, ``"adam|sgd"``, ``[adam, sgd]`` or ``{low, high, log}`` for ``key``."""
    where = f"{key}={spec}"
    if isinstance(spec, (list, tuple)):
        if len(spec) < 2:
            raise OptionError("tune", f"{where}: a categorical range needs at least two choices")
        return Space(key, choices=tuple(spec))
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "log"}
        if unknown or not {"low", "high"} <= set(spec):
            raise OptionError("tune", f"{where}: expected {{low, high, log}}")
        spec = f"{spec['low']}:{spec['high']}" + (":log" if spec.get("log") else "")
    if not isinstance(spec, str) or not spec.strip():
        raise OptionError("tune", f"{where}: expected KEY=LOW:HIGH[:log] or KEY=a|b|c")
    if "|" in spec:
        choices = tuple(c.strip() for c in spec.split("|"))
        if len(choices) < 2 or not all(choices):
            raise OptionError("tune", f"{where}: a categorical range needs at least two non-empty choices")
        return Space(key, choices=choices)
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise OptionError("tune", f"{where}: expected KEY=LOW:HIGH or KEY=LOW:HIGH:log")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise OptionError("tune", f"{where}: LOW and HIGH must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
        raise OptionError("tune", f"{where}: needs finite LOW < HIGH")
    log = len(parts) == 3
    if log and low <= 0:
        raise OptionError("tune", f"{where}: a log range needs LOW > 0")
    return Space(key, low, high, log)


def parse_tune_options(specs) -> dict[str, Any]:
    """``["lr=1e-4:1e-1:log", "optimizer=adam|sgd"]`` (the command line) -> ``{"lr": "1e-4:1e-1:log", ...}``."""
    out: dict[str, Any] = {}
    if isinstance(specs, dict):
        return dict(specs)
    for token in [specs] if isinstance(specs, str) else specs or ():
        if "=" not in token:
            raise OptionError("tune", f"{token}: expected KEY=LOW:HIGH[:log] or KEY=a|b|c")
        key, spec = (s.strip() for s in token.split("=", 1))
        if key in out:
            raise OptionError("tune", f"{token}: {key} is tuned twice")
        out[key] = spec
    return out


@dataclass
class Tuning:
    """What a run tunes: the spaces, the trial budget, the sampler and the validation metric."""

    spaces: dict[str, Space]
    trials: int = 8
    sampler: str = "qmc"
    metric: str = "val_acc"

    def __post_init__(self):
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise OptionError("trials", f"must be an integer >= 1, got {self.trials!r}")
        if self.sampler not in SAMPLERS:
            raise OptionError("sampler", f"must be one of {', '.join(SAMPLERS)}, got '{self.sampler}'")
        if self.metric not in METRICS:
            raise OptionError("tune_metric", f"must be one of {', '.join(METRICS)}, got '{self.metric}'")


def check_spaces(tuning: Tuning, registry, cells: list[Cell]) -> dict[str, Space]:
    """Each tuned key is a recipe field or a NAME.KEY parameter of a component some cell uses; typed."""
    out = {}
    used = {kind: {c.component(kind) for c in cells} for kind in PARAM_KINDS}
    for key, space in tuning.spaces.items():
        if key in RECIPE_FIELDS:
            if key in NAME_FIELDS:
                if space.choices is None:
                    raise OptionError("tune", f"{key}={space.describe()}: {key} takes names: use {key}=a|b")
                for name in space.choices:
                    registry.get(key, name)
            elif key in INT_FIELDS:
                space = dataclasses.replace(space, integer=True) if space.choices is None else space
            out[key] = space
            continue
        if "." not in key:
            raise OptionError("tune", f"{key}: not a recipe key ({', '.join(RECIPE_FIELDS)}) nor a NAME.KEY "
                                      "parameter")
        name, param = key.split(".", 1)
        kinds = [k for k in PARAM_KINDS if name in used[k]]
        if not kinds:
            raise OptionError("tune", f"{key}: '{name}' is not part of this grid")
        default = registry.get(kinds[0], name).params.get(param, _MISSING)
        if default is _MISSING:
            raise OptionError("tune", f"{key}: {kinds[0]} '{name}' has no parameter '{param}'")
        if isinstance(default, int) and not isinstance(default, bool) and space.choices is None:
            space = dataclasses.replace(space, integer=True)
        out[key] = space
    return out


_MISSING = object()


def tuned_group(cell: Cell, keys: list[str]) -> str:
    """The id of a cell's tuned configuration: its configuration without the tuned keys."""
    config = cell.config()
    for key in keys:
        if key in RECIPE_FIELDS:
            config.pop(key)
        else:
            config["params"] = {k: v for k, v in config["params"].items() if k != key}
    blob = json.dumps({"config": config, "tuned": sorted(keys)}, sort_keys=True)
    return "+".join(sorted(keys)) + "@" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def tuned_keys(tuning: str) -> list[str]:
    """The keys a ``tuning`` id (``lr+adam.beta2@1a2b3c4d5e6f``) says were tuned."""
    return tuning.split("@", 1)[0].split("+") if isinstance(tuning, str) and "@" in tuning else []


def with_values(cell: Cell, values: dict[str, Any], **fields) -> Cell:
    """``cell`` with tuned values set (recipe fields, or parameters of the components it uses)."""
    recipe = dataclasses.replace(cell.recipe, **{k: v for k, v in values.items() if k in RECIPE_FIELDS})
    overrides = {kind: dict(cell.overrides.get(kind, {})) for kind in PARAM_KINDS}
    probe = dataclasses.replace(cell, recipe=recipe)
    for key, value in values.items():
        if key in RECIPE_FIELDS:
            continue
        name, param = key.split(".", 1)
        for kind in PARAM_KINDS:
            if probe.component(kind) == name:
                overrides[kind][param] = value
                break
    return dataclasses.replace(cell, recipe=recipe, overrides=overrides, **fields)


def _optuna():
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _sampler(tuning: Tuning, seed: int):
    optuna = _optuna()
    seed = seed % (2 ** 32)
    if tuning.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.QMCSampler(seed=seed)


def run_tuning(tuning: Tuning, registry, base_cells: list[Cell], seeds: list[int], root: Path,
               train: Callable[[list[Cell]], list[dict[str, Any]]], records: Callable[[], dict[str, dict]],
               batch_size: int = 0) -> list[Cell]:
    """Tune every configuration of ``base_cells`` (one cell each, on the first seed), then return the final
    cells (the best values, every seed). ``train(cells)`` trains cells (resuming) and returns their rows;
    ``records()`` gives the rows already in the run directory by cell id."""
    optuna = _optuna()
    keys = list(tuning.spaces)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(root / DB_FILE).resolve()}",
                                         engine_kwargs={"connect_args": {"timeout": 60}})
    groups: dict[str, Cell] = {}
    for cell in base_cells:
        groups.setdefault(tuned_group(cell, keys), cell)
    direction = METRICS[tuning.metric]
    studies = {group: optuna.create_study(study_name=group, storage=storage, direction=direction,
                                          sampler=_sampler(tuning, seeds[0]), load_if_exists=True)
               for group in groups}

    def trial_cell(group: str, trial_number: int, params: dict[str, Any]) -> Cell:
        return with_values(groups[group], params, phase="tune", trial=trial_number, tuning=group)

    def value_of(row: dict[str, Any]) -> float | None:
        try:
            value = float(row.get(tuning.metric))
        except (TypeError, ValueError):
            return None
        return value if row.get("status") == "ok" and math.isfinite(value) else None

    def tell(study, trial_number: int, row: dict[str, Any]) -> None:
        value = value_of(row)
        if value is None:
            study.tell(trial_number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            study._storage.set_trial_user_attr(study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, trial_number), "cell_failed", row.get("error") or row.get("status", "failed"))
        else:
            study.tell(trial_number, value, skip_if_finished=True)

    def counted(study) -> int:
        done = 0
        for t in study.get_trials(deepcopy=False):
            if t.state == optuna.trial.TrialState.COMPLETE or (
                    t.state == optuna.trial.TrialState.FAIL and "cell_failed" in t.user_attrs):
                done += 1
        return done

    # A run killed mid-way leaves trials RUNNING: tell those whose cell finished, retry the others.
    recorded = records()
    for group, study in studies.items():
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            cell = trial_cell(group, t.number, t.params)
            if cell.cell_id in recorded and recorded[cell.cell_id].get("status") in ("ok", "failed"):
                tell(study, t.number, recorded[cell.cell_id])
            else:
                study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})

    while True:
        batch: list[tuple[str, int, Cell]] = []
        for group, study in studies.items():
            missing = tuning.trials - counted(study)
            take = missing if batch_size <= 0 else min(missing, batch_size)
            for _ in range(max(0, take)):
                trial = study.ask()
                params = {key: tuning.spaces[key].suggest(trial) for key in keys}
                batch.append((group, trial.number, trial_cell(group, trial.number, params)))
        if not batch:
            break
        rows = {row["cell_id"]: row for row in train([cell for _, _, cell in batch])}
        for group, number, cell in batch:
            tell(studies[group], number, rows.get(cell.cell_id, {"status": "failed", "error": "no row"}))

    finals = []
    for group, study in studies.items():
        completed = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        if not completed:
            raise BenchError(f"every trial of tuned configuration {groups[group].label} failed: nothing to "
                             "choose (see the tune rows' errors)")
        best = study.best_trial
        for seed in seeds:
            finals.append(with_values(dataclasses.replace(groups[group], seed=seed), best.params, phase="final",
                                      trial=best.number, tuning=group))
    return finals
