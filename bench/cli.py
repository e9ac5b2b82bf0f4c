"""The ``bench`` command line: a thin shell over the host, grid, runner and store."""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import shlex
import sys
from pathlib import Path

import click

from bench import __version__
from bench.errors import BenchError, OptionError
from bench.helpformat import SectionedCommand
from bench.paths import default_data_dir
from bench.safe_text import printable
from bench.textfit import TABLE_WIDTH, fit_tables

DEFAULT_DATA_DIR = default_data_dir()


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
            from bench.store import RunLocked

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
            from bench.host import Host

            try:
                host = Host(root.params.get("plugin_modules") or ())
            except BenchError as exc:
                raise click.UsageError(str(exc)) from None
            root.meta["bench.plugin_commands"] = host.collect_commands(self)
            for warning in host.warnings:
                echo(warning, err=True)
        return root.meta["bench.plugin_commands"]


#: Library options that are not spelled ``--name-with-dashes`` on the command line.
FLAGS = {"plugins": "-p", "compile": "--compile", "seeds": "--seeds", "params": "--param", "executor_option": "-X"}
#: Options a study file has and the command line has not.
STUDY_ONLY = ("zip", "exclude", "recipe")


def flag_message(exc: OptionError) -> str:
    """An :class:`OptionError`'s message worded with the command line's flag (``--batch-size must ...``)."""
    if exc.option in STUDY_ONLY:
        return f"study key '{exc.option}': {exc.text}"
    flag = FLAGS.get(exc.option, "--" + exc.option.replace("_", "-"))
    return f"{flag} {exc.text}"


def plugin_option(f, **kwargs):
    return click.option(
        "-p", "plugin_modules", multiple=True, metavar="MODULE",
        help="Load the plugin module MODULE (import path) for this run; -p no:NAME blocks plugin NAME.", **kwargs,
    )(f)


def executor_options(f):
    """``--executor``, ``--jobs``, ``--address``, ``-X``: where the cells train (see plugins/executors.py,
    plugins/slurm.py)."""
    f = click.option("-X", "--executor-option", "executor_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the executor, e.g. -X partition=gpu -X time=30 for slurm (repeatable; bench "
                          "list shows each executor's options; a study's executor block gives them too).")(f)
    f = click.option("--address", metavar="auto|HOST:PORT",
                     help="With --executor ray: the Ray cluster to join [default: start a local instance].")(f)
    f = click.option("--jobs", type=int, metavar="N",
                     help="With --executor process: worker processes [default: one per core, or per GPU].")(f)
    return click.option("--executor", "executor", metavar="NAME",
                        help="Where cells train: local (here, one by one; the default), process (--jobs N "
                             "workers), ray (a Ray cluster), slurm (jobs on a SLURM cluster), or a plugin's "
                             "executor.")(f)


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
    from bench.host import Host

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
    from bench.threads import prefer_passive_openmp

    prefer_passive_openmp()
    _freeze_objects_at_exit()


@functools.cache  # once per process
def _freeze_objects_at_exit() -> None:
    """At exit, move every object into ``gc``'s permanent generation, so that the
    interpreter's last garbage collections do not walk the millions of objects that torch and pandas
    hold (docs/benchmarks.md: what it saves); everything the command writes is closed explicitly before,
    and the atexit handlers registered after this one (trackers, executors) run first."""
    atexit.register(gc.freeze)


#: ``bench run --help``'s sections: every option under one heading (bench/helpformat.py).
RUN_SECTIONS = {
    "What to train": ["study", "grid", "models", "losses", "datasets", "params", "seeds", "repeat", "limit"],
    "The recipe (each takes a comma list: an axis of the grid)": ["epochs", "batch_size", "lr", "optimizer",
                                                                  "weight_decay", "schedule"],
    "How to run": ["device_spec", "executor", "jobs", "address", "executor_option", "threads", "cuda_graphs",
                   "compile_", "plugin_modules", "data_dir"],
    "Outputs": ["out", "force", "wait", "dry_run", "quiet", "wide", "make_report", "track"],
    "Tuning and time to target": ["tune", "trials", "sampler", "tune_metric", "target", "eval_every"],
    "Fusion": ["fuse", "fuse_max"],
}


@main.command(cls=SectionedCommand, sections=RUN_SECTIONS)
@click.option("--study", "study", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE.yaml|NAME",
              help="A study file (models, losses, datasets, grid, params, recipe, zip, exclude, seeds, limit, "
                   "device), or the name of a study that ships with gridbench, e.g. linearity (bench list shows "
                   "them); the options below override it.")
@click.option("--grid", "grid", metavar="NAME", help="A registered grid (bench list shows them), e.g. all (every "
              "model x loss x available dataset) or seed (the notebook's three cells, the default unless "
              "--models/--losses/--datasets are given).")
@click.option("--models", metavar="A,B", help="Models to run (restricts --grid).")
@click.option("--losses", metavar="A,B", help="Losses to run (restricts --grid).")
@click.option("--datasets", metavar="A,B", help="Datasets to run (restricts --grid).")
@click.option("--param", "params", multiple=True, metavar="NAME.KEY=V1,V2",
              help="Sweep a parameter of a model, loss, dataset, optimizer or schedule, e.g. mlp.hidden=64,256 or "
                   "sgd.momentum=0,0.9 (repeatable; crossed with the grid).")
@click.option("--seeds", metavar="S1,S2", help="Seeds; each cell runs once per seed. [default: 0]")
@click.option("--repeat", type=int, metavar="N", help="Run each cell with N seeds, 0..N-1 (instead of --seeds).")
@click.option("--epochs", metavar="N[,N]", help="Epochs (a comma list is an axis of the grid). [default: 2]")
@click.option("--batch-size", metavar="N[,N]", help="Batch size(s). [default: 256]")
@click.option("--lr", metavar="X[,X]", help="Learning rate(s). [default: 0.001]")
@click.option("--optimizer", metavar="NAME[,NAME]", help="Optimizer(s): bench list shows them. [default: adam]")
@click.option("--weight-decay", metavar="X[,X]", help="Weight decay(s). [default: 0]")
@click.option("--schedule", metavar="NAME[,NAME]", help="Learning-rate schedule(s): bench list shows them. "
              "[default: constant]")
@click.option("--limit", type=int, metavar="N", help="Train on the first N training samples only "
              "(a quick smoke run); validation and test stay whole. 0: all. [default: 0]")
@click.option("--device", "device_spec", metavar="DEVICE",
              help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps. [default: auto]")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory [default: runs/<timestamp>]. An "
              "existing run directory resumes: with no grid options, the study it keeps.")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="BENCH_DATA_DIR", default=DEFAULT_DATA_DIR,
              show_default=f"{DEFAULT_DATA_DIR}, or $BENCH_DATA_DIR", help="Cache for downloadable datasets.")
@click.option("--force", is_flag=True, help="Rerun every cell, also those already finished in --out.")
@click.option("--wait", is_flag=True, help="If another bench run is writing --out, wait for it to finish "
              "[default: exit with status 2].")
@click.option("--dry-run", is_flag=True, help="List the cells that would run and those already done; train nothing.")
@click.option("--cuda-graphs", "cuda_graphs", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Capture each training step in a CUDA graph: auto (on for cuda, eager steps "
              "if a model cannot be captured), on (an error if it cannot), off.")
@click.option("--compile", "compile_", is_flag=True, help="Wrap each model in torch.compile (compilation is "
              "timed as warm-up, apart from the epochs).")
@click.option("--fuse", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Train cells that differ only in seed, lr, weight decay or optimizer params as one stacked model: "
              "auto (where the model and optimizer allow; others train one by one, execution_note says why), on "
              "(an error where they cannot), off.")
@click.option("--fuse-max", "fuse_max", type=click.IntRange(min=0), default=0, metavar="N",
              help="At most N cells in one fused group (0: as many as fit in the device's memory).")
@click.option("--threads", type=click.IntRange(min=0), default=0, metavar="N",
              help="CPU threads for torch (0: torch's default, one per core).")
@click.option("--tune", "tune", multiple=True, metavar="KEY=LOW:HIGH[:log]",
              help="Tune KEY (a recipe key such as lr, or a parameter NAME.KEY such as adam.beta2) per configuration "
                   "on the validation split, then train the best value with every seed (repeatable; categorical: "
                   "KEY=a|b|c).")
@click.option("--trials", type=int, metavar="N", help="Tuning trials per configuration, at most 1,000 (a failed "
              "trial counts). [default: 8]")
@click.option("--sampler", type=click.Choice(["qmc", "tpe"]), help="Tuning sampler: quasi-random Sobol points or "
              "TPE (Optuna), seeded by the first seed. [default: qmc]")
@click.option("--tune-metric", type=click.Choice(["val_acc", "val_loss"]), help="What tuning optimises (val_acc is "
              "maximised, val_loss minimised). [default: val_acc]")
@click.option("--target", metavar="val_acc=X|val_loss=X", help="Time to target: record, per cell, the first epoch, "
              "training steps and training seconds at which the validation metric reached X.")
@click.option("--eval-every", type=click.IntRange(min=0), metavar="STEPS", help="Also evaluate on the validation "
              "split every STEPS training steps (a finer time to target; timed apart from training). [default: 0]")
@click.option("--track", metavar="NAME[,NAME]", help="Log the run to experiment trackers, e.g. mlflow, tensorboard "
              "(bench list shows them; each is an optional extra).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--report", "make_report", is_flag=True,
              help="Then write a report into RUN_DIR/report (see bench report).")
@wide_option
@plugin_option
@executor_options
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
    from bench.api import default_run_dir
    from bench.interrupt import exit_status, stop_signals

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

    from bench.store import RunStore
    from bench.tune import DB_FILE

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


def _run(ctx, *, study, grid, models, losses, datasets, params, seeds, repeat, epochs, batch_size, lr, optimizer,
         weight_decay, schedule, limit, device_spec, out, data_dir, force, wait, dry_run, cuda_graphs, compile_,
         threads, tune, trials, sampler, tune_metric, target, eval_every, track, quiet, make_report, plugin_modules,
         executor, jobs, address, executor_option, fuse, fuse_max):
    from bench import api

    host, _ = make_host(plugin_modules)
    result = api.run(
        study, grid=grid, models=models, losses=losses, datasets=datasets, params=list(params), seeds=seeds,
        repeat=repeat, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        schedule=schedule, limit=limit, device=device_spec, out=out, data_dir=data_dir, force=force,
        dry_run=dry_run, wait=wait, cuda_graphs=cuda_graphs, compile=compile_, threads=threads, quiet=quiet,
        report=False,
        host=host, executor=executor, jobs=jobs, address=address, track=track, tune=list(tune), trials=trials,
        sampler=sampler, tune_metric=tune_metric, target=target, eval_every=eval_every, fuse=fuse,
        fuse_max=fuse_max, executor_options=parse_executor_options(executor_option), argv=ctx.find_root().obj["argv"],
        echo=lambda message: echo(message, err=True),
    )
    if dry_run:
        from bench.engine import Execution

        echo(format_plan(result.plan, result.path))
        groups = format_groups([c for state, c in result.plan if state != "done"], host.registry,
                               Execution(compile=compile_, fuse=fuse, fuse_max=fuse_max),
                               Path(data_dir) if data_dir else DEFAULT_DATA_DIR) if fuse != "off" else ""
        if groups:
            echo(groups)
        return
    echo_table(format_summary(result.rows))
    if len({row["seed"] for row in result.rows}) > 1:
        echo_table("\n" + format_seed_statistics(result.rows))
    if any(row.get("target") for row in result.rows):
        import pandas as pd

        from bench import stats

        table = stats.time_to_target(pd.DataFrame(result.rows))
        echo_table("\ntime to target (training time until the validation metric first reached it; median over "
                   "the seeds that did):\n" + stats.format_time_to_target(table))
    echo(f"results: {result.path / 'results.csv'}")
    if make_report:
        write_report([result.path], None)
    if result.failed:
        from bench.tune import configuration_label

        echo(f"{len(result.failed)} cell(s) failed:", err=True)
        for row in result.failed:
            trial = f" trial={row.get('trial')}" if row.get("phase") == "tune" else ""
            echo(f"  {row['model']}+{row['loss']} on {row['dataset']} seed={row['seed']}{trial}: {row['error']}",
                 err=True, one_line=True)
        with_finals = {r.get("tuning") for r in result.rows if r.get("phase") == "final"}
        untuned = {r["tuning"]: r for r in result.failed if r.get("phase") == "tune" and r["tuning"] not in with_finals}
        for row in untuned.values():
            echo(f"  {configuration_label(row, row['tuning'])}: every tuning trial failed, so it has no final cells",
                 err=True)
        sys.exit(1)


def parse_executor_options(tokens) -> dict:
    """``-X KEY=VALUE`` options -> ``{KEY: value}``, each value read as YAML (``30`` a number, ``a,b`` a string)."""
    import yaml

    out = {}
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq or not key.strip():
            raise OptionError("executor_option", f"{token}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


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

    from bench.fuse import group_id
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
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_summary(rows) -> str:
    """A plain-text table of the grid's outcome, one line per cell (recipe columns that vary included)."""
    from bench.config import RECIPE_FIELDS

    varying = [(c, c) for c in (*RECIPE_FIELDS, "limit") if len({str(r.get(c)) for r in rows}) > 1]
    tuned = [("phase", "phase"), ("trial", "trial")] if any(r.get("phase") == "tune" for r in rows) else []
    columns = [*SUMMARY_COLUMNS[:4], *varying, *SUMMARY_COLUMNS[4:5], *tuned, *SUMMARY_COLUMNS[5:]]
    table = [[label for _, label in columns]]
    for row in rows:
        table.append([printable(_fmt(key, row.get(key)), newlines=False) for key, _ in columns])
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
        from bench.store import atomic_write

        atomic_write(markdown, result.markdown())
    if result.failed:
        sys.exit(1)


@main.command(name="list")
@plugin_option
def list_(plugin_modules):
    """List the models, losses, datasets and grids that plugins registered, with their parameters, and
    the executors that can run a grid."""
    import textwrap

    from bench.host import KINDS, PLURAL

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
            item(c.name, c.description, f"params: {params or '-'}   plugin: {c.plugin}")
    click.echo(click.style("grids:", bold=True))
    for g in registry.grids():
        item(g.name, g.description, f"plugin: {g.plugin}")
    from bench.study import describe, shipped

    click.echo(click.style("studies:", bold=True) + " (bench run --study NAME)")
    for name, path in shipped().items():
        item(name, describe(path))


@main.command()
@plugin_option
def plugins(plugin_modules):
    """List the plugins: distribution and version, what each registered, and its status."""
    from bench.host import PLURAL

    host, _ = make_host(plugin_modules)
    seen = len(host.warnings)
    host.collect_commands(main)
    for warning in host.warnings[seen:]:
        echo(warning, err=True)
    for info in host.plugins.values():
        origin = f"{info.distribution} {info.version}".strip() or "-"
        status = info.status if info.status == "ok" else f"{info.status}: {info.error}"
        what = "; ".join(f"{PLURAL[k]}: {', '.join(v)}" for k, v in info.registered.items() if v) or "nothing"
        echo(f"{info.name:<24} {origin:<24} {info.source:<12} {status}")
        echo(f"{'':<24} registered {what}")


if __name__ == "__main__":  # pragma: no cover
    main()
