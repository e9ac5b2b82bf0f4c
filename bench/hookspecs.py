"""The hooks a gridbench plugin can implement.

Each ``bench_register_*`` hook is called once, when the host collects components (before a grid
is expanded, or when ``bench list`` runs). It receives a ``register`` callback::

    register(name, factory, params=None, description="")

``params`` is the dict of the factory's default keyword arguments: exactly what ``--param
NAME.KEY=V1,V2`` can sweep. The host validates every call, rejects a name that another plugin
already registered for the same kind (naming both plugins), and remembers which plugin
registered each component.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import click

    from bench.api import Run
    from bench.config import Cell
    from bench.host import Registry
    from bench.record import CellRecord

hookspec = pluggy.HookspecMarker("bench")


class Register(Protocol):
    """The ``register`` callback of the component hooks (models, losses, datasets, optimizers, ...)."""

    def __call__(self, name: str, factory: Callable[..., Any], params: Mapping[str, Any] | None = None,
                 description: str = "", *, default: bool = False,
                 references: list[dict[str, Any]] | None = None) -> None: ...


class RegisterGrid(Protocol):
    """The ``register`` callback of :func:`bench_register_grids`."""

    def __call__(self, name: str,
                 cells: Iterable[tuple[str, str, str]] | Callable[[Registry], Iterable[tuple[str, str, str]]],
                 description: str = "", *, default: bool = False) -> None: ...


@hookspec
def bench_register_models(register: Register) -> None:
    """Register model factories.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(input_shape: tuple[int, ...], num_classes: int, **params)``
    returns a ``torch.nn.Module`` mapping ``[N, *input_shape]`` to logits ``[N, num_classes]``.
    A factory may raise ``bench.IncompatibleCell`` when it cannot handle the input shape. Before
    anything trains, ``bench run`` calls each model factory once per distinct parameter set on PyTorch's
    ``meta`` device (``torch.device("meta")`` is the default device then: no memory, no compute) with a
    nominal ``(1, 28, 28)`` input and 10 classes, so that a bad parameter value is refused up front; a
    factory should have no side effects.
    """


@hookspec
def bench_register_losses(register: Register) -> None:
    """Register loss factories.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(**params)`` returns a callable
    ``loss(logits: Tensor[N, C], targets: LongTensor[N]) -> scalar Tensor`` (a mean over the batch).
    It may offer ``loss.stacked(logits: Tensor[M, N, C], targets: LongTensor[M, N]) -> Tensor[M]``, the
    losses of M members of a fused group at once (docs/plugins.md, Fused training).
    """


@hookspec
def bench_register_datasets(register: Register) -> None:
    """Register dataset factories.

    Called once when components are collected. ``register(name, factory, params=None,
    description="", *, references=None)`` where ``factory(data_dir: pathlib.Path, **params)`` returns a
    ``bench.DataSplits``. A dataset that cannot be had here (e.g. offline, not cached) raises
    ``bench.DatasetUnavailable`` with the reason and how to get it.

    ``references`` (datasets only): published results on this dataset, a list of dicts with
    ``model``, ``test_error`` (a fraction), ``label`` and ``source``, and optionally ``loss``,
    ``params`` (model parameters that must match) and ``published`` (the published model's other
    parameters); see :mod:`bench.references`. ``bench run`` records them in ``env.json`` and reports
    show each beside the configurations it applies to, with the gap.
    """


@hookspec
def bench_register_grids(register: RegisterGrid) -> None:
    """Register named grids, so that ``bench run --grid NAME`` can come from a plugin.

    Called once when components are collected, after the component hooks. ``register(name, cells,
    description="")`` where ``cells`` is a sequence of ``(model, loss, dataset)`` name triples, or a
    callable ``cells(registry) -> iterable of (model, loss, dataset)`` for a grid that depends on
    what is registered (the built-in ``all`` is one). ``--models/--losses/--datasets`` restrict a
    grid's cells; ``--param`` and ``--seeds`` cross them. The built-ins ``all`` and ``seed`` are
    registered through this hook by ``bench.plugins.grids``.
    """


@hookspec
def bench_cli(cli: click.Group) -> None:
    """Add commands to the ``bench`` command line.

    Called when ``bench`` is asked for a command it does not know, or for its command list
    (``bench --help``). ``cli`` is the click group ``bench.cli.main``: add commands with
    ``@cli.command()`` or ``cli.add_command(command)``. A name that is already taken is refused
    and the plugin reported as broken. Built-ins, installed plugins and ``bench -p MODULE`` (before
    the command name) take part.
    """


@hookspec
def bench_register_executors(register: Register) -> None:
    """Register executors: the ways a grid's cells can be run (``bench run --executor NAME``).

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(**params)`` returns an executor: an object with
    ``run(tasks, job) -> Iterator[CellRecord]`` (see :class:`bench.runner.Executor`). ``tasks`` is a
    list of ``(index, bench.grid.Cell)``; ``job`` a :class:`bench.runner.Job` (the registry, the
    device, the data directory and the picklable :class:`bench.runner.WorkSpec`). ``run`` yields
    one record per task, in any order, as each cell finishes: in-process from
    ``bench.runner.train_record``, from a worker through ``bench.runner.execute_cell(index, cell,
    job.spec)``, or ``bench.runner.failed_record`` when a worker died. The driver alone writes the
    records to the run directory; the generator's ``close()`` must stop any workers.

    ``params`` are the factory's keyword defaults: ``jobs`` receives ``--jobs N``, ``address``
    receives ``--address``, any other one ``-X KEY=VALUE`` (or the study's ``executor`` block). The
    factory raises ``bench.BenchError`` when the executor cannot be used here (e.g. a missing optional
    dependency), saying how to fix it.
    """


@hookspec
def bench_register_optimizers(register: Register) -> None:
    """Register optimizers (``--optimizer NAME``).

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(params, lr: float, weight_decay: float, **params)`` returns an
    object with torch's optimizer interface: ``step()``, ``zero_grad()``, ``param_groups`` (each a dict
    whose ``"lr"`` is read at every step, so that a schedule can change it) and ``state_dict()`` /
    ``load_state_dict()``; a ``torch.optim.Optimizer`` qualifies. It is called once per cell with the
    model's parameters (a list of tensors), ``lr`` and ``weight_decay`` as keywords, and the
    registered ``params`` (overridden by ``--param NAME.KEY=V``). A factory that also names a keyword
    ``capturable`` receives ``capturable=True`` when the step is captured in a CUDA graph: it must then
    keep all its state, and its learning rate as a tensor, on the parameters' device, and step without
    host synchronisation. The built-ins ``adam``, ``adamw`` and ``sgd`` are registered through this
    hook by ``bench.plugins.optimizers``.
    """


@hookspec
def bench_register_schedules(register: Register) -> None:
    """Register learning-rate schedules (``--schedule NAME``).

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(optimizer, total_steps: int, **params)`` returns a scheduler (an
    object whose ``step()`` is called once after every optimizer step, and which sets each of
    ``optimizer.param_groups``' ``"lr"``), or ``None`` for no per-step work at all. ``total_steps`` is
    the cell's number of optimizer steps (epochs x batches per epoch). A tensor ``lr`` must be updated
    in place (``lr.fill_(value)``, as :func:`bench.optim.set_lr` and torch's schedulers do), or a
    captured CUDA graph would not see it; :class:`bench.optim.FactorSchedule` sets ``lr = base_lr *
    factor(t)`` that way. The built-ins ``constant``, ``cosine`` and ``warmup-cosine`` are registered
    through this hook by ``bench.plugins.schedules``.
    """


# -- lifecycle: observing a run (see bench/lifecycle.py) ---------------------------------------------------

@hookspec
def bench_run_start(run: Run) -> None:
    """Called when a run starts: its cells are expanded and checked, nothing has trained yet.

    ``run`` is the :class:`bench.Run` being written: ``path`` (the run directory), ``study`` (the
    resolved :class:`bench.Study`), ``cells`` (every cell of the study), ``to_train`` (how many of them
    will train; the others finished earlier), ``quiet`` and ``tracked`` (the ``--track`` names).
    Called in the process that writes the run directory, as are all lifecycle hooks; an
    implementation that raises is reported once, naming its plugin, and gets no more events.
    """


@hookspec
def bench_cell_start(cell: Cell) -> None:
    """Called when a cell (a :class:`bench.config.Cell`) starts training. With an executor that trains
    elsewhere (``process``, ``ray``): when its record reaches the driver, just before ``bench_cell_end``."""


@hookspec
def bench_epoch_end(cell: Cell, row: dict[str, Any]) -> None:
    """Called when an epoch of ``cell`` ended. ``row`` is its row of history.csv: ``cell_id``, ``model``,
    ``loss``, ``dataset``, ``params``, ``seed``, ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``,
    ``val_acc``, ``epoch_time_s``. With ``process``/``ray``: when the cell's record arrives."""


@hookspec
def bench_cell_end(cell: Cell, record: CellRecord) -> None:
    """Called when a cell finished (``ok``), failed or was skipped, once its record is written to
    ``cells/ID.json``.

    ``record`` is its :class:`bench.record.CellRecord`: ``record.status``, ``record.error``, metrics and
    timings as attributes (``record.row()``: its row of results.csv), ``record.history`` its epochs,
    ``record.started_at``/``record.ended_at`` the attempt's wall-clock times (Unix seconds). The dict
    form of earlier versions (``record["row"]["status"]``) still reads."""


@hookspec
def bench_run_end(run: Run, results: list[dict[str, Any]]) -> None:
    """Called when the run ended (also after Ctrl-C, before the exception goes on: then ``run.interrupted``
    is true). ``results`` are the rows of the study's cells (dicts, as in results.csv), those finished by
    earlier runs included."""


@hookspec
def bench_register_trackers(register: Register) -> None:
    """Register experiment trackers, chosen per run with ``bench run --track NAME,...``.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(**params)`` returns a tracker: a plugin object implementing any of
    the lifecycle hooks above (``@hookimpl`` methods), registered on the plugin manager for the run that
    names it; an object with plain methods ``run_start(run)``, ``cell_start(cell)``, ``epoch_end(cell,
    row)``, ``cell_end(cell, record)``, ``run_end(run, results)`` works too. The factory is called
    before anything trains; it raises ``bench.BenchError`` when the tracker cannot work here (e.g. its
    optional dependency is missing), saying what to install.
    """
