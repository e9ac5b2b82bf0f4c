"""The hooks a gridbench plugin can implement.

Each ``bench_register_*`` hook is called once, when the host collects components (before a grid
is expanded, or when ``bench list`` runs). It receives a ``register`` callback::

    register(name, factory, params=None, description="")

``params`` is the dict of the factory's default keyword arguments: exactly what ``--param
NAME.KEY=V1,V2`` can sweep. The host validates every call, rejects a name that another plugin
already registered for the same kind (naming both plugins), and remembers which plugin
registered each component.
"""

import pluggy

hookspec = pluggy.HookspecMarker("bench")


@hookspec
def bench_register_models(register):
    """Register model factories.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(input_shape: tuple[int, ...], num_classes: int, **params)``
    returns a ``torch.nn.Module`` mapping ``[N, *input_shape]`` to logits ``[N, num_classes]``.
    A factory may raise ``bench.IncompatibleCell`` when it cannot handle the input shape.
    """


@hookspec
def bench_register_losses(register):
    """Register loss factories.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(**params)`` returns a callable
    ``loss(logits: Tensor[N, C], targets: LongTensor[N]) -> scalar Tensor`` (a mean over the batch).
    """


@hookspec
def bench_register_datasets(register):
    """Register dataset factories.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(data_dir: pathlib.Path, **params)`` returns a
    ``bench.DataSplits``. A dataset that cannot be had here (e.g. offline, not cached) raises
    ``bench.DatasetUnavailable`` with the reason and how to get it.
    """


@hookspec
def bench_register_grids(register):
    """Register named grids, so that ``bench run --grid NAME`` can come from a plugin.

    Called once when components are collected, after the component hooks. ``register(name, cells,
    description="")`` where ``cells`` is a sequence of ``(model, loss, dataset)`` name triples, or a
    callable ``cells(registry) -> iterable of (model, loss, dataset)`` for a grid that depends on
    what is registered (the built-in ``all`` is one). ``--models/--losses/--datasets`` restrict a
    grid's cells; ``--param`` and ``--seeds`` cross them. The built-ins ``all`` and ``seed`` are
    registered through this hook by ``plugins.grids``.
    """


@hookspec
def bench_cli(cli):
    """Add commands to the ``bench`` command line.

    Called when ``bench`` is asked for a command it does not know, or for its command list
    (``bench --help``). ``cli`` is the click group ``bench.cli.main``: add commands with
    ``@cli.command()`` or ``cli.add_command(command)``. A name that is already taken is refused
    and the plugin reported as broken. Built-ins, installed plugins and ``bench -p MODULE`` (before
    the command name) take part.
    """


@hookspec
def bench_register_executors(register):
    """Register executors: the ways a grid's cells can be run (``bench run --executor NAME``).

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(**params)`` returns an executor: an object with
    ``run(tasks, job) -> Iterator[dict]`` (see :class:`bench.runner.Executor`). ``tasks`` is a
    list of ``(index, bench.grid.Cell)``; ``job`` a :class:`bench.runner.Job` (the registry, the
    device, the data directory and the picklable :class:`bench.runner.WorkSpec`). ``run`` yields
    one record per task, in any order, as each cell finishes: in-process from
    ``bench.runner.train_record``, from a worker through ``bench.runner.execute_cell(index, cell,
    job.spec)``, or ``bench.runner.failed_record`` when a worker died. The driver alone writes the
    records to the run directory; the generator's ``close()`` must stop any workers.

    ``params`` are the factory's keyword defaults: ``jobs`` receives ``--jobs N`` and ``address``
    receives ``--address``. The factory raises ``bench.BenchError`` when the executor cannot be
    used here (e.g. a missing optional dependency), saying how to fix it.
    """


@hookspec
def bench_register_optimizers(register):
    """Register optimizers (temporary spec; documented fully with the optimizer plugins)."""


@hookspec
def bench_register_schedules(register):
    """Register learning-rate schedules (temporary spec; documented fully with the schedule plugins)."""


# -- lifecycle: observing a run (see bench/lifecycle.py) ---------------------------------------------------

@hookspec
def bench_run_start(run):
    """A run starts: its cells are expanded and checked, nothing has trained yet.

    ``run`` is the :class:`bench.Run` being written: ``path`` (the run directory), ``study`` (the
    resolved :class:`bench.Study`), ``cells`` (every cell of the study), ``to_train`` (how many of them
    will train; the others finished earlier), ``quiet`` and ``tracked`` (the ``--track`` names).
    Called in the process that writes the run directory, as are all lifecycle hooks; an
    implementation that raises is reported once, naming its plugin, and gets no more events.
    """


@hookspec
def bench_cell_start(cell):
    """A cell (a :class:`bench.config.Cell`) starts training.

    Called as it starts, for each cell that trains in this run. With an executor that trains elsewhere
    (``process``, ``ray``), called when its record reaches the driver, just before ``bench_cell_end``."""


@hookspec
def bench_epoch_end(cell, row):
    """An epoch of ``cell`` ended. ``row`` is its row of history.csv: ``cell_id``, ``model``, ``loss``,
    ``dataset``, ``params``, ``seed``, ``epoch``, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``,
    ``epoch_time_s``.

    Called after each epoch; with ``process``/``ray``, for each epoch when the cell's record arrives."""


@hookspec
def bench_cell_end(cell, record):
    """A cell finished (``ok``), failed or was skipped, and its record is written to ``cells/ID.json``.

    Called once per cell that trained in this run, after its record is on disk. ``record["row"]`` is
    its row of results.csv (``status``, ``error``, metrics, timings); ``record["history"]`` its epochs;
    ``record["started_at"]``/``["ended_at"]`` the attempt's wall-clock times (Unix seconds)."""


@hookspec
def bench_run_end(run, results):
    """The run ended. ``results`` are the rows of the study's cells (dicts, as in results.csv), those
    finished by earlier runs included.

    Called once per run, last; also after Ctrl-C, before the interruption goes on."""


@hookspec
def bench_register_trackers(register):
    """Register experiment trackers, chosen per run with ``bench run --track NAME,...``.

    Called once when components are collected. ``register(name, factory, params=None,
    description="")`` where ``factory(**params)`` returns a tracker: an object with any of the
    methods ``run_start(run)``, ``cell_start(cell)``, ``epoch_end(cell, row)``, ``cell_end(cell,
    record)``, ``run_end(run, results)`` (the lifecycle hooks' arguments). The factory is called
    before anything trains; it raises ``bench.BenchError`` when the tracker cannot work here (e.g. its
    optional dependency is missing), saying what to install.
    """
