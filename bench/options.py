"""Options, each defined once: its name, command-line flag, help, ``bench run --help`` section and check.

What to train is a :class:`bench.study.Study` (its fields, and the recipe's: :class:`bench.config.Recipe`);
how and where to run it is a :class:`RunOptions`. Each field of those records carries an :class:`Option`
in its metadata (:func:`option`), and everything else derives from them: the click options of
``bench run`` (:func:`bench.cli.run`), the keywords of :func:`bench.run`, the keys of a study file and
the check of each value. A new option is one field with its :func:`option` (and the code that uses it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import OptionError
from bench.files import excerpt
from bench.safe_text import printable

#: The sections of ``bench run --help``, in order.
WHAT = "What to train"
RECIPE = "The recipe (each takes a comma list: an axis of the grid)"
HOW, OUTPUTS, TUNING, FUSION = "How to run", "Outputs", "Tuning and time to target", "Fusion"
SECTIONS = (WHAT, RECIPE, HOW, OUTPUTS, TUNING, FUSION)


@dataclass(frozen=True)
class Option:
    """How one option appears: ``flag`` on the command line (``None``: none), its ``help`` and ``section`` in
    ``bench run --help``, the ``metavar``, extra ``click`` keywords (``type``, ``is_flag``, ``multiple``, ...),
    and ``parse(value) -> value``: the check (and typing) of a value from Python, a study file or the command
    line, raising :class:`bench.OptionError` naming the option. ``keyword``: also a keyword of
    :func:`bench.run` (a study-file-only key is not)."""

    name: str = ""
    flag: str | None = None
    help: str = ""
    section: str = WHAT
    metavar: str | None = None
    click: Mapping[str, Any] = field(default_factory=dict)
    parse: Callable[[Any], Any] | None = None
    keyword: bool = True
    what: bool = True

    @property
    def flags(self) -> list[str]:
        return [] if self.flag is None else self.flag.split("/")

    def check(self, value: Any) -> Any:
        return value if self.parse is None else self.parse(value)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **spec) -> Any:
    """A dataclass field that is an option (see :class:`Option` for ``spec``)."""
    return field(default=default, default_factory=default_factory, metadata={"option": Option(**spec)})


def options_of(record: type) -> list[Option]:
    """The options a dataclass declares, in order, each named after its field."""
    return [dataclasses.replace(f.metadata["option"], name=f.name) for f in dataclasses.fields(record)
            if "option" in f.metadata]


# -- checks shared by the records ---------------------------------------------------------------------

def boolean(name: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise OptionError(name, f"must be True or False, got {excerpt(value)}")
        return value
    return parse


def text(name: str, what: str = "a string") -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value is not None and not isinstance(value, str):
            raise OptionError(name, f"must be {what}, got {excerpt(value)}")
        return value
    return parse


def integer(name: str, minimum: int | None = 0, optional: bool = False) -> Callable[[Any], int | None]:
    def parse(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            want = "an integer" if minimum is None else f"an integer >= {minimum}"
            raise OptionError(name, f"must be {want}, got {excerpt(value)}")
        return value
    return parse


def choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value is not None and value not in choices:
            raise OptionError(name, f"must be one of {', '.join(choices)}, got {excerpt(value)}")
        return value
    return parse


def path(name: str) -> Callable[[Any], Path | None]:
    """A str or path-like as a :class:`~pathlib.Path` (``None`` stays None)."""
    def parse(value: Any) -> Path | None:
        if value is None:
            return None
        if isinstance(value, (str, os.PathLike)) and not isinstance(os.fspath(value), bytes) and os.fspath(value):
            return Path(value)
        raise OptionError(name, f"must be a path (a str or pathlib.Path), got {excerpt(value)}")
    return parse


def strings(name: str, what: str = "strings") -> Callable[[Any], list[str]]:
    def parse(value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise OptionError(name, f"must be a list of {what}, got {excerpt(value)}")
        return list(value)
    return parse


def executor_options(value: Any) -> dict[str, Any]:
    """``{KEY: value}``, or ``-X KEY=VALUE`` tokens (each value read as YAML: ``30`` a number, ``a,b`` a string)."""
    if isinstance(value, Mapping):
        return dict(value)
    tokens = strings("executor_options", "KEY=VALUE strings, or a mapping")(value)
    import yaml

    out = {}
    for token in tokens:
        key, eq, raw = token.partition("=")
        if not eq or not key.strip():
            raise OptionError("executor_options", f"{token}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def _callable(value: Any) -> Callable[[str], None]:
    if not callable(value):
        raise OptionError("echo", f"must be a function taking one line of text, got {excerpt(value)}")
    return value


def _argv(value: Any) -> list[str] | None:
    return None if value is None else strings("argv")(value)


def _stderr(message: str) -> None:
    import sys


    print(printable(message), file=sys.stderr, flush=True)


@dataclass
class RunOptions:
    """How and where a study runs (none of it is part of a cell's configuration)."""

    out: Path | None = option(None, flag="--out", section=OUTPUTS, parse=path("out"),
                              click={"type": "path"},
                              help="Run directory [default: runs/<timestamp>]. An existing run directory resumes: "
                                   "with no grid options, the study it keeps.")
    data_dir: Path | None = option(None, flag="--data-dir", section=HOW, parse=path("data_dir"),
                                   click={"type": "path", "show_default": "$BENCH_DATA_DIR, or the user cache folder"},
                                   help="Cache for downloadable datasets.")
    force: bool = option(False, flag="--force", section=OUTPUTS, parse=boolean("force"), click={"is_flag": True},
                         help="Rerun every cell, also those already finished in --out.")
    wait: bool = option(False, flag="--wait", section=OUTPUTS, parse=boolean("wait"), click={"is_flag": True},
                        help="If another bench run is writing --out, wait for it to finish "
                             "[default: exit with status 2].")
    dry_run: bool = option(False, flag="--dry-run", section=OUTPUTS, parse=boolean("dry_run"),
                           click={"is_flag": True},
                           help="List the cells that would run and those already done; train nothing.")
    cuda_graphs: str = option("auto", flag="--cuda-graphs", section=HOW,
                              parse=choice("cuda_graphs", ("auto", "on", "off")),
                              click={"choices": ("auto", "on", "off"), "show_default": True},
                              help="Capture each training step in a CUDA graph: auto (on for cuda, eager steps if a "
                                   "model cannot be captured), on (an error if it cannot), off.")
    compile: bool = option(False, flag="--compile", section=HOW, parse=boolean("compile"), click={"is_flag": True},
                           help="Wrap each model in torch.compile (compilation is timed as warm-up, apart from the "
                                "epochs).")
    threads: int = option(0, flag="--threads", section=HOW, metavar="N", parse=integer("threads"),
                          click={"type": "natural"}, help="CPU threads for torch (0: torch's default, one per core).")
    quiet: bool = option(False, flag="-q/--quiet", section=OUTPUTS, parse=boolean("quiet"), click={"is_flag": True},
                         help="No progress bars.")
    report: bool = option(False, flag="--report", section=OUTPUTS, parse=boolean("report"), click={"is_flag": True},
                          help="Then write a report into RUN_DIR/report (see bench report).")
    plugins: list[str] = option(default_factory=list, flag="-p", section=HOW, metavar="MODULE",
                                parse=strings("plugins", "module names"), click={"multiple": True},
                                help="Load the plugin module MODULE (import path) for this run; -p no:NAME blocks "
                                     "plugin NAME.")
    executor: str | None = option(None, flag="--executor", section=HOW, metavar="NAME", parse=text("executor"),
                                  help="Where cells train: local (here, one by one; the default), process (--jobs N "
                                       "workers), ray (a Ray cluster), slurm (jobs on a SLURM cluster), or a plugin's "
                                       "executor.")
    jobs: int | None = option(None, flag="--jobs", section=HOW, metavar="N",
                              parse=integer("jobs", None, optional=True), click={"type": "int"},
                              help="With --executor process: worker processes [default: one per core, or per GPU].")
    address: str | None = option(None, flag="--address", section=HOW, metavar="auto|HOST:PORT",
                                 parse=text("address"),
                                 help="With --executor ray: the Ray cluster to join [default: start a local "
                                      "instance].")
    executor_options: dict[str, Any] = option(
        default_factory=dict, flag="-X/--executor-option", section=HOW, metavar="KEY=VALUE", parse=executor_options,
        click={"multiple": True},
        help="An option of the executor, e.g. -X partition=gpu -X time=30 for slurm (repeatable; bench list shows "
             "each executor's options; a study's executor block gives them too).")
    fuse: str = option("auto", flag="--fuse", section=FUSION, parse=choice("fuse", ("auto", "on", "off")),
                       click={"choices": ("auto", "on", "off"), "show_default": True},
                       help="Train cells that differ only in seed, lr, weight decay or optimizer params as one stacked "
                            "model: auto (where the model and optimizer allow; others train one by one, "
                            "execution_note says why), on (an error where they cannot), off.")
    fuse_max: int = option(0, flag="--fuse-max", section=FUSION, metavar="N", parse=integer("fuse_max"),
                           click={"type": "natural"},
                           help="At most N cells in one fused group (0: as many as fit in the device's memory).")
    #: A ready plugin host (:class:`bench.host.Host`, checked where it is used) instead of ``plugins``.
    host: Any = option(None)
    #: The command line, for ``env.json`` (``bench run`` gives it).
    argv: list[str] | None = option(None, parse=_argv)
    #: Receives the notes (stderr by default).
    echo: Callable[[str], None] = option(_stderr, parse=_callable)

    @classmethod
    def from_options(cls, **given: Any) -> RunOptions:
        """Checked options (a bad value is an :class:`bench.OptionError` naming it)."""
        known = {o.name: o for o in options_of(cls)}
        return cls(**{name: known[name].check(value) for name, value in given.items()})
