"""A study: what a run trains, as one record that a YAML file, the command line or Python can give.

A study names components (or a registered grid), parameter sweeps, the recipe's axes, seeds,
``limit`` and the device; ``zip`` ties axes together element by element instead of crossing them;
``exclude`` leaves partial cells out. :func:`bench.grid.expand` turns a study into cells. The
resolved study (defaults filled in) is kept in the run directory as ``study.yaml``, so a run can be
repeated or resumed from it alone.

File format (every key optional)::

    models: [linear, mlp]            # or "linear,mlp"
    losses: [mse, crossentropy]
    datasets: [mnist]
    grid: seed                       # a registered grid instead of (or restricted by) the lists
    params: {mlp.hidden: [64, 256]}  # NAME.KEY: a value or a list
    recipe: {lr: [0.001, 0.01], optimizer: [adam, sgd], epochs: 2, batch_size: 256,
             weight_decay: 0, schedule: constant}
    zip: [[optimizer, lr]]           # these axes vary together: (adam, 0.001), (sgd, 0.01)
    exclude: [{model: mlp, loss: mse}]
    seeds: [0, 1, 2]
    limit: 5000
    device: cpu
    executor: {name: slurm, partition: debug, time: 30}   # where cells train, and its options
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import PARAM_KINDS, RECIPE_FIELDS, Recipe
from bench.errors import BenchError, OptionError
from bench.files import STUDY_MAX, STUDY_VALUES_MAX, Refused, count_values, excerpt, read_bounded
from bench.host import close_match_hint, unknown_name_error
from bench.options import HOW, OUTPUTS, TUNING, WHAT, Option, choice, option, options_of, text
from bench.options import integer as whole_number
from bench.tune import MAX_TRIALS, PRUNERS, parse_space, parse_tune_options

#: Recipe fields holding plugin names (the others are numbers).
NAME_FIELDS = ("optimizer", "schedule")
INT_FIELDS = ("batch_size", "epochs")
#: Most seeds a run may have (``--repeat 100000000`` would otherwise expand for minutes).
MAX_SEEDS = 10_000
#: torch.manual_seed accepts seeds in [0, 2**64).
MAX_SEED = 2 ** 64 - 1


@dataclass
class Study:
    """What to run. ``None`` (or an empty dict/list) means "not given here": a default or another
    source (see :meth:`merged`) decides. Each field is a key of a study file and (unless ``keyword`` is
    off) a keyword of :func:`bench.run`; its :func:`bench.options.option` says its flag, help and check."""

    models: list[str] | None = option(None, flag="--models", metavar="A,B", parse=lambda v: _name_list("models", v),
                                      help="Models to run (restricts --grid).")
    losses: list[str] | None = option(None, flag="--losses", metavar="A,B", parse=lambda v: _name_list("losses", v),
                                      help="Losses to run (restricts --grid).")
    datasets: list[str] | None = option(None, flag="--datasets", metavar="A,B",
                                        parse=lambda v: _name_list("datasets", v),
                                        help="Datasets to run (restricts --grid).")
    grid: str | None = option(None, flag="--grid", metavar="NAME", parse=lambda v: _grid_name(v),
                              help="A registered grid (bench list shows them), e.g. all (every model x loss x "
                                   "available dataset) or seed (the notebook's three cells, the default unless "
                                   "--models/--losses/--datasets are given).")
    #: ``{"NAME.KEY": [values]}``: values typed (from a file or Python) or strings (from the command line)
    params: dict[str, list] = option(default_factory=dict, flag="--param", metavar="NAME.KEY=V1,V2",
                                     click={"multiple": True}, parse=lambda v: _params(v),
                                     help="Sweep a parameter of a model, loss, dataset, optimizer or schedule, e.g. "
                                          "mlp.hidden=64,256 or sgd.momentum=0,0.9 (repeatable; crossed with the "
                                          "grid).")
    #: ``{recipe field: [values]}`` (``bench.run`` and the command line take each field as its own option)
    recipe: dict[str, list] = option(default_factory=dict, keyword=False, parse=lambda v: _recipe_block(v))
    zip: list[list[str]] = option(default_factory=list, keyword=False, parse=lambda v: _zip_block(v))
    exclude: list[dict[str, Any]] = option(default_factory=list, keyword=False, parse=lambda v: _exclude_block(v))
    seeds: list[int] | None = option(None, flag="--seeds", metavar="S1,S2", parse=lambda v: seed_values(v),
                                     help="Seeds; each cell runs once per seed. [default: 0]")
    limit: int | None = option(None, flag="--limit", metavar="N", click={"type": "int"},
                               parse=lambda v: integer("limit", v, 0),
                               help="Train on the first N training samples only (a quick smoke run); validation and "
                                    "test stay whole. 0: all. [default: 0]")
    device: str | None = option(None, flag="--device", section=HOW, metavar="DEVICE", what=False,
                                parse=text("device"),
                                help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps. [default: auto]")
    #: Experiment trackers to log to (not part of any cell's configuration).
    track: list[str] | None = option(None, flag="--track", section=OUTPUTS, metavar="NAME[,NAME]",
                                     what=False, parse=lambda v: _name_list("track", v),
                                     help="Log the run to experiment trackers, e.g. mlflow, tensorboard (bench list "
                                          "shows them; each is an optional extra).")
    #: Tuning (bench/tune.py): ``{key: "LOW:HIGH[:log]" | [choices] | {low, high, log}}``, the trial budget
    #: per configuration, the sampler (qmc, tpe) and the validation metric (val_acc, val_loss).
    tune: dict[str, Any] = option(default_factory=dict, flag="--tune", section=TUNING, metavar="KEY=LOW:HIGH[:log]",
                                  click={"multiple": True}, parse=lambda v: _tune_block(v),
                                  help="Tune KEY (a recipe key such as lr, or a parameter NAME.KEY such as adam.beta2) "
                                       "per configuration on the validation split, then train the best value with "
                                       "every seed (repeatable; categorical: KEY=a|b|c).")
    trials: int | None = option(None, flag="--trials", section=TUNING, metavar="N", click={"type": "int"},
                                what=False, parse=lambda v: _trials(v),
                                help="Tuning trials per configuration, at most 1,000 (a failed trial counts). "
                                     "[default: 8]")
    sampler: str | None = option(None, flag="--sampler", section=TUNING, click={"choices": ("qmc", "tpe")},
                                 what=False, parse=text("sampler"),
                                 help="Tuning sampler: quasi-random Sobol points or TPE (Optuna), seeded by the first "
                                      "seed. [default: qmc]")
    tune_metric: str | None = option(None, flag="--tune-metric", section=TUNING,
                                     click={"choices": ("val_acc", "val_loss")}, what=False, parse=text("tune_metric"),
                                     help="What tuning optimises (val_acc is maximised, val_loss minimised). "
                                          "[default: val_acc]")
    #: Tuning's pruner, and how many of the first seeds score a trial (bench/tune.py).
    prune: str | None = option(None, flag="--prune", section=TUNING, click={"choices": PRUNERS}, what=False,
                               parse=choice("prune", PRUNERS),
                               help="Stop tuning trials that fall behind, at four evaluations an epoch or every "
                                    "--eval-every steps (Optuna's pruners; needs the local executor). [default: none]")
    tune_seeds: int | None = option(None, flag="--tune-seeds", section=TUNING, metavar="K", click={"type": "int"},
                                    what=False, parse=whole_number("tune_seeds", 1, optional=True),
                                    help="Score each tuning trial by the mean over the first K seeds (trained "
                                         "together); the chosen trial's cells are its final cells for those seeds. "
                                         "[default: 1]")
    #: Time to target (not part of any cell's configuration): ``"val_acc=0.97"``, and how often (in
    #: training steps) to evaluate on the validation split besides each epoch's end.
    target: str | None = option(None, flag="--target", section=TUNING, metavar="val_acc=X|val_loss=X",
                                what=False, parse=lambda v: _target(v),
                                help="Time to target: record, per cell, the first epoch, training steps and training "
                                     "seconds at which the validation metric reached X.")
    eval_every: int | None = option(None, flag="--eval-every", section=TUNING, metavar="STEPS",
                                    click={"type": "natural"}, what=False, parse=lambda v: integer("eval_every", v, 0),
                                    help="Also evaluate on the validation split every STEPS training steps (a finer "
                                         "time to target; timed apart from training). [default: 0]")
    #: Where the cells train (not part of any cell's configuration): ``{"name": "slurm", OPTION: value, ...}``;
    #: the command line's ``--executor`` and ``-X KEY=VALUE`` override it.
    executor: dict[str, Any] = option(default_factory=dict, keyword=False, what=False,
                                      parse=lambda v: executor_block(v))

    def merged(self, override: Study) -> Study:
        """This study with every key that ``override`` sets replaced (recipe and params key by key)."""
        out = dataclasses.replace(self, params=dict(self.params), recipe=dict(self.recipe), tune=dict(self.tune),
                                  executor=dict(self.executor))
        for f in dataclasses.fields(self):
            value = getattr(override, f.name)
            if f.name in ("params", "recipe", "tune", "executor"):
                getattr(out, f.name).update(value)
            elif value not in (None, [], {}):
                setattr(out, f.name, value)
        return out

    def sets_grid(self) -> bool:
        """Does it say what to train (any key but the settings: device, trackers, tuning budget, ...)?"""
        return any(getattr(self, o.name) not in (None, [], {}) for o in options_of(Study) if o.what)

    def to_dict(self) -> dict[str, Any]:
        """The study as a plain mapping, for ``study.yaml`` (keys that are not set are left out)."""
        out = {}
        for key in STUDY_KEYS:
            value = getattr(self, key)
            if value not in (None, [], {}):
                out[key] = value
        return out

    @classmethod
    def from_options(cls, **given: Any) -> Study:
        """A study from :func:`bench.run`'s (and ``bench run``'s) keywords: the study's own (:data:`KEYWORDS`),
        each recipe field (``lr``, ``epochs``, ...) and ``repeat``; ``None`` means not given. Lists may be
        Python lists or comma-separated strings; ``params`` are ``NAME.KEY=V1,V2`` strings or a
        ``{"NAME.KEY": [values]}`` dict."""
        study = cls()
        seeds, repeat = given.pop("seeds", None), given.pop("repeat", None)
        study.seeds = seed_values(seeds, repeat)
        for key, value in given.items():
            if value is None or (key in ("params", "tune") and not value):
                continue
            if key in RECIPE_FIELDS:
                study.recipe[key] = recipe_values(key, value)
            elif key in KEYWORDS:
                setattr(study, key, KEYWORDS[key].check(value))
            else:
                raise OptionError(key, "is not an option of a study")
        return study


#: The keys a study file may have (every field of :class:`Study`).
STUDY_KEYS = tuple(o.name for o in options_of(Study))
#: The study's options that are keywords of ``bench.run`` and options of ``bench run`` (by name).
KEYWORDS = {o.name: o for o in options_of(Study) if o.keyword}
#: The study itself: a file, or the name of a shipped study (``bench.run``'s first argument).
STUDY_FILE_OPTION = Option("study", "--study", "A study file (models, losses, datasets, grid, params, recipe, zip, "
                           "exclude, seeds, limit, device), or the name of a study that ships with gridbench, e.g. "
                           "linearity (bench list shows them); the options below override it.", WHAT, "FILE.yaml|NAME",
                           {"type": "file"})
#: ``repeat``: another way to give seeds (never kept in a study: it becomes ``seeds``).
REPEAT = Option("repeat", "--repeat", "Run each cell with N seeds, 0..N-1 (instead of --seeds).", WHAT, "N",
                {"type": "int"})


# -- reading -------------------------------------------------------------------------------------------

def _names(where: str, value: Any) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise BenchError(f"{where} must be a list of names or a comma-separated string, got {excerpt(value)}")
    if not items or not all(items):
        raise BenchError(f"{where} needs a comma-separated list of names, got {excerpt(value)}")
    return list(dict.fromkeys(items))


def _values(where: str, value: Any) -> list:
    """A value or a list of values; a comma-separated string is a list of strings."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        if not all(items):
            raise BenchError(f"{where}: empty value in {excerpt(value)}")
        return items
    if isinstance(value, (list, tuple)):
        if not value:
            raise BenchError(f"{where} needs at least one value")
        for v in value:
            if not isinstance(v, (str, int, float, bool)):
                raise BenchError(f"{where}: {excerpt(v)} is not a number, a string or a boolean")
        return list(value)
    if isinstance(value, (int, float, bool)):
        return [value]
    raise BenchError(f"{where} must be a value or a list of values, got {excerpt(value)}")


def integer(option: str, value: Any, minimum: int) -> int:
    """``value`` when it is an integer >= ``minimum``, else an :class:`OptionError` naming ``option``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise OptionError(option, f"must be an integer >= {minimum}, got {excerpt(value)}")
    return value


def recipe_values(option: str, value: Any) -> list:
    """Values of one recipe axis, typed (``"1e-3,1e-2"`` -> ``[0.001, 0.01]``); bad values raise
    :class:`OptionError` naming the option."""
    if option not in RECIPE_FIELDS:
        raise OptionError("recipe", f"has no key '{option}' (valid: {', '.join(RECIPE_FIELDS)})")
    try:
        raw = _values(option, value)
    except BenchError as exc:
        raise OptionError(option, str(exc)[len(option):].lstrip(": ") or "is empty") from None
    out = []
    for v in raw:
        if option in NAME_FIELDS:
            if not isinstance(v, str):
                raise OptionError(option, f"needs names, got {excerpt(v)}")
            out.append(v)
            continue
        kind = int if option in INT_FIELDS else float
        if isinstance(v, bool):
            raise OptionError(option, f"needs {'integers' if kind is int else 'numbers'}, got {excerpt(v)}")
        try:
            number = kind(v) if not isinstance(v, str) else (int(v) if kind is int else float(v))
        except (TypeError, ValueError):
            raise OptionError(option, f"needs {'integers' if kind is int else 'numbers'}, got {excerpt(v)}") from None
        if kind is int and isinstance(v, float) and not v.is_integer():
            raise OptionError(option, f"needs integers, got {excerpt(v)}")
        Recipe(**{option: number})  # range checks (epochs >= 1, finite lr > 0, ...) with the option named
        out.append(number)
    return list(dict.fromkeys(out))


def seed_values(seeds: Any = None, repeat: Any = None) -> list[int] | None:
    """``seeds`` (``"0,1,2"`` or a list) or ``repeat`` (N: seeds 0..N-1); ``None`` when neither is given."""
    if seeds is not None and repeat is not None:
        raise BenchError("give seeds or repeat, not both")
    if repeat is not None:
        if isinstance(repeat, bool) or not isinstance(repeat, int):
            raise OptionError("repeat", f"must be an integer, got {excerpt(repeat)}")
        if not 1 <= repeat <= MAX_SEEDS:
            raise OptionError("repeat", f"must be between 1 and {MAX_SEEDS}, got {repeat}")
        return list(range(repeat))
    if seeds is None:
        return None
    items = [v.strip() for v in seeds.split(",")] if isinstance(seeds, str) else seeds
    if isinstance(items, int) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple)) or not items:
        raise OptionError("seeds", f"needs comma-separated integers, got {excerpt(seeds)}")
    values = []
    for v in items:
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            values.append(int(v))
        except (TypeError, ValueError):
            raise OptionError("seeds", f"needs comma-separated integers, got {excerpt(seeds)}") from None
    if any(not 0 <= v <= MAX_SEED for v in values):
        raise OptionError("seeds", f"must be integers from 0 to 2**64-1, got {excerpt(seeds)}")
    if len(set(values)) != len(values):
        raise OptionError("seeds", f"lists a seed twice: {excerpt(seeds)}")
    if len(values) > MAX_SEEDS:
        raise OptionError("seeds", f"lists {len(values)} seeds; at most {MAX_SEEDS}")
    return values


def param_specs(specs: Any) -> dict[str, list]:
    """``["mlp.hidden=64,256", ...]`` or ``{"mlp.hidden": [64, 256]}`` -> ``{"mlp.hidden": [64, 256]}``.

    Values stay as given (strings from the command line); :func:`bench.grid.expand` types them
    against the parameter's default. A key given twice is an error.
    """
    out: dict[str, list] = {}
    if isinstance(specs, Mapping):
        for key, value in specs.items():
            _check_param_key(f"{key}", key)
            out[key] = _values(f"param {key}", value)
        return out
    if isinstance(specs, str):
        specs = [specs]
    for token in specs or ():
        if not isinstance(token, str) or "=" not in token:
            raise OptionError("param", f"{token}: expected NAME.KEY=V1,V2 (missing '=')")
        lhs, rhs = token.split("=", 1)
        key = lhs.strip()
        _check_param_key(token, key)
        if key in out:
            raise OptionError("param", f"{token}: {key} is given twice; list every value once, e.g. "
                                       f"{key}=V1,V2")
        raws = [v.strip() for v in rhs.split(",")]
        if not all(raws):
            raise OptionError("param", f"{token}: empty value in '{rhs}'")
        out[key] = raws
    return out


def _check_param_key(token: str, key: Any) -> None:
    if not isinstance(key, str) or "." not in key:
        raise OptionError("param", f"{token}: expected NAME.KEY=V1,V2 (missing '.' between component and key)")
    name, param = key.split(".", 1)
    if not name.strip() or not param.strip():
        raise OptionError("param", f"{token}: expected NAME.KEY=V1,V2")


def _name_list(option: str, value: Any) -> list[str]:
    try:
        return _names(option, value)
    except BenchError as exc:
        raise OptionError(option, str(exc)[len(option):].strip()) from None


def _params(value: Any) -> dict[str, list]:
    if not isinstance(value, (Mapping, str, list, tuple)):
        raise OptionError("params", f"must be a list of strings NAME.KEY=V1,V2, or a mapping, got {excerpt(value)}")
    return param_specs(value)


def _trials(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TRIALS:
        raise OptionError("trials", f"must be an integer from 1 to {MAX_TRIALS}, got {excerpt(value)}")
    return value


def _grid_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OptionError("grid", f"must be the name of a registered grid, got {excerpt(value)}")
    return value.strip()


def _recipe_block(value: Any) -> dict[str, list]:
    if not isinstance(value, Mapping):
        raise OptionError("recipe", f"must be a mapping ({', '.join(RECIPE_FIELDS)}), got {excerpt(value)}")
    out = {}
    for key, values in value.items():
        if key not in RECIPE_FIELDS:
            raise OptionError("recipe", f"unknown key {excerpt(key)}; valid: {', '.join(RECIPE_FIELDS)}")
        try:
            out[key] = recipe_values(key, values)
        except OptionError as exc:
            raise OptionError(f"recipe.{key}", exc.text) from None
    return out


def _zip_block(groups: Any) -> list[list[str]]:
    if not (isinstance(groups, list) and all(isinstance(g, list) and all(isinstance(a, str) for a in g)
                                             for g in groups)):
        raise OptionError("zip", "must be a list of lists of axis names, e.g. [[optimizer, lr]], "
                                 f"got {excerpt(groups)}")
    return [list(g) for g in groups]


def _exclude_block(entries: Any) -> list[dict[str, Any]]:
    if not (isinstance(entries, list) and all(isinstance(e, Mapping) and e for e in entries)):
        raise OptionError("exclude", f"must be a list of partial cells, e.g. [{{model: cnn, loss: mse}}], "
                                     f"got {excerpt(entries)}")
    return [dict(e) for e in entries]


def _tune_block(value: Any) -> dict[str, Any]:
    """``{KEY: spec}`` from a mapping (a study file, Python) or ``KEY=SPEC`` strings (the command line)."""
    if not isinstance(value, (Mapping, str, list, tuple)):
        raise OptionError("tune", f"must be a list of strings KEY=LOW:HIGH[:log], or a mapping KEY: LOW:HIGH[:log], "
                                  f"got {excerpt(value)}")
    specs = parse_tune_options(value)
    for key, spec in specs.items():
        try:
            parse_space(str(key), spec)
        except OptionError as exc:
            raise OptionError(f"tune.{key}", exc.text if exc.option in (key, "tune") else str(exc)) from None
    return {str(k): v for k, v in specs.items()}


def _target(value: Any) -> str:
    if isinstance(value, Mapping) and len(value) == 1:
        value = "=".join(map(str, next(iter(value.items()))))
    parse_target(value)
    return str(value)


def from_mapping(data: Any, source: str = "study") -> Study:
    """A :class:`Study` from a mapping (a parsed YAML file, or a dict given to ``bench.run(study=...)``).

    Each key is checked by its option's check (:class:`Study`'s fields); errors name ``source`` and the key:
    an unknown key, a value of the wrong type, a bad number.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise BenchError(f"{source}: a study must be a mapping of keys ({', '.join(STUDY_KEYS)}), "
                         f"got {type(data).__name__}")
    for key in data:
        if key not in STUDY_KEYS:
            raise BenchError(f"{source}: unknown key {excerpt(key)}{close_match_hint(str(key)[:100], STUDY_KEYS)}; "
                             f"valid: {', '.join(STUDY_KEYS)}")
    options = {o.name: o for o in options_of(Study)}
    study = Study()
    for key, value in data.items():
        if value is None:
            continue
        try:
            setattr(study, key, options[key].check(value))
        except OptionError as exc:
            where = exc.option if exc.option.startswith(f"{key}.") else key
            raise BenchError(f"{source}: {where}: {exc.text if exc.option in (key, where) else exc}") from None
        except BenchError as exc:
            raise BenchError(f"{source}: {key}: {exc}") from None
    return study


def executor_block(value: Any) -> dict[str, Any]:
    """A study's ``executor``: a name, or a mapping with ``name`` and the executor's options."""
    if isinstance(value, str) and value.strip():
        return {"name": value.strip()}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise OptionError("executor", f"must be a name or a mapping {{name: NAME, OPTION: value, ...}}, got {value!r}")
    name = value.get("name")
    if not isinstance(name, str) or not name.strip():
        raise OptionError("executor", f"needs a name (e.g. name: slurm), got {value!r}")
    return {**value, "name": name.strip()}


#: The studies that ship with gridbench (package data), by name: ``bench run --study linearity``.
SHIPPED = Path(__file__).resolve().parent / "studies"


def shipped() -> dict[str, Path]:
    """The shipped studies: name -> file."""
    return {path.stem: path for path in sorted(SHIPPED.glob("*.yaml"))}


def describe(path: Path) -> str:
    """A study file's first comment line (what ``bench list`` shows)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def locate(spec: Path | str) -> Path:
    """A study file, or the shipped study of that name where no such file exists."""
    path = Path(spec)
    if not path.exists() and str(spec) in shipped():
        return shipped()[str(spec)]
    return path


def load(path: Path | str) -> Study:
    """Read a study file (YAML, ``yaml.safe_load``), or a shipped study by name; every error names the file.

    Untrusted input is bounded: a file that is not a regular one (``/dev/zero``, a FIFO) or is larger
    than :data:`bench.files.STUDY_MAX` is refused unread, and so is YAML whose aliases expand it to more
    than :data:`bench.files.STUDY_VALUES_MAX` values (a "billion laughs" file).
    """
    import yaml

    path = locate(path)
    try:
        text = read_bounded(path, STUDY_MAX).decode()
    except Refused as exc:
        raise BenchError(f"study {path}: {exc.reason}") from None
    except OSError as exc:
        names = ", ".join(shipped()) or "none"
        raise BenchError(f"study {path}: cannot read it: {exc.strerror or exc} (a study file, or the name of one "
                         f"that ships with gridbench: {names}; bench list shows them)") from None
    except UnicodeDecodeError:
        raise BenchError(f"study {path}: not a text file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise BenchError(f"study {path}: not valid YAML{where}: {problem[:200]}") from None
    except RecursionError:
        raise BenchError(f"study {path}: not valid YAML: nested too deeply") from None
    if count_values(data, STUDY_VALUES_MAX) > STUDY_VALUES_MAX:
        raise BenchError(f"study {path}: holds more than {STUDY_VALUES_MAX:,} values once its YAML aliases (*name) "
                         "are expanded: refused")
    return from_mapping(data, f"study {path}")


def dump(study: Study) -> str:
    """The study as YAML text (what ``study.yaml`` holds)."""
    import yaml

    def plain(value):
        if isinstance(value, float) and math.isfinite(value):
            return value
        return value

    data = {k: plain(v) for k, v in study.to_dict().items()}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def parse_target(spec: Any) -> tuple[str, float] | None:
    """``"val_acc=0.97"`` -> ``("val_acc", 0.97)``; None stays None."""
    if spec is None:
        return None
    text = str(spec)
    if "=" not in text:
        raise OptionError("target", f"expected val_acc=VALUE or val_loss=VALUE, got {excerpt(text)}")
    metric, value = (s.strip() for s in text.split("=", 1))
    if metric not in ("val_acc", "val_loss"):
        raise OptionError("target", f"{text[:80]}: the metric must be val_acc or val_loss")
    try:
        number = float(value)
    except ValueError:
        raise OptionError("target", f"{text[:80]}: {excerpt(value)} is not a number") from None
    if not math.isfinite(number):
        raise OptionError("target", f"{text[:80]}: {excerpt(value)} is not a finite number")
    return metric, number


def check_names(study: Study, registry, source: str) -> None:
    """Every plugin name a study (file) uses is registered; an error names ``source`` and the key."""
    def check(key: str, fn) -> None:
        try:
            fn()
        except BenchError as exc:
            raise BenchError(f"{source}: {key}: {exc}") from None

    for key, kind in (("models", "model"), ("losses", "loss"), ("datasets", "dataset")):
        for name in getattr(study, key) or ():
            check(key, lambda kind=kind, name=name: registry.get(kind, name))
    if study.grid is not None:
        check("grid", lambda: registry.get_grid(study.grid))
    for name in study.track or ():
        check("track", lambda n=name: registry.get("tracker", n))
    for field_name in NAME_FIELDS:
        for name in study.recipe.get(field_name, ()):
            check(f"recipe.{field_name}", lambda f=field_name, n=name: registry.get(f, n))
    every = sorted({n for kind in PARAM_KINDS for n in registry.names(kind)})
    for key in study.params:
        name = key.split(".", 1)[0]
        if name not in every:
            raise BenchError(f"{source}: params.{key}: {unknown_name_error('component', name, every)}")
