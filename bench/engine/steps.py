"""The training step of a group of N >= 1 members: one batch per index stream, forward, backward, optimizer
step, per-member loss and hit sums kept on the device.

One step family, three ways to run it (:class:`Step`):

- ``plain``: eager, a fresh batch tensor each step (the reference);
- ``static``: eager, the batch gathered into buffers that live as long as the step, the optimizer's state
  (its step count too) on the device and the sums updated in place: what a CUDA graph can capture;
- ``graph``: the static step captured once per batch length in a CUDA graph and replayed.

and two bodies: :class:`ModelStep` trains one model with its own optimizer (a group of one: no ``vmap``),
:class:`StackedStep` trains N same-shaped members as one stacked model through ``vmap`` with the optimizer's
batched form (plugins/batched_optimizers.py).

Members that share their seed draw the same permutation, so they share an *index stream*: its batch is
gathered once. Where every stream feeds the same number of adjacent members, the step runs a member's model
on the stream's batch unbatched inside an inner ``vmap`` over those members, so that a linear layer becomes
one wide product ``[B, D] @ [D, k*C]`` for the k members of a stream (bench/stacked.py).

Learning-rate schedules are stepped after every optimizer step, outside a captured graph: they update the
learning rate (a device tensor under a graph) that the graph reads. A stacked group builds each member's
schedule on that member's own param group of the batched optimizer.

Warm-up (first steps, compilation, capture) happens in :meth:`Step.prepare`, on a snapshot of the
parameters, buffers, optimizer state and RNG that is restored afterwards: it changes no result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError
from bench.optim import state_tensor_ptrs
from bench.stacked import stacked_layers

#: Evaluation batch: large, since nothing is kept for backward.
EVAL_BATCH = 4096


class Unfusable(Exception):
    """Why a group cannot train as one stacked model."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


class Step:
    """The step family's common part: index streams, batch buffers, modes, warm-up snapshot, capture.

    ``streams[i]`` is the index stream of member ``i``; a call takes ``idx`` of shape ``[streams, length]``.
    Subclasses give :meth:`_train` (one step on gathered ``xs [R, L, ...]``, ``ys [R, L]``), the optimizer,
    the tensors a snapshot saves, :meth:`evaluate` and :meth:`state_dicts`.
    """

    def __init__(self, mode: str, x: torch.Tensor, y: torch.Tensor, streams: Sequence[int]):
        self.mode, self.x, self.y, self.device = mode, x, y, x.device
        # rows as flat vectors where that is a view: index_select copies them ~20% faster than 4-D rows
        self._rows = x.view(len(x), -1) if x.is_contiguous() and x.dim() > 2 else x
        self.streams = list(streams)
        self.n_streams = max(self.streams) + 1
        self.size = len(self.streams)
        self.loss_sum = torch.zeros(self.size, device=self.device)
        self.correct = torch.zeros(self.size, device=self.device, dtype=torch.int64)
        self.optimizer: Any = None
        #: stepped after every optimizer step (none: the learning rate stays as it is)
        self.schedules: list[Any] = []
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.graphs: dict[int, Any] = {}
        self.note = ""

    # -- what a body provides ------------------------------------------------------------------------

    def _train(self, xb: torch.Tensor, yb: torch.Tensor, length: int) -> None:
        """One step on the gathered rows ``xb`` ``[R * length, ...]`` and targets ``yb`` ``[R * length]``."""
        raise NotImplementedError

    def snapshot_tensors(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def train_mode(self, on: bool) -> None:
        raise NotImplementedError

    # -- the step ------------------------------------------------------------------------------------

    def _update(self, loss: torch.Tensor, count: int, hits: torch.Tensor) -> None:
        """After the backward: the optimizer's step, then the running sums (``loss`` per member, on ``count``
        samples each; ``hits``: correct predictions per member)."""
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach().float(), alpha=count)
            self.correct.add_(hits)

    def reset(self) -> None:
        """Zero the loss and accuracy sums (at the start of an epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def buffers(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``[R, length]`` index buffer and the ``[R * length, ...]`` input and target buffers."""
        if length not in self._buffers:
            idx = torch.zeros(self.n_streams, length, dtype=torch.int64, device=self.device)
            xb = torch.empty((self.n_streams * length, *self._rows.shape[1:]), dtype=self.x.dtype, device=self.device)
            yb = torch.empty(self.n_streams * length, dtype=self.y.dtype, device=self.device)
            self._buffers[length] = (idx, xb, yb)
        return self._buffers[length]

    def _body(self, length: int) -> None:
        idx, xb, yb = self.buffers(length)
        # one gather of every stream's rows
        torch.index_select(self._rows, 0, idx.view(-1), out=xb)
        torch.index_select(self.y, 0, idx.view(-1), out=yb)
        self._train(xb, yb, length)

    def run(self, idx: torch.Tensor) -> None:
        """One training step on ``idx`` (``[R, length]``), without the schedules."""
        length = idx.shape[1]
        if self.mode == "plain":
            flat = idx.reshape(-1)
            self._train(self._rows.index_select(0, flat), self.y.index_select(0, flat), length)
            return
        self.buffers(length)[0].copy_(idx)
        if self.mode == "graph":
            self.graphs[length].replay()
        else:
            self._body(length)

    def __call__(self, idx: torch.Tensor) -> None:
        """One training step on ``idx``, then the schedules' steps."""
        self.run(idx)
        for schedule in self.schedules:
            schedule.step()
        if self.mode == "graph" and self.schedules and self._lr_tensors() != self._lrs:
            raise BenchError("the schedule replaced the optimizer's learning rate tensor instead of updating it "
                             "in place (lr.fill_(value)): the captured CUDA graph would not see it")

    def _lr_tensors(self) -> list[int]:
        return [id(g["lr"]) for g in self.optimizer.param_groups]

    def prepare(self, lengths: Iterable[int]) -> None:
        """Warm up (and on cuda capture) per batch length on a snapshot, then put everything back."""
        lengths = sorted(set(lengths))
        if self.mode == "graph":
            self._capture(lengths)
            return
        saved = _Snapshot(self)
        try:
            for length in lengths:
                self.run(self._first(length))
        finally:
            saved.restore()
            self.reset()

    def _first(self, length: int) -> torch.Tensor:
        return torch.arange(length, device=self.device).expand(self.n_streams, length)

    def _capture(self, lengths: list[int], warmup_steps: int = 3) -> None:
        """Warm up on a side stream (as capture requires), restore the snapshot, then capture.

        With a schedule, every learning rate must be a tensor on the device, updated in place, or the graph
        would replay the first one.
        """
        if self.schedules:
            floats = [g["lr"] for g in self.optimizer.param_groups
                      if not (isinstance(g["lr"], torch.Tensor) and g["lr"].device == self.device)]
            if floats:
                raise BenchError(f"the optimizer {type(self.optimizer).__name__} keeps its learning rate as "
                                 f"{type(floats[0]).__name__}, not as a tensor on {self.device}: a captured step "
                                 "would not see the schedule's changes")
        saved = _Snapshot(self)
        main_stream = torch.cuda.current_stream(self.device)
        try:
            for length in lengths:  # buffers live on the main stream, before any side stream touches them
                self.buffers(length)[0].copy_(self._first(length))
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(main_stream)
            with torch.cuda.stream(stream):
                for length in lengths:
                    for _ in range(warmup_steps):
                        self._body(length)
            main_stream.wait_stream(stream)
            saved.restore()
            if not saved.in_place:
                raise BenchError(f"the optimizer {type(self.optimizer).__name__}'s load_state_dict() does not "
                                 "restore its state in place (e.g. state created on the first step), which a "
                                 "captured graph needs")
            self.reset()
            for length in lengths:
                self.optimizer.zero_grad()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._body(length)
                self.graphs[length] = graph
            saved.restore(rng=False)  # capture runs nothing, but be exact about it
            self._lrs = self._lr_tensors()
            self.reset()
        except BaseException:
            torch.cuda.set_stream(main_stream)  # a failed capture leaves its stream current
            saved.restore(rng=False)  # the CUDA generator may still be mid-capture
            torch.set_rng_state(saved.cpu_rng)
            self.reset()
            raise


class _Snapshot:
    """Copies of a step's parameters and buffers, its optimizer's state and the RNG states.

    A batched optimizer names its state tensors (``state_tensors()``); any other optimizer's state is a
    deep copy of its ``state_dict()``, put back with ``load_state_dict()``, and :attr:`in_place` says whether
    that kept the state's tensors where they were (what a captured CUDA graph needs).
    """

    def __init__(self, step: Step):
        self.optimizer = optimizer = step.optimizer
        self.tensors = step.snapshot_tensors()
        state_tensors = getattr(optimizer, "state_tensors", None)
        self.optimizer_state = None
        if state_tensors is not None:
            self.tensors += list(state_tensors())
            self.steps = getattr(optimizer, "steps", None)
        else:
            self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.copies = [t.detach().clone() for t in self.tensors]
        self.in_place = True
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @torch.no_grad()
    def restore(self, rng: bool = True) -> None:
        for tensor, saved in zip(self.tensors, self.copies):
            tensor.copy_(saved)
        if self.optimizer_state is not None:
            before = state_tensor_ptrs(self.optimizer)
            # a copy again: an optimizer may keep the tensors it is given (torch.optim does), and train them
            self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
            self.in_place = state_tensor_ptrs(self.optimizer) == before
        elif self.steps is not None:
            self.optimizer.steps = self.steps
        self.optimizer.zero_grad()
        if rng:
            torch.set_rng_state(self.cpu_rng)
            if self.cuda_rng is not None:
                torch.cuda.set_rng_state_all(self.cuda_rng)


def _predictions(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(-1)``: the first largest class, through ``max``, which is much faster than argmax on
    the transposed layout that the stacked linear layers return (docs/benchmarks.md)."""
    return logits.max(-1).indices


# -- a group of one ---------------------------------------------------------------------------------------


class ModelStep(Step):
    """One model with its own optimizer (``make_optimizer(parameters, capturable)``) and schedule
    (``make_schedule(optimizer)`` or ``None``)."""

    def __init__(self, mode: str, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 make_optimizer: Callable, make_schedule: Callable | None = None, compile: bool = False):
        super().__init__(mode, x, y, [0])
        self.model, self.loss_fn = model, loss_fn
        self.optimizer = make_optimizer(list(model.parameters()), mode != "plain")
        schedule = make_schedule(self.optimizer) if make_schedule is not None else None
        self.schedules = [schedule] if schedule is not None else []
        self.forward = torch.compile(model) if compile else model

    def _train(self, xb: torch.Tensor, yb: torch.Tensor, length: int) -> None:
        logits = self.forward(xb.view(length, *self.x.shape[1:]))
        loss = self.loss_fn(logits, yb)
        loss.backward()
        self._update(loss, len(yb), (logits.detach().argmax(1) == yb).sum())

    def snapshot_tensors(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def train_mode(self, on: bool) -> None:
        self.model.train(on)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None):
        """Mean loss, accuracy and (optionally) confusion matrix over ``(x, y)``, as lists of one."""
        self.model.eval()
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.int64)
        confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64, device=x.device)
        for start in range(0, len(x), EVAL_BATCH):
            xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
            logits = self.model(xb)
            loss_sum += self.loss_fn(logits, yb).float() * len(yb)
            pred = logits.argmax(1)
            correct += (pred == yb).sum()
            if num_classes:
                confusion += torch.bincount(yb * num_classes + pred, minlength=num_classes * num_classes).view(
                    num_classes, num_classes)
        n = max(len(x), 1)
        return [float(loss_sum) / n], [float(correct) / n], [confusion.cpu().tolist()]

    def state_dicts(self, positions: Iterable[int] | None = None) -> list[dict[str, torch.Tensor]]:
        """The one member's weights (its only position is 0)."""
        return [{k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}]


# -- a stacked group -------------------------------------------------------------------------------------


class StackedStep(Step):
    """N same-shaped members as one stacked model, through ``vmap``, with the optimizer's batched form.

    ``models`` are the members, each initialised as it would be alone; ``optimizer`` is a
    :class:`bench.fuse.BatchedOptimizer`; ``make_schedules[i]`` builds member ``i``'s schedule on an
    optimizer-like view of its own param group (or is ``None``).
    """

    def __init__(self, mode: str, models: Sequence[nn.Module], loss_fn: Callable, x: torch.Tensor,
                 y: torch.Tensor, streams: Sequence[int], optimizer, cells: Sequence[Any],
                 make_schedules: Sequence[Callable | None] = (), partitions: Sequence[Any] = ()):
        from torch.func import stack_module_state, vmap

        super().__init__(mode, x, y, streams)
        try:
            params, buffers = stack_module_state(list(models))
        except Exception as exc:  # members whose parameters differ in shape
            raise Unfusable(f"the members' parameters cannot be stacked: {one_line(exc)}") from exc
        #: ``{name: [N, ...]}``: the trainable parameters, and everything else (frozen parameters, buffers)
        self.params = {k: v for k, v in params.items() if v.requires_grad}
        self.rest = {**{k: v for k, v in params.items() if not v.requires_grad}, **buffers}
        if not self.params:
            raise BenchError("the model has no trainable parameters")
        # each call swaps a member's slices into this copy of a member (_Slots); its nn.Linear layers take the
        # stacked products (bench/stacked.py)
        self.base = copy.deepcopy(models[0])
        stacked_layers(self.base)
        slots = _Slots(self.base, [*self.params, *self.rest])
        self._optimizer_spec, self._cells = optimizer, list(cells)
        self._make_schedules, self._partitions = list(make_schedules), list(partitions)
        self._loss_fn, self._template = loss_fn, copy.deepcopy(models[0])
        #: each member's schedule (``None``: none), in member order
        self.member_schedules: list[Any] = [None] * self.size
        own_stacked = getattr(loss_fn, "stacked", None)
        stacked_loss = own_stacked or vmap(loss_fn)
        self._loss_name = "the loss's stacked form" if own_stacked else "the loss"

        def forward(member_params, member_rest, xb):
            return slots.call((*member_params.values(), *member_rest.values()), xb)

        size, n_streams = self.size, self.n_streams
        per_stream = size // n_streams
        # Each stream's members run on its batch as one unbatched input (a wide product per linear layer) where
        # every stream feeds equally many adjacent members (streams 0,0,1,1); otherwise each member gets its own
        # copy of its stream's batch. (Members of one hyperparameter adjacent instead, 0,1,0,1, would suit the
        # batched optimizer, but reading the parameters in stream order then copies them every step: measured
        # slower, docs/benchmarks.md.)
        member_of = torch.tensor(self.streams, device=self.device)
        if n_streams < size and self.streams == [i // per_stream for i in range(size)]:
            inner = vmap(forward, in_dims=(0, 0, None))
            outer = vmap(inner)

            def train_forward(params, rest, xs):
                if n_streams == 1:  # one stream (a tuning run's trials): its members on its batch, no outer level
                    return inner(params, rest, xs[0])
                split = {k: v.unflatten(0, (n_streams, per_stream)) for k, v in params.items()}
                split_rest = {k: v.unflatten(0, (n_streams, per_stream)) for k, v in rest.items()}
                return outer(split, split_rest, xs).flatten(0, 1)

            def member_targets(ys):
                return ys[:, None].expand(n_streams, per_stream, ys.shape[1]).reshape(size, ys.shape[1])
        else:
            each = vmap(forward)

            def train_forward(params, rest, xs):
                return each(params, rest, xs if n_streams == size else xs.index_select(0, member_of))

            def member_targets(ys):
                return ys if n_streams == size else ys.index_select(0, member_of)

        eval_forward = vmap(forward, in_dims=(0, 0, None))

        # Autograd through the vmapped forward rather than vmap(grad(...)): the same arithmetic, but
        # torch.func.grad imports torch._dynamo on first use (1.5-3 s of every process that fuses).
        def train_fn(params, rest, xs, ys):
            logits = train_forward(params, rest, xs)
            targets = member_targets(ys)
            return stacked_loss(logits, targets), logits, targets

        def eval_fn(params, rest, xb, yb):
            logits = eval_forward(params, rest, xb)
            return stacked_loss(logits, yb.expand(size, *yb.shape)), logits

        self._train_fn, self._eval_fn = train_fn, eval_fn

    def settle(self, length: int) -> None:
        """One forward and backward per member on a batch of ``length``, to give each stacked parameter the
        memory layout its gradient comes out in (autograd would otherwise copy it into the parameter's layout
        every step); a loss that does not give one value per member is :class:`Unfusable` here."""
        xs = self.x[:length].expand(self.n_streams, *self.x[:length].shape)
        rest = {name: tensor.clone() for name, tensor in self.rest.items()}  # what forward may update (BatchNorm)
        rng = torch.get_rng_state()
        try:
            losses, _, _ = self._train_fn(self.params, self.rest, xs, self.y[:length].expand(self.n_streams, length))
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

    def build(self, lengths: Iterable[int]) -> None:
        """Settle the layouts, then build the batched optimizer and each member's schedule;
        :class:`Unfusable` if ``vmap`` cannot run the model."""
        try:
            self.settle(max(lengths))
        except (Unfusable, BenchError):
            raise
        except Exception as exc:
            raise Unfusable(f"vmap cannot run this model: {one_line(exc)}") from exc
        self.optimizer = self._optimizer_spec.build(list(self.params.values()), self._cells,
                                                    capturable=self.mode == "graph", partitions=self._partitions)
        groups = getattr(self.optimizer, "param_groups", None)
        for i, make in enumerate(self._make_schedules):
            if make is None:
                continue
            if groups is None or len(groups) != self.size:
                raise Unfusable(f"the batched form of '{self._optimizer_spec.name}' has no per-member learning "
                                "rates (param_groups), which a schedule needs")
            self.member_schedules[i] = make(_MemberOptimizer(groups[i]))
        self.schedules = [schedule for schedule in self.member_schedules if schedule is not None]

    def prepare(self, lengths: Iterable[int]) -> None:
        lengths = sorted(set(lengths))
        if self.optimizer is None:
            self.build(lengths)
        if self.mode == "graph":
            super().prepare(lengths)
            return
        try:
            super().prepare(lengths)
        except Exception as exc:
            raise Unfusable(f"vmap cannot run this model: {one_line(exc)}") from exc

    def _train(self, xb: torch.Tensor, yb: torch.Tensor, length: int) -> None:
        xs, ys = xb.view(self.n_streams, length, *self.x.shape[1:]), yb.view(self.n_streams, length)
        losses, logits, targets = self._train_fn(self.params, self.rest, xs, ys)
        losses.sum().backward()  # d(sum)/d(loss_i) = 1: each member gets exactly its own loss's gradient
        self._update(losses, length, (_predictions(logits.detach()) == targets).sum(1))

    def snapshot_tensors(self) -> list[torch.Tensor]:
        return [*self.params.values(), *self.rest.values()]

    def train_mode(self, on: bool) -> None:
        self.base.train(on)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None):
        """Per member: mean loss, accuracy and (optionally) confusion matrix over ``(x, y)``, every member on
        each evaluation batch at once. Returns three lists of N."""
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
                confusion += torch.bincount((offsets + yb * num_classes + pred).view(-1), minlength=confusion.numel())
        n = max(len(x), 1)
        return ([v / n for v in loss_sum.tolist()], [v / n for v in correct.tolist()],
                confusion.view(n_members, classes, classes).cpu().tolist())

    def state_dicts(self, positions: Iterable[int] | None = None) -> list[dict[str, torch.Tensor]]:
        """Each member's weights (those at ``positions`` only, when given), named as its own module names them."""
        names = [*self.base.state_dict().keys()]
        out = []
        for i in range(self.size) if positions is None else positions:
            state = {}
            for name in names:
                source = self.params.get(name, self.rest.get(name))
                if source is not None:
                    state[name] = source[i].detach().to("cpu").contiguous()
            out.append(state)
        return out


    def without(self, drop: Iterable[int], lengths: Iterable[int]) -> StackedStep:
        """A prepared step of the members not in ``drop``, each where it is now: its weights, buffers, optimizer
        state and schedule carry over, so the rest train on exactly as they would have (dropped members then
        cost no more compute). Call between epochs."""
        keep = [i for i in range(self.size) if i not in set(drop)]
        index = torch.tensor(keep, device=self.device)
        models = []
        with torch.no_grad():
            for i in keep:
                member = copy.deepcopy(self._template)
                for name, tensor in (*member.named_parameters(), *member.named_buffers()):
                    source = self.params.get(name, self.rest.get(name))
                    if source is not None:
                        tensor.copy_(source[i])
                models.append(member)
        order = list(dict.fromkeys(self.streams[i] for i in keep))
        streams = [order.index(self.streams[i]) for i in keep]
        step = StackedStep(self.mode, models, self._loss_fn, self.x, self.y, streams, self._optimizer_spec,
                           [self._cells[i] for i in keep],
                           partitions=[self._partitions[i] for i in keep] if self._partitions else ())
        step.note = self.note
        step.build(lengths)
        with torch.no_grad():
            for new, old in zip(step.optimizer.state_tensors(), self.optimizer.state_tensors()):
                new.copy_(old.index_select(0, index) if old.dim() and old.shape[0] == self.size else old)
        if getattr(self.optimizer, "steps", None) is not None:
            step.optimizer.steps = self.optimizer.steps
        groups = getattr(self.optimizer, "param_groups", None)
        if groups is not None and len(groups) == self.size:  # the members' learning rates as they are now
            step.optimizer.param_groups[:] = [groups[i] for i in keep]
        step.member_schedules = [self.member_schedules[i] for i in keep]
        step.schedules = [schedule for schedule in step.member_schedules if schedule is not None]
        step.prepare(lengths)
        return step


class _MemberOptimizer:
    """What a member's schedule sees of a batched optimizer: its own param group (its learning rate)."""

    def __init__(self, group: dict[str, Any]):
        self.param_groups = [group]


class _Slots:
    """Where each stacked tensor lives in ``module`` (every alias of a tied one), to run the module on other
    tensors: what ``torch.func.functional_call`` does, without its per-call name checks and tree handling
    (a noticeable share of a small model's step; docs/benchmarks.md)."""

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


def _dense(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` covers its memory exactly once (any order of dimensions)."""
    order = sorted(range(tensor.dim()), key=lambda d: tensor.stride(d))
    expected = 1
    for d in order:
        if tensor.shape[d] != 1 and tensor.stride(d) != expected:
            return False
        expected *= tensor.shape[d]
    return True
