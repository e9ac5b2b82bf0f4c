"""The plugin host: loads plugins with pluggy and collects the components they register.

Built-in plugins, ``-p`` modules and installed distributions (entry-point group ``bench``) all go
through the same path: import a module, ``PluginManager.register`` it, then call its hooks with a
``register`` callback that validates and records each component.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from bench import PROJECT, __version__, hookspecs
from bench.config import COMPONENT_KINDS
from bench.errors import BenchError
from bench.references import parse_references


class DuplicateComponent(BenchError):
    """Two plugins registered the same name for the same kind."""


class BrokenPlugin(RuntimeError):
    """A plugin failed to load or its hook raised, under ``BENCH_STRICT_PLUGINS=1``.

    Deliberately not a :class:`BenchError`: the CLI lets it through with its traceback, which is
    what a plugin developer needs.
    """


#: Built-in plugin modules, loaded exactly like a ``-p`` module.
BUILTIN_PLUGINS = tuple(f"bench.plugins.{name}" for name in (
    "models", "losses", "datasets", "grids", "executors", "slurm", "optimizers", "schedules", "progress", "trackers",
))
#: The built-ins that add commands (``bench_cli``): all that ``bench --help`` loads of them, so that it never
#: imports torch (a test checks this list against the modules).
COMMAND_PLUGINS = ("bench.plugins.slurm",)

PLURAL = {"model": "models", "loss": "losses", "dataset": "datasets", "executor": "executors", "grid": "grids",
          "optimizer": "optimizers", "schedule": "schedules", "tracker": "trackers",
          "command": "commands"}

#: Component kind -> the hook that registers it.
KINDS = {
    "model": "bench_register_models",
    "loss": "bench_register_losses",
    "dataset": "bench_register_datasets",
    "executor": "bench_register_executors",
    "optimizer": "bench_register_optimizers",
    "schedule": "bench_register_schedules",
    "tracker": "bench_register_trackers",
}
GRID_HOOK = "bench_register_grids"
CLI_HOOK = "bench_cli"

Triple = tuple[str, str, str]


@dataclass(frozen=True)
class Component:
    """One registered model, loss, dataset, executor, optimizer or schedule."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: Mapping[str, Any]
    description: str
    plugin: str
    references: tuple = ()  # datasets only: published results (bench.references.Reference)


@dataclass(frozen=True)
class Grid:
    """A named grid: ``(model, loss, dataset)`` triples, or a function of the registry giving them."""

    name: str
    cells: Callable[[Registry], Iterable[Triple]] | tuple[Triple, ...]
    description: str
    plugin: str

    def triples(self, registry: Registry) -> list[Triple]:
        """The grid's cells, each checked to name registered components."""
        where = f"grid '{self.name}' (plugin '{self.plugin}')"
        try:
            cells = list(self.cells(registry) if callable(self.cells) else self.cells)
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"{where} failed to list its cells: {_describe_error(exc)}") from exc
        triples = []
        for cell in cells:
            if not (isinstance(cell, (tuple, list)) and len(cell) == 3 and all(isinstance(n, str) for n in cell)):
                raise BenchError(f"{where}: a cell must be a (model, loss, dataset) triple of names, got {cell!r}")
            for kind, name in zip(COMPONENT_KINDS, cell):
                try:
                    registry.get(kind, name)
                except BenchError as exc:
                    raise BenchError(f"{where}: {exc}") from None
            triples.append(tuple(cell))
        return triples


@dataclass
class PluginInfo:
    """A plugin the host tried to load: where it came from and whether it works."""

    name: str
    source: str  # "builtin", "entry point" or "-p"
    distribution: str = ""
    version: str = ""
    status: str = "ok"
    error: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)


def close_match_hint(name: str, valid: Iterable[str]) -> str:
    """' (did you mean 'x'?)' when ``name`` is close to a valid one, else ''."""
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_name_error(what: str, name: str, valid: Iterable[str]) -> BenchError:
    valid = sorted(valid)
    return BenchError(
        f"unknown {what} '{name}'{close_match_hint(name, valid)}; valid: {', '.join(valid) or '(none)'}"
    )


class Registry:
    """Components by kind and name, each remembering the plugin that registered it."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self._grids: dict[str, Grid] = {}
        #: kind (or "grid") -> the name registered with ``default=True`` first (built-ins come first).
        self._defaults: dict[str, str] = {}

    def register_callback(self, kind: str, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's hook for one kind."""

        def register(name, factory, params=None, description="", *, default=False, references=None):
            self.add(kind, plugin, name, factory, params, description, default=default, references=references)

        return register

    def add(self, kind, plugin, name, factory, params=None, description="", references=None, *,
            default=False) -> None:
        where = f"plugin '{plugin}' registered {kind}"
        if not isinstance(name, str) or not name or any(c in name for c in " ,=\t\n"):
            raise BenchError(f"{where} {name!r}: a name must be a non-empty string without spaces, ',' or '='")
        if "." in name:
            raise BenchError(f"{where} '{name}': a name must not contain '.' (it separates NAME.PARAM)")
        if not callable(factory):
            raise BenchError(f"{where} '{name}': factory {factory!r} is not callable")
        if params is None:
            params = {}
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise BenchError(f"{where} '{name}': params must be a dict of keyword arguments")
        if not isinstance(description, str):
            raise BenchError(f"{where} '{name}': description must be a string")
        if references is not None and kind != "dataset":
            raise BenchError(f"{where} '{name}': only a dataset takes references")
        references = parse_references(references, f"{where} '{name}'")
        existing = self._items[kind].get(name)
        if existing is not None:
            raise DuplicateComponent(
                f"{kind} '{name}' is registered twice: by plugin '{existing.plugin}' and by plugin '{plugin}'"
            )
        self._items[kind][name] = Component(kind, name, factory, dict(params), description, plugin, references)
        self._claim_default(kind, name, default, where)

    def _claim_default(self, kind: str, name: str, default, where: str) -> None:
        if not isinstance(default, bool):
            raise BenchError(f"{where} '{name}': default must be True or False")
        if default:
            self._defaults.setdefault(kind, name)

    def default(self, kind: str) -> str:
        """The name used for ``kind`` when a run does not say (``grid``, ``model``, ``optimizer``, ...):
        the first component registered with ``default=True``; built-in plugins register first."""
        name = self._defaults.get(kind)
        if name is None:
            valid = self.grid_names() if kind == "grid" else self.names(kind)
            raise BenchError(f"no plugin declares a default {kind}: name one explicitly "
                             f"(valid: {', '.join(valid) or 'none'})")
        return name

    def grid_callback(self, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's ``bench_register_grids``."""

        def register(name, cells, description="", *, default=False):
            self.add_grid(plugin, name, cells, description, default=default)

        return register

    def add_grid(self, plugin, name, cells, description="", *, default=False) -> None:
        where = f"plugin '{plugin}' registered grid"
        if not isinstance(name, str) or not name or any(c in name for c in " ,=\t\n"):
            raise BenchError(f"{where} {name!r}: a name must be a non-empty string without spaces, ',' or '='")
        if not callable(cells):
            if isinstance(cells, (str, bytes)) or not isinstance(cells, Iterable):
                raise BenchError(f"{where} '{name}': cells must be (model, loss, dataset) triples or a callable")
            cells = tuple(tuple(c) if isinstance(c, (tuple, list)) else c for c in cells)
        if not isinstance(description, str):
            raise BenchError(f"{where} '{name}': description must be a string")
        existing = self._grids.get(name)
        if existing is not None:
            raise DuplicateComponent(
                f"grid '{name}' is registered twice: by plugin '{existing.plugin}' and by plugin '{plugin}'"
            )
        self._grids[name] = Grid(name, cells, description, plugin)
        self._claim_default("grid", name, default, where)

    def grid_names(self) -> list[str]:
        return sorted(self._grids)

    def grids(self) -> list[Grid]:
        return [self._grids[n] for n in self.grid_names()]

    def get_grid(self, name: str) -> Grid:
        try:
            return self._grids[name]
        except KeyError:
            raise unknown_name_error("grid", name, self._grids) from None

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything ``plugin`` registered (it turned out to be broken)."""
        for items in self._items.values():
            for name in [n for n, c in items.items() if c.plugin == plugin]:
                del items[name]
        for name in [n for n, g in self._grids.items() if g.plugin == plugin]:
            del self._grids[name]
        for kind, name in list(self._defaults.items()):
            if name not in (self._grids if kind == "grid" else self._items[kind]):
                del self._defaults[kind]

    def names(self, kind: str) -> list[str]:
        return sorted(self._items[kind])

    def all(self, kind: str) -> list[Component]:
        return [self._items[kind][n] for n in self.names(kind)]

    def get(self, kind: str, name: str) -> Component:
        try:
            return self._items[kind][name]
        except KeyError:
            raise unknown_name_error(kind, name, self._items[kind]) from None


def _autoload_disabled() -> bool:
    return os.environ.get("BENCH_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0")


def _strict() -> bool:
    return os.environ.get("BENCH_STRICT_PLUGINS", "").strip() not in ("", "0")


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Host:
    """A plugin manager with its plugins loaded and their components collected.

    ``modules`` are ``-p`` arguments: import paths of plugin modules to load, or ``no:NAME`` to
    block the plugin ``NAME`` (a built-in module, an entry-point name or a module). ``autoload``
    loads the installed distributions' entry points (group ``bench``); by default it is on unless
    ``BENCH_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """

    def __init__(self, modules: Iterable[str] = (), *, autoload: bool | None = None,
                 builtins: bool | Iterable[str] = True,
                 strict: bool | None = None):
        self.strict = _strict() if strict is None else strict
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.warnings: list[str] = []
        modules = list(modules)
        #: The ``-p`` arguments this host was built from (workers of an executor rebuild it from them).
        self.modules: tuple[str, ...] = tuple(modules)
        blocked = {m[3:] for m in modules if m.startswith("no:")}
        for name in blocked:
            self.pm.set_blocked(name)
        for module in BUILTIN_PLUGINS if builtins is True else builtins or ():
            self.load_module(module, source="builtin")
        if autoload is None:
            autoload = not _autoload_disabled()
        if autoload:
            self._load_entry_points()
        for module in modules:
            if not module.startswith("no:"):
                self.load_module(module, source="-p")
        self._registry: Registry | None = None

    # -- loading ---------------------------------------------------------------------------------

    def load_module(self, module_name: str, source: str = "-p") -> None:
        """Import a module by dotted path and register it as a plugin named after it."""
        if self.pm.is_blocked(module_name) or module_name in self.plugins:
            return
        # Built-ins are part of gridbench; only a -p module needs the (slow) scan of installed packages.
        origin = ("gridbench", __version__) if source == "builtin" else _distribution_of(module_name)
        info = PluginInfo(module_name, source, *origin)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if source == "-p" and getattr(exc, "name", None) == module_name:
                raise BenchError(f"-p {module_name}: no module named '{module_name}' (is it on sys.path?)") from None
            self._broken(info, exc)
            return
        except Exception as exc:  # a plugin that fails to import must not take the tool down
            self._broken(info, exc)
            return
        self._register(_plugin_object(module), info)

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register an already-imported plugin object (a module, class or instance)."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self._register(plugin, PluginInfo(name, "object"))
        self._registry = None

    def _load_entry_points(self) -> None:
        # Sorted by name: the order decides which plugin wins a duplicate name, so it must not
        # depend on the order in which the file system lists distributions.
        for ep in sorted(importlib.metadata.entry_points(group=PROJECT), key=lambda ep: ep.name):
            if self.pm.is_blocked(ep.name) or ep.name in self.plugins:
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                ep.name,
                "entry point",
                distribution=dist.metadata["Name"] if dist else "",
                version=dist.version if dist else "",
            )
            try:
                plugin = ep.load()
                plugin = _plugin_object(plugin)
            except Exception as exc:
                self._broken(info, exc)
                continue
            self._register(plugin, info)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        if self.pm.get_name(plugin) is not None:
            return  # the same module again (e.g. an installed plugin also given with -p): loaded once
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # e.g. a hookimpl with a misspelled argument
            self._broken(info, exc)
            return
        unknown = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or () if caller.spec is None)
        if unknown:  # a misspelled hook name would otherwise never be called, silently
            self.pm.unregister(plugin)
            specs = [name for name in dir(hookspecs) if name.startswith(f"{PROJECT}_")]
            self._broken(info, BenchError(f"@hookimpl {unknown[0]} is not a gridbench hook"
                                          f"{close_match_hint(unknown[0], specs)}"))
            return
        self.plugins[info.name] = info

    def _broken(self, info: PluginInfo, exc: BaseException, during: str = "") -> None:
        """Record a plugin as broken and warn once, or raise under BENCH_STRICT_PLUGINS."""
        what = f"failed in {during}" if during else "failed to load"
        if self.strict:
            raise BrokenPlugin(f"plugin '{info.name}'{_origin(info)} {what}: {_describe_error(exc)}") from exc
        info.status = "broken"
        info.error = f"{during} raised {_describe_error(exc)}" if during else _describe_error(exc)
        self.plugins[info.name] = info
        self.warnings.append(
            f"warning: plugin '{info.name}'{_origin(info)} {what} and was skipped: {_describe_error(exc)}"
        )

    # -- collecting ------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _impls(self, hook_name: str) -> list[Any]:
        """The working plugins' implementations of a hook, built-ins first (registration order)."""
        impls = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            info = self.plugins.get(impl.plugin_name)
            if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
                continue
            if info is None or info.status == "ok":
                impls.append(impl)
        return impls

    def _info(self, plugin_name: str) -> PluginInfo:
        return self.plugins.setdefault(plugin_name, PluginInfo(plugin_name, "object"))

    def _collect(self) -> Registry:
        registry = Registry()
        hooks = [(hook_name, lambda plugin, kind=kind: registry.register_callback(kind, plugin))
                 for kind, hook_name in KINDS.items()]
        hooks.append((GRID_HOOK, registry.grid_callback))
        for hook_name, make_register in hooks:
            # Call each implementation on its own, so that every component is attributed to the
            # plugin that registered it and a failing plugin is isolated: it is reported, what it
            # registered so far is forgotten, and its other hooks are not called.
            for impl in self._impls(hook_name):
                register = make_register(impl.plugin_name)
                try:
                    impl.function(**{arg: register for arg in impl.argnames})
                except Exception as exc:
                    registry.remove_plugin(impl.plugin_name)
                    self._broken(self._info(impl.plugin_name), exc, during=hook_name)
        for info in self.plugins.values():
            for kind in (*KINDS, "grid"):
                info.registered.pop(kind, None)
        for kind in KINDS:
            for component in registry.all(kind):
                self._info(component.plugin).registered.setdefault(kind, []).append(component.name)
        for grid in registry.grids():
            self._info(grid.plugin).registered.setdefault("grid", []).append(grid.name)
        return registry

    def collect_commands(self, cli: Any) -> dict[str, Any]:
        """The click commands that plugins add to ``cli`` in ``bench_cli``, by name.

        ``cli`` (a click group) is handed to each plugin and restored afterwards, so the commands
        live only in the returned dict. A plugin whose command name is taken is reported broken.
        """
        builtin = dict(cli.commands)
        added: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for impl in self._impls(CLI_HOOK):
            try:
                impl.function(**{arg: cli for arg in impl.argnames})
                new = {name: cmd for name, cmd in cli.commands.items() if builtin.get(name) is not cmd}
                for name in new:
                    if name in builtin or name in added:
                        owner = owners.get(name, "the bench command line")
                        raise BenchError(f"command '{name}' is already taken by {owner}")
            except Exception as exc:
                self._broken(self._info(impl.plugin_name), exc, during=CLI_HOOK)
            else:
                added.update(new)
                owners.update(dict.fromkeys(new, f"plugin '{impl.plugin_name}'"))
                if new:
                    self._info(impl.plugin_name).registered.setdefault("command", []).extend(sorted(new))
            finally:
                cli.commands.clear()
                cli.commands.update(builtin)
        return added


def _plugin_object(module: object) -> object:
    """What a loaded module registers: itself, or the object its ``make_plugin()`` returns (a fresh one per
    host, for a plugin that keeps state, as the progress bars do)."""
    make = getattr(module, "make_plugin", None)
    return make() if callable(make) else module


def _origin(info: PluginInfo) -> str:
    """' (distribution NAME VERSION)' where the plugin came from a distribution."""
    return f" (distribution {info.distribution} {info.version})".replace(" )", ")") if info.distribution else ""


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution_of(module_name: str) -> tuple[str, str]:
    """The installed distribution that provides ``module_name``'s top-level package, if any."""
    top = module_name.split(".")[0]
    try:
        names = _packages_distributions().get(top, [])
        if names:
            return names[0], importlib.metadata.version(names[0])
    except Exception:  # metadata is a nicety here, never a reason to fail
        pass
    return "", ""
