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

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import BenchError, OptionError
from bench.files import excerpt
from bench.study import Study

#: The file in a run directory that keeps the resolved study.
STUDY_FILE = "study.yaml"


def default_run_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / stamp, 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{stamp}-{n}"
    return path


def default_data_dir() -> Path:
    return Path("~/.cache/gridbench").expanduser()


def _stderr(message: str) -> None:
    from bench.safe_text import printable

    print(printable(message), file=sys.stderr, flush=True)


@dataclass
class Run:
    """A run directory and what was run into it: results, history, summary, report.

    ``path`` is the run directory; ``results`` and ``history`` are its ``results.csv`` and
    ``history.csv`` as DataFrames (read when asked, so they are always what is on disk).
    From :func:`run`, ``cells`` are the study's cells and ``rows`` their rows in grid order;
    with ``dry_run=True`` nothing trained and ``plan`` lists ``(state, cell)`` pairs.
    """

    path: Path
    study: Study | None = None
    cells: list = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
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

    @property
    def store(self):
        from bench.store import RunStore

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
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") == "failed"]

    def templates(self, cell_id: str):
        """``(templates, classes, kind)`` of a finished cell: a float array ``[classes, *input_shape]`` (for
        ``linear``, its weights; see the README's Reports section), the class names, and the kind."""
        from safetensors.numpy import load_file

        records = {r["row"]["cell_id"]: r for r in self.store.records()}
        if cell_id not in records:
            raise BenchError(f"{self.path}: no cell {cell_id}")
        entry = records[cell_id].get("templates") or {}
        if not entry.get("path"):
            raise BenchError(f"cell {cell_id} has no templates: {entry.get('error', 'it did not finish')}")
        arrays = load_file(str(self.store.path_of(entry["path"])))  # never a file outside the run
        return arrays["templates"], records[cell_id].get("classes", []), entry.get("kind", "")

    def summary(self, metric: str = "test_acc"):
        """One row per configuration (a cell without its seed): ``n`` finished seeds and the metric's
        mean, standard deviation and 95% Student-t interval (:func:`bench.stats.aggregate`)."""
        from bench import stats

        return stats.aggregate(self.results, metric)

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
        shown = table[["label", "dataset", "n", "mean", "ci_low", "ci_high", "failed"]].rename(
            columns={"label": "configuration", "n": "seeds", "mean": "test_acc", "ci_low": "95% CI low",
                     "ci_high": "95% CI high"})  # the interval as clipped to [0, 1], not a half-width
        return (f"<p><b>gridbench run</b> <code>{html.escape(str(self.path))}</code>: "
                f"{len(self.results)} cell(s)</p>" + shown.to_html(index=False, float_format=lambda v: f"{v:.4f}",
                                                                    na_rep="", escape=True))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {len(self.rows)} cell(s))"


def path_argument(option: str, value: Any, optional: bool = True) -> Path | None:
    """``value`` as a :class:`~pathlib.Path` (``None`` stays None where ``optional``); anything but a str or
    path-like is an :class:`OptionError` naming ``option``."""
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and not isinstance(os.fspath(value), bytes) and os.fspath(value):
        return Path(value)
    raise OptionError(option, f"must be a path (a str or pathlib.Path), got {excerpt(value)}")


def check_arguments(args: Mapping[str, Any]) -> None:
    """The types of :func:`run`'s arguments that no later check reads as it should: a wrong one is an
    :class:`OptionError` naming it (not a ``TypeError`` from deep inside)."""
    from bench.host import Host

    study = args["study"]
    if study is not None and not isinstance(study, (str, os.PathLike, Mapping, Study)):
        raise OptionError("study", f"must be a study file's path, a mapping or a bench.study.Study, got "
                                   f"{excerpt(study)}")
    for name in ("study", "out", "data_dir"):
        if not isinstance(args[name], (Mapping, Study)):
            path_argument(name, args[name])
    for name in ("force", "dry_run", "compile", "quiet", "report", "wait"):
        if not isinstance(args[name], bool):
            raise OptionError(name, f"must be True or False, got {excerpt(args[name])}")
    for name in ("device", "executor", "address", "sampler", "tune_metric"):
        if args[name] is not None and not isinstance(args[name], str):
            raise OptionError(name, f"must be a string, got {excerpt(args[name])}")
    for name in ("threads", "fuse_max"):
        if isinstance(args[name], bool) or not isinstance(args[name], int) or args[name] < 0:
            raise OptionError(name, f"must be an integer >= 0, got {excerpt(args[name])}")
    if args["jobs"] is not None and (isinstance(args["jobs"], bool) or not isinstance(args["jobs"], int)):
        raise OptionError("jobs", f"must be an integer, got {excerpt(args['jobs'])}")
    for name in ("params", "plugins", "tune"):
        value = args[name]
        if value is None or isinstance(value, str) or (name != "plugins" and isinstance(value, Mapping)):
            continue
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            what = "module names" if name == "plugins" else "strings, or a mapping"
            raise OptionError(name, f"must be a list of {what}, got {excerpt(value)}")
    if args["argv"] is not None and not (isinstance(args["argv"], (list, tuple))
                                         and all(isinstance(v, str) for v in args["argv"])):
        raise OptionError("argv", f"must be a list of strings, got {excerpt(args['argv'])}")
    if not callable(args["echo"]):
        raise OptionError("echo", f"must be a function taking one line of text, got {excerpt(args['echo'])}")
    if args["host"] is not None and not isinstance(args["host"], Host):
        raise OptionError("host", f"must be a bench.host.Host, got {excerpt(args['host'])}")


def load(run_dir: Path | str) -> Run:
    """Open a run directory (one that ``bench run`` wrote) as a :class:`Run`."""
    from bench import study as study_mod
    from bench.store import RunStore

    path = path_argument("run_dir", run_dir, optional=False)
    if not path.is_dir():
        raise BenchError(f"{path}: no such run directory")
    store = RunStore(path)
    store.results()  # a clear error now if it is not a run directory
    study_path = path / STUDY_FILE
    study = study_mod.load(study_path) if study_path.is_file() else None
    rows = [record["row"] for record in store.records()]
    return Run(path, study, rows=rows)


def study_from_options(*, grid=None, models=None, losses=None, datasets=None, params=(), seeds=None, repeat=None,
                       epochs=None, batch_size=None, lr=None, optimizer=None, weight_decay=None, schedule=None,
                       limit=None, device=None, track=None, tune=None, trials=None, sampler=None,
                       tune_metric=None, target=None, eval_every=None) -> Study:
    """A :class:`Study` from ``bench.run``'s (and ``bench run``'s) options; ``None`` means not given.

    Lists may be Python lists or comma-separated strings; ``params`` are ``NAME.KEY=V1,V2`` strings or
    a ``{"NAME.KEY": [values]}`` dict.
    """
    from bench import study as study_mod

    def names(option, value):
        if value is None:
            return None
        try:
            return study_mod._names(option, value)
        except BenchError as exc:
            raise OptionError(option, str(exc)[len(option):].strip()) from None

    recipe = {}
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr), ("optimizer", optimizer),
                       ("weight_decay", weight_decay), ("schedule", schedule)):
        if value is not None:
            recipe[key] = study_mod.recipe_values(key, value)
    if limit is not None:
        study_mod.integer("limit", limit, 0)
    if grid is not None and (not isinstance(grid, str) or not grid.strip()):
        raise OptionError("grid", f"must be the name of a registered grid, got {grid!r}")
    return Study(models=names("models", models), losses=names("losses", losses),
                 datasets=names("datasets", datasets), grid=grid, params=study_mod.param_specs(params),
                 recipe=recipe, seeds=study_mod.seed_values(seeds, repeat), limit=limit, device=device,
                 track=names("track", track), tune=_tune_specs(tune), trials=trials, sampler=sampler,
                 tune_metric=tune_metric, target=target if study_mod.parse_target(target) else None,
                 eval_every=eval_every)


def _tune_specs(tune) -> dict[str, Any]:
    from bench.tune import parse_tune_options

    return parse_tune_options(tune) if tune else {}


def study_source(study) -> str:
    """How errors name a study: ``study FILE`` or ``study``."""
    return "study" if isinstance(study, (Mapping, Study)) or study is None else f"study {study}"


def resolve_study(study: Path | str | Mapping | Study | None, options: Study, out: Path | None,
                  registry=None) -> Study:
    """The study to run: a file or mapping, overridden by the options that were given; with neither
    saying what to train and ``out`` an existing run directory, the study that directory keeps."""
    from bench import study as study_mod

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
    from bench.store import RunStore

    store = RunStore(out)
    if store.is_run_dir() and (store.record_paths() or (out / "results.csv").is_file()):
        raise BenchError(f"{out} is a run directory without its {STUDY_FILE}, and no grid option says what to "
                         f"run into it: give the study again (--study FILE, or --grid/--models/... as the first run "
                         f"did; results.csv lists its configurations), or choose another --out")


def resolved(study: Study, registry, cells, device) -> Study:
    """The study with its defaults filled in (what ``study.yaml`` keeps): what ran, said in full."""
    from bench.config import RECIPE_FIELDS

    recipe = {name: list(dict.fromkeys(getattr(c.recipe, name) for c in cells)) for name in RECIPE_FIELDS}
    recipe = {k: (v[0] if len(v) == 1 else v) for k, v in recipe.items()}
    params = {}
    for key, values in study.params.items():
        typed = list(dict.fromkeys(v for c in cells for k, v in c.params.items() if k == key))
        params[key] = typed or values
    out = Study(models=study.models, losses=study.losses, datasets=study.datasets, grid=study.grid, params=params,
                recipe=recipe, zip=study.zip, exclude=study.exclude,
                seeds=list(dict.fromkeys(c.seed for c in cells)), limit=study.limit or 0,
                device=study.device or str(device), track=study.track, tune=study.tune, trials=study.trials,
                sampler=study.sampler, tune_metric=study.tune_metric, target=study.target,
                eval_every=study.eval_every, executor=dict(study.executor))
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
            from bench.host import close_match_hint

            raise OptionError("executor_option", f"{key}: executor '{name}' has no option '{key}'"
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


def run(study: Path | str | Mapping | Study | None = None, *,
        grid: str | None = None, models=None, losses=None, datasets=None, params=(), seeds=None,
        repeat: int | None = None, epochs=None, batch_size=None, lr=None, optimizer=None, weight_decay=None,
        schedule=None, limit: int | None = None, device: str | None = None, out: Path | str | None = None,
        data_dir: Path | str | None = None, force: bool = False, dry_run: bool = False,
        cuda_graphs: str = "auto", compile: bool = False, threads: int = 0, quiet: bool = False,
        report: bool = False, plugins: Iterable[str] = (), executor: str | None = None, jobs: int | None = None,
        address: str | None = None, wait: bool = False, track=None, tune=None, trials: int | None = None,
        sampler: str | None = None, tune_metric: str | None = None, target: str | None = None,
        eval_every: int | None = None, fuse: str = "auto", fuse_max: int = 0, host=None,
        executor_options: Mapping[str, Any] | None = None, argv: list[str] | None = None,
        echo: Callable[[str], None] = _stderr) -> Run:
    """Run a study and return the :class:`Run`; the options are ``bench run``'s.

    ``study``: a YAML file, a mapping with the same keys, or a :class:`bench.study.Study`; the
    other options override it. Axes (``models``, ``lr``, ``optimizer``, ``seeds``, ...) take a value,
    a list or a comma-separated string. ``out`` defaults to ``runs/<timestamp>`` under the current
    working directory (``Run.path`` says where; pass ``out`` to choose); rerunning into
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
    from bench.grid import expand, triples_of
    from bench.host import Host
    from bench.runner import DataCache, available_datasets
    from bench.store import RunStore
    from bench.threads import set_threads
    from bench.validate import check_cells

    check_arguments(locals())
    if isinstance(plugins, str):
        plugins = [plugins]
    note = set_threads(threads)
    if note:
        echo(f"note: threads: {note}")
    if host is None:
        host = Host(plugins)
        host.registry  # noqa: B018 -- collect now, so that plugin warnings come first
        for warning in host.warnings:
            echo(warning)
    registry = host.registry
    out_path = Path(out) if out is not None else default_run_dir()
    options = study_from_options(grid=grid, models=models, losses=losses, datasets=datasets, params=params,
                                 seeds=seeds, repeat=repeat, epochs=epochs, batch_size=batch_size, lr=lr,
                                 optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, limit=limit,
                                 device=device, track=track, tune=tune, trials=trials, sampler=sampler,
                                 tune_metric=tune_metric, target=target, eval_every=eval_every)
    the_study = resolve_study(study, options, out_path, registry)
    torch_device = resolve_device(the_study.device or "auto")
    from bench.study import parse_target

    execution = Execution(cuda_graphs=cuda_graphs, compile=compile, target=parse_target(the_study.target),
                          eval_every=the_study.eval_every or 0, fuse=fuse, fuse_max=fuse_max)
    execution.step_mode(torch_device)  # cuda_graphs="on" without cuda: fail before any work
    block = dict(the_study.executor)
    if executor is not None and executor != block.get("name"):
        block = {}  # the study's options are for the executor it names
    executor = executor or block.pop("name", None)
    block.pop("name", None)
    given = dict(executor_options or {})
    executor_options = {**block, **given}
    try:
        executor_name, executor_obj = make_executor(registry, executor, jobs, address, executor_options)
    except OptionError as exc:  # an option that only the study's executor block gave: say so
        key = exc.text.split(":", 1)[0]
        if exc.option != "executor_option" or key in given:
            raise
        raise BenchError(f"{study_source(study)}: executor: {exc.text.split(': ', 1)[1]}") from None
    default = executor_name == registry.default("executor") and not executor_options
    the_study.executor = {} if default else {"name": executor_name, **executor_options}
    trackers = make_trackers(registry, the_study.track)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()

    cache = DataCache()
    notes: list[str] = []
    if the_study.datasets is None:  # a grid's datasets: leave out those that cannot be had here
        names = list(dict.fromkeys(t[2] for t in triples_of(registry, the_study)))
        available, unavailable = available_datasets(registry, names, data_dir, cache, torch_device)
        for name, reason in unavailable.items():
            notes.append(f"note: dataset '{name}' is unavailable and left out of the grid: {reason}")
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
    if tuning is not None:  # the study's cells on the first seed are the configurations to tune
        cells = [c for c in cells if c.seed == seeds_used[0]]

    store = RunStore(out_path)
    if dry_run:
        store.check_owned()
        lock = None
    else:  # refuse a directory that is not a run's; keep it locked until this run ends
        lock = store.claim(wait=wait, on_wait=lambda line: echo(f"{line} ..."))
        lock.__enter__()
    try:
        return _execute(**locals())
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _execute(*, store, cells, the_study, registry, host, torch_device, execution, executor_obj, executor_name,
             trackers, data_dir, cache, notes, force, dry_run, quiet, report, jobs, address, argv, echo, tuning,
             executor_options,
             seeds_used, out_path, **_):
    """The part of :func:`run` that reads and writes the run directory (locked by the caller)."""
    from bench.env import environment, provenance
    from bench.lifecycle import Lifecycle
    from bench.references import references_for
    from bench.runner import run_cells
    from bench.study import dump

    finished = {} if force else store.finished()
    done = {cell.cell_id: finished[cell.cell_id] for cell in cells if cell.cell_id in finished}
    the_study = resolved(the_study, registry, cells, torch_device)
    if tuning is not None:
        the_study.seeds = seeds_used
    if dry_run:
        recorded = {r["row"]["cell_id"]: r["row"] for r in store.records()}
        if tuning is not None:
            notes.append(f"tuning {', '.join(f'{k}={s.describe()}' for k, s in tuning.spaces.items())}: "
                         f"{tuning.trials} trial(s) per configuration ({tuning.sampler} sampler, on the first seed, "
                         f"by {tuning.metric}), then the best values with seeds {seeds_used}; the configurations:")
            echo(notes[-1])
        plan = [("done" if c.cell_id in done else "retry" if recorded.get(c.cell_id, {}).get("status") == "failed"
                 else "run", c) for c in cells]
        return Run(out_path, the_study, cells, plan=plan, notes=notes)

    env = environment(torch_device, argv or ["bench.run"], execution) | {"cells": len(cells)} | provenance(host)
    env["executor"] = {k: v for k, v in (("executor", executor_name), ("jobs", jobs), ("address", address))
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
    others = len({r["row"]["cell_id"] for r in store.records()} - {cell.cell_id for cell in cells})
    if others and not quiet and tuning is None:
        echo(f"note: {store.root} also holds {others} cell(s) of other studies; results.csv lists them too")

    to_train = (len(cells) * (tuning.trials + len(seeds_used)) if tuning is not None
                else len(cells) - len(done))
    the_run = Run(store.root, the_study, list(cells), notes=notes, quiet=quiet, tracked=tuple(trackers),
                  to_train=to_train, device=str(torch_device))
    events = Lifecycle(host, trackers, echo)
    events.run_start(the_run)
    trained: dict[str, dict[str, Any]] = {}
    first_write = [write_env]

    def train(batch: list) -> list[dict[str, Any]]:
        """Train the cells of ``batch`` not finished yet (resuming); their rows, in order."""
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
        for row in summary.rows:
            trained[row["cell_id"]] = row
        return summary.rows

    rows: list[dict[str, Any]] = []
    completed = False
    try:
        if tuning is None:
            rows = train(cells)
        else:
            from bench.tune import run_tuning

            tuned = run_tuning(tuning, registry, cells, seeds_used, store.root, train,
                               lambda: {r["row"]["cell_id"]: r["row"] for r in store.records()},
                               batch_size=0 if tuning.sampler == "qmc" else max(1, jobs or 1))
            for label in tuned.failed:
                notes.append(f"error: every trial of tuned configuration {label} failed: it has no final cells "
                             "(the failed tune rows say why)")
                echo(notes[-1])
            final_rows = train(tuned.finals)
            the_run.cells = [*the_run.cells, *tuned.finals]
            rows = [*tuned.trial_rows, *final_rows]
        completed = True
    finally:
        if not rows:  # interrupted: what is on disk is what finished
            ids = {c.cell_id for c in cells} | set(trained)
            rows = [record["row"] for record in store.records() if record["row"]["cell_id"] in ids]
        the_run.rows = rows
        the_run.interrupted = not completed
        events.run_end(the_run, rows)
    if first_write:  # nothing ran (all finished before): still record this study
        write_env()
        store.rebuild_tables()
    result = the_run
    if report:
        result.report()
    return result


def make_tuning(study: Study, registry, cells):
    """The study's :class:`bench.tune.Tuning`, checked against its cells, or None when nothing is tuned."""
    if not study.tune:
        if study.trials is not None or study.sampler is not None or study.tune_metric is not None:
            raise OptionError("tune", "is needed for trials, sampler and tune_metric (what should be tuned?)")
        return None
    from bench.tune import Tuning, check_spaces, parse_space

    spaces = {key: parse_space(key, spec) for key, spec in study.tune.items()}
    for key in spaces:
        swept = study.recipe.get(key) if key in study.recipe else study.params.get(key)
        if swept is not None and len(swept) > 1:
            raise OptionError("tune", f"{key} is both tuned and swept ({swept}): choose one")
    tuning = Tuning(spaces, trials=8 if study.trials is None else study.trials, sampler=study.sampler or "qmc",
                    metric=study.tune_metric or "val_acc")
    tuning.spaces = check_spaces(tuning, registry, cells)
    return tuning
