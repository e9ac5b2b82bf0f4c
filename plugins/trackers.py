"""Experiment trackers: MLflow and TensorBoard, built-in plugins on the lifecycle events.

``bench run --track mlflow,tensorboard`` (or the study key ``track``) logs the run as it happens:

- ``mlflow``: one parent run per run directory (reused when the run is resumed), one nested run per
  cell: its configuration as params, its epochs as metrics (``step`` = epoch, history.csv's names),
  its results as metrics named ``final/NAME`` (results.csv's names), tags ``cell_id`` and ``status``;
  ``results.csv``, ``history.csv``, ``study.yaml`` and the report are artifacts of the parent.
  Tracking URI ``$MLFLOW_TRACKING_URI``, else a SQLite store in the run directory
  (``sqlite:///RUN/mlflow.db``); experiment ``$MLFLOW_EXPERIMENT_NAME``, else one per run directory.
- ``tensorboard``: ``RUN/tensorboard/NAME CELL_ID/`` (NAME says the configuration and seed, e.g.
  ``linear+mse lr=0.001 seed=0``), one TensorBoard run per cell: the epochs as scalars, the results
  as ``final/NAME`` scalars at the last epoch, and an HParams session (configuration, integers as
  written; status), so TensorBoard's HParams tab compares the cells.

Both mirror the run directory: a cell appears once, with the numbers of ``results.csv`` and
``history.csv``. A cell whose record is on disk but that a tracker missed (the run was killed in
between, or the directory was run without ``--track``) is logged from its record when the run
resumes; remains of an attempt that never finished are marked (MLflow: ``KILLED``) or replaced
(TensorBoard). Each needs an optional extra, imported only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import hookimpl
from bench.config import IDENTITY_COLUMNS, Cell
from bench.errors import BenchError

#: The columns a results row starts with (:meth:`bench.config.Cell.row`: id, configuration, seed, the
#: cell's role and status): what the cell is, never a measurement of it.
_ROW_START = frozenset(Cell("model", "loss", "dataset", 0, "cpu").row("ok"))
#: ... and of a history row, with its epoch.
_NOT_METRICS = _ROW_START | {"epoch"}
#: A cell's results (results.csv's numbers) are logged under this prefix, apart from its per-epoch curves
#: (history.csv's names): MLflow and TensorBoard show them in a section of their own.
FINAL = "final/"
#: results.csv's ``epoch_time_s`` is the median over the epochs, the per-epoch series has the bare name:
#: one meaning per name, so the median is named as such.
_FINAL_NAMES = {"epoch_time_s": "median_epoch_time_s"}


def _require(module: str, extra: str, tracker: str) -> None:
    """Fail before anything trains when an optional dependency is missing (without importing it: slow)."""
    missing = sys.modules[module] is None if module in sys.modules else importlib.util.find_spec(module) is None
    if missing:
        raise BenchError(f"tracker '{tracker}' needs {module}, an optional extra: pip install 'gridbench[{extra}]' "
                         f"(from a checkout: pip install -e '.[{extra}]')")


# -- what a cell's record says, as trackers log it ---------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A history row's numbers (losses, accuracies, time), by their history.csv names."""
    return {k: float(v) for k, v in row.items() if k not in _NOT_METRICS and _is_number(v)}


def final_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The cell's results, results.csv's numbers, as ``final/NAME`` (``final/median_epoch_time_s`` for its
    ``epoch_time_s``): apart from the per-epoch curves, whose names are history.csv's."""
    return {FINAL + _FINAL_NAMES.get(key, key): float(value) for key, value in record.row().items()
            if key not in _NOT_METRICS and _is_number(value)}


def config_params(row: dict[str, Any]) -> dict[str, Any]:
    """The cell's identity, as results.csv has it (``params`` a JSON object), and each swept ``NAME.KEY``."""
    params = {column: row.get(column) for column in IDENTITY_COLUMNS}
    try:
        swept = json.loads(row.get("params") or "{}")
    except (TypeError, ValueError):
        swept = {}
    return {**params, **(swept if isinstance(swept, dict) else {})}


def result_tags(row: dict[str, Any]) -> dict[str, str]:
    """What a results row says besides its configuration and measurements: ``cell_id``, ``status``,
    ``error``, how it ran, ..."""
    return {k: str(v) for k, v in row.items()
            if k not in IDENTITY_COLUMNS and (k in _ROW_START or not _is_number(v)) and v not in ("", None)}


def _will_train(run) -> set[str]:
    """The ids of the cells this run trains (their records, if any, are about to be replaced)."""
    ids = [cell.cell_id for cell in run.cells]
    if run.to_train >= len(ids):
        return set(ids)
    finished = run.store.finished()
    return {i for i in ids if i not in finished}


def _finished_records(run) -> list[dict[str, Any]]:
    """The records of the run directory's finished cells (ok or skipped) that this run does not retrain."""
    finished, training = run.store.finished(), _will_train(run)
    return [r for r in run.store.records() if r.cell_id in finished
            and r.cell_id not in training]


def _cell_times(record: dict[str, Any], seen: float | None = None) -> tuple[float, float]:
    """(start, end) of a cell's attempt in Unix seconds: from its record, else from what was timed."""
    end = record.ended_at or time.time()
    row = record.row()
    spent = sum(float(row.get(k) or 0) for k in ("data_time_s", "warmup_time_s", "train_time_s", "eval_time_s"))
    start = record.started_at or seen or end - spent
    return float(start), float(end)


# -- MLflow -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet(*loggers: str):
    """MLflow and alembic announce every database they create at INFO on stderr: not in our output."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


class MlflowTracker:
    """One parent run per run directory, one nested run per cell (see the module's docstring).

    A cell's nested run is opened once the cell has trained for :attr:`LIVE_AFTER_S` seconds, so that
    a long cell's epochs show as they happen; shorter cells, and cells trained by another process
    (whose events reach the driver together with the record), are logged in one go when they end,
    with the start and end times of their record.
    """

    LIVE_AFTER_S = 1.0
    PARENT_TAG = "bench.run_dir"

    #: The experiment's kind, which MLflow's UI reads to choose the experiment's first view.
    EXPERIMENT_KIND = "mlflow.experimentKind"

    def __init__(self):
        _require("mlflow", "mlflow", "mlflow")
        self.client = None
        self.parent_id = ""
        self.experiment_id = ""
        self.run_dir = ""
        self.logged: dict[str, list] = {}  # cell id -> its FINISHED nested runs
        self.cells: dict[str, dict[str, Any]] = {}  # cell id -> {"seen", "run_id", "epochs"} of a training cell

    # -- the store, the experiment and the parent ---------------------------------------------------------

    @hookimpl(trylast=True)
    def bench_run_start(self, run) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import ViewType

        root = Path(run.path).resolve()
        self.run_dir = str(root)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"
        with _quiet("mlflow", "alembic"):
            self.client = client = MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or f"gridbench {root}"
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                location = None if os.environ.get("MLFLOW_TRACKING_URI") else (root / "mlartifacts").as_uri()
                self.experiment_id = client.create_experiment(name, artifact_location=location)
            else:
                self.experiment_id = experiment.experiment_id
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(self.experiment_id)
            if experiment is None or self.EXPERIMENT_KIND not in experiment.tags:
                # without it MLflow's UI may open the experiment in its GenAI view, not on the runs table
                client.set_experiment_tag(self.experiment_id, self.EXPERIMENT_KIND, "custom_model_development")
        parents = [r for r in self._search(f"tags.`{self.PARENT_TAG}` != ''", ViewType.ACTIVE_ONLY)
                   if r.data.tags.get(self.PARENT_TAG) == str(root) and "mlflow.parentRunId" not in r.data.tags]
        if parents:
            self.parent_id = min(parents, key=lambda r: r.info.start_time).info.run_id
            client.update_run(self.parent_id, status="RUNNING")
        else:
            from bench import __version__

            self.parent_id = client.create_run(self.experiment_id, run_name=root.name, tags={
                self.PARENT_TAG: str(root), "bench.version": __version__}).info.run_id
        for child in self._search(f"tags.`mlflow.parentRunId` = '{self.parent_id}'", ViewType.ACTIVE_ONLY):
            cell_id = child.data.tags.get("cell_id", "")
            if child.info.status == "RUNNING":  # its process was killed: this attempt never ended
                client.set_tag(child.info.run_id, "bench.note", "the process logging this cell ended before it did")
                client.set_terminated(child.info.run_id, "KILLED")
            elif child.info.status == "FINISHED":
                self.logged.setdefault(cell_id, []).append(child.info.run_id)
        for record in _finished_records(run):  # finished in the directory, missed by MLflow
            if not self.logged.get(record.cell_id):
                self._log_record(record)

    def _search(self, filter_string: str, view) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, run_view_type=view,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # -- cells ----------------------------------------------------------------------------------------------

    def _open(self, row: dict[str, Any], start: float) -> str:
        from mlflow.entities import Param, RunTag

        run_id = self.client.create_run(self.experiment_id, start_time=int(start * 1000), run_name=_run_name(row),
                                        tags={"mlflow.parentRunId": self.parent_id, "cell_id": row["cell_id"],
                                              "status": "running"}).info.run_id
        params = [Param(k, _text(v)) for k, v in config_params(row).items()]
        self._batch(run_id, params=params, tags=[RunTag(self.PARENT_TAG, self.run_dir)])
        return run_id

    def _log_epochs(self, run_id: str, rows: list[dict[str, Any]], stamps: list[float]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, int(stamp * 1000), int(row["epoch"]))
                   for row, stamp in zip(rows, stamps) for k, v in epoch_metrics(row).items()]
        self._batch(run_id, metrics=metrics)

    def _close(self, run_id: str, record: dict[str, Any], end: float) -> None:
        from mlflow.entities import Metric, RunTag

        row = record.row()
        history = record.history
        step = int(history[-1]["epoch"]) if history else 0
        metrics = [Metric(k, v, int(end * 1000), step) for k, v in final_metrics(record).items()]
        self._batch(run_id, metrics=metrics, tags=[RunTag(k, v[:5000]) for k, v in result_tags(row).items()])
        self.client.set_terminated(run_id, "FAILED" if row["status"] == "failed" else "FINISHED",
                                   end_time=int(end * 1000))
        for old in self.logged.pop(row["cell_id"], []):
            # an earlier result of this cell (a forced rerun): the directory holds the new one now
            self.client.set_tag(old, "bench.note", f"superseded by run {run_id}")
            self.client.delete_run(old)
        if row["status"] != "failed":
            self.logged[row["cell_id"]] = [run_id]

    def _batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        """``log_batch`` within MLflow's limits (1000 metrics, 100 params, 100 tags a call)."""
        metrics, params, tags = list(metrics), list(params), list(tags)
        while metrics or params or tags:
            self.client.log_batch(run_id, metrics=metrics[:1000], params=params[:100], tags=tags[:100],
                                  synchronous=True)  # also where MLFLOW_ENABLE_ASYNC_LOGGING is set
            metrics, params, tags = metrics[1000:], params[100:], tags[100:]

    def _log_record(self, record: dict[str, Any], seen: float | None = None, stamps: list[float] = ()) -> None:
        """Log a whole cell from its record: with the times its epochs were seen ending, if they were (here),
        else as its record tells them."""
        start, end = _cell_times(record, seen)
        run_id = self._open(record.row(), start)
        history = record.history
        if len(stamps) != len(history):
            stamps = _epoch_stamps(history, start, end)
        self._log_epochs(run_id, history, list(stamps))
        self._close(run_id, record, end)

    @hookimpl(trylast=True)
    def bench_cell_start(self, cell) -> None:
        self.cells[cell.cell_id] = {"seen": time.time(), "run_id": None, "epochs": []}

    @hookimpl(trylast=True)
    def bench_epoch_end(self, cell, row) -> None:
        state = self.cells.setdefault(cell.cell_id, {"seen": time.time(), "run_id": None, "epochs": []})
        now = time.time()
        if state["run_id"] is not None:
            self._log_epochs(state["run_id"], [row], [now])
            return
        state["epochs"].append((row, now))
        if now - state["seen"] >= self.LIVE_AFTER_S:  # a long cell, training here: show it as it goes
            state["run_id"] = self._open(cell.row("running"), state["seen"])
            rows, stamps = zip(*state["epochs"])
            self._log_epochs(state["run_id"], list(rows), list(stamps))

    @hookimpl(trylast=True)
    def bench_cell_end(self, cell, record) -> None:
        state = self.cells.pop(cell.cell_id, None)
        ended = record.ended_at if record.ended_at is not None else state["seen"] if state else 0.0
        if state and state["run_id"] is not None and state["seen"] > ended:
            # opened while a cell that had ended elsewhere was replayed (slowly): its times were not the cell's
            self.client.delete_run(state["run_id"])
            state = None
        if state is None or state["run_id"] is None:
            stamps = [stamp for _, stamp in state["epochs"]] if state else []
            if record.ended_at is None or any(t > record.ended_at for t in stamps):
                stamps = []  # events replayed after the record came back from a worker: not when they happened
            self._log_record(record, state["seen"] if state else None, stamps)
        else:
            self._close(state["run_id"], record, time.time())

    # -- the end ----------------------------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def bench_run_end(self, run, results) -> None:
        if self.client is None:
            return
        root = Path(run.path)
        for state in self.cells.values():  # interrupted mid-cell
            if state["run_id"] is not None:
                self.client.set_terminated(state["run_id"], "KILLED")
        complete = not getattr(run, "interrupted", False)
        for name in ("results.csv", "history.csv", "study.yaml"):
            if (root / name).is_file():
                self.client.log_artifact(self.parent_id, str(root / name))
        if complete and results:
            try:
                self.client.log_artifacts(self.parent_id, str(_report(root)), "report")
            except BenchError as exc:
                self.client.set_tag(self.parent_id, "bench.report_error", str(exc)[:5000])
        failed = any(row.get("status") == "failed" for row in results)
        self.client.set_terminated(self.parent_id, "KILLED" if not complete else "FAILED" if failed else "FINISHED")


def _report(root: Path) -> Path:
    """The run directory's report folder (``RUN/report``, as ``bench report RUN`` writes it), made now
    unless it is already newer than ``results.csv``."""
    index = root / "report" / "index.html"
    if not index.is_file() or index.stat().st_mtime_ns < (root / "results.csv").stat().st_mtime_ns:
        from bench.reports import build_report

        index = Path(build_report([root]).index)
    return index.parent


def _run_name(row: dict[str, Any]) -> str:
    """``linear+mse seed=0`` (with the swept parameters): short, the params hold the rest."""
    swept = json.loads(row.get("params") or "{}")
    extra = ",".join(f"{k}={v}" for k, v in sorted(swept.items()))
    trial = f" trial={row['trial']}" if row.get("phase") == "tune" else ""
    return f"{row['model']}+{row['loss']}{f' [{extra}]' if extra else ''} seed={row['seed']}{trial}"


def _tb_folder(row: dict[str, Any]) -> str:
    """A cell's TensorBoard run: ``linear+mse lr=0.001 seed=0 CELL_ID``, so that the charts' legends say which
    configuration and seed each line is (the cell id keeps names apart and finds the cell's row)."""
    name = _run_name(row).replace(" seed=", f" lr={float(row['lr']):g} seed=", 1)
    return re.sub(r'[\\/:*?"<>|]', "_", f"{name} {row['cell_id']}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _epoch_stamps(history: list[dict[str, Any]], start: float, end: float) -> list[float]:
    """When each epoch ended, as well as a record tells: the epochs' times, counted back from the end of
    the training (before the test evaluation), clamped to the attempt."""
    stamps, t = [], end
    for row in reversed(history):
        stamps.append(max(start, min(end, t)))
        t -= float(row.get("epoch_time_s") or 0)
    return stamps[::-1]


# -- TensorBoard --------------------------------------------------------------------------------------------

#: A cell's folder holds this file once all of the cell is written (the HParams session ended).
TB_DONE = "complete"


class TensorBoardTracker:
    """``RUN/tensorboard/NAME CELL_ID/``: per-epoch scalars as they happen, results and an HParams session at the
    end (see the module's docstring)."""

    def __init__(self):
        _require("tensorboard", "tensorboard", "tensorboard")
        self.root: Path | None = None
        self.writers: dict[str, Any] = {}

    @hookimpl(trylast=True)
    def bench_run_start(self, run) -> None:
        self.root = Path(run.path) / "tensorboard"
        for record in _finished_records(run):  # finished in the directory, not (or not wholly) written here
            if not (self.root / _tb_folder(record.row()) / TB_DONE).is_file():
                self._write_record(record)

    def _writer(self, name: str):
        """A fresh folder for the cell: what an earlier attempt left there is replaced."""
        from torch.utils.tensorboard import SummaryWriter

        folder = self.root / name
        if folder.exists():
            shutil.rmtree(folder)
        return SummaryWriter(log_dir=str(folder))

    def _write_record(self, record: dict[str, Any]) -> None:
        writer = self._writer(_tb_folder(record.row()))
        start, end = _cell_times(record)
        history = record.history
        for row, stamp in zip(history, _epoch_stamps(history, start, end)):
            _scalars(writer, row, stamp)
        self._finish(writer, record, start, end)

    def _finish(self, writer, record: dict[str, Any], start: float, end: float) -> None:
        history = record.history
        step = int(history[-1]["epoch"]) if history else 0
        for name, value in final_metrics(record).items():
            writer.add_scalar(name, value, step, walltime=end)
        for summary in _hparams(record.row(), start, end):
            writer.file_writer.add_summary(summary, walltime=end)
        writer.close()
        (Path(writer.log_dir) / TB_DONE).write_text("")

    @hookimpl(trylast=True)
    def bench_cell_start(self, cell) -> None:
        identity = cell.identity()
        row = {**identity, "params": json.dumps(identity["params"]), "cell_id": cell.cell_id}
        self.writers[cell.cell_id] = (self._writer(_tb_folder(row)), time.time())

    @hookimpl(trylast=True)
    def bench_epoch_end(self, cell, row) -> None:
        if cell.cell_id in self.writers:
            writer, _ = self.writers[cell.cell_id]
            _scalars(writer, row, time.time())
            writer.flush()  # TensorBoard shows the epoch now

    @hookimpl(trylast=True)
    def bench_cell_end(self, cell, record) -> None:
        if cell.cell_id not in self.writers:
            self._write_record(record)
            return
        writer, seen = self.writers.pop(cell.cell_id)
        start, _ = _cell_times(record, seen)
        self._finish(writer, record, start, time.time())

    @hookimpl(trylast=True)
    def bench_run_end(self, run, results) -> None:
        for writer, _ in self.writers.values():  # interrupted mid-cell: keep what was written, unfinished
            writer.close()
        self.writers.clear()


def _scalars(writer, row: dict[str, Any], walltime: float) -> None:
    for name, value in epoch_metrics(row).items():
        writer.add_scalar(name, value, int(row["epoch"]), walltime=walltime)


def _hparams(row: dict[str, Any], start: float, end: float) -> list:
    """The HParams plugin's session start (the configuration) and end (the status) summaries.

    No experiment summary is written: TensorBoard then builds the experiment from every session's
    hparams and scalars, so cells whose parameters differ (e.g. ``mlp.hidden`` on some) all show.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import metadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo, SessionStartInfo

    start_info = SessionStartInfo(start_time_secs=start)
    for key, value in config_params(row).items():
        if isinstance(value, bool):
            start_info.hparams[key].bool_value = value
        elif isinstance(value, float):
            start_info.hparams[key].number_value = value
        else:  # an integer too: the HParams tab shows a number as 256.00, a string as written (seed, batch_size)
            start_info.hparams[key].string_value = _text(value)
    status = {"ok": "STATUS_SUCCESS", "failed": "STATUS_FAILURE"}.get(row["status"], "STATUS_ABORTED")
    end_info = SessionEndInfo(status=Status.Value(status), end_time_secs=end)

    def summary(tag, **content):
        data = HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **content).SerializeToString()
        plugin = SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME, content=data)
        return Summary(value=[Summary.Value(tag=tag, metadata=SummaryMetadata(plugin_data=plugin))])

    return [summary(metadata.SESSION_START_INFO_TAG, session_start_info=start_info),
            summary(metadata.SESSION_END_INFO_TAG, session_end_info=end_info)]


@hookimpl
def bench_register_trackers(register):
    register("mlflow", MlflowTracker, description="MLflow: a parent run per run directory, a nested run per cell; "
             "needs pip install 'gridbench[mlflow]'")
    register("tensorboard", TensorBoardTracker, description="TensorBoard event files and HParams under "
             "RUN/tensorboard/; needs pip install 'gridbench[tensorboard]'")
