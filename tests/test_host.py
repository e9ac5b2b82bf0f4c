"""The plugin host: registration, attribution, duplicates, -p modules."""

import textwrap

import pytest
import torch

from bench import BenchError, hookimpl
from bench.host import BrokenPlugin, Host, Registry


class TinyPlugin:
    @hookimpl
    def bench_register_models(self, register):
        register("tiny", lambda input_shape, num_classes, width=4: torch.nn.Linear(2, num_classes),
                 params={"width": 4}, description="a tiny model")


def test_builtins_are_registered_through_the_hooks_and_attributed():
    registry = Host(autoload=False).registry
    assert registry.names("model") == ["cnn", "deep-linear", "linear", "mlp"]
    assert registry.names("loss") == ["crossentropy", "hinge", "mse"]
    assert registry.names("dataset") == ["fashion-mnist", "kmnist", "mnist"]
    assert registry.get("model", "mlp").plugin == "bench.plugins.models"
    assert registry.get("model", "mlp").params == {"hidden": 256, "depth": 1, "activation": "relu"}
    assert registry.get("dataset", "mnist").plugin == "bench.plugins.datasets"


def test_a_plugin_object_registered_on_a_fresh_manager():
    host = Host(autoload=False, builtins=False)
    host.register_plugin(TinyPlugin(), name="tiny-plugin")
    component = host.registry.get("model", "tiny")
    assert component.plugin == "tiny-plugin" and component.params == {"width": 4}
    assert host.registry.names("loss") == []


class Clash:
    @hookimpl
    def bench_register_models(self, register):
        register("linear", lambda s, c: torch.nn.Linear(1, c))


def test_a_duplicate_name_is_an_error_naming_both_plugins_and_the_later_plugin_is_skipped():
    host = Host(autoload=False)
    host.register_plugin(Clash(), name="clash")
    registry = host.registry
    assert registry.get("model", "linear").plugin == "bench.plugins.models"  # the built-in keeps its name
    assert host.plugins["clash"].status == "broken"
    assert host.warnings == ["warning: plugin 'clash' failed in bench_register_models and was skipped: "
                             "DuplicateComponent: model 'linear' is registered twice: by plugin 'bench.plugins.models' "
                             "and by plugin 'clash'"]


def test_a_duplicate_name_is_a_hard_error_in_strict_mode():
    host = Host(autoload=False, strict=True)
    host.register_plugin(Clash(), name="clash")
    with pytest.raises(BrokenPlugin, match=r"model 'linear' is registered twice: by plugin 'bench.plugins.models' "
                                           r"and by plugin 'clash'"):
        _ = host.registry


@pytest.mark.parametrize("args, message", [
    (("", lambda: 0), "non-empty string"),
    (("a.b", lambda: 0), "must not contain '.'"),
    (("ok", "not callable"), "not callable"),
    (("ok", lambda: 0, ["hidden"]), "params must be a dict"),
])
def test_register_validates_what_it_gets(args, message):
    with pytest.raises(BenchError, match=message):
        Registry().register_callback("model", "p")(*args)


def test_unknown_names_list_the_valid_ones_with_a_close_match():
    registry = Host(autoload=False).registry
    with pytest.raises(BenchError, match=r"unknown model 'mpl' \(did you mean 'mlp'\?\); valid: cnn, deep-linear, "
                                         r"linear, mlp"):
        registry.get("model", "mpl")


def test_p_loads_a_module_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "my_bench_plugin.py").write_text(textwrap.dedent("""
        import torch
        from bench import hookimpl

        @hookimpl
        def bench_register_losses(register):
            register("l1", lambda: lambda logits, y: logits.abs().mean(), description="silly")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    host = Host(["my_bench_plugin"], autoload=False)
    assert host.registry.get("loss", "l1").plugin == "my_bench_plugin"
    assert host.plugins["my_bench_plugin"].source == "-p"


def test_p_with_a_missing_module_is_a_clear_error():
    with pytest.raises(BenchError, match="-p no_such_module_xyz: no module named 'no_such_module_xyz'"):
        Host(["no_such_module_xyz"], autoload=False)


def test_p_no_blocks_a_builtin():
    registry = Host(["no:bench.plugins.losses"], autoload=False).registry
    assert registry.names("loss") == [] and "mlp" in registry.names("model")
