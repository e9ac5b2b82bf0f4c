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
