"""The ``bench`` command line: a thin shell over the host, grid, runner and store."""

from __future__ import annotations

import functools
import shlex
import sys
from datetime import datetime
from pathlib import Path

import click

from bench import __version__
from bench.errors import BenchError

DEFAULT_DATA_DIR = Path("~/.cache/gridbench").expanduser()


class BenchGroup(click.Group):
    """Turns user errors into one line on stderr and exit status 2, never a traceback.

    Commands that plugins add through the ``bench_cli`` hook are looked up only when a name is not
    a built-in command (or for the command list), so built-in commands never pay for it.
    """

    def make_context(self, info_name, args, parent=None, **extra):
        # remember the command line as given, for env.json and resume hints
        extra.setdefault("obj", {})["argv"] = ["bench", *args]
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad option value: one line too, pointing at --help
            where = f" (see: bench {exc.ctx.info_name} --help)" if exc.ctx is not None and exc.ctx is not ctx else ""
            click.echo(f"Error: {exc.format_message()}{where}", err=True)
            ctx.exit(2)

    def get_command(self, ctx, cmd_name):
        return super().get_command(ctx, cmd_name) or self.plugin_commands(ctx).get(cmd_name)

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.plugin_commands(ctx)})

    def plugin_commands(self, ctx) -> dict:
        root = ctx.find_root()
        if "bench.plugin_commands" not in root.meta:
            from bench.host import Host

            try:
                host = Host(root.params.get("plugin_modules") or ())
            except BenchError as exc:
                raise click.UsageError(str(exc)) from None
            root.meta["bench.plugin_commands"] = host.collect_commands(self)
            for warning in host.warnings:
                click.echo(warning, err=True)
        return root.meta["bench.plugin_commands"]


def plugin_option(f, **kwargs):
    return click.option(
        "-p", "plugin_modules", multiple=True, metavar="MODULE",
        help="Load the plugin module MODULE (import path) for this run; -p no:NAME blocks plugin NAME.", **kwargs,
    )(f)


def executor_options(f):
    """``--executor``, ``--jobs``, ``--address``: where the cells train (see plugins/executors.py)."""
    f = click.option("--address", metavar="auto|HOST:PORT",
                     help="With --executor ray: the Ray cluster to join [default: start a local instance].")(f)
    f = click.option("--jobs", type=int, metavar="N",
                     help="With --executor process: worker processes [default: one per core, or per GPU].")(f)
    return click.option("--executor", "executor", default="local", show_default=True, metavar="NAME",
                        help="Where cells train: local (here, one by one), process (--jobs N workers), "
                             "ray (a Ray cluster), or a plugin's executor.")(f)


def make_executor(registry, executor: str = "local", jobs: int | None = None, address: str | None = None):
    """Build the executor plugin NAME with the options given (each must be one of its params)."""
    component = registry.get("executor", executor)
    given = {key: value for key, value in (("jobs", jobs), ("address", address)) if value is not None}
    for key in given:
        if key not in component.params:
            raise BenchError(f"--{key} does not apply to --executor {executor} (its parameters: "
                             f"{', '.join(component.params) or 'none'})")
    return component.factory(**{**component.params, **given})


def make_host(plugin_modules=()):
    """The plugin host for one command: built-ins, installed plugins (unless autoload is off), and
    the ``-p`` modules given before the command name and to the command itself."""
    from bench.host import Host

    ctx = click.get_current_context(silent=True)
    group_modules = ctx.find_root().params.get("plugin_modules") or () if ctx else ()
    host = Host([*group_modules, *plugin_modules])
    registry = host.registry  # collect now so that plugin warnings come first
    for warning in host.warnings:
        click.echo(warning, err=True)
    return host, registry


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gridbench")
@functools.partial(plugin_option, is_eager=True)  # eager: seen before --help lists plugin commands
def main(plugin_modules):
    """gridbench: run grids of training experiments (models x losses x datasets) and compare them.

    \b
    Examples:
      bench run --grid seed                 # the notebook's three cells on MNIST
      bench run --grid all --device cpu     # every model x loss x available dataset
      bench run --models mlp --param mlp.hidden=64,256 --seeds 0,1
      bench list                            # what can go into a grid
      bench plugins                         # loaded plugins and what each registered
    """
    from bench.threads import prefer_passive_openmp

    prefer_passive_openmp()


@main.command()
@click.option("--grid", "grid", metavar="NAME", help="A registered grid (bench list shows them): all (every model x "
              "loss x available dataset), seed (the notebook's three cells), or one from a plugin. Default: seed, "
              "unless --models/--losses/--datasets are given.")
@click.option("--models", metavar="A,B", help="Models to run (restricts --grid).")
@click.option("--losses", metavar="A,B", help="Losses to run (restricts --grid; default crossentropy).")
@click.option("--datasets", metavar="A,B", help="Datasets to run (restricts --grid; default mnist).")
@click.option("--param", "params", multiple=True, metavar="NAME.KEY=V1,V2",
              help="Sweep a component parameter, e.g. mlp.hidden=64,256 (repeatable; crossed with the grid).")
@click.option("--seeds", metavar="S1,S2", help="Seeds; each cell runs once per seed. [default: 0]")
@click.option("--repeat", type=int, metavar="N", help="Run each cell with N seeds, 0..N-1 (instead of --seeds).")
@click.option("--epochs", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate.")
@click.option("--optimizer", default="adam", show_default=True, help="adam or sgd (momentum 0.9).")
@click.option("--limit", type=int, default=0, metavar="N", help="Train on the first N training samples only "
              "(a quick smoke run); validation and test stay whole. 0: all.")
@click.option("--device", "device_spec", default="auto", show_default=True,
              help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [default: runs/<timestamp>].")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="BENCH_DATA_DIR", default=DEFAULT_DATA_DIR,
              show_default="~/.cache/gridbench, or $BENCH_DATA_DIR", help="Cache for downloadable datasets.")
@click.option("--force", is_flag=True, help="Rerun every cell, also those already finished in --out.")
@click.option("--dry-run", is_flag=True, help="List the cells that would run and those already done; train nothing.")
@click.option("--cuda-graphs", "cuda_graphs", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Capture each training step in a CUDA graph: auto (on for cuda, eager steps "
              "if a model cannot be captured), on (an error if it cannot), off.")
@click.option("--compile", "compile_", is_flag=True, help="Wrap each model in torch.compile (compilation is "
              "timed as warm-up, apart from the epochs).")
@click.option("--threads", type=click.IntRange(min=0), default=0, metavar="N",
              help="CPU threads for torch (0: torch's default, one per core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--report", "make_report", is_flag=True,
              help="Then write a report into RUN_DIR/report (see bench report).")
@plugin_option
@executor_options
@click.pass_context
def run(ctx, **options):
    """Run a grid of experiments and write a run directory (results.csv, history.csv, env.json, weights).

    Rerunning the same command with the same --out resumes: finished cells are skipped, failed and
    missing ones run. Ctrl-C stops after saving what has finished and prints the command to resume.
    """
    out = options["out"] = options["out"] or default_run_dir()
    try:
        _run(ctx, **options)
    except KeyboardInterrupt:
        _report_interrupt(ctx, out)
        sys.exit(130)


def _report_interrupt(ctx: click.Context, out: Path) -> None:
    """After Ctrl-C: bring the tables up to date with the finished cells and say how to resume."""
    import signal

    from bench.store import RunStore

    try:  # a second Ctrl-C while saving would only print a traceback: the records are already safe
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    try:
        store = RunStore(out)
        if store.cells_dir.is_dir():
            store.rebuild_tables()
            click.echo(f"\ninterrupted: {len(store.records())} cell record(s) are saved in {out}. Resume with:\n"
                       f"  {resume_command(ctx, out)}", err=True)
        else:
            click.echo("\ninterrupted before anything was written.", err=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(ctx, *, grid, models, losses, datasets, params, seeds, repeat, epochs, batch_size, lr, optimizer, limit,
         device_spec, out, data_dir, force, dry_run, cuda_graphs, compile_, threads, quiet, make_report,
         plugin_modules, executor, jobs, address):
    from bench import grid as grid_mod
    from bench.device import resolve_device
    from bench.env import environment
    from bench.references import references_for
    from bench.runner import available_datasets, run_cells
    from bench.step import Execution
    from bench.store import RunStore
    from bench.threads import set_threads

    set_threads(threads)
    host, registry = make_host(plugin_modules)
    recipe = grid_mod.Recipe(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer)
    device = resolve_device(device_spec)
    execution = Execution(cuda_graphs=cuda_graphs, compile=compile_)
    execution.step_mode(device)  # --cuda-graphs on without cuda: fail before any work
    executor_choice = {"executor": executor, "jobs": jobs, "address": address}
    executor_obj = make_executor(registry, **executor_choice)
    seed_list = grid_mod.seed_list(seeds, repeat)
    dataset_list = grid_mod.split_list("--datasets", datasets)
    unavailable = {}
    if grid == "all" and dataset_list is None:
        dataset_list, unavailable = available_datasets(registry, registry.names("dataset"), data_dir)
        for name, reason in unavailable.items():
            click.echo(f"note: dataset '{name}' is unavailable and left out of the grid: {reason}", err=True)
        if not dataset_list:
            raise BenchError("no dataset is available for --grid all")
    cells = grid_mod.expand(
        registry, grid=grid, models=grid_mod.split_list("--models", models),
        losses=grid_mod.split_list("--losses", losses), datasets=dataset_list, params=list(params),
        seeds=seed_list, device=str(device), recipe=recipe, limit=limit,
    )
    store = RunStore(out)
    finished = {} if force else store.finished()
    done = {cell.cell_id: finished[cell.cell_id] for cell in cells if cell.cell_id in finished}
    if dry_run:
        click.echo(format_plan(cells, done, {r["row"]["cell_id"]: r["row"] for r in store.records()}, store.root))
        return
    store.create()
    previous = store.read_env()
    env = environment(device, ctx.find_root().obj["argv"], execution) | {"cells": len(cells)}
    env["executor"] = {key: value for key, value in executor_choice.items() if value is not None}
    env["references"] = references_for(registry, {cell.dataset for cell in cells})  # published results, for reports
    if previous:  # a resumed run keeps what the earlier runs into this directory were
        env["previous"] = [*previous.pop("previous", []), previous]
    store.write_env(env)
    if not quiet:
        click.echo(f"gridbench {__version__}: {len(cells)} cell(s) on {device} -> {store.root}", err=True)
    if done:
        labels = [cell.label for cell in cells if cell.cell_id in done]
        labels = "; ".join(labels[:10]) + (f"; and {len(labels) - 10} more" if len(labels) > 10 else "")
        click.echo(f"resume: {len(done)} of {len(cells)} cell(s) already finished in {store.root} are skipped "
                   f"(--force reruns them): {labels}", err=True)
    others = len({r["row"]["cell_id"] for r in store.records()} - {cell.cell_id for cell in cells})
    if others and not quiet:
        click.echo(f"note: {store.root} also holds {others} cell(s) of other grids; results.csv lists them too",
                   err=True)

    grid_bar = None if quiet else _bar(total=len(cells) - len(done), desc="grid", unit="cell")

    def progress(cell, row):
        if grid_bar is not None:
            grid_bar.update(1)
            grid_bar.set_postfix_str(f"{cell.model}+{cell.loss}: {row['status']}")

    def epoch_bar(cell):
        return _bar(total=cell.recipe.epochs, desc=cell.label, unit="epoch", leave=False, position=1)

    try:
        summary = run_cells(cells, registry, store, device, data_dir, progress, None if quiet else epoch_bar, done,
                            executor_obj, tuple(host.modules), execution=execution)
    finally:
        if grid_bar is not None:
            grid_bar.close()
    store.rebuild_tables()
    click.echo(format_summary(summary.rows))
    if len(seed_list) > 1:
        click.echo("\n" + format_seed_statistics(summary.rows))
    click.echo(f"results: {store.root / 'results.csv'}")
    if make_report:
        write_report([store.root], None)
    if summary.failed:
        click.echo(f"{len(summary.failed)} cell(s) failed:", err=True)
        for row in summary.failed:
            click.echo(f"  {row['model']}+{row['loss']} on {row['dataset']} seed={row['seed']}: {row['error']}",
                       err=True)
        sys.exit(1)


def resume_command(ctx: click.Context, out: Path) -> str:
    """The command line that resumes this run: the options the user gave, with --out, without --force."""
    from click.core import ParameterSource

    words = ["bench", ctx.info_name or "run"]
    for param in ctx.command.params:
        if param.name in ("force", "dry_run", "out") or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            continue
        flag = max(param.opts, key=len)
        value = ctx.params[param.name]
        if param.is_flag:
            words += [flag] if value else []
        else:
            for item in (value if param.multiple else [value]):
                words += [flag, str(item)]
    return shlex.join([*words, "--out", str(out)])


def format_plan(cells, done: dict, recorded: dict, root: Path) -> str:
    """What ``--dry-run`` prints: each cell with ``run``, ``retry`` (failed before) or ``done``."""
    lines = [f"dry run: {len(cells)} cell(s) for {root}: {len(cells) - len(done)} to run, {len(done)} done"]
    for cell in cells:
        if cell.cell_id in done:
            state = "done"
        elif recorded.get(cell.cell_id, {}).get("status") == "failed":
            state = "retry"
        else:
            state = "run"
        lines.append(f"  {state:<5} {cell.cell_id}  {cell.label}")
    return "\n".join(lines)


def format_seed_statistics(rows) -> str:
    """Mean ± 95% CI of test accuracy per cell over its seeds, then the paired comparisons."""
    import pandas as pd

    from bench import stats

    frame = pd.DataFrame(rows)
    text = "test accuracy over seeds (mean ± 95% CI, Student t):\n" + stats.format_aggregate(stats.aggregate(frame))
    table = stats.compare(frame)
    if not table.empty:
        text += ("\n\npaired comparisons on shared seeds (paired t-test, Holm-corrected; "
                 "tied = not significant):\n" + stats.format_comparisons(table))
    return text


def _bar(**kwargs):
    from tqdm import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def default_run_dir() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = Path("runs") / stamp, 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{stamp}-{n}"
    return path


SUMMARY_COLUMNS = [("model", "model"), ("loss", "loss"), ("dataset", "dataset"), ("params", "params"),
                   ("seed", "seed"), ("status", "status"), ("test_acc", "test_acc"), ("test_loss", "test_loss"),
                   ("epoch_time_s", "epoch_s"), ("samples_per_s", "samples/s")]


def _fmt(key, value) -> str:
    if value is None or value == "":
        return "-"
    if key in ("test_acc",):
        return f"{value:.4f}"
    if key in ("test_loss", "epoch_time_s"):
        return f"{value:.4g}"
    if key == "samples_per_s":
        return f"{value:,.0f}"
    if key == "params":
        return "" if value == "{}" else value
    return str(value)


def format_summary(rows) -> str:
    """A plain-text table of the grid's outcome, one line per cell."""
    table = [[label for _, label in SUMMARY_COLUMNS]]
    for row in rows:
        table.append([_fmt(key, row.get(key)) for key, _ in SUMMARY_COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--out", type=click.Path(path_type=Path),
              help="Report directory [default: RUN_DIR/report; for several runs, report-<first>-and-<n>-more "
                   "beside the first].")
@click.option("--cell-figures", is_flag=True,
              help="Also draw every cell's own templates and confusion matrix, one page per cell (cells/).")
def report(run_dirs, out, cell_figures):
    """Write a report over run directories: tables (Markdown, CSV, HTML, LaTeX), figures and one index.html.

    Several run directories are compared: the tables gain a run column and the figures a facet.
    """
    write_report(list(run_dirs), out, cell_figures)


def write_report(run_dirs: list[Path], out: Path | None, cell_figures: bool = False) -> None:
    from reports import build_report

    result = build_report(run_dirs, out, cell_figures=cell_figures)
    for skipped in result.skipped_reports:
        click.echo(f"note: {skipped} is a gridbench report, not a run directory: left out", err=True)
    click.echo(result.terminal())
    click.echo(f"report: {result.index}")


@main.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--ignore", metavar="KEY,...", help="Configuration keys left out of the match, e.g. limit (to compare "
              "across a change of --limit) or lr.")
@click.option("--fail-on", "fail_on", metavar="accuracy=X,time=R", help="Exit 1 when NEW is worse than BASE in "
              "some configuration: mean test accuracy lower by more than X, or median epoch time more than R times.")
@click.option("--markdown", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the comparison as Markdown (e.g. $GITHUB_STEP_SUMMARY).")
def compare(base, new, ignore, fail_on, markdown):
    """Compare two runs (run directories or report folders) configuration by configuration.

    For each configuration in both: test accuracy NEW - BASE (paired on shared seeds, Holm-corrected)
    and the ratio of median epoch times. Exit status 0, 1 when --fail-on margins are exceeded, 2 on bad input.
    """
    from reports.compare import compare_runs

    result = compare_runs(base, new, ignore=ignore, margins=fail_on)
    click.echo(result.terminal(), nl=False)
    if markdown is not None:
        from bench.store import atomic_write

        atomic_write(markdown, result.markdown())
    if result.failed:
        sys.exit(1)


@main.command(name="list")
@plugin_option
def list_(plugin_modules):
    """List the models, losses, datasets and grids that plugins registered, with their parameters, and
    the executors that can run a grid."""
    from bench.host import KINDS, PLURAL

    host, registry = make_host(plugin_modules)
    for kind in KINDS:
        click.echo(click.style(f"{PLURAL[kind]}:", bold=True))
        for c in registry.all(kind):
            params = ", ".join(f"{k}={v!r}" for k, v in c.params.items())
            click.echo(f"  {c.name:<16} {c.description}")
            click.echo(f"  {'':<16} params: {params or '-'}   plugin: {c.plugin}")
    click.echo(click.style("grids:", bold=True))
    for g in registry.grids():
        click.echo(f"  {g.name:<16} {g.description}")
        click.echo(f"  {'':<16} plugin: {g.plugin}")


@main.command()
@plugin_option
def plugins(plugin_modules):
    """List the plugins: distribution and version, what each registered, and its status."""
    from bench.host import PLURAL

    host, _ = make_host(plugin_modules)
    seen = len(host.warnings)
    host.collect_commands(main)
    for warning in host.warnings[seen:]:
        click.echo(warning, err=True)
    for info in host.plugins.values():
        origin = f"{info.distribution} {info.version}".strip() or "-"
        status = info.status if info.status == "ok" else f"{info.status}: {info.error}"
        what = "; ".join(f"{PLURAL[k]}: {', '.join(v)}" for k, v in info.registered.items() if v) or "nothing"
        click.echo(f"{info.name:<24} {origin:<24} {info.source:<12} {status}")
        click.echo(f"{'':<24} registered {what}")


if __name__ == "__main__":  # pragma: no cover
    main()
