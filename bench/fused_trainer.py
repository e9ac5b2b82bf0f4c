"""Fused training: a group of cells of one shape (bench/fuse.py) trains as one stacked model.

The members' parameters are stacked along a new first dimension (``torch.func.stack_module_state``)
and one step trains them all: each member's own batch is gathered from the resident dataset into
one ``[N * batch, ...]`` buffer, forward and backward run through ``vmap`` over a copy of a member (its
``nn.Linear`` layers as one stacked product each, bench/stacked.py), the loss through its own stacked
form where it offers one (``loss.stacked``, else per member through ``vmap``), a batched optimizer
(plugins/batched_optimizers.py) updates every member with its own hyperparameters, and per-member
loss and accuracy sums stay on the device. On cuda the step is captured in a CUDA graph, as the
unfused step is.

Each member stays itself: it is initialised as its unfused cell would be (``torch.manual_seed(seed)``
then the model factory), draws its own permutation each epoch from its own generator, and so sees
exactly the batches it would see alone; its metrics, history, weights and confusion matrix are its
own. Members never mix: a member that diverges (NaN/inf) is recorded as failed and its results are
dropped, while its slice of the stack goes on computing beside the others without touching them.

A group that cannot train this way (``vmap`` cannot run the model: data-dependent control flow,
in-place buffer updates such as BatchNorm statistics, ``.item()`` in ``forward``; an optimizer without
a batched form; ``compile``) trains one cell at a time, each with an ``execution_note`` saying why.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from bench.data import DataSplits
from bench.errors import BenchError, DataCorrupt, one_line
from bench.fuse import BatchedOptimizer, even_chunks, fuse_key, group_id, member_hyperparameters
from bench.grid import Cell
from bench.host import BrokenPlugin
from bench.stacked import stacked_layers
from bench.step import Execution
from bench.timing import Stopwatch, median
from bench.trainer import EVAL_BATCH, FINITE_CHECK_EVERY, CellResult, NonFiniteLoss, _check_finite, train_cell

#: On cuda a fused group may take this share of the device memory that is free when it starts.
CUDA_MEMORY_SHARE = 0.5
#: Elsewhere (cpu, mps) at most this many bytes; beyond some tens of MB the gathered batches no
#: longer fit in a CPU's caches anyway, and the gain per member flattens.
HOST_MEMORY_BUDGET = 1 << 30


class Unfusable(Exception):
    """Why a group cannot train as one stacked model (its cells then train one by one)."""


# -- the stacked step ------------------------------------------------------------------------------


class FusedStep:
    """Trains N stacked members on ``(x, y)``, each on its own index batch; sums loss and hits per member.

    ``static`` (eager, on buffers that outlive the step) or ``graph`` (that step captured in a CUDA
    graph per batch length and replayed).
    """

    mode = "static"

    def __init__(self, models: Sequence[nn.Module], loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 optimizer: BatchedOptimizer, cells: Sequence[Cell]):
        from torch.func import stack_module_state, vmap

        self.x, self.y, self.device = x, y, x.device
        # rows as flat vectors where that is a view: index_select copies them ~20% faster than 4-D rows
        self._rows = x.view(len(x), -1) if x.is_contiguous() and x.dim() > 2 else x
        self.size = len(models)
        try:
            params, buffers = stack_module_state(list(models))
        except Exception as exc:  # members whose parameters differ in shape
            raise Unfusable(f"the members' parameters cannot be stacked: {one_line(exc, limit=300)}") from exc
        #: ``{name: [N, ...]}``: the trainable parameters (leaves that the optimizer updates), and everything
        #: else the model holds (frozen parameters, buffers)
        self.params = {k: v for k, v in params.items() if v.requires_grad}
        self.rest = {**{k: v for k, v in params.items() if not v.requires_grad}, **buffers}
        if not self.params:
            raise BenchError("the model has no trainable parameters")
        # each call swaps a member's slices into this copy of a member (_Slots); its nn.Linear layers take
        # the stacked products (bench/stacked.py)
        self.base = copy.deepcopy(models[0])
        stacked_layers(self.base)
        slots = _Slots(self.base, [*self.params, *self.rest])
        self._optimizer_spec, self._cells = optimizer, list(cells)
        self.optimizer = None  # built by prepare(), once settle() has given the parameters their layout
        # the loss over all members at once: its own stacked form ([N, B, C], [N, B] -> [N]) where it offers
        # one, else per member through vmap
        own_stacked = getattr(loss_fn, "stacked", None)
        stacked_loss = own_stacked or vmap(loss_fn)
        #: what settle() names if the loss does not give one value per member
        self._loss_name = "the loss's stacked form" if own_stacked else "the loss"

        def forward(member_params, member_rest, xb):
            return slots.call((*member_params.values(), *member_rest.values()), xb)

        # Autograd through the vmapped forward rather than vmap(grad(...)): the same arithmetic, but
        # torch.func.grad imports torch._dynamo on first use (1.5-3 s of every process that fuses).
        train_forward, eval_forward = vmap(forward), vmap(forward, in_dims=(0, 0, None))

        def train_fn(params, rest, xs, ys):
            logits = train_forward(params, rest, xs)
            return stacked_loss(logits, ys), logits

        def eval_fn(params, rest, xb, yb):
            logits = eval_forward(params, rest, xb)
            return stacked_loss(logits, yb.expand(self.size, *yb.shape)), logits

        self._train_fn, self._eval_fn = train_fn, eval_fn
        self.loss_sum = torch.zeros(self.size, device=self.device)
        self.correct = torch.zeros(self.size, device=self.device, dtype=torch.int64)
        self._batches: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.note = ""

    def settle(self, length: int) -> None:
        """One forward and backward on a batch of ``length`` per member, to give each stacked parameter the
        memory layout that its gradient comes out in.

        Through plain ``vmap`` a linear layer's weight gradient comes out transposed (``[N, in, out]`` memory
        for an ``[N, out, in]`` weight); autograd would copy it into the parameter's layout every step (a
        third of an MLP step on cpu). The stacked ``nn.Linear`` (bench/stacked.py) gives it in the
        parameter's own layout; other layers through ``vmap`` may not. The optimizer's element-wise
        arithmetic does not care about the layout. A loss's stacked form that does not return one loss per
        member (or a loss that is not a scalar) is :class:`Unfusable` here.
        """
        xs = self.x[:length].expand(self.size, *self.x[:length].shape)
        rest = {name: tensor.clone() for name, tensor in self.rest.items()}  # what forward may update (BatchNorm)
        rng = torch.get_rng_state()
        try:
            losses, _ = self._train_fn(self.params, self.rest, xs, self.y[:length].expand(self.size, length))
            if losses.shape != (self.size,):
                raise Unfusable(f"{self._loss_name} returned shape {list(losses.shape)}, not one loss per "
                                f"member [{self.size}]")
            grads = torch.autograd.grad(losses.sum(), list(self.params.values()))
        finally:
            with torch.no_grad():
                for name, tensor in rest.items():
                    self.rest[name].copy_(tensor)
            torch.set_rng_state(rng)
        for (name, param), grad in zip(list(self.params.items()), grads):
            if grad.stride() != param.stride() and _dense(grad) and grad.shape == param.shape:
                with torch.no_grad():
                    relaid = torch.empty_strided(param.shape, grad.stride(), dtype=param.dtype, device=param.device)
                    relaid.copy_(param)
                self.params[name] = relaid.requires_grad_()

    def reset(self) -> None:
        """Zero the per-member loss and accuracy sums (at the start of an epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def batch_buffers(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``[N, length]`` index buffer and the ``[N * length, ...]`` input and target buffers."""
        if length not in self._batches:
            idx = torch.zeros(self.size, length, dtype=torch.int64, device=self.device)
            xb = torch.empty((self.size * length, *self._rows.shape[1:]), dtype=self.x.dtype, device=self.device)
            yb = torch.empty(self.size * length, dtype=self.y.dtype, device=self.device)
            self._batches[length] = (idx, xb, yb)
        return self._batches[length]

    def _body(self, length: int) -> None:
        idx, xb, yb = self.batch_buffers(length)
        # one gather of all members' rows: measured faster than one index_select per member
        torch.index_select(self._rows, 0, idx.view(-1), out=xb)
        torch.index_select(self.y, 0, idx.view(-1), out=yb)
        ys = yb.view(self.size, length)
        xs = xb.view(self.size, length, *self.x.shape[1:])
        losses, logits = self._train_fn(self.params, self.rest, xs, ys)
        losses.sum().backward()  # d(sum)/d(loss_i) = 1: each member gets exactly its own loss's gradient
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            self.loss_sum.add_(losses.detach().float(), alpha=length)
            self.correct.add_((_predictions(logits.detach()) == ys).sum(1))

    def __call__(self, idx: torch.Tensor) -> None:
        """One step; ``idx`` is ``[N, length]``: row ``i`` indexes member ``i``'s batch."""
        self.batch_buffers(idx.shape[1])[0].copy_(idx)
        self._body(idx.shape[1])

    def prepare(self, lengths: Iterable[int], warmup_steps: int = 1) -> None:
        """Run ``warmup_steps`` steps per batch length on a snapshot, then put everything back.

        This is where a model that ``vmap`` cannot run shows itself: :class:`Unfusable`.
        """
        lengths = sorted(set(lengths))
        try:
            self.settle(lengths[-1])
        except Unfusable:
            raise
        except Exception as exc:
            raise Unfusable(f"vmap cannot run this model: {one_line(exc, limit=300)}") from exc
        self.optimizer = self._optimizer_spec.build(list(self.params.values()), self._cells,
                                                    capturable=self.mode == "graph")
        saved = _Snapshot(self)
        try:
            for length in lengths:
                self.batch_buffers(length)[0].copy_(torch.arange(length, device=self.device).expand(self.size, length))
                for _ in range(warmup_steps):
                    self._body(length)
        except Exception as exc:
            raise Unfusable(f"vmap cannot run this model: {one_line(exc, limit=300)}") from exc
        finally:
            saved.restore()
            self.reset()

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None):
        """Per member: mean loss, accuracy and (optionally) confusion matrix over ``(x, y)``, the arithmetic of
        :func:`bench.trainer.evaluate`. Returns three lists of N."""
        self.base.eval()
        n_members, classes = self.size, num_classes or 1
        loss_sum = torch.zeros(n_members, device=x.device)
        correct = torch.zeros(n_members, device=x.device, dtype=torch.int64)
        confusion = torch.zeros(n_members * classes * classes, dtype=torch.int64, device=x.device)
        offsets = torch.arange(n_members, device=x.device)[:, None] * (classes * classes)
        for start in range(0, len(x), EVAL_BATCH):
            xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
            losses, logits = self._eval_fn(self.params, self.rest, xb, yb)
            loss_sum += losses.float() * len(yb)
            pred = _predictions(logits)
            correct += (pred == yb).sum(1)
            if num_classes:
                confusion += torch.bincount((offsets + yb * num_classes + pred).view(-1),
                                            minlength=confusion.numel())
        n = max(len(x), 1)
        losses = [v / n for v in loss_sum.tolist()]
        accs = [v / n for v in correct.tolist()]
        matrices = confusion.view(n_members, classes, classes).cpu().tolist()
        return losses, accs, matrices

    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy each member's slice of the stack into its own module."""
        with torch.no_grad():
            for i, model in enumerate(models):
                for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                    source = self.params.get(name, self.rest.get(name))
                    if source is not None:
                        tensor.copy_(source[i])


class _Slots:
    """Where each stacked tensor lives in ``module`` (every alias of a tied one), to run the module on other
    tensors: what ``torch.func.functional_call`` does, without its per-call name checks and tree handling
    (a noticeable share of a small model's step; docs/benchmarks.md), since the module is the fused step's
    private copy, whose names are known once."""

    def __init__(self, module: nn.Module, names: Sequence[str]):
        canonical: dict[int, str] = {}  # a tied tensor's first name, as named_parameters() keeps it
        where: dict[str, list[tuple[dict, str]]] = {name: [] for name in names}
        members = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
        for name, tensor in members:
            owner, _, attr = name.rpartition(".")
            sub = module.get_submodule(owner)
            table = sub._parameters if attr in sub._parameters else sub._buffers
            key = canonical.setdefault(id(tensor), name)
            if key in where:
                where[key].append((table, attr))
        self.module = module
        #: per stacked tensor, in ``names`` order: the (dict, key) entries it replaces
        self.slots = [where[name] for name in names]

    def call(self, tensors: Sequence[torch.Tensor], *args):
        """``module(*args)`` with ``tensors[i]`` in place of the tensor named ``names[i]``."""
        saved = [[table[attr] for table, attr in entries] for entries in self.slots]
        try:
            for entries, tensor in zip(self.slots, tensors):
                for table, attr in entries:
                    table[attr] = tensor
            return self.module(*args)
        finally:
            for entries, originals in zip(self.slots, saved):
                for (table, attr), original in zip(entries, originals):
                    table[attr] = original


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``: the first largest class, as argmax gives it, through ``max``, which is much
    faster than argmax on the transposed layout that the stacked linear layers return (docs/benchmarks.md)."""
    return logits.max(-1).indices


def _dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers its memory exactly once (any order of dimensions)."""
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d))
    expected = 1
    for d in order:
        if tensor.shape[d] != 1 and tensor.stride(d) != expected:
            return False
        expected *= tensor.shape[d]
    return True


class FusedGraphStep(FusedStep):
    """The static fused step captured in one CUDA graph per batch length and replayed."""

    mode = "graph"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def capture(self, lengths: Iterable[int], warmup_steps: int = 3) -> None:
        """Warm up on a side stream (as capture requires), restore the snapshot, then capture."""
        saved = _Snapshot(self)
        main_stream = torch.cuda.current_stream(self.device)
        lengths = sorted(set(lengths))
        try:
            for length in lengths:
                self.batch_buffers(length)[0].copy_(torch.arange(length, device=self.device).expand(self.size, length))
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(main_stream)
            with torch.cuda.stream(stream):
                for length in lengths:
                    for _ in range(warmup_steps):
                        self._body(length)
            main_stream.wait_stream(stream)
            saved.restore()
            self.reset()
            for length in lengths:
                self.optimizer.zero_grad()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._body(length)
                self.graphs[length] = graph
            saved.restore(rng=False)
            self.reset()
        except BaseException:
            torch.cuda.set_stream(main_stream)  # a failed capture leaves its stream current
            saved.restore(rng=False)
            torch.set_rng_state(saved.cpu_rng)
            self.reset()
            raise

    def __call__(self, idx: torch.Tensor) -> None:
        self.batch_buffers(idx.shape[1])[0].copy_(idx)
        self.graphs[idx.shape[1]].replay()


class _Snapshot:
    """Copies of the stacked parameters and buffers, the optimizer's state and the RNG states."""

    def __init__(self, step: FusedStep):
        self.step = step
        self.tensors = [*step.params.values(), *step.rest.values(), *step.optimizer.state_tensors()]
        self.copies = [t.detach().clone() for t in self.tensors]
        self.steps = getattr(step.optimizer, "steps", None)
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @torch.no_grad()
    def restore(self, rng: bool = True) -> None:
        for tensor, copy_ in zip(self.tensors, self.copies):
            tensor.copy_(copy_)
        if self.steps is not None:
            self.step.optimizer.steps = self.steps
        self.step.optimizer.zero_grad()
        if rng:
            torch.set_rng_state(self.cpu_rng)
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state_all(self.cuda_rng)


def build_fused_step(execution: Execution, models, loss_fn, x, y, optimizer: BatchedOptimizer, cells,
                     lengths: list[int]) -> FusedStep:
    """The prepared fused step: warmed up (:class:`Unfusable` if ``vmap`` cannot run the model), on cuda captured.

    With ``cuda_graphs=auto`` a step that cannot be captured runs eagerly and its ``note`` says why.
    """
    mode = execution.step_mode(x.device)
    if mode != "graph":
        step = FusedStep(models, loss_fn, x, y, optimizer, cells)
        step.prepare(lengths)
        return step
    step = FusedGraphStep(models, loss_fn, x, y, optimizer, cells)
    step.prepare(lengths)  # vmap's verdict first, eagerly, so that a capture failure is only about capture
    try:
        step.capture(lengths)
        return step
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        if execution.cuda_graphs == "on" and execution.mode is None:
            raise BenchError(f"CUDA graph capture of the fused step failed: {reason}") from exc
        torch.cuda.synchronize(x.device)
    fallback = FusedStep(models, loss_fn, x, y, optimizer, cells)
    fallback.note = f"CUDA graph capture failed, ran eager steps: {reason}"
    fallback.prepare(lengths)
    return fallback


def slower_on_cpu(model: nn.Module) -> str:
    """Why ``auto`` trains this model's cells one at a time on a cpu ("" where fusing pays).

    A rule from measurements, not a timing taken at run time, so that the same command always makes the
    same choice (and so gives the same numbers): on a cpu a convolution through ``vmap`` is slower per member
    than one cell's own step, while linear and mlp models gain (docs/benchmarks.md, Fused training).
    ``--fuse on`` fuses them anyway.
    """
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return "convolutions through vmap are slower than one cell at a time on a cpu (--fuse on fuses anyway)"
    return ""


def member_bytes(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, batch: int,
                 optimizer_states: int = 2) -> int:
    """An estimate of the device memory one member of a fused group takes: parameters with their gradients
    and optimizer state, buffers, its gathered batch, and the activations autograd saves for one step
    (measured on one forward of ``model``)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    xb, yb = x[:batch], y[:batch]
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(xb)
        loss_fn(logits, yb)
    gathered = xb.numel() * xb.element_size() + yb.numel() * yb.element_size()
    return params * (2 + optimizer_states) + buffers + saved + gathered + 2 * logits.numel() * logits.element_size()


def memory_budget(device: torch.device) -> int:
    """Bytes a fused group may take on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_SHARE)
    return HOST_MEMORY_BUDGET


def fitting_size(per_member: int, budget: int) -> int:
    """How many members fit in ``budget`` bytes (at least one)."""
    return max(1, budget // max(per_member, 1))


# -- one group -----------------------------------------------------------------------------------------


def train_group(
    cells: Sequence[Cell],
    model_factory: Callable[[], nn.Module],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: DataSplits,
    device: torch.device,
    execution: Execution | None = None,
    batched_optimizer: BatchedOptimizer | None = None,
    on_epoch: Callable[[int, list[dict[str, Any] | None]], None] | None = None,
) -> list[CellResult | Exception]:
    """Train ``cells`` (one :func:`~bench.fuse.fuse_key`) as one stacked model; one entry per member, in order.

    An entry is the member's :class:`~bench.trainer.CellResult`, exactly what
    :func:`~bench.trainer.train_cell` would return for it alone (its ``execution`` adds ``fused_group``
    and ``fused_size``; its timings are its share of the group's: the group's time divided by its size),
    or the exception that failed it (e.g. :class:`~bench.trainer.NonFiniteLoss`).

    ``model_factory()`` builds one member's model; each member's is built right after
    ``torch.manual_seed(cell.seed)``. ``batched_optimizer`` is the optimizer's batched form
    (:func:`bench.fuse.batched_optimizer_for`; ``None``: it has none). ``on_epoch(epoch, rows)`` is
    called after each epoch with each member's history row (``None`` for a member that failed).

    With ``execution.fuse_max`` 0 a group larger than fits in memory (:func:`member_bytes`,
    :func:`memory_budget`) trains in chunks, one after another. Where the group cannot be fused
    (:class:`Unfusable`) its cells train one by one with a note; with ``execution.fuse == "on"`` that
    is a :class:`~bench.errors.BenchError` instead. What fails every member alike (the model factory,
    corrupt data, Ctrl-C) raises.
    """
    execution = execution or Execution()
    cells = list(cells)
    if not cells:
        return []
    if len({fuse_key(cell) for cell in cells}) > 1:
        raise ValueError("train_group: the cells differ in more than seed, learning rate, weight decay and "
                         "optimizer/schedule parameters")
    # members with equal hyperparameters side by side: the batched optimizer steps each such run in one call
    order = sorted(range(len(cells)),
                   key=lambda i: json.dumps(member_hyperparameters(cells[i]), sort_keys=True, default=str))
    ordered = [cells[i] for i in order]
    try:
        chunks = _chunks(ordered, model_factory, loss_fn, data, device, execution, batched_optimizer)
    except Unfusable as exc:
        return _unfused(cells, model_factory, loss_fn, data, device, execution, str(exc), on_epoch)
    results: list[CellResult | Exception] = []
    done = 0
    for chunk in chunks:
        members = order[done:done + len(chunk)]
        done += len(chunk)

        def chunk_epoch(epoch, rows, members=members):
            if on_epoch:
                in_order: list[dict[str, Any] | None] = [None] * len(cells)
                for i, row in zip(members, rows):
                    in_order[i] = row
                on_epoch(epoch, in_order)

        try:
            results += _train_fused(chunk, model_factory, loss_fn, data, device, execution, batched_optimizer,
                                    chunk_epoch)
        except Unfusable as exc:
            results += _unfused(chunk, model_factory, loss_fn, data, device, execution, str(exc), chunk_epoch)
    by_cell: list[CellResult | Exception | None] = [None] * len(cells)
    for i, result in zip(order, results):
        by_cell[i] = result
    return by_cell  # type: ignore[return-value]


def _chunks(cells, model_factory, loss_fn, data, device, execution, batched_optimizer) -> list[list[Cell]]:
    """The group split by memory (unless ``fuse_max`` already bounds it); :class:`Unfusable` up front."""
    if len(cells) == 1:
        raise Unfusable("a group of one")
    if batched_optimizer is None:
        raise Unfusable(f"optimizer '{cells[0].recipe.optimizer}' has no batched form")
    if execution.compile:
        raise Unfusable("compiled steps train one cell at a time")
    try:  # every member's hyperparameters, checked before anything trains
        batched_optimizer.build([torch.zeros(len(cells), 1, requires_grad=True)], cells)
    except BenchError as exc:
        raise Unfusable(str(exc)) from exc
    if execution.fuse_max:
        return [cells]
    torch.manual_seed(cells[0].seed)
    model = _build(model_factory).to(device)
    x, y = _train_split(cells[0], data)
    per_member = member_bytes(model, loss_fn, x, y, min(cells[0].recipe.batch_size, len(x)))
    del model
    return even_chunks(cells, fitting_size(per_member, memory_budget(device)))


def _build(model_factory) -> nn.Module:
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise BenchError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _train_split(cell: Cell, data: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.train
    return (x[:cell.limit], y[:cell.limit]) if cell.limit else (x, y)


def _unfused(cells, model_factory, loss_fn, data, device, execution, reason, on_epoch) -> list:
    """Each cell alone, as the unfused runner trains it, with ``reason`` in its ``execution_note``."""
    if execution.fuse == "on" and reason != "a group of one":
        raise BenchError(f"{len(cells)} {cells[0].model} cells cannot be fused: {reason}")
    note = "" if reason == "a group of one" else f"not fused: {reason}"
    results: list[CellResult | Exception] = []
    for index, cell in enumerate(cells):
        try:
            torch.manual_seed(cell.seed)
            model = _build(model_factory)

            def epoch_done(row, index=index):
                if on_epoch:
                    on_epoch(row["epoch"], [row if i == index else None for i in range(len(cells))])

            result = train_cell(cell, model, loss_fn, data, device, on_epoch=epoch_done, execution=execution)
        except (KeyboardInterrupt, DataCorrupt, BrokenPlugin):
            raise
        except Exception as exc:
            results.append(exc)
            continue
        if note:
            result.execution["execution_note"] = "; ".join(filter(None, [note, result.execution["execution_note"]]))
        results.append(result)
    return results


def _train_fused(cells, model_factory, loss_fn, data, device, execution, batched_optimizer, on_epoch) -> list:
    """One chunk as one stacked model: the loop of :func:`bench.trainer.train_cell`, per member."""
    cfg = cells[0].recipe
    size = len(cells)
    models = []
    for cell in cells:
        torch.manual_seed(cell.seed)
        models.append(_build(model_factory).to(device))
    for model in models:
        model.train()
    x_train, y_train = _train_split(cells[0], data)
    n = len(x_train)
    lengths = [min(cfg.batch_size, n)] + ([n % cfg.batch_size] if n > cfg.batch_size and n % cfg.batch_size else [])
    generators = [torch.Generator().manual_seed(cell.seed) for cell in cells]
    watch = Stopwatch(device)
    outcome: list[Exception | None] = [None] * size
    histories: list[list[dict[str, float]]] = [[] for _ in cells]

    def check(i: int, value: float, what: str, epoch: int, batch: int | None = None) -> None:
        try:
            _check_finite(value, what, epoch, batch)
        except NonFiniteLoss as exc:  # this member diverged; the others go on
            outcome[i] = exc

    with watch.phase("warmup"):
        step = build_fused_step(execution, models, loss_fn, x_train, y_train, batched_optimizer, cells, lengths)
        if execution.fuse == "auto" and device.type == "cpu":
            slower = slower_on_cpu(models[0])
            if slower:
                raise Unfusable(slower)

    for epoch in range(1, cfg.epochs + 1):
        alive = [i for i in range(size) if outcome[i] is None]
        if not alive:
            break
        step.base.train()
        with watch.phase("data"):
            perm = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        with watch.phase("train"):
            step.reset()
            for batch, start in enumerate(range(0, n, cfg.batch_size), 1):
                step(perm[:, start:start + cfg.batch_size])
                if batch % FINITE_CHECK_EVERY == 0:
                    sums = step.loss_sum.tolist()
                    for i in alive:
                        check(i, sums[i], "the training loss", epoch, batch)
                    alive = [i for i in alive if outcome[i] is None]
                    if not alive:
                        break
        epoch_time = watch.last
        sums, hits = step.loss_sum.tolist(), step.correct.tolist()
        for i in alive:
            check(i, sums[i] / n, "the training loss", epoch)
        with watch.phase("eval"):
            val_loss, val_acc, _ = step.evaluate(*data.val)
        rows: list[dict[str, Any] | None] = [None] * size
        for i in alive:
            if outcome[i] is None:
                check(i, val_loss[i], "the validation loss", epoch)
            if outcome[i] is None:
                rows[i] = {"epoch": epoch, "train_loss": sums[i] / n, "train_acc": hits[i] / n,
                           "val_loss": val_loss[i], "val_acc": val_acc[i], "epoch_time_s": epoch_time / size}
                histories[i].append(rows[i])
        if on_epoch:
            on_epoch(epoch, rows)

    if any(o is None for o in outcome):
        with watch.phase("eval"):
            test_loss, test_acc, confusion = step.evaluate(*data.test, num_classes=data.num_classes)
        step.write_back(models)
    train_time = watch.totals.get("train", 0.0)
    timing = {  # each member's share of the group's time
        "train_time_s": train_time / size,
        "eval_time_s": watch.totals.get("eval", 0.0) / size,
        "data_time_s": watch.totals.get("data", 0.0) / size,
        "warmup_time_s": watch.totals.get("warmup", 0.0) / size,
        "samples_per_s": n * cfg.epochs * size / train_time if train_time > 0 else float("nan"),
    }
    how = {"step": step.mode, "cuda_graphs": step.mode == "graph", "compiled": False, "execution_note": step.note,
           "fused_group": group_id(cells), "fused_size": size}
    n_params = sum(p.numel() for p in models[0].parameters())
    results: list[CellResult | Exception] = []
    for i, model in enumerate(models):
        if outcome[i] is not None:
            results.append(outcome[i])
            continue
        history = histories[i]
        metrics = {"test_acc": test_acc[i], "test_loss": test_loss[i], "val_acc": history[-1]["val_acc"],
                   "val_loss": history[-1]["val_loss"]}
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        member_timing = {**timing, "epoch_time_s": median([h["epoch_time_s"] for h in history])}
        results.append(CellResult(metrics, history, member_timing, n_params, state, confusion[i], dict(how)))
    return results
