"""The ``bench`` command line: a thin shell over the host, grid, runner and store."""

from __future__ import annotations

import atexit
import dataclasses
import errno
import functools
import gc
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click

from bench import __version__, api
from bench.api import default_run_dir
from bench.config import RECIPE_FIELDS, Recipe
from bench.errors import BenchError, OptionError
from bench.fuse import group_id
from bench.helpformat import SectionedCommand
from bench.host import COMMAND_PLUGINS, KINDS, PLURAL, Host
from bench.interrupt import exit_status, stop_signals
from bench.options import OUTPUTS, SECTIONS, Option, RunOptions, options_of
from bench.paths import default_data_dir
from bench.record import format_value
from bench.safe_text import printable
from bench.store import RunLocked, RunStore, atomic_write
from bench.study import KEYWORDS, REPEAT, STUDY_FILE_OPTION, describe, shipped
from bench.textfit import TABLE_WIDTH, fit_tables
from bench.threads import prefer_passive_openmp
from bench.tune import DB_FILE, configuration_label


def echo(message: object = "", err: bool = False, nl: bool = True, one_line: bool = False) -> None:
    """``click.echo`` with every control character escaped (:func:`bench.safe_text.printable`): names and
    errors from plugins may hold terminal escape sequences. ``one_line``: line breaks escaped too."""
    click.echo(printable(message, newlines=not one_line), err=err, nl=nl)


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
        except OptionError as exc:  # the library names its option; say it as the flag the user typed
            echo(f"Error: {flag_message(exc)}", err=True, one_line=True)
            ctx.exit(2)
        except BenchError as exc:
            hint = ": wait for it to finish, or add --wait to wait for it" if isinstance(exc, RunLocked) else ""
            echo(f"Error: {exc}{hint}", err=True, one_line=True)
            ctx.exit(2)
        except OSError as exc:  # a full disk anywhere (a figure, a report): one line, not a traceback
            if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                raise
            echo(f"Error: no space left on the device{f' to write {exc.filename}' if exc.filename else ''}: "
                       "free some space and run the same command again", err=True)
            ctx.exit(2)
        except click.UsageError as exc:  # a bad option value: one line too, pointing at --help
            where = f" (see: bench {exc.ctx.info_name} --help)" if exc.ctx is not None and exc.ctx is not ctx else ""
            echo(f"Error: {exc.format_message()}{where}", err=True, one_line=True)
            ctx.exit(2)

    def get_command(self, ctx, cmd_name):
        return super().get_command(ctx, cmd_name) or self.plugin_commands(ctx).get(cmd_name)

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.plugin_commands(ctx)})

    def plugin_commands(self, ctx) -> dict:
        root = ctx.find_root()
        if "bench.plugin_commands" not in root.meta:
            try:  # of the built-ins, only those that add commands (the others would import torch for nothing)
                host = Host(root.params.get("plugin_modules") or (), builtins=COMMAND_PLUGINS)
            except BenchError as exc:
                raise click.UsageError(str(exc)) from None
            root.meta["bench.plugin_commands"] = host.collect_commands(self)
            for warning in host.warnings:
                echo(warning, err=True)
        return root.meta["bench.plugin_commands"]


def run_options() -> list[Option]:
    """Every option of ``bench run``, in the order of its ``--help``: the study file, the study's keywords,
    the recipe's fields, ``--repeat``, then how to run (bench/options.py)."""
    return [STUDY_FILE_OPTION, *KEYWORDS.values(), *options_of(Recipe), REPEAT,
            *(o for o in options_of(RunOptions) if o.flag is not None)]


def flag_message(exc: OptionError) -> str:
    """An :class:`OptionError`'s message worded with the command line's flag (``--batch-size must ...``)."""
    flags = {}
    for o in run_options():  # by the library's name, and by the flag's own (param for --param)
        flag = max(o.flags, key=len)
        flags.update({o.name: flag, flag.lstrip("-").replace("-", "_"): flag})
    option = exc.option.split(".")[0]  # tune.lr: a value of --tune
    if option not in flags:  # a key only a study file has (zip, exclude, recipe)
        return f"study key '{exc.option}': {exc.text}"
    return f"{flags[option]} {exc.text}"


def plugin_option(f, **kwargs):
    return click.option(
        "-p", "plugin_modules", multiple=True, metavar="MODULE",
        help="Load the plugin module MODULE (import path) for this run; -p no:NAME blocks plugin NAME.", **kwargs,
    )(f)


def wide_option(f):
    """``--wide``: print the terminal tables whole instead of fitted to TABLE_WIDTH columns (bench/textfit.py)."""
    def remember(ctx, _param, value):
        ctx.meta["wide"] = value

    return click.option("--wide", is_flag=True, expose_value=False, callback=remember,
                        help="Print tables whole (every column, full labels) instead of fitted to "
                             f"{TABLE_WIDTH} columns (on a terminal; a file or pipe gets them whole).")(f)


def echo_table(text: str) -> None:
    """Print text that holds tables: on a terminal, fitted to TABLE_WIDTH columns unless --wide was given;
    into a file or a pipe (a script reads it) whole."""
    ctx = click.get_current_context(silent=True)
    wide = (ctx is not None and ctx.meta.get("wide")) or not sys.stdout.isatty()
    echo(text if wide else fit_tables(text, TABLE_WIDTH))


def make_host(plugin_modules=()):
    """The plugin host for one command: built-ins, installed plugins (unless autoload is off), and
    the ``-p`` modules given before the command name and to the command itself."""
    ctx = click.get_current_context(silent=True)
    group_modules = ctx.find_root().params.get("plugin_modules") or () if ctx else ()
    host = Host([*group_modules, *plugin_modules])
    registry = host.registry  # collect now so that plugin warnings come first
    for warning in host.warnings:
        echo(warning, err=True)
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
    prefer_passive_openmp()
    _freeze_objects_at_exit()


@functools.cache  # once per process
def _freeze_objects_at_exit() -> None:
    """At exit, move every object into ``gc``'s permanent generation, so that the
    interpreter's last garbage collections do not walk the millions of objects that torch and pandas
    hold (docs/benchmarks.md: what it saves); everything the command writes is closed explicitly before,
    and the atexit handlers registered after this one (trackers, executors) run first."""
    atexit.register(gc.freeze)


def click_option(o: Option) -> Callable:
    """The click option of ``o`` (named after the library's option, so that its value passes on unchanged)."""
    kwargs = dict(o.click)
    kind, choices = kwargs.pop("type", None), kwargs.pop("choices", None)
    if kind is not None:
        kwargs["type"] = {"path": click.Path(path_type=Path), "file": click.Path(path_type=Path, dir_okay=False),
                          "int": int, "natural": click.IntRange(min=0)}[kind]
    if choices is not None:
        kwargs["type"] = click.Choice(choices)
    if o.name in RUN_DEFAULTS and RUN_DEFAULTS[o.name] is not None:
        kwargs.setdefault("default", RUN_DEFAULTS[o.name])
    return click.option(*o.flags, o.name, metavar=o.metavar, help=o.help, **kwargs)


#: The defaults of the run options (shown by ``--help`` where it shows one).
RUN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunOptions) if f.default is not dataclasses.MISSING}


def run_command_options(f: Callable) -> Callable:
    """Every option of :func:`run_options` on the command ``f``."""
    for o in reversed(run_options()):
        f = click_option(o)(f)
    return f


#: ``bench run --help``'s sections: every option under one heading (bench/helpformat.py).
RUN_SECTIONS = {section: [o.name for o in run_options() if o.section == section] + (["wide"] if section == OUTPUTS
                                                                                   else [])
                for section in SECTIONS}


@main.command(cls=SectionedCommand, sections=RUN_SECTIONS)
@run_command_options
@wide_option
@click.pass_context
def run(ctx, **options):
    """Run a study (a grid of experiments) and write a run directory (results.csv, history.csv, env.json,
    study.yaml, weights).

    \b
    Every list is an axis, crossed with the others:
      bench run --models linear --losses mse,crossentropy --lr 1e-3,1e-2,1e-1 \\
                --seeds 0,1,2
      bench run --study linearity --device cpu

    Rerunning the same command with the same --out resumes: finished cells are skipped, failed and
    missing ones run. Ctrl-C (or SIGTERM) stops after saving what has finished and prints the command
    to resume (exit status 130, or 143 after SIGTERM).
    """
    out = options["out"] = options["out"] or default_run_dir()
    try:
        with stop_signals():
            _run(ctx, **options)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (bench.interrupt.Terminated)
        _report_interrupt(ctx, out)
        sys.exit(exit_status(exc))


def _report_interrupt(ctx: click.Context, out: Path) -> None:
    """After Ctrl-C: bring the tables up to date with the finished cells and say how to resume."""
    import signal

    try:  # a second Ctrl-C while saving would only print a traceback: the records are already safe
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    try:
        store = RunStore(out)
        records = store.records() if store.cells_dir.is_dir() else []
        if records:  # the Ctrl-C may have landed between a record and the table rebuild that follows it
            store.rebuild_tables()
        tuning = (out / DB_FILE).is_file()  # tuning's trials are saved before their cells train
        if records or tuning:
            saved = f"{len(records)} cell record(s)" + (f" and the tuning trials ({DB_FILE})" if tuning else "")
            echo(f"\ninterrupted: {saved} are saved in {out}. Resume with:\n  {resume_command(ctx, out)}", err=True)
        else:
            echo("\ninterrupted before anything was written.", err=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(ctx, *, study, plugins, report, **options):
    """``bench run``'s options passed on to :func:`bench.run` as they are (each checked there, once)."""
    host, _ = make_host(plugins)
    given = {name: value for name, value in options.items() if value is not None}
    result = api.run(study, **given, host=host, argv=ctx.find_root().obj["argv"],
                     echo=lambda message: echo(message, err=True))
    if options["dry_run"]:  # the groups as the run would train them, from the run's own execution options
        echo(format_plan(result.plan, result.path))
        groups = format_groups([c for state, c in result.plan if state != "done"], host.registry, result.execution,
                               options["data_dir"] or default_data_dir()) if result.execution.fuse != "off" else ""
        if groups:
            echo(groups)
        return
    echo_table(format_summary(result.rows))
    if len({record.seed for record in result.records}) > 1:
        echo_table("\n" + format_seed_statistics(result.rows))
    if any(record.target for record in result.records):
        import pandas as pd

        from bench import stats

        table = stats.time_to_target(pd.DataFrame(result.rows))
        echo_table("\ntime to target (training time until the validation metric first reached it; median over "
                   "the seeds that did):\n" + stats.format_time_to_target(table))
    echo(f"results: {result.path / 'results.csv'}")
    if report:
        write_report([result.path], None)
    if result.failed:
        echo(f"{len(result.failed)} cell(s) failed:", err=True)
        for record in result.failed:
            trial = f" trial={record.trial}" if record.phase == "tune" else ""
            echo(f"  {record.model}+{record.loss} on {record.dataset} seed={record.seed}{trial}: {record.error}",
                 err=True, one_line=True)
        with_finals = {r.tuning for r in result.records if r.phase == "final"}
        untuned = {r.tuning: r for r in result.failed if r.phase == "tune" and r.tuning not in with_finals}
        for record in untuned.values():
            echo(f"  {configuration_label(record.row(), record.tuning)}: every tuning trial failed, so it has no "
                 "final cells", err=True)
        sys.exit(1)


def resume_command(ctx: click.Context, out: Path) -> str:
    """The command line that resumes this run: the options the user gave, with --out, without --force."""
    from click.core import ParameterSource

    root = ctx.find_root()
    words = ["bench", *(w for module in root.params.get("plugin_modules") or () for w in ("-p", module)),
             ctx.info_name or "run"]
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


def format_plan(plan, root: Path) -> str:
    """What ``--dry-run`` prints: each cell with ``run``, ``retry`` (failed before) or ``done``."""
    done = sum(state == "done" for state, _ in plan)
    lines = [f"dry run: {len(plan)} cell(s) for {root}: {len(plan) - done} to run, {done} done"]
    lines += [f"  {state:<5} {cell.cell_id}  {cell.label}" for state, cell in plan]
    return "\n".join(lines)


def format_groups(cells, registry, execution, data_dir: Path) -> str:
    """What ``--dry-run`` prints about fused training ("" when no cells share a fuse key): the groups that will
    train stacked, and those whose cells will train one at a time (failed rows under ``--fuse on``) and why,
    decided as the run decides it (:func:`bench.runner.plan_groups`, the model probed on its dataset)."""
    import torch

    from bench.runner import DataCache, plan_groups

    cache = DataCache()
    planned = plan_groups(list(enumerate(cells)), execution, registry,
                          lambda cell: cache.get(registry, cell, data_dir, torch.device(cell.device)))
    fused = [[c for _, c in g] for g, reason in planned if len(g) > 1 and not reason]
    apart = [([c for _, c in g], reason) for g, reason in planned if len(g) > 1 and reason]
    lines = []
    if fused:
        lines.append(f"fused groups: {len(fused)}, holding {sum(map(len, fused))} of the {len(cells)} cell(s) to run"
                     + (" (split further by memory when they run)" if not execution.fuse_max else ""))
    for group in fused:
        lines.append(f"  {group_id(group)}  {len(group):>3} cells  {group[0].label.rsplit(' seed=', 1)[0]}  seeds "
                     f"{','.join(str(c.seed) for c in group)}")
    if apart:
        what = "fail (--fuse on)" if execution.fuse == "on" else "train one at a time"
        lines.append(f"not fused: {sum(len(g) for g, _ in apart)} cell(s) will {what}")
    for group, reason in apart:
        lines.append(f"  {len(group):>3} cells  {group[0].label.rsplit(' seed=', 1)[0]}: {reason}")
    return "\n".join(lines)


def format_seed_statistics(rows) -> str:
    """Mean ± 95% CI of test accuracy per cell over its seeds, then the paired comparisons."""
    import pandas as pd

    from bench import stats

    frame = pd.DataFrame(rows)
    text = ("test accuracy over seeds (mean ± 95% CI, Student t, clipped to [0, 1]):\n"
            + stats.format_aggregate(stats.aggregate(frame)))
    table = stats.compare(frame)
    if not table.empty:
        text += ("\n\npaired comparisons on shared seeds (paired t-test, Holm-corrected over the table;\n"
                 "each interval at the level of its Holm step: it excludes 0 exactly where the verdict is not tied):\n"
                 + stats.format_comparisons(table))
    return text


SUMMARY_COLUMNS = [("model", "model"), ("loss", "loss"), ("dataset", "dataset"), ("params", "params"),
                   ("seed", "seed"), ("status", "status"), ("test_acc", "test_acc"), ("test_loss", "test_loss"),
                   ("epoch_time_s", "epoch_s"), ("samples_per_s", "samples/s")]


def format_summary(rows) -> str:
    """A plain-text table of the grid's outcome, one line per cell (recipe columns that vary included)."""
    varying = [(c, c) for c in (*RECIPE_FIELDS, "limit") if len({str(r.get(c)) for r in rows}) > 1]
    tuned = [("phase", "phase"), ("trial", "trial")] if any(r.get("phase") == "tune" for r in rows) else []
    columns = [*SUMMARY_COLUMNS[:4], *varying, *SUMMARY_COLUMNS[4:5], *tuned, *SUMMARY_COLUMNS[5:]]
    table = [[label for _, label in columns]]
    for row in rows:
        table.append([printable(format_value(key, row.get(key), "-"), newlines=False) for key, _ in columns])
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
@wide_option
def report(run_dirs, out, cell_figures):
    """Write a report over run directories: tables (Markdown, CSV, HTML, LaTeX), figures and one index.html.

    Several run directories are compared: the tables gain a run column and the figures a facet.
    """
    write_report(list(run_dirs), out, cell_figures)


def write_report(run_dirs: list[Path], out: Path | None, cell_figures: bool = False) -> None:
    from bench.reports import build_report

    result = build_report(run_dirs, out, cell_figures=cell_figures)
    for skipped in result.skipped_reports:
        echo(f"note: {skipped} is a gridbench report, not a run directory: left out", err=True)
    echo_table(result.terminal())
    echo(f"report: {result.index}")


@main.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--ignore", metavar="KEY,...", help="Configuration keys left out of the match, e.g. limit (to compare "
              "across a change of --limit) or lr.")
@click.option("--fail-on", "fail_on", metavar="accuracy=X,time=R", help="Exit 1 when NEW is worse than BASE in "
              "some configuration: mean test accuracy lower by more than X, or median epoch time more than R times; "
              "also when no configuration is in both runs (nothing could be checked).")
@click.option("--markdown", type=click.Path(path_type=Path), metavar="FILE",
              help="Also write the comparison as Markdown (e.g. $GITHUB_STEP_SUMMARY), into a folder that exists and "
                   "is not a run directory.")
@wide_option
def compare(base, new, ignore, fail_on, markdown):
    """Compare two runs (run directories or report folders) configuration by configuration.

    For each configuration in both: test accuracy NEW - BASE (paired on shared seeds, Holm-corrected)
    and the ratio of median epoch times. Tuned runs are compared by their final rows. Exit status 0, 1 when
    --fail-on margins are exceeded (or nothing is in both runs to check them on), 2 on bad input.
    """
    from bench.reports.compare import compare_runs
    from bench.reports.load import check_output_file

    if markdown is not None:  # before comparing: a bad path is bad input, nothing written
        check_output_file(markdown, "--markdown")
    result = compare_runs(base, new, ignore=ignore, margins=fail_on)
    echo_table(result.terminal().rstrip("\n"))
    if markdown is not None:
        atomic_write(markdown, result.markdown())
    if result.failed:
        sys.exit(1)


@main.command(name="list")
@plugin_option
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Cache for downloadable datasets (says which are there). [default: $BENCH_DATA_DIR, or the "
                   "platform's cache folder]")
def list_(plugin_modules, data_dir):
    """List the models, losses, datasets and grids that plugins registered, with their parameters, and
    the executors that can run a grid. A dataset that cannot load without network access here says so."""
    import textwrap

    data_dir = data_dir or default_data_dir()

    def item(name: str, *texts: str) -> None:  # name, then its texts wrapped beside it in 100 columns
        for i, text in enumerate(texts):
            lines = textwrap.wrap(text, 100 - 19, break_on_hyphens=False) or [""]
            for j, line in enumerate(lines):
                echo(f"  {name if i == j == 0 else '':<16} {'' if j == 0 else '  '}{line}".rstrip())

    host, registry = make_host(plugin_modules)
    for kind in KINDS:
        click.echo(click.style(f"{PLURAL[kind]}:", bold=True))
        for c in registry.all(kind):
            params = ", ".join(f"{k}={v!r}" for k, v in c.params.items())
            offline = _offline(c, data_dir) if kind == "dataset" else ""
            item(c.name, c.description, f"params: {params or '-'}   plugin: {c.plugin}",
                 *([f"unavailable offline: {offline}"] if offline else []))
    click.echo(click.style("grids:", bold=True))
    for g in registry.grids():
        item(g.name, g.description, f"plugin: {g.plugin}")

    click.echo(click.style("studies:", bold=True) + " (bench run --study NAME)")
    for name, path in shipped().items():
        item(name, describe(path))


def _offline(component, data_dir: Path) -> str:
    """Why a dataset cannot load without network access ('' when it can or does not say): its loader's
    ``offline(data_dir)``, as the downloadable built-ins have."""
    offline = getattr(component.factory, "offline", None)
    if not callable(offline):
        return ""
    try:
        return str(offline(data_dir) or "")
    except Exception:  # a listing never fails on a plugin's nicety
        return ""


@main.command()
@plugin_option
def plugins(plugin_modules):
    """List the plugins: distribution and version, where it was loaded from, its status, and (on the line
    below) what it registered."""
    host, _ = make_host(plugin_modules)
    seen = len(host.warnings)
    host.collect_commands(main)
    for warning in host.warnings[seen:]:
        echo(warning, err=True)
    echo(f"{'plugin':<24} {'distribution':<24} {'source':<12} status")
    echo(f"{'':<24} what it registered")
    for info in host.plugins.values():
        origin = f"{info.distribution} {info.version}".strip() or "-"
        status = info.status if info.status == "ok" else f"{info.status}: {info.error}"
        what = "; ".join(f"{PLURAL[k]}: {', '.join(v)}" for k, v in info.registered.items() if v) or "nothing"
        echo(f"{info.name:<24} {origin:<24} {info.source:<12} {status}")
        echo(f"{'':<24} registered {what}")


if __name__ == "__main__":  # pragma: no cover
    main()
