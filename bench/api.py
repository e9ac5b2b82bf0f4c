"""One run of gridbench as a library call: ``bench.run(...)`` returns a :class:`Run`.

The command line (``bench run``), ``bench.testing`` and notebooks are thin layers over :func:`run`:
it reads the study (a file, a dict, options, or the one a run directory keeps), expands and checks
the cells, trains those not finished yet in the run directory through an executor, and returns the
run. :func:`load` opens a finished run directory the same way.

    import bench
    run = bench.run(models="linear", losses="mse,crossentropy", lr=[1e-3, 1e-2], seeds=[0, 1, 2],
                    device="cpu", limit=5000)
    run.summary()          # one row per configuration, seeds aggregated (mean ± 95% CI)
    run.results            # results.csv as a DataFrame
    run.report()           # writes RUN/report/index.html and returns its path
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import __version__
from bench import options as options_mod
from bench import study as study_mod
from bench.config import RECIPE_FIELDS, Recipe
from bench.errors import BenchError, OptionError
from bench.files import excerpt
from bench.grid import expand, triples_of
from bench.host import Host, close_match_hint
from bench.options import RunOptions, options_of
from bench.paths import default_data_dir
from bench.record import CellRecord
from bench.references import references_for
from bench.store import RunStore
from bench.study import KEYWORDS, REPEAT, Study, dump, parse_target
from bench.threads import set_threads
from bench.tune import PRUNE_POINTS, Tuning, check_spaces, parse_space, reuse_record, run_tuning

#: The file in a run directory that keeps the resolved study.
STUDY_FILE = "study.yaml"


def default_run_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / stamp, 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{stamp}-{n}"
    return path


#: The columns of :func:`bench.stats.aggregate` that :meth:`Run.summary` names after its metric.
SUMMARY_STATISTICS = ("mean", "std", "ci", "ci_low", "ci_high")


@dataclass
class Run:
    """A run directory and what was run into it: results, history, summary, report.

    ``path`` is the run directory; ``results`` and ``history`` are its ``results.csv`` and
    ``history.csv`` as DataFrames (read when asked, so they are always what is on disk).
    From :func:`run`, ``cells`` are the study's cells and ``records`` their
    :class:`bench.record.CellRecord` in grid order (``rows``: the same as rows of results.csv);
    with ``dry_run=True`` nothing trained and ``plan`` lists ``(state, cell)`` pairs.
    """

    path: Path
    study: Study | None = None
    cells: list = field(default_factory=list)
    records: list[CellRecord] = field(default_factory=list)
    plan: list[tuple[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    #: What observers (lifecycle hooks, trackers) are told: no progress output wanted, the ``track``
    #: names, how many cells will train, the device.
    quiet: bool = False
    tracked: tuple[str, ...] = ()
    to_train: int = 0
    device: str = ""
    #: Set when the run ended: True if it stopped early (Ctrl-C, corrupt data) rather than ran every cell.
    interrupted: bool = False
    #: How the run's steps train (:class:`bench.engine.Execution`), as :func:`run` decided it.
    execution: Any = None

    @property
    def store(self):
        return RunStore(self.path)

    @property
    def results(self):
        """``results.csv``: one row per cell (every cell in the directory, also of earlier studies)."""
        return self.store.results()

    @property
    def history(self):
        """``history.csv``: one row per cell and epoch."""
        return self.store.history()

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The records' rows, as in results.csv."""
        return [record.row() for record in self.records]

    @property
    def failed(self) -> list[CellRecord]:
        """The records of the cells that failed."""
        return [record for record in self.records if record.status == "failed"]

    def templates(self, cell_id: str):
        """``(templates, classes, kind)`` of a finished cell: a float array ``[classes, *input_shape]`` (for
        ``linear``, its weights; see the README's Reports section), the class names, and the kind."""
        from safetensors.numpy import load_file

        records = {r.cell_id: r for r in self.store.records()}
        if cell_id not in records:
            raise BenchError(f"{self.path}: no cell {cell_id}")
        entry = records[cell_id].templates or {}
        if not entry.get("path"):
            raise BenchError(f"cell {cell_id} has no templates: {entry.get('error', 'it did not finish')}")
        arrays = load_file(str(self.store.path_of(entry["path"])))  # never a file outside the run
        return arrays["templates"], records[cell_id].classes, entry.get("kind", "")

    def summary(self, metric: str = "test_acc"):
        """One row per configuration (a cell without its seed): ``n`` finished seeds and the metric's mean,
        standard deviation and 95% Student-t interval (:func:`bench.stats.aggregate`), in columns named after
        the metric: ``test_acc_mean``, ``test_acc_std``, ``test_acc_ci`` (the half-width), ``test_acc_ci_low``
        and ``test_acc_ci_high`` (the interval clipped to the metric's range)."""
        from bench import stats

        table = stats.aggregate(self.results, metric)
        return table.rename(columns={column: f"{metric}_{column}" for column in SUMMARY_STATISTICS})

    def comparisons(self, metric: str = "test_acc"):
        """Paired seed-by-seed comparisons of comparable configurations (:func:`bench.stats.compare`)."""
        from bench import stats

        return stats.compare(self.results, metric)

    def report(self, out: Path | str | None = None) -> Path:
        """Write the report (default ``RUN/report``) and return the path of its ``index.html``."""
        from bench.reports import build_report

        return Path(build_report([self.path], Path(out) if out is not None else None).index)

    def _repr_html_(self) -> str:
        import html

        try:
            table = self.summary()
        except BenchError as exc:
            return f"<p>gridbench run {html.escape(str(self.path))}: {html.escape(str(exc))}</p>"
        shown = table[["label", "dataset", "n", "test_acc_mean", "test_acc_ci_low", "test_acc_ci_high", "failed"]]
        shown = shown.rename(columns={"label": "configuration", "n": "seeds", "test_acc_mean": "test_acc",
                                      "test_acc_ci_low": "95% CI low", "test_acc_ci_high": "95% CI high"})
        # the interval as clipped to [0, 1], not a half-width
        return (f"<p><b>gridbench run</b> <code>{html.escape(str(self.path))}</code>: "
                f"{len(self.results)} cell(s)</p>" + shown.to_html(index=False, float_format=lambda v: f"{v:.4f}",
                                                                    na_rep="", escape=True))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {len(self.records)} cell(s))"


def path_argument(option: str, value: Any, optional: bool = True) -> Path | None:
    """``value`` as a :class:`~pathlib.Path` (``None`` stays None where ``optional``); anything but a str or
    path-like is an :class:`OptionError` naming ``option``."""
    if value is None and not optional:
        raise OptionError(option, "must be a path (a str or pathlib.Path), got None")
    return options_mod.path(option)(value)


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`run`'s keywords as ``(what to train, how to run)``: the study's (its keywords, each recipe field,
    ``repeat``) and the :class:`bench.options.RunOptions`; any other name is an :class:`OptionError`."""
    run_names = {o.name for o in options_of(RunOptions)}
    study_names = {*KEYWORDS, *RECIPE_FIELDS, "repeat"}
    what, how = {}, {}
    for name, value in options.items():
        if name in study_names:
            what[name] = value
        elif name in run_names:
            how[name] = value
        else:
            valid = sorted(study_names | run_names)
            raise OptionError(name, f"is not an option of bench.run{close_match_hint(name, valid)} "
                                    f"(valid: {', '.join(valid)})")
    return what, how


def load(run_dir: Path | str) -> Run:
    """Open a run directory (one that ``bench run`` wrote) as a :class:`Run`."""
    path = path_argument("run_dir", run_dir, optional=False)
    if not path.is_dir():
        raise BenchError(f"{path}: no such run directory")
    store = RunStore(path)
    store.results()  # a clear error now if it is not a run directory
    study_path = path / STUDY_FILE
    study = study_mod.load(study_path) if study_path.is_file() else None
    return Run(path, study, records=store.records())


def study_source(study) -> str:
    """How errors name a study: ``study FILE`` or ``study``."""
    return "study" if isinstance(study, (Mapping, Study)) or study is None else f"study {study}"


def resolve_study(study: Path | str | Mapping | Study | None, options: Study, out: Path | None,
                  registry=None) -> Study:
    """The study to run: a file or mapping, overridden by the options that were given; with neither
    saying what to train and ``out`` an existing run directory, the study that directory keeps."""
    if isinstance(study, Study):
        base = study
    elif isinstance(study, Mapping):
        base = study_mod.from_mapping(study, "study")
    elif study is not None:
        base = study_mod.load(study)
    else:
        base = Study()
    if registry is not None and study is not None and not isinstance(study, Study):
        study_mod.check_names(base, registry, study_source(study))
    merged = base.merged(options)
    if not merged.sets_grid() and out is not None:
        if (Path(out) / STUDY_FILE).is_file():
            return study_mod.load(Path(out) / STUDY_FILE).merged(options)
        _refuse_run_without_study(Path(out))
    return merged


def _refuse_run_without_study(out: Path) -> None:
    """A run directory that holds cells but lost its ``study.yaml``: resuming it with no grid options
    would train the default grid into it, beside cells of another study. Say so instead."""
    store = RunStore(out)
    if store.is_run_dir() and (store.record_paths() or (out / "results.csv").is_file()):
        raise BenchError(f"{out} is a run directory without its {STUDY_FILE}, and no grid option says what to "
                         f"run into it: give the study again (--study FILE, or --grid/--models/... as the first run "
                         f"did; results.csv lists its configurations), or choose another --out")


def resolved(study: Study, registry, cells, device) -> Study:
    """The study with its defaults filled in (what ``study.yaml`` keeps): what ran, said in full."""
    recipe = {name: list(dict.fromkeys(getattr(c.recipe, name) for c in cells)) for name in RECIPE_FIELDS}
    recipe = {k: (v[0] if len(v) == 1 else v) for k, v in recipe.items()}
    params = {}
    for key, values in study.params.items():
        typed = list(dict.fromkeys(v for c in cells for k, v in c.params.items() if k == key))
        params[key] = typed or values
    out = dataclasses.replace(study, params=params, recipe=recipe, seeds=list(dict.fromkeys(c.seed for c in cells)),
                              limit=study.limit or 0, device=study.device or str(device),
                              executor=dict(study.executor))
    if out.grid is None and not any((out.models, out.losses, out.datasets)):
        out.grid = registry.default("grid")
    return out


def make_executor(registry, executor: str | None = None, jobs: int | None = None, address: str | None = None,
                  options: Mapping[str, Any] | None = None):
    """Build the executor plugin ``executor`` (the plugins' default when None) with the options given:
    ``jobs``, ``address`` and ``options`` (``{KEY: value}``, the executor's other parameters)."""
    name = executor or registry.default("executor")
    component = registry.get("executor", name)
    given = {key: value for key, value in (("jobs", jobs), ("address", address)) if value is not None}
    for key in given:
        if key not in component.params:
            raise OptionError(key, f"does not apply to executor '{name}' (its parameters: "
                                   f"{', '.join(component.params) or 'none'})")
    for key in options or {}:
        if key not in component.params:
            raise OptionError("executor_options", f"{key}: executor '{name}' has no option '{key}'"
                                                 f"{close_match_hint(key, list(component.params))} (its options: "
                                                 f"{', '.join(component.params) or 'none'})")
    return name, component.factory(**{**component.params, **(options or {}), **given})


def make_trackers(registry, names: list[str] | None) -> dict[str, Any]:
    """The trackers a run asked for (``track``), built now: a missing optional dependency is an error
    before anything trains."""
    trackers = {}
    for name in names or ():
        component = registry.get("tracker", name)
        trackers[name] = component.factory(**component.params)
    return trackers


def run(study: Path | str | Mapping | Study | None = None, **options: Any) -> Run:
    """Run a study and return the :class:`Run`; the options are ``bench run``'s.

    ``study``: a YAML file, a mapping with the same keys, or a :class:`bench.study.Study`; the
    other options override it. Axes (``models``, ``lr``, ``optimizer``, ``seeds``, ...) take a value,
    a list or a comma-separated string. ``out`` defaults to ``runs/<timestamp>`` under the current
    working directory (a note on ``echo`` says so, and ``Run.path``; pass ``out`` to choose); rerunning into
    the same ``out`` resumes (finished cells are skipped, failed ones retried; ``force`` reruns all).
    ``plugins`` are ``-p`` modules; ``host`` a ready :class:`bench.host.Host` instead. Bad input
    raises :class:`bench.BenchError` before anything trains; a failing cell does not raise (see
    ``Run.failed``). ``echo`` receives the notes (stderr by default). The run directory is locked while
    the run writes it: another process on the same ``out`` raises :class:`bench.store.RunLocked`
    naming the holder, unless ``wait=True``. ``executor`` names where cells train and
    ``executor_options`` its options (``{"partition": "gpu", "time": 30}`` for ``slurm``); a study's
    ``executor`` block gives both, these override it.
    """
    from bench.device import resolve_device
    from bench.engine import Execution
    from bench.runner import DataCache, available_datasets
    from bench.validate import check_cells

    if study is not None and not isinstance(study, (str, os.PathLike, Mapping, Study)):
        raise OptionError("study", f"must be a study file's path, a mapping or a bench.study.Study, got "
                                   f"{excerpt(study)}")
    if not isinstance(study, (Mapping, Study)):
        path_argument("study", study)
    what, how = split_options(options)
    opts = RunOptions.from_options(**how)
    echo, host = opts.echo, opts.host
    if host is not None and not isinstance(host, Host):
        raise OptionError("host", f"must be a bench.host.Host, got {excerpt(host)}")
    note = set_threads(opts.threads)
    if note:
        echo(f"note: threads: {note}")
    if host is None:
        host = Host(opts.plugins)
        host.registry  # noqa: B018 -- collect now, so that plugin warnings come first
        for warning in host.warnings:
            echo(warning)
    registry = host.registry
    out_path = opts.out if opts.out is not None else default_run_dir()
    if opts.out is None and not opts.dry_run:  # say where it writes (quiet or not): nobody chose that folder
        echo(f"note: no out given: writing {out_path} in the current folder ({Path.cwd()})")
    the_study = resolve_study(study, Study.from_options(**what), out_path, registry)
    torch_device = resolve_device(the_study.device or "auto")

    execution = Execution.of(opts, parse_target(the_study.target), the_study.eval_every or 0)
    execution.step_mode(torch_device)  # cuda_graphs="on" without cuda: fail before any work
    block = dict(the_study.executor)
    if opts.executor is not None and opts.executor != block.get("name"):
        block = {}  # the study's options are for the executor it names
    executor = opts.executor or block.pop("name", None)
    block.pop("name", None)
    given = dict(opts.executor_options)
    executor_options = {**block, **given}
    try:
        executor_name, executor_obj = make_executor(registry, executor, opts.jobs, opts.address, executor_options)
    except OptionError as exc:  # an option that only the study's executor block gave: say so
        key = exc.text.split(":", 1)[0]
        if exc.option != "executor_options" or key in given:
            raise
        raise BenchError(f"{study_source(study)}: executor: {exc.text.split(': ', 1)[1]}") from None
    default = executor_name == registry.default("executor") and not executor_options
    the_study.executor = {} if default else {"name": executor_name, **executor_options}
    trackers = make_trackers(registry, the_study.track)
    data_dir = opts.data_dir if opts.data_dir is not None else default_data_dir()

    cache = DataCache()
    notes: list[str] = []
    if the_study.datasets is None:  # a grid's datasets: leave out those that cannot be had here
        names = list(dict.fromkeys(t[2] for t in triples_of(registry, the_study)))
        available, unavailable = available_datasets(registry, names, data_dir, cache, torch_device)
        for name, reason in unavailable.items():
            notes.append(f"note: dataset '{name}' left out of the grid: {reason}; --datasets {name} says more")
            echo(notes[-1])
        if not available:
            raise BenchError("no dataset of this grid is available here")
        if unavailable:
            the_study = the_study.merged(Study(datasets=available))
    try:
        cells = expand(registry, the_study, str(torch_device))
    except OptionError as exc:
        if exc.option in ("zip", "exclude") and study is not None:  # only a study says those
            raise BenchError(f"{study_source(study)}: {exc.option}: {exc.text}") from None
        raise
    check_cells(registry, cells)
    tuning = make_tuning(the_study, registry, cells)
    seeds_used = list(dict.fromkeys(c.seed for c in cells))
    if tuning is not None:
        check_tuning(tuning, seeds_used, executor_name, executor_obj)
    if tuning is not None:  # the study's cells on the first seed are the configurations to tune
        cells = [c for c in cells if c.seed == seeds_used[0]]

    store = RunStore(out_path)
    if opts.dry_run:
        store.check_owned()
        lock = None
    else:  # refuse a directory that is not a run's; keep it locked until this run ends
        lock = store.claim(wait=opts.wait, on_wait=lambda line: echo(f"{line} ..."))
        lock.__enter__()
    try:
        return _execute(opts, store, cells, the_study, registry, host, torch_device, execution,
                        (executor_name, executor_obj, executor_options), trackers, data_dir, cache, notes, tuning,
                        seeds_used)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _execute(opts: RunOptions, store, cells, the_study, registry, host, torch_device, execution,
             executor: tuple[str, Any, dict[str, Any]], trackers, data_dir, cache, notes, tuning, seeds_used) -> Run:
    """The part of :func:`run` that reads and writes the run directory (locked by the caller)."""
    from bench.env import environment, provenance
    from bench.lifecycle import Lifecycle
    from bench.runner import run_cells

    executor_name, executor_obj, executor_options = executor
    force, quiet, echo = opts.force, opts.quiet, opts.echo
    finished = {} if force else store.finished()
    done = {cell.cell_id: finished[cell.cell_id] for cell in cells if cell.cell_id in finished}
    the_study = resolved(the_study, registry, cells, torch_device)
    if tuning is not None:
        the_study.seeds = seeds_used
    if opts.dry_run:
        recorded = {r.cell_id: r.status for r in store.records()}
        if tuning is not None:
            notes.append(f"tuning {', '.join(f'{k}={s.describe()}' for k, s in tuning.spaces.items())}: "
                         f"{tuning.trials} trial(s) per configuration ({tuning.sampler} sampler, on the first "
                         + (f"{tuning.tune_seeds} seeds" if tuning.tune_seeds > 1 else "seed")
                         + f", by {tuning.metric}" + (f", {tuning.prune} pruner" if tuning.prune != "none" else "")
                         + f"), then the best values with seeds {seeds_used}; the configurations:")
            echo(notes[-1])
        plan = [("done" if c.cell_id in done else "retry" if recorded.get(c.cell_id) == "failed"
                 else "run", c) for c in cells]
        return Run(store.root, the_study, cells, plan=plan, notes=notes, execution=execution)

    env = environment(torch_device, opts.argv or ["bench.run"], execution) | {"cells": len(cells)} | provenance(host)
    env["executor"] = {k: v for k, v in (("executor", executor_name), ("jobs", opts.jobs), ("address", opts.address))
                       if v is not None} | dict(executor_options)
    env["references"] = references_for(registry, {cell.dataset for cell in cells})  # published results, for reports

    previous_env = store.read_env()  # a damaged env.json is named now, before anything trains

    def write_env() -> None:
        """env.json and study.yaml, once the first cell is done (corrupt data must not touch them)."""
        previous = dict(previous_env)
        if previous:  # a resumed run keeps what the earlier runs into this directory were
            env["previous"] = [*previous.pop("previous", []), previous]
        store.write_env(env)
        store.write_text(STUDY_FILE, dump(the_study))

    if not quiet:
        what = (f"{len(cells)} configuration(s) x {tuning.trials} trial(s), then {len(seeds_used)} seed(s) each"
                if tuning is not None else f"{len(cells)} cell(s)")
        echo(f"gridbench {__version__}: {what} on {torch_device} -> {store.root}")
    if done and tuning is None:
        labels = [cell.label for cell in cells if cell.cell_id in done]
        named = ": " + "; ".join(labels) if len(labels) <= 2 else " (a dry run lists them)"
        echo(f"resume: {len(done)} of {len(cells)} cell(s) already finished in {store.root} are skipped "
             f"(force reruns them){named}")
    others = len({r.cell_id for r in store.records()} - {cell.cell_id for cell in cells})
    if others and not quiet and tuning is None:
        echo(f"note: {store.root} also holds {others} cell(s) of other studies; results.csv lists them too")

    to_train = (len(cells) * (tuning.trials * tuning.tune_seeds + len(seeds_used) - tuning.tune_seeds)
                if tuning is not None
                else len(cells) - len(done))
    the_run = Run(store.root, the_study, list(cells), notes=notes, quiet=quiet, tracked=tuple(trackers),
                  to_train=to_train, device=str(torch_device), execution=execution)
    events = Lifecycle(host, trackers, echo)
    events.run_start(the_run)
    trained: dict[str, CellRecord] = {}
    first_write = [write_env]

    def train(batch: list, execution=execution) -> list[CellRecord]:
        """Train the cells of ``batch`` not finished yet (resuming); their records, in order."""
        finished_now = {} if force else store.finished()
        if force:
            finished_now = {k: v for k, v in trained.items()}
        already = {c.cell_id: finished_now[c.cell_id] for c in batch if c.cell_id in finished_now}

        def once() -> None:
            if first_write:
                first_write.pop()()

        summary = run_cells(batch, registry, store, torch_device, data_dir, done=already, executor=executor_obj,
                            plugin_modules=tuple(host.modules), execution=execution, cache=cache,
                            on_first_record=once, events=events)
        for record in summary.records:
            trained[record.cell_id] = record
        return summary.records

    records: list[CellRecord] = []
    completed = False
    try:
        if tuning is None:
            records = train(cells)
        else:
            # a pruner needs evaluation points inside an epoch too, to stop a hopeless trial early in a short study
            points = PRUNE_POINTS if tuning.prune != "none" and not execution.eval_every else 0
            trial_execution = dataclasses.replace(execution, eval_points=points)
            tuned = run_tuning(tuning, registry, cells, seeds_used, store.root,
                               lambda batch: train(batch, trial_execution),
                               lambda: {r.cell_id: r for r in store.records()},
                               batch_size=0 if tuning.sampler == "qmc" else max(1, opts.jobs or 1),
                               watch=lambda *functions: events.watch("pruning", *functions),
                               points_of=lambda cell: cell_points(cell, registry, cache, data_dir, torch_device,
                                                                  trial_execution))
            for trial_cell, final_cell in tuned.reused:
                reuse_record(store, trial_cell, final_cell, tuned.finals.index(final_cell))
            for label in tuned.failed:
                notes.append(f"error: every trial of tuned configuration {label} failed: it has no final cells "
                             "(the failed tune rows say why)")
                echo(notes[-1])
            finals = train(tuned.finals)
            the_run.cells = [*the_run.cells, *tuned.finals]
            records = [*tuned.trial_records, *finals]
        completed = True
    finally:
        if not records:  # interrupted: what is on disk is what finished
            ids = {c.cell_id for c in cells} | set(trained)
            records = [record for record in store.records() if record.cell_id in ids]
        the_run.records = records
        the_run.interrupted = not completed
        events.run_end(the_run, the_run.rows)
    if first_write:  # nothing ran (all finished before): still record this study
        write_env()
        store.rebuild_tables()
    result = the_run
    if opts.report:
        result.report()
    return result


def cell_points(cell, registry, cache, data_dir: Path, device, execution) -> int | None:
    """A cell's evaluation points over its whole training (what a pruner's rungs count), from its dataset's
    size; ``None`` where the dataset does not load (its cells then fail on their own, with the message)."""
    from bench.engine.group import evaluation_points, train_split

    try:
        rows = len(train_split(cell, cache.get(registry, cell, data_dir, device))[0])
    except BenchError:
        return None
    return cell.recipe.epochs * evaluation_points(rows, cell.recipe.batch_size, execution)


def make_tuning(study: Study, registry, cells):
    """The study's :class:`bench.tune.Tuning`, checked against its cells, or None when nothing is tuned."""
    if not study.tune:
        if any(v is not None for v in (study.trials, study.sampler, study.tune_metric, study.prune,
                                       study.tune_seeds)):
            raise OptionError("tune", "is needed for trials, sampler, tune_metric, prune and tune_seeds (what should "
                                      "be tuned?)")
        return None

    spaces = {key: parse_space(key, spec) for key, spec in study.tune.items()}
    for key in spaces:
        swept = study.recipe.get(key) if key in study.recipe else study.params.get(key)
        if swept is not None and len(swept) > 1:
            raise OptionError("tune", f"{key} is both tuned and swept ({swept}): choose one")
    tuning = Tuning(spaces, trials=8 if study.trials is None else study.trials, sampler=study.sampler or "qmc",
                    metric=study.tune_metric or "val_acc", prune=study.prune or "none",
                    tune_seeds=1 if study.tune_seeds is None else study.tune_seeds)
    tuning.spaces = check_spaces(tuning, registry, cells)
    return tuning


def check_tuning(tuning, seeds: list[int], executor_name: str, executor) -> None:
    """What tuning needs from the rest of the run: ``tune_seeds`` seeds to train each trial on, and (to
    prune) an executor that trains in this process, where the trials' evaluation points are seen as they
    happen and Optuna's storage is."""
    if tuning.tune_seeds > len(seeds):
        raise OptionError("tune_seeds", f"is {tuning.tune_seeds} but the run has {len(seeds)} seed(s) "
                                        f"({', '.join(map(str, seeds))}): give more seeds or fewer tune_seeds")
    from bench.runner import LocalExecutor

    if tuning.prune != "none" and not isinstance(executor, LocalExecutor):
        raise OptionError("prune", f"needs an executor that trains in this process (executor '{executor_name}' "
                                   "trains elsewhere and reports a cell's epochs only when it has ended, too late "
                                   "to stop it): use the default executor, or prune none")


def _run_signature() -> inspect.Signature:
    """``bench.run``'s signature as :func:`help` and editors show it: the study, then every option by name."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    study_side = [*KEYWORDS.values(), *options_of(Recipe), REPEAT]
    defaults = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    parameters = [inspect.Parameter("study", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
    parameters += [inspect.Parameter(o.name, keyword, default=None) for o in study_side]
    parameters += [inspect.Parameter(o.name, keyword,
                                     default=None if defaults[o.name] is dataclasses.MISSING else defaults[o.name])
                   for o in options_of(RunOptions)]
    return inspect.Signature(parameters, return_annotation=Run)


run.__signature__ = _run_signature()  # type: ignore[attr-defined]
