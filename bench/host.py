"""The plugin host: loads plugins with pluggy and collects the components they register.

Built-in plugins, ``-p`` modules and installed distributions (entry-point group ``bench``) all go
through the same path: import a module, ``PluginManager.register`` it, then call its hooks with a
``register`` callback that validates and records each component.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from bench import PROJECT, hookspecs
from bench.errors import BenchError


class DuplicateComponent(BenchError):
    """Two plugins registered the same name for the same kind."""

#: Built-in plugin modules, loaded exactly like a ``-p`` module.
BUILTIN_PLUGINS = ("plugins.models", "plugins.losses", "plugins.datasets", "plugins.executors")

PLURAL = {"model": "models", "loss": "losses", "dataset": "datasets", "executor": "executors"}

#: Component kind -> the hook that registers it.
KINDS = {
    "model": "bench_register_models",
    "loss": "bench_register_losses",
    "dataset": "bench_register_datasets",
    "executor": "bench_register_executors",
}


@dataclass(frozen=True)
class Component:
    """One registered model, loss, dataset or executor."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: Mapping[str, Any]
    description: str
    plugin: str


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

    def register_callback(self, kind: str, plugin: str) -> Callable[..., None]:
        """The ``register`` function handed to one plugin's hook for one kind."""

        def register(name, factory, params=None, description=""):
            self.add(kind, plugin, name, factory, params, description)

        return register

    def add(self, kind, plugin, name, factory, params=None, description="") -> None:
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
        existing = self._items[kind].get(name)
        if existing is not None:
            raise DuplicateComponent(
                f"{kind} '{name}' is registered twice: by plugin '{existing.plugin}' and by plugin '{plugin}'"
            )
        self._items[kind][name] = Component(kind, name, factory, dict(params), description, plugin)

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
    """A plugin manager with its plugins loaded and their components collected."""

    def __init__(self, modules: Iterable[str] = (), *, autoload: bool | None = None, builtins: bool = True):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.warnings: list[str] = []
        modules = list(modules)
        blocked = {m[3:] for m in modules if m.startswith("no:")}
        for name in blocked:
            self.pm.set_blocked(name)
        if builtins:
            for module in BUILTIN_PLUGINS:
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
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if source == "-p" and getattr(exc, "name", None) == module_name:
                raise BenchError(f"-p {module_name}: no module named '{module_name}' (is it on sys.path?)") from None
            self._broken(PluginInfo(module_name, source), exc)
            return
        except Exception as exc:  # a plugin that fails to import must not take the tool down
            self._broken(PluginInfo(module_name, source), exc)
            return
        self._register(module, PluginInfo(module_name, source))

    def register_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register an already-imported plugin object (a module, class or instance)."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self._register(plugin, PluginInfo(name, "object"))
        self._registry = None

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=PROJECT):
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
            except Exception as exc:
                self._broken(info, exc)
                continue
            self._register(plugin, info)

    def _register(self, plugin: object, info: PluginInfo) -> None:
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:  # e.g. a hookimpl with a misspelled argument
            self._broken(info, exc)
            return
        self.plugins[info.name] = info

    def _broken(self, info: PluginInfo, exc: BaseException) -> None:
        if _strict():
            raise exc
        info.status = "broken"
        info.error = _describe_error(exc)
        self.plugins[info.name] = info
        origin = f" (distribution {info.distribution} {info.version})" if info.distribution else ""
        self.warnings.append(f"warning: plugin '{info.name}'{origin} is broken and was skipped: {info.error}")

    # -- collecting ------------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry()
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            # Call each implementation on its own so that every component is attributed to
            # the plugin that registered it and a failing plugin is isolated.
            for impl in reversed(hook.get_hookimpls()):
                info = self.plugins.get(impl.plugin_name)
                if info is not None and info.status != "ok":
                    continue
                register = registry.register_callback(kind, impl.plugin_name)
                kwargs = {arg: register for arg in impl.argnames}
                try:
                    impl.function(**kwargs)
                except DuplicateComponent:
                    raise
                except Exception as exc:
                    if _strict():
                        raise
                    self._hook_failed(impl.plugin_name, hook_name, exc)
                else:
                    if info is not None:
                        info.registered.setdefault(kind, [])
        for kind in KINDS:
            for component in registry.all(kind):
                info = self.plugins.get(component.plugin)
                if info is not None:
                    info.registered.setdefault(kind, []).append(component.name)
        return registry

    def _hook_failed(self, plugin_name: str, hook_name: str, exc: BaseException) -> None:
        info = self.plugins.get(plugin_name)
        if info is not None:
            info.status = "broken"
            info.error = f"{hook_name} raised {_describe_error(exc)}"
        self.warnings.append(
            f"warning: plugin '{plugin_name}' failed in {hook_name} and was skipped: {_describe_error(exc)}"
        )
