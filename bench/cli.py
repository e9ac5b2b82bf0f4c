"""The ``bench`` command line: a thin shell over the host, grid, runner and store."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

import click

from bench import __version__
from bench.errors import BenchError

DEFAULT_DATA_DIR = Path("~/.cache/gridbench").expanduser()


class BenchGroup(click.Group):
    """Turns user errors into one line on stderr and exit status 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BenchError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)


def plugin_option(f):
    return click.option(
        "-p", "plugin_modules", multiple=True, metavar="MODULE",
        help="Load the plugin module MODULE (import path) for this run; -p no:NAME blocks plugin NAME.",
    )(f)


def make_host(plugin_modules):
    from bench.host import Host

    host = Host(plugin_modules)
    registry = host.registry  # collect now so that plugin warnings come first
    for warning in host.warnings:
        click.echo(warning, err=True)
    return host, registry


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gridbench")
def main():
    """gridbench: run grids of training experiments (models x losses x datasets) and compare them.

    \b
    Examples:
      bench run --grid seed                 # the notebook's three cells on MNIST
      bench run --grid all --device cpu     # every model x loss x available dataset
      bench run --models mlp --param mlp.hidden=64,256 --seeds 0,1
      bench list                            # what can go into a grid
    """
    from bench.threads import prefer_passive_openmp

    prefer_passive_openmp()


@main.command()
@click.option("--grid", "grid", metavar="NAME", help="Preset grid: all (every model x loss x available dataset) "
              "or seed (the notebook's three cells). Default: seed, unless --models/--losses/--datasets are given.")
@click.option("--models", metavar="A,B", help="Models to run (restricts --grid).")
@click.option("--losses", metavar="A,B", help="Losses to run (restricts --grid; default crossentropy).")
@click.option("--datasets", metavar="A,B", help="Datasets to run (restricts --grid; default mnist).")
@click.option("--param", "params", multiple=True, metavar="NAME.KEY=V1,V2",
              help="Sweep a component parameter, e.g. mlp.hidden=64,256 (repeatable; crossed with the grid).")
@click.option("--seeds", default="0", show_default=True, metavar="S1,S2", help="Seeds; each cell runs once per seed.")
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
@click.option("--cuda-graphs", "cuda_graphs", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="Capture each training step in a CUDA graph: auto (on for cuda, eager steps "
              "if a model cannot be captured), on (an error if it cannot), off.")
@click.option("--compile", "compile_", is_flag=True, help="Wrap each model in torch.compile (compilation is "
              "timed as warm-up, apart from the epochs).")
@click.option("--threads", type=click.IntRange(min=0), default=0, metavar="N",
              help="CPU threads for torch (0: torch's default, one per core).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@plugin_option
def run(grid, models, losses, datasets, params, seeds, epochs, batch_size, lr, optimizer, limit, device_spec, out,
        data_dir, cuda_graphs, compile_, threads, quiet, plugin_modules):
    """Run a grid of experiments and write a run directory (results.csv, history.csv, env.json, weights)."""
    from bench import grid as grid_mod
    from bench.device import resolve_device
    from bench.env import environment
    from bench.runner import available_datasets, run_cells
    from bench.step import Execution
    from bench.store import RunStore
    from bench.threads import set_threads

    set_threads(threads)
    host, registry = make_host(plugin_modules)
    config = grid_mod.TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, limit=limit)
    device = resolve_device(device_spec)
    execution = Execution(cuda_graphs=cuda_graphs, compile=compile_)
    execution.step_mode(device)  # --cuda-graphs on without cuda: fail before any work
    seed_list = grid_mod.parse_int_list("--seeds", seeds)
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
        seeds=seed_list, device=str(device), config=config,
    )
    store = RunStore(out or default_run_dir())
    store.create()
    store.write_env(environment(device, ["bench", *sys.argv[1:]], execution) | {"cells": len(cells)})
    if not quiet:
        click.echo(f"gridbench {__version__}: {len(cells)} cell(s) on {device} -> {store.root}", err=True)

    grid_bar = None if quiet else _bar(total=len(cells), desc="grid", unit="cell")

    def progress(cell, row):
        if grid_bar is not None:
            grid_bar.update(1)
            grid_bar.set_postfix_str(f"{cell.model}+{cell.loss}: {row['status']}")

    def epoch_bar(cell):
        return _bar(total=config.epochs, desc=cell.label, unit="epoch", leave=False, position=1)

    try:
        summary = run_cells(cells, registry, store, device, data_dir, progress, None if quiet else epoch_bar,
                            execution=execution)
    finally:
        if grid_bar is not None:
            grid_bar.close()
    click.echo(format_summary(summary.rows))
    click.echo(f"results: {store.root / 'results.csv'}")
    if summary.failed:
        click.echo(f"{len(summary.failed)} cell(s) failed:", err=True)
        for row in summary.failed:
            click.echo(f"  {row['model']}+{row['loss']} on {row['dataset']} seed={row['seed']}: {row['error']}",
                       err=True)
        sys.exit(1)


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


@main.command(name="list")
@plugin_option
def list_(plugin_modules):
    """List the models, losses and datasets that can go into a grid, with their parameters."""
    from bench.host import KINDS, PLURAL

    host, registry = make_host(plugin_modules)
    for kind in KINDS:
        click.echo(click.style(f"{PLURAL[kind]}:", bold=True))
        for c in registry.all(kind):
            params = ", ".join(f"{k}={v!r}" for k, v in c.params.items())
            click.echo(f"  {c.name:<16} {c.description}")
            click.echo(f"  {'':<16} params: {params or '-'}   plugin: {c.plugin}")


@main.command()
@plugin_option
def plugins(plugin_modules):
    """List the loaded plugins: distribution, version, what each registered and its status."""
    from bench.host import PLURAL

    host, _ = make_host(plugin_modules)
    for info in host.plugins.values():
        origin = f"{info.distribution} {info.version}".strip() or info.source
        what = "; ".join(f"{PLURAL[k]}: {', '.join(v) or '-'}" for k, v in info.registered.items()) or "-"
        status = info.status if info.status == "ok" else f"{info.status}: {info.error}"
        click.echo(f"{info.name:<20} {origin:<24} {status}")
        click.echo(f"{'':<20} {what}")


if __name__ == "__main__":  # pragma: no cover
    main()
