"""Tuning as part of the protocol: every configuration gets the same budget of trials.

``--tune lr=1e-4:1e-1:log --trials 8``: a *configuration* here is a cell without its seed and without
the tuned keys. For each one, Optuna samples ``trials`` values of the tuned keys (quasi-random Sobol
points by default, ``--sampler tpe`` for TPE). Each trial is an ordinary cell (its sampled values are
part of its identity) trained on the first seed and scored on the *validation* split (``val_acc``, or
``val_loss`` minimised). Then the best trial's values are trained with every seed: those ``final`` rows
are the configuration's result. The test split is never used to choose.

A trial's values are a function of the seed, the trial's number and (TPE) the trials finished before it
(:class:`TrialSampler`), never of the sampler's state in this process, so the same command gives the
same trials whether or not it was interrupted. A trial whose cell fails is a failed row and an Optuna
``FAIL``; it counts towards the budget and tuning goes on. A configuration whose trials all failed has
no final cells; :func:`run_tuning` names it.

Optuna's storage is a SQLite database in the run directory (``tuning.db``, one Optuna study per
configuration), so an interrupted tuning run resumes: finished trials are kept, a trial whose cell
finished but was not yet told is told from its record, a trial that was running is trained again under
its own number with its own values, and the final cells run once (they resume like any cell).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import PARAM_KINDS, RECIPE_FIELDS, Cell, _params_dict, config_label
from bench.errors import BenchError, OptionError, StopCell
from bench.files import excerpt
from bench.record import CellRecord

SAMPLERS = ("qmc", "tpe")
#: ``--prune``: none, Optuna's MedianPruner (:func:`median_pruner`), successive halving (:func:`halving_pruner`)
#: or Optuna's HyperbandPruner, on the validation metric at each evaluation point of a trial.
PRUNERS = ("none", "median", "asha", "hyperband")
METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
DB_FILE = "tuning.db"
#: The most trials per configuration (``--trials``): each is a training run.
MAX_TRIALS = 1000
#: Trials asked per configuration before they train, at most (asking takes a few database writes each).
ROUND = 64
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
    #: The pruner (:data:`PRUNERS`) and how many of the first seeds score a trial (their mean).
    prune: str = "none"
    tune_seeds: int = 1

    def __post_init__(self):
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or not 1 <= self.trials <= MAX_TRIALS:
            raise OptionError("trials", f"must be an integer from 1 to {MAX_TRIALS}, got {self.trials!r}")
        if self.prune not in PRUNERS:
            raise OptionError("prune", f"must be one of {', '.join(PRUNERS)}, got {excerpt(self.prune)}")
        if isinstance(self.tune_seeds, bool) or not isinstance(self.tune_seeds, int) or self.tune_seeds < 1:
            raise OptionError("tune_seeds", f"must be an integer >= 1, got {excerpt(self.tune_seeds)}")
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


def configuration_label(config: dict[str, Any], tuning: str) -> str:
    """A tuned configuration in a line, from a cell's config or a row: ``mlp+mse [mlp.hidden=64] on mnist
    [optimizer=adam ...]``, without the tuned keys."""
    keys = tuned_keys(tuning)
    params = {k: v for k, v in _params_dict(config.get("params")).items() if k not in keys}
    recipe = " ".join(f"{k}={config[k]:g}" if isinstance(config[k], float) else f"{k}={config[k]}"
                      for k in RECIPE_FIELDS if k not in keys and k in config)
    return f"{config_label({**config, 'params': params})} on {config['dataset']} [{recipe}]"


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


def open_storage(root: Path):
    """Optuna's storage in ``root/tuning.db``; a damaged database is a :class:`BenchError` that names it."""
    import sqlite3

    optuna = _optuna()
    path = root / DB_FILE
    damaged = None
    if path.exists():
        try:  # check the file before SQLAlchemy does (its error is a 100-line traceback); read-write, so that
            # SQLite can roll back the journal that a kill in the middle of a write leaves
            with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)) as db:
                check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                damaged = str(check[0] if check else "no answer to an integrity check")
        except sqlite3.Error as exc:
            damaged = str(exc)
    if damaged is None:
        try:
            return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}",
                                              engine_kwargs={"connect_args": {"timeout": 60}})
        except Exception as exc:  # noqa: BLE001 -- SQLAlchemy's and Optuna's errors on a file that is not theirs
            damaged = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise BenchError(f"{path} is damaged ({damaged[:200]}): move it away and run the same command again (it asks "
                     "for the same trials, and those with a record in cells/ are not trained again)")


def _derived_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def _unit_to_value(u: float, distribution) -> Any:
    """A point ``u`` in [0, 1) of the unit interval mapped onto an Optuna distribution."""
    optuna = _optuna()
    d = optuna.distributions
    if isinstance(distribution, d.CategoricalDistribution):
        choices = distribution.choices
        return choices[min(int(u * len(choices)), len(choices) - 1)]
    integer = isinstance(distribution, d.IntDistribution)
    low, high = (distribution.low - 0.5, distribution.high + 0.5) if integer else (distribution.low, distribution.high)
    if distribution.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if integer:
        return min(max(round(value), distribution.low), distribution.high)
    return min(max(value, distribution.low), distribution.high)


def trial_sampler(tuning: Tuning, seed: int):
    """The Optuna sampler of a tuning run (see :class:`TrialSampler`)."""
    optuna = _optuna()

    class TrialSampler(optuna.samplers.BaseSampler):
        """Values that depend only on the seed, the trial's number and (TPE) the trials finished before it.

        Optuna's own samplers keep state outside the trials (QMCSampler a counter of points in the study,
        TPESampler a random generator in the process), so a trial asked again after a kill, or the trials
        after it, got other values than in an uninterrupted run. Here ``qmc`` is the trial number's point of
        a scrambled Sobol sequence seeded by ``seed`` (one dimension per tuned key, in sorted order), and
        ``tpe`` is Optuna's TPESampler seeded anew for each trial and key.
        """

        def __init__(self):
            self.keys = sorted(tuning.spaces)
            self.seed = seed % (2 ** 32)
            self.points: list[list[float]] = []

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            if tuning.sampler == "tpe":
                tpe = optuna.samplers.TPESampler(seed=_derived_seed(self.seed, trial.number, param_name))
                return tpe.sample_independent(study, trial, param_name, param_distribution)
            return _unit_to_value(self.point(trial.number)[self.keys.index(param_name)], param_distribution)

        def point(self, number: int) -> list[float]:
            if number >= len(self.points):  # the first 2**m points at once: scipy's Sobol engine is slow to build
                from scipy.stats import qmc

                engine = qmc.Sobol(len(self.keys), scramble=True, seed=self.seed)
                self.points = engine.random_base2(max(6, number.bit_length())).tolist()
            return self.points[number]

    return TrialSampler()


#: Evaluations per epoch of a pruned tuning run's trials (without ``--eval-every``; at least 20 training steps
#: apart): the points at which the pruner may stop a trial, so that even a study of one or two epochs can stop
#: hopeless trials early.
PRUNE_POINTS = 4


def make_pruner(name: str, points: int | None = None):
    """The pruner for ``--prune NAME``; steps are a trial's evaluation points (1, 2, ...: :data:`PRUNE_POINTS`
    an epoch, or every ``--eval-every`` steps, and each epoch's end).

    ``median``: stop a trial whose best value so far is worse than the median of the finished trials' at the
    same step (after 5 finished trials: :func:`median_pruner`). ``asha``: successive halving, reduction
    factor 2 (a trial goes on from a rung while it is in the best half of the trials that reached it:
    :func:`halving_pruner`), from the first step where trials are judged one after another, from the second
    where a fused group's trials are judged together. ``hyperband``: Optuna's brackets of
    halving (reduction factor 3) up to ``points`` evaluation points (``None``: Optuna's ``auto``, from the
    first finished trial, where the trials differ in epochs or batch size), each judging as ``asha`` does
    (its first bracket from the first point). ``points`` is also the last point of the trials ``median``
    counts as finished. A trial's last evaluation point is never judged (:class:`PruneWatch`).
    """
    optuna = _optuna()
    if name == "median":
        return median_pruner(points)
    if name == "asha":
        return halving_pruner(reduction_factor=2, min_resource_together=2)
    if name == "hyperband":
        class Hyperband(optuna.pruners.HyperbandPruner):
            """Optuna's Hyperband (its brackets, and its trials' allocation to them), each bracket's successive
            halving judging as :func:`halving_pruner` does."""

            def _try_initialization(self, study) -> None:
                super()._try_initialization(study)
                self._pruners = [halving_pruner(self._reduction_factor, bracket)
                                 for bracket in range(len(self._pruners))]

        return Hyperband(min_resource=1, max_resource=points or "auto", reduction_factor=3)
    return optuna.pruners.NopPruner()


def median_pruner(points: int | None):
    """Optuna's MedianPruner (after 5 finished trials, from the first point), with a trial that reached its last
    evaluation point (``points``; ``None``: unknown) counted as finished. Optuna hears of a trial's end only when
    its round of trials (up to :data:`ROUND`) has trained, so its own pruner found no finished trial in the
    first round and pruned nothing there. The trials of a fused group reach their last point together, after
    every judgement, so there it still prunes nothing before the group's round ends."""
    optuna = _optuna()
    running, complete = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE

    class Finished:
        """The study as the pruner reads it: its trials that reached their last point count as finished."""

        def __init__(self, study):
            self.study = study

        def __getattr__(self, name):
            return getattr(self.study, name)

        def get_trials(self, deepcopy: bool = True, states=None):
            trials = self.study.get_trials(deepcopy=deepcopy)
            if states is None:
                return trials
            done = [t for t in trials if t.state == running and points in t.intermediate_values]
            return [t for t in trials if t.state in states] + (done if complete in states else [])

    class Median(optuna.pruners.MedianPruner):
        def prune(self, study, trial) -> bool:
            return super().prune(Finished(study) if points else study, trial)

    return Median(n_startup_trials=5, n_warmup_steps=0)


def halving_pruner(reduction_factor: int, min_early_stopping_rate: int = 0, *, min_resource: int = 1,
                   min_resource_together: int | None = None):
    """Asynchronous successive halving as Optuna's SuccessiveHalvingPruner does it (rungs at evaluation points
    m r^e, m r^(e+1), ... for ``min_resource`` m and ``min_early_stopping_rate`` e; a trial goes on from a rung
    while its value is among the best ``max(1, n // r)`` of the ``n`` trials that reached it), with the trials
    that reached a rung read from their reported values. Optuna's counts only the trials it judged before: the
    trials of a fused group reach each point together and all report before any is judged
    (:meth:`PruneWatch.point_end`), and there the first ones judged went on against few, the last against all;
    here each is judged against all of them.

    ``min_resource_together``: m instead while :class:`PruneWatch` judges trials that reported at one point
    together (it sets ``together``). Judged together, the trials are cut as hard at the first rung as at any
    other, where one after another the first trials to reach it go on against few; halving a fused group
    after a quarter epoch stopped slow starters that a full search chooses (docs/benchmarks.md, "How soon
    asha judges")."""
    optuna = _optuna()
    maximize = optuna.study.StudyDirection.MAXIMIZE

    class SuccessiveHalving(optuna.pruners.BasePruner):
        together = False

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None:
                return False
            value = trial.intermediate_values[step]
            if math.isnan(value):
                return True
            first = min_resource_together if self.together and min_resource_together else min_resource
            rung = first * reduction_factor ** min_early_stopping_rate
            while rung < step:
                rung *= reduction_factor
            if rung != step:
                return False  # not a rung: a trial is judged there only
            reached = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False)
                       if step in t.intermediate_values and t._trial_id != trial._trial_id]
            ranked = sorted([v for v in reached if not math.isnan(v)] + [value], reverse=study.direction == maximize)
            last_kept = ranked[max(1, len(ranked) // reduction_factor) - 1]
            return value < last_kept if study.direction == maximize else value > last_kept

    return SuccessiveHalving()


class PruneWatch:
    """Watches the evaluation points of the trials' cells (``bench_epoch_end``, in the driver, where the
    Optuna storage is) and stops a trial that the pruner gives up on: :class:`bench.errors.StopCell`.

    A trial reports its value at each point (``epoch_end``); the trials that reached a point are judged once
    every cell that reached it together has reported (``point_end``), and a pruned trial's cells stop there.
    A trial trained over K seeds (``--tune-seeds``) reports at a point once all K of its cells have reached
    it, their mean; a cell of it that trains elsewhere stops at its next point. Cells recorded earlier (a
    resumed run) count with their history. A trial's last point is not judged: stopping it there saves
    nothing.
    """

    def __init__(self, tuning: Tuning):
        self.tuning = tuning
        self.member: dict[str, tuple[Any, int, int, list[str]]] = {}  # cell id -> (study, trial id, number, cells)
        self.values: dict[str, list[float]] = {}  # cell id -> its metric at each evaluation point so far
        self.pruned: dict[int, str] = {}  # trial id -> why
        self.reported: list[tuple[Any, int, str]] = []  # (study, trial id, where) reported since the last point

    def watch(self, study, trial_id: int, number: int, cells: list[Cell], recorded: dict[str, CellRecord]) -> None:
        ids = [c.cell_id for c in cells]
        for cell_id in ids:
            self.member[cell_id] = (study, trial_id, number, ids)
            history = recorded[cell_id].history if cell_id in recorded else []
            self.values[cell_id] = [float(h.get(self.tuning.metric, math.nan)) for h in history]

    def epoch_end(self, cell, row: dict[str, Any]) -> None:
        entry = self.member.get(cell.cell_id)
        if entry is None or self.tuning.prune == "none":
            return
        study, trial_id, number, ids = entry
        if trial_id in self.pruned:
            raise StopCell("pruned", self.pruned[trial_id])
        try:
            value = float(row.get(self.tuning.metric))
        except (TypeError, ValueError):
            return
        self.values[cell.cell_id].append(value)
        step = len(self.values[cell.cell_id])
        if any(len(self.values.get(i, [])) < step for i in ids):
            return  # the trial's other seeds have not reached this point yet
        mean = sum(self.values[i][step - 1] for i in ids) / len(ids)
        if not math.isfinite(mean):
            return
        storage = study._storage
        if storage.get_trial(trial_id).state != _optuna().trial.TrialState.RUNNING:
            return
        storage.set_trial_intermediate_value(trial_id, step, mean)
        if "step" not in row and row.get("epoch") == cell.recipe.epochs:
            return  # its training is over: pruning it now would save nothing
        where = (f"in epoch {row['epoch']} after {row['step']} training steps" if "step" in row
                 else f"at epoch {row['epoch']}" if "epoch" in row else f"at evaluation {step}")
        self.reported.append((study, trial_id, f"{where} ({self.tuning.metric} {mean:.4g})"))

    def point_end(self, cells: list[Cell]) -> dict[str, StopCell]:
        """Judge the trials that reported at the point ``cells`` just reached, all their values stored before
        the pruner sees any (the trials of a fused group reach each point together, and are judged against
        each other); the cells of a trial pruned now or before stop here."""
        reported, self.reported = self.reported, []
        together = collections.Counter(id(study) for study, _, _ in reported)
        for study, trial_id, where in reported:
            if hasattr(study.pruner, "together"):  # a halving pruner's first rung depends on it
                study.pruner.together = together[id(study)] > 1
            if trial_id not in self.pruned and study.pruner.prune(study, study._storage.get_trial(trial_id)):
                self.pruned[trial_id] = f"pruned by the {self.tuning.prune} pruner {where}"
        trials = {cell.cell_id: self.member[cell.cell_id][1] for cell in cells if cell.cell_id in self.member}
        return {cell_id: StopCell("pruned", self.pruned[t]) for cell_id, t in trials.items() if t in self.pruned}


@dataclass
class Tuned:
    """What tuning chose: the final cells (best values, every seed), and the configurations (their labels)
    that have none because every trial failed."""

    finals: list[Cell]
    failed: list[str]
    #: The records of the trials that count (finished, pruned or failed), by configuration and trial number.
    trial_records: list[CellRecord] = dataclasses.field(default_factory=list)
    #: ``(trial cell, final cell)``: final cells whose record is the best trial's own (its first seeds,
    #: ``--tune-seeds``), to be copied rather than trained again.
    reused: list[tuple[Cell, Cell]] = dataclasses.field(default_factory=list)


def study_names(storage, groups: dict[str, Cell]) -> dict[str, str]:
    """The Optuna study name of each tuned configuration: its label (``linear+mse on mnist [...]``),
    with the configuration's id added where two labels coincide; a study made under the configuration's
    id (older runs) keeps that name."""
    existing = set(_optuna().get_all_study_names(storage))
    labels = {group: configuration_label(cell.config(), group) for group, cell in groups.items()}
    clash = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    return {group: group if group in existing else f"{label} {group}" if label in clash else label
            for group, label in labels.items()}


def _study_attrs(tuning: Tuning, cell: Cell, group: str, seeds: list[int]) -> dict[str, Any]:
    """What a study says about itself in Optuna's tools: the configuration it tunes, and how."""
    config = cell.config()
    keys = list(tuning.spaces)
    attrs = {k: v for k, v in config.items() if k not in keys and k not in ("params", "seed")}
    attrs["params"] = {k: v for k, v in _params_dict(config.get("params")).items() if k not in keys}
    return {**attrs, "configuration": configuration_label(config, group), "tuning": group,
            "tuned": {k: tuning.spaces[k].describe() for k in keys}, "trials": tuning.trials,
            "sampler": tuning.sampler, "prune": tuning.prune, "tune_seeds": tuning.tune_seeds,
            "seeds": list(seeds)}


def run_tuning(tuning: Tuning, registry, base_cells: list[Cell], seeds: list[int], root: Path,
               train: Callable[[list[Cell]], list[CellRecord]], records: Callable[[], dict[str, CellRecord]],
               batch_size: int = 0, watch: Callable[[Callable, Callable], None] | None = None,
               points_of: Callable[[Cell], int | None] | None = None) -> Tuned:
    """Tune every configuration of ``base_cells`` (one cell each, on the first seed), then return the final
    cells (the best values, every seed). ``train(cells)`` trains cells (resuming) and returns their records;
    ``records()`` gives the records already in the run directory by cell id. ``batch_size``: trials asked per
    configuration before they train (0: up to :data:`ROUND`). ``watch(epoch_end, point_end)``: have
    ``epoch_end(cell, row)`` called at each evaluation point of a training cell, in this process, and
    ``point_end(cells)`` once the cells that reached it together had theirs (pruning; they stop a cell with
    :class:`bench.errors.StopCell`); ``points_of(cell)``: a trial cell's evaluation points over its training
    (``hyperband``'s largest resource, ``median``'s last point; ``None``: not known before a trial finishes)."""
    optuna = _optuna()
    keys = list(tuning.spaces)
    k_seeds = seeds[:tuning.tune_seeds]
    storage = open_storage(root)
    groups: dict[str, Cell] = {}
    for cell in base_cells:
        groups.setdefault(tuned_group(cell, keys), cell)
    direction = METRICS[tuning.metric]
    names = study_names(storage, groups)
    studies = {}
    # the pruners that read a trial's evaluation points, where all of a configuration's trials have as many
    counted = (points_of is not None and tuning.prune in ("median", "hyperband")
               and not {"epochs", "batch_size"} & set(keys))
    for group, cell in groups.items():
        points = points_of(cell) if counted else None
        study = optuna.create_study(study_name=names[group], storage=storage, direction=direction,
                                    sampler=trial_sampler(tuning, seeds[0]), pruner=make_pruner(tuning.prune, points),
                                    load_if_exists=True)
        # what a killed run had not written yet (a kill -9 can land between two attributes): written now
        for key, value in _study_attrs(tuning, cell, group, seeds).items():
            if key not in study.user_attrs:
                study.set_user_attr(key, value)
        if study.metric_names is None:
            study.set_metric_names([tuning.metric])
        studies[group] = study
    states = optuna.trial.TrialState
    watcher = PruneWatch(tuning)
    if watch is not None and tuning.prune != "none":
        watch(watcher.epoch_end, watcher.point_end)

    def cells_of(group: str, number: int, params: dict[str, Any]) -> list[Cell]:
        """A trial's cells: its values on each of the first ``tune_seeds`` seeds."""
        return [with_values(dataclasses.replace(groups[group], seed=seed), params, phase="tune", trial=number,
                            tuning=group) for seed in k_seeds]

    def trial_cells(group: str, trial) -> list[Cell]:
        """The cells of a trial that was asked (``trial``: an Optuna Trial), suggesting what it lacks."""
        return cells_of(group, trial.number, {key: tuning.spaces[key].suggest(trial) for key in keys})

    def value_of(record: CellRecord) -> float | None:
        try:
            value = float(getattr(record, tuning.metric))
        except (TypeError, ValueError):
            return None
        return value if record.status == "ok" and math.isfinite(value) else None

    def tell(study, trial_id: int, number: int, records: list[CellRecord]) -> None:
        """Tell a trial's outcome from its cells' records (their attributes first: a finished trial takes none)."""
        if study._storage.get_trial(trial_id).state != states.RUNNING:
            return
        ids = [r.cell_id for r in records]
        study._storage.set_trial_user_attr(trial_id, "cell_id", ids[0] if len(ids) == 1 else ids)
        values = [value_of(r) for r in records]
        failed = [r for r, v in zip(records, values) if v is None and r.status != "pruned"]
        if failed:
            study._storage.set_trial_user_attr(trial_id, "status", "failed")
            study._storage.set_trial_user_attr(trial_id, "cell_failed",
                                               str(failed[0].error or failed[0].status or "failed"))
            study.tell(number, state=states.FAIL, skip_if_finished=True)
        elif any(v is None for v in values):
            reason = next(str(r.error or "pruned") for r in records if r.status == "pruned")
            study._storage.set_trial_user_attr(trial_id, "status", "pruned")
            study._storage.set_trial_user_attr(trial_id, "pruned", reason)
            study.tell(number, state=states.PRUNED, skip_if_finished=True)
        else:
            tests = [math.nan if r.test_acc is None else float(r.test_acc) for r in records]
            study._storage.set_trial_user_attr(trial_id, "status", "ok")
            study._storage.set_trial_user_attr(trial_id, "test_acc", sum(tests) / len(tests))
            study.tell(number, sum(values) / len(values), skip_if_finished=True)

    def counted(study) -> int:
        """Trials that spent their budget, as Optuna counts them: finished, pruned, or failed cells."""
        return sum(t.state in (states.COMPLETE, states.PRUNED) or (t.state == states.FAIL
                                                                  and "cell_failed" in t.user_attrs)
                   for t in study.get_trials(deepcopy=False))

    def records_of(recorded: dict[str, CellRecord], cells: list[Cell]) -> list[CellRecord] | None:
        found = [recorded.get(c.cell_id) for c in cells]
        return found if all(r is not None and r.status in ("ok", "failed", "pruned") for r in found) else None

    # A run killed mid-way leaves trials RUNNING: tell those whose cells finished; the others train again
    # (below) under their own numbers, before any new trial is asked, so that the history is the same.
    recorded = records()
    for group, study in studies.items():
        for t in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            done = records_of(recorded, trial_cells(group, optuna.trial.Trial(study, t._trial_id)))
            if done is not None:
                tell(study, t._trial_id, t.number, done)

    while True:
        batch: list[tuple[str, int, int, list[Cell]]] = []
        for group, study in studies.items():
            pending = study.get_trials(deepcopy=False, states=(states.RUNNING,))
            missing = tuning.trials - counted(study) - len(pending)
            take = min(missing, (batch_size or ROUND) - len(pending))
            trials = [optuna.trial.Trial(study, t._trial_id) for t in pending]
            trials += [study.ask() for _ in range(max(0, take))]
            batch += [(group, t._trial_id, t.number, trial_cells(group, t)) for t in trials]
        if not batch:
            break
        recorded = records()
        for group, trial_id, number, cells in batch:
            watcher.watch(studies[group], trial_id, number, cells, recorded)
        trained = {record.cell_id: record for record in train([cell for *_, cells in batch for cell in cells])}
        for group, trial_id, number, cells in batch:
            tell(studies[group], trial_id, number,
                 [trained.get(c.cell_id) or CellRecord.of(c, "failed", "no record") for c in cells])

    finals, failed, trial_records, reused = [], [], [], []
    recorded = records()
    for group, study in studies.items():
        for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED, states.FAIL)):
            if t.state == states.FAIL and "cell_failed" not in t.user_attrs:
                continue
            trial_records += [recorded[c.cell_id] for c in cells_of(group, t.number, t.params)
                           if c.cell_id in recorded]
        if not any(t.state == states.COMPLETE for t in study.get_trials(deepcopy=False)):
            failed.append(configuration_label(groups[group].config(), group))
            continue
        best = study.best_trial
        tried = {c.seed: c for c in cells_of(group, best.number, best.params)}
        for seed in seeds:
            final = with_values(dataclasses.replace(groups[group], seed=seed), best.params, phase="final",
                                trial=best.number, tuning=group)
            if seed in tried:
                reused.append((tried[seed], final))
            finals.append(final)
    return Tuned(finals, failed, trial_records, reused)


def reuse_record(store, trial: Cell, final: Cell, index: int) -> None:
    """Write ``final``'s record (``index``: its place among the final cells) as a copy of the finished trial
    cell ``trial`` (the same values and seed): the final phase does not train again what a trial trained
    (its weights file is shared)."""
    finished = store.finished()
    if final.cell_id in finished or trial.cell_id not in finished:
        return
    record = dataclasses.replace(finished[trial.cell_id], cell_id=final.cell_id, phase=final.phase,
                                 trial=final.trial, tuning=final.tuning, index=index)
    record.history = [{**h, "cell_id": final.cell_id} for h in record.history]
    record.other = {**record.other, "reused_from": trial.cell_id}
    store.write_cell(record)
