"""What a cell's configuration is, defined once.

A *cell* is one training run: its components (model, loss, dataset) with their parameter
overrides, its training *recipe* (optimizer, learning rate, weight decay, schedule, batch size,
epochs, each optimizer/schedule parameter override), ``--limit``, the kind of device, and a seed.
A *configuration* is a cell without its seed: cells of one configuration differ only by seed, so
they are repeats of one experiment.

Everything else derives from this module:

- the cell id (:attr:`Cell.cell_id`, a hash of :meth:`Cell.identity`);
- the configuration columns of ``results.csv`` (:data:`CONFIG_COLUMNS`) and the start of every row
  (:meth:`Cell.row`);
- "same configuration, other seed" over a results table (:func:`config_frame`, :func:`config_keys`),
  used by the statistics and the reports;
- which configurations may be compared, and along which axis (:func:`axes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.errors import BenchError, OptionError
from bench.options import RECIPE, option

#: The components of a cell, in the order of a grid's triples.
COMPONENT_KINDS = ("model", "loss", "dataset")
#: Everything whose parameters ``--param NAME.KEY=V1,V2`` can set: the components and the recipe's plugins.
PARAM_KINDS = ("model", "loss", "dataset", "optimizer", "schedule")


@dataclass(frozen=True)
class Recipe:
    """How a cell is trained. Each field is a grid axis (``--lr 1e-3,1e-2`` crosses two recipes)."""

    #: "": the registry's default (a plugin declares it, see Registry.default)
    optimizer: str = option("", flag="--optimizer", section=RECIPE, metavar="NAME[,NAME]",
                            help="Optimizer(s): bench list shows them. [default: adam]")
    lr: float = option(1e-3, flag="--lr", section=RECIPE, metavar="X[,X]", help="Learning rate(s). [default: 0.001]")
    weight_decay: float = option(0.0, flag="--weight-decay", section=RECIPE, metavar="X[,X]",
                                 help="Weight decay(s). [default: 0]")
    schedule: str = option("", flag="--schedule", section=RECIPE, metavar="NAME[,NAME]",
                           help="Learning-rate schedule(s): bench list shows them. [default: constant]")
    batch_size: int = option(256, flag="--batch-size", section=RECIPE, metavar="N[,N]",
                             help="Batch size(s). [default: 256]")
    epochs: int = option(2, flag="--epochs", section=RECIPE, metavar="N[,N]",
                         help="Epochs (a comma list is an axis of the grid). [default: 2]")

    def __post_init__(self):
        # normalise numbers so that 1e-3 and 0.001, 0 and 0.0 are the same recipe (and the same id)
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OptionError(name, f"must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise OptionError(name, f"must be an integer, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("optimizer", "schedule"):
            if not isinstance(getattr(self, name), str):
                raise OptionError(name, f"must be a name, got {getattr(self, name)!r}")
        if self.epochs < 1:
            raise OptionError("epochs", f"must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise OptionError("batch_size", f"must be >= 1, got {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise OptionError("lr", f"must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise OptionError("weight_decay", f"must be a finite number >= 0, got {self.weight_decay}")


#: The recipe's fields: each is a column of results.csv and an axis of the grid.
RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
#: The columns of results.csv that identify a configuration (a cell without its seed), in order.
CONFIG_COLUMNS = ["model", "loss", "dataset", "params", *RECIPE_FIELDS, "limit", "device"]
#: ... and a cell: the configuration plus its seed.
IDENTITY_COLUMNS = [*CONFIG_COLUMNS, "seed"]
#: The defaults a results table from an older gridbench lacks (read as these values).
COLUMN_DEFAULTS = {**dataclasses.asdict(Recipe()), "limit": 0, "params": "{}"}
#: Axes along which two configurations may differ and still be compared (see :func:`axes`).
COMPONENT_AXES = ("model", "loss")
RECIPE_AXES = RECIPE_FIELDS
#: Two configurations are only ever compared on the same data, the same way, on the same device kind.
CONTEXT_COLUMNS = ("dataset", "limit", "device")


def _frozen(overrides: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    out = {}
    for kind, values in (overrides or {}).items():
        if kind not in PARAM_KINDS:
            raise BenchError(f"overrides for unknown kind '{kind}' (valid: {', '.join(PARAM_KINDS)})")
        if values:
            out[kind] = {key: values[key] for key in sorted(values)}
    return out


@dataclass(frozen=True, eq=False)
class Cell:
    """One experiment: components and their parameter overrides, a recipe, ``limit``, a device and a seed.

    Two cells are equal when their :meth:`identity` is: the same configuration and seed on the same
    kind of device (``cuda:0`` and ``cuda:1`` are one kind).
    """

    model: str
    loss: str
    dataset: str
    seed: int
    device: str
    recipe: Recipe = field(default_factory=Recipe)
    limit: int = 0  # train on at most this many samples (0: all)
    #: ``{"model": {...}, "loss": {...}, "dataset": {...}, "optimizer": {...}, "schedule": {...}}``:
    #: overrides of those plugins' default parameters.
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: ``final`` (a result) or ``tune`` (a tuning trial, see bench/tune.py: then ``trial`` is its Optuna
    #: trial number and part of the identity); ``tuning`` names the tuned configuration it belongs to.
    phase: str = "final"
    trial: int | None = None
    tuning: str = ""

    def __post_init__(self):
        object.__setattr__(self, "overrides", _frozen(self.overrides))
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0:
            raise OptionError("limit", f"must be an integer >= 0, got {self.limit!r}")

    # -- parts ------------------------------------------------------------------------------------

    def component(self, kind: str) -> str:
        """The name of the plugin of ``kind`` this cell uses (``optimizer`` and ``schedule`` included)."""
        return getattr(self.recipe, kind) if kind in ("optimizer", "schedule") else getattr(self, kind)

    def override(self, kind: str) -> dict[str, Any]:
        return dict(self.overrides.get(kind, {}))

    @property
    def params(self) -> dict[str, Any]:
        """The parameter overrides as ``{"NAME.KEY": value}`` (what ``--param`` set for this cell)."""
        return {f"{self.component(kind)}.{key}": value
                for kind in PARAM_KINDS for key, value in self.override(kind).items()}

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)

    @property
    def device_kind(self) -> str:
        return self.device.split(":")[0]

    # -- identity ---------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The configuration (everything but the seed) as ``{column: value}``, ``params`` as a dict."""
        return {"model": self.model, "loss": self.loss, "dataset": self.dataset, "params": self.params,
                **dataclasses.asdict(self.recipe), "limit": self.limit, "device": self.device_kind}

    def identity(self) -> dict[str, Any]:
        identity = {**self.config(), "seed": self.seed}
        if self.phase == "tune":  # a trial is its own experiment, even where its values repeat
            identity.update(phase=self.phase, trial=self.trial, tuning=self.tuning)
        return identity

    @property
    def config_key(self) -> str:
        """The configuration as one canonical string: cells with equal keys differ only by seed."""
        return _key(self.config())

    @property
    def cell_id(self) -> str:
        """A short id derived from the full configuration and seed, independent of the grid's order."""
        return hashlib.sha256(_key(self.identity()).encode()).hexdigest()[:12]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cell) and self.identity() == other.identity()

    def __hash__(self) -> int:
        return hash(_key(self.identity()))

    def row(self, status: str, error: str = "") -> dict[str, Any]:
        """The start of this cell's row in results.csv: id, configuration columns, seed, status, error.

        ``device`` is the device that trained it (``cuda:1``); its identity uses only the kind.
        """
        return {"cell_id": self.cell_id, **self.config(), "params": self.params_json, "device": self.device,
                "seed": self.seed, "phase": self.phase, "trial": self.trial, "tuning": self.tuning,
                "status": status, "error": error}

    @property
    def label(self) -> str:
        """``linear+mse on mnist [adam lr=0.001 batch=256 epochs=2] seed=0`` (weight decay, a schedule
        and ``limit`` shown where set)."""
        r = self.recipe
        recipe = [r.optimizer, f"lr={r.lr:g}"] + ([f"wd={r.weight_decay:g}"] if r.weight_decay else [])
        recipe += [r.schedule, f"batch={r.batch_size}", f"epochs={r.epochs}"]
        recipe += [f"limit={self.limit}"] if self.limit else []
        trial = f" trial={self.trial}" if self.phase == "tune" else ""
        return f"{config_label(self.config())} on {self.dataset} [{' '.join(recipe)}] seed={self.seed}{trial}"


def _plain(value: Any) -> Any:
    """A numpy scalar (what pandas 2 hands back from a table's integer or float column) as the Python number
    it holds, so that a value keys the same whether it came from a record or from a table."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a configuration value")


def _key(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"), default=_plain)


# -- configurations in a results table ------------------------------------------------------------

def _params_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {"?": str(value)}
    return parsed if isinstance(parsed, dict) else {"?": str(value)}


def _canonical(column: str, value: Any) -> Any:
    """A results-table value as the configuration holds it (numbers as numbers, device as its kind)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        value = COLUMN_DEFAULTS.get(column, value)
    if column == "params":
        return _params_dict(value)
    if column == "device":
        return str(value).split(":")[0]
    if column in ("lr", "weight_decay"):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    if column in ("batch_size", "epochs", "limit", "seed"):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return value
    return value if isinstance(value, str) else str(value)


def row_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration of one results row (a dict or a pandas row), older tables' gaps filled in."""
    return {column: _canonical(column, row.get(column) if hasattr(row, "get") else row[column])
            for column in CONFIG_COLUMNS}


def config_frame(results):
    """The configuration columns of a results DataFrame, canonical: missing recipe columns of an older
    gridbench filled with their defaults, ``params`` as canonical JSON, ``device`` as its kind.
    Grouping by these columns groups the seeds of one configuration."""
    import pandas as pd

    frame = pd.DataFrame(index=results.index)
    for column in CONFIG_COLUMNS:
        values = results[column] if column in results else pd.Series(COLUMN_DEFAULTS.get(column, ""),
                                                                        index=results.index)
        # each distinct value made canonical once: a column of 100,000 rows holds a few values
        codes, distinct = pd.factorize(values.astype(object), use_na_sentinel=False)
        canon = [_canonical(column, v) for v in distinct]
        canon = [_key(v) if column == "params" else v for v in canon]
        frame[column] = pd.Series(canon, dtype=object).take(codes).to_numpy() if len(values) else []
    return frame


def config_keys(results):
    """One canonical string per row of a results DataFrame: equal strings, same configuration."""
    import pandas as pd

    frame = config_frame(results)
    return pd.Series([_key({c: (_params_dict(r[c]) if c == "params" else r[c]) for c in CONFIG_COLUMNS})
                      for _, r in frame.iterrows()], index=results.index, dtype=object)


def config_label(config: Mapping[str, Any], columns: tuple[str, ...] = ("model", "loss")) -> str:
    """``mlp+crossentropy [mlp.hidden=64]``: the named columns joined by ``+``, then every parameter
    override. Callers add the recipe columns that vary (see :func:`varying_label`)."""
    params = _params_dict(config.get("params"))
    extra = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    return "+".join(str(config[c]) for c in columns) + (f" [{extra}]" if extra else "")


def axes(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration split into comparison axes: ``model``, ``loss`` and each recipe field, each
    with the parameter overrides of its plugin (``sgd`` with ``momentum=0`` is another value of the
    ``optimizer`` axis), and the context (dataset, limit, device) that comparisons never cross."""
    params = _params_dict(config.get("params"))
    out: dict[str, Any] = {}
    owned: set[str] = set()
    for axis in (*COMPONENT_AXES, "dataset", "optimizer", "schedule"):
        name = str(config[axis])
        own = {k: v for k, v in params.items() if k.startswith(f"{name}.")}
        owned |= set(own)
        out[axis] = _key({"name": name, "params": own})
    for axis in ("lr", "weight_decay", "batch_size", "epochs"):
        out[axis] = config[axis]
    out["_context"] = _key({"dataset": out.pop("dataset"), "limit": config["limit"], "device": config["device"],
                            "other": {k: v for k, v in params.items() if k not in owned}})
    return out


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> str | None:
    """Along which axis two configurations may be compared, or ``None``.

    ``"recipe"`` (shorthand for: the same recipe, other components) when they share the dataset, the
    whole recipe, ``limit`` and device kind, and differ in model and/or loss; otherwise the name of the
    one recipe axis (``lr``, ``optimizer``, ...) in which they differ when everything else is equal.
    Anything else differs in two ways at once, and its difference could not be attributed.
    """
    xa, xb = axes(a), axes(b)
    if xa["_context"] != xb["_context"]:
        return None
    differ = [k for k in xa if k != "_context" and xa[k] != xb[k]]
    if not differ:
        return None
    if all(k in COMPONENT_AXES for k in differ):
        return "recipe"
    if len(differ) == 1 and differ[0] in RECIPE_AXES:
        return differ[0]
    return None


def _distinct(value: Any) -> Any:
    """``value`` as :func:`_key` tells it apart (1 from 1.0 and True, every NaN alike), cheaply for scalars."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return (type(value), value) if isinstance(value, (str, int, float)) else _key(value)


def varying_label(configs: list[Mapping[str, Any]]) -> list[str]:
    """A short label per configuration: model+loss and parameters, plus each recipe field (and dataset,
    limit) whose value is not the same across ``configs``, e.g. ``linear+mse lr=0.01 optimizer=sgd``."""
    varying = [c for c in (*RECIPE_FIELDS, "limit") if len({_distinct(cfg[c]) for cfg in configs}) > 1]
    return [config_label(cfg) + "".join(f" {c}={cfg[c]:g}" if isinstance(cfg[c], float) else f" {c}={cfg[c]}"
                                        for c in varying) for cfg in configs]
