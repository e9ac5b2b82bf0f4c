"""What one cell produced, defined once: :class:`CellRecord`, its JSON form (``cells/ID.json``) and the
columns of ``results.csv`` (:data:`RESULT_COLUMNS`) and ``history.csv`` (:data:`HISTORY_COLUMNS`).

The runner builds a record (:meth:`CellRecord.of`), executors hand records back, the store writes
them (:meth:`CellRecord.to_json`) and reads them (:meth:`CellRecord.from_json`), hooks and reports
receive them. A column of ``results.csv`` is a field marked :func:`column` below; the configuration
columns come from the cell (:data:`bench.config.IDENTITY_COLUMNS`), so a new recipe axis needs no
change here. A row column this version does not declare (a plugin's, or a newer gridbench's) is kept
in :attr:`CellRecord.extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.config import IDENTITY_COLUMNS

if TYPE_CHECKING:
    from bench.config import Cell

#: What names a cell in every table: its id and the parts a reader sees first.
KEY_COLUMNS = ("cell_id", "model", "loss", "dataset", "params", "seed")
#: The configuration columns that are not part of the key (the recipe, ``limit``, ``device``).
CONFIG_ONLY_COLUMNS = tuple(c for c in IDENTITY_COLUMNS if c not in KEY_COLUMNS)
#: Statuses a record may have.
STATUSES = ("ok", "failed", "skipped", "pruned")


def column(default: Any = None) -> Any:
    """A field that is a column of ``results.csv`` (in the order of declaration)."""
    return field(default=default, metadata={"column": True})


@dataclass
class CellRecord:
    """The outcome of one cell: its row of ``results.csv`` (the :func:`column` fields, the configuration
    in :attr:`config`), its epochs, confusion matrix, classes, template entry and when it ran.

    ``state_dict`` and ``templates_state`` hold tensors (or safetensors bytes from a worker) until the
    driver stores them as files (:attr:`weights`, ``templates["path"]``); they are never serialised.
    """

    cell_id: str
    model: str
    loss: str
    dataset: str
    params: str = "{}"
    seed: int = 0
    #: The other configuration columns (:data:`CONFIG_ONLY_COLUMNS`): recipe fields, ``limit``, ``device``.
    config: dict[str, Any] = field(default_factory=dict)
    phase: str = column("final")
    trial: int | None = column()
    tuning: str = column("")
    status: str = column("ok")
    error: str = column("")
    test_acc: float | None = column()
    test_loss: float | None = column()
    val_acc: float | None = column()
    val_loss: float | None = column()
    train_time_s: float | None = column()
    epoch_time_s: float | None = column()
    eval_time_s: float | None = column()
    samples_per_s: float | None = column()
    n_params: int | None = column()
    #: The final weights, relative to the run directory (``weights/ID.safetensors``); "" until stored.
    weights: str = column("")
    data_time_s: float | None = column()
    warmup_time_s: float | None = column()
    setup_time_s: float | None = column()
    step: str | None = column()
    cuda_graphs: bool | None = column()
    compiled: bool | None = column()
    execution_note: str | None = column()
    target: str | None = column()
    target_epoch: int | None = column()
    target_steps: int | None = column()
    target_time_s: float | None = column()
    fused_group: str | None = column()
    fused_size: int | None = column()
    #: Row columns not declared here, kept as they came.
    extra: dict[str, Any] = field(default_factory=dict)

    # -- beyond the row ----------------------------------------------------------------------------
    #: The cell's position in its grid (records are listed in that order).
    index: int = 0
    #: One entry per epoch: the key columns, then ``epoch``, losses, accuracies, ``epoch_time_s``.
    history: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[list[int]] | None = None
    classes: list[Any] = field(default_factory=list)
    input_shape: list[int] | None = None
    #: ``{"kind", "path"}`` of the class templates, or ``{"error"}`` where they could not be computed.
    templates: dict[str, str] | None = None
    #: Wall-clock times (Unix seconds) of the attempt, wherever it ran.
    started_at: float | None = None
    ended_at: float | None = None
    #: The traceback of an exception that is not a :class:`bench.BenchError` (a bug to report).
    traceback: str | None = None
    #: Keys of the JSON form not declared here, kept as they came.
    other: dict[str, Any] = field(default_factory=dict)
    state_dict: Any = field(default=None, repr=False, compare=False)
    templates_state: Any = field(default=None, repr=False, compare=False)

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def of(cls, cell: Cell, status: str = "ok", error: str = "", index: int = 0) -> CellRecord:
        """The record of ``cell`` with ``status`` and nothing measured yet. ``device`` is the device that
        trained it (``cuda:1``); the cell's identity uses only the kind."""
        config = cell.config()
        config = {c: config[c] for c in CONFIG_ONLY_COLUMNS}
        config["device"] = cell.device
        return cls(cell_id=cell.cell_id, model=cell.model, loss=cell.loss, dataset=cell.dataset,
                   params=cell.params_json, seed=cell.seed, config=config, phase=cell.phase, trial=cell.trial,
                   tuning=cell.tuning, status=status, error=error, index=index)

    def set(self, values: dict[str, Any]) -> None:
        """Set row columns from ``values`` (metrics, timings: what training measured); a column not
        declared here goes into :attr:`extra`."""
        for key, value in values.items():
            if key in _ROW_FIELDS:
                setattr(self, key, value)
            elif key in CONFIG_ONLY_COLUMNS:
                self.config[key] = value
            else:
                self.extra[key] = value

    def key(self) -> dict[str, Any]:
        """``{cell_id, model, loss, dataset, params, seed}``: what starts each of its history entries."""
        return {k: getattr(self, k) for k in KEY_COLUMNS}

    def add_epoch(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one epoch (``epoch``, losses, ...) to :attr:`history` under the cell's key; returns the entry."""
        entry = {**self.key(), **entry}
        self.history.append(entry)
        return entry

    # -- the row -----------------------------------------------------------------------------------

    def row(self) -> dict[str, Any]:
        """Its row of ``results.csv`` as a dict: :data:`RESULT_COLUMNS` in order, then :attr:`extra`."""
        values = {**self.key(), **self.config}
        row = {c: values[c] if c in values else getattr(self, c) for c in RESULT_COLUMNS}
        return {**row, **{k: v for k, v in self.extra.items() if k not in row}}

    @property
    def device(self) -> str:
        return str(self.config.get("device", ""))

    # -- JSON --------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The JSON form written to ``cells/ID.json`` (tensors are not part of it)."""
        data: dict[str, Any] = {**self.other, "index": self.index, "row": self.row(), "history": self.history,
                                "classes": self.classes}
        for name in ("confusion", "input_shape", "templates", "started_at", "ended_at", "traceback"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellRecord:
        """A record from its JSON form, as any gridbench wrote it (checked by the store's reader first)."""
        row = dict(data["row"])
        known = {k: row.pop(k) for k in KEY_COLUMNS if k in row}
        known.setdefault("params", "{}")
        config = {k: row.pop(k) for k in CONFIG_ONLY_COLUMNS if k in row}
        fields = {k: row.pop(k) for k in list(row) if k in _ROW_FIELDS}
        beyond = {k: data[k] for k in _JSON_FIELDS if k in data and data[k] is not None}
        other = {k: v for k, v in data.items() if k not in _JSON_FIELDS and k != "row"}
        return cls(**known, config=config, **fields, extra=row, **beyond, other=other)

    # -- the dict form of earlier versions ---------------------------------------------------------

    def _legacy(self) -> dict[str, Any]:
        data = self.to_json()
        return {**data["row"], **data}

    def __getitem__(self, key: str) -> Any:
        """``record["row"]``, ``record["history"]``, and a row's columns (``record["status"]``): the dict
        forms that code written for earlier versions reads (the record, and a failed cell's row in
        ``run.failed``). New code reads the attributes."""
        data = self._legacy()
        if key not in data:
            raise KeyError(key)
        return data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._legacy().get(key, default)


#: The row columns that are fields of the record (outcome, metrics, timings, how it ran).
_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(CellRecord) if f.metadata.get("column"))
#: The keys of the JSON form besides ``row``.
_JSON_FIELDS = ("index", "history", "confusion", "classes", "input_shape", "templates", "started_at", "ended_at",
                "traceback")
#: One row per cell: its id and identity (bench.config), then outcome, metrics, timings and how it ran.
RESULT_COLUMNS = ["cell_id", *IDENTITY_COLUMNS, *_ROW_FIELDS]
#: One row per cell and epoch: the key, then what the epoch measured.
HISTORY_COLUMNS = [*KEY_COLUMNS, "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s"]


def format_value(column: str, value: Any, missing: str = "") -> str:
    """A value of ``column`` as tables show it (terminal and reports alike): accuracies to 4 decimals,
    losses and times to 4 significant digits, throughput and parameter counts with thousands separators,
    whole numbers without a decimal point, other numbers as ``%g``; ``missing`` for no value."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        text = str(value)
        return "" if column == "params" and text == "{}" else text
    if column.endswith("_acc"):
        return f"{value:.4f}"
    if column.endswith("_loss") or column.endswith("_time_s"):
        return f"{value:.4g}"
    if column in ("samples_per_s", "n_params"):
        return f"{value:,.0f}"
    return str(int(value)) if float(value).is_integer() and (abs(value) >= 1 or value == 0) else f"{value:g}"
