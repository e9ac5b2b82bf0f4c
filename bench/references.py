"""Published reference results that a dataset plugin declares, and which configurations they apply to.

A dataset plugin passes ``references=[...]`` to its ``register`` call (see ``docs/plugins.md``). Each
reference is one row of a published table: a test error reached by a model *family* on that dataset,
with its source. The family is explicit, so that whether a reference applies to a configuration can be
checked by reading the two:

- ``model``: the model's registered name; the reference applies only to that model;
- ``loss`` (optional): the loss's registered name; absent, any loss;
- ``params`` (optional): values of the model's parameters that must hold (an override, or else the
  model's default, as registered in the run that recorded the reference);
- ``published`` (optional): the published model's values of other parameters. They do not restrict
  the match; the report shows them beside a configuration whose values differ (a 256-unit ``mlp``
  against a published 800-unit net says so).

The runner records each dataset's references, with the registered defaults of the model they name,
in the run directory (``env.json["references"]``), so that reports, which never import plugins, can
match them (:func:`matching`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.errors import BenchError

#: A configuration is flagged "far below" its reference when its test error is more than FAR_BELOW times the
#: reference's plus FAR_BELOW_SLACK (a point of slack, so that short runs of strong models are not flagged:
#: the default 2-epoch mlp at 3.7% against 1.6% is not; a cnn at 2.9% against LeNet-5's 0.95% is).
FAR_BELOW = 2.0
FAR_BELOW_SLACK = 0.01

_FIELDS = ("model", "test_error", "label", "source", "loss", "params", "published")


@dataclass(frozen=True)
class Reference:
    """One published result: ``test_error`` (a fraction, 0.012 for 1.2%) of a model family, with its source."""

    model: str
    test_error: float
    label: str
    source: str
    loss: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    published: Mapping[str, Any] = field(default_factory=dict)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def parse_references(value: Any, where: str) -> tuple[Reference, ...]:
    """Validate what a plugin passed as ``references=``: a list of dicts (or :class:`Reference`)."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise BenchError(f"{where}: references must be a list of dicts with keys {', '.join(_FIELDS)}")
    out = []
    for i, item in enumerate(value):
        at = f"{where}: reference {i + 1}"
        if isinstance(item, Reference):
            item = asdict(item)
        if not isinstance(item, Mapping):
            raise BenchError(f"{at} must be a dict, got {item!r}")
        unknown = sorted(set(item) - set(_FIELDS))
        if unknown:
            raise BenchError(f"{at}: unknown key '{unknown[0]}' (valid: {', '.join(_FIELDS)})")
        for key in ("model", "label", "source"):
            if not isinstance(item.get(key), str) or not item.get(key):
                raise BenchError(f"{at}: '{key}' must be a non-empty string, got {item.get(key)!r}")
        error = item.get("test_error")
        if isinstance(error, bool) or not isinstance(error, (int, float)) or not (0 <= error < 1):
            raise BenchError(f"{at}: 'test_error' must be a fraction in [0, 1) (0.012 for 1.2%), got {error!r}")
        loss = item.get("loss")
        if loss is not None and (not isinstance(loss, str) or not loss):
            raise BenchError(f"{at}: 'loss' must be a loss name or absent, got {loss!r}")
        for key in ("params", "published"):
            values = item.get(key) or {}
            if not isinstance(values, Mapping) or not all(isinstance(k, str) and _scalar(v) for k, v in values.items()):
                raise BenchError(f"{at}: '{key}' must map parameter names to numbers or strings, got {values!r}")
        out.append(Reference(item["model"], float(error), item["label"], item["source"], loss,
                             dict(item.get("params") or {}), dict(item.get("published") or {})))
    return tuple(out)


def references_for(registry, dataset_names: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """The references of each dataset as JSON-ready dicts, for the run directory (``env.json``).

    Each carries ``defaults``: the parameters of the model it names as registered now (empty when that
    model is not registered), so that a configuration with default parameters can be matched later.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(set(dataset_names)):
        references = getattr(registry.get("dataset", name), "references", ())
        if not references:
            continue
        models = set(registry.names("model"))
        out[name] = [{**asdict(ref), "params": dict(ref.params), "published": dict(ref.published),
                      "defaults": dict(registry.get("model", ref.model).params) if ref.model in models else {}}
                     for ref in references]
    return out


def _effective(reference: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration's values of its model's parameters: overrides over the recorded defaults."""
    prefix = f"{config['model']}."
    params = config.get("params") or {}
    return {**(reference.get("defaults") or {}),
            **{k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b))
    return str(a) == str(b)


def applies(reference: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """Whether a recorded reference applies to a configuration (``bench.config.row_config``): same
    model, same loss if the reference names one, and every one of its ``params`` holds."""
    if reference.get("model") != config.get("model"):
        return False
    if reference.get("loss") and reference["loss"] != config.get("loss"):
        return False
    values = _effective(reference, config)
    return all(key in values and _same(values[key], want) for key, want in (reference.get("params") or {}).items())


def differences(reference: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{param: (published, this configuration's)}`` for the published values the configuration differs in."""
    values = _effective(reference, config)
    return {key: (want, values.get(key)) for key, want in (reference.get("published") or {}).items()
            if key not in values or not _same(values[key], want)}


def matching(references: Mapping[str, list[Mapping[str, Any]]], config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The recorded references (``env.json["references"]``) that apply to ``config``."""
    return [ref for ref in references.get(str(config.get("dataset")), []) if applies(ref, config)]


def not_comparable(config: Mapping[str, Any]) -> str:
    """Why a configuration's training cannot be set against a published result, or ``""`` when it can.

    Published results train on the whole training set of the dataset as published: a configuration is
    comparable when it ran without ``--limit`` and with the dataset's registered parameters (an override
    such as ``mnist.val_size`` changes what it trained on). Its epochs and other recipe values may differ:
    :data:`FAR_BELOW_SLACK` allows for the default short training.
    """
    reasons = []
    limit = config.get("limit") or 0
    if limit:
        reasons.append(f"trained on {limit} samples (--limit)")
    prefix = f"{config.get('dataset')}."
    changed = sorted(k for k in (config.get("params") or {}) if k.startswith(prefix))
    if changed:
        reasons.append(f"dataset parameters changed ({', '.join(changed)})")
    return "; ".join(reasons)


def far_below(test_error: float, reference: Mapping[str, Any]) -> bool:
    """A test error above :data:`FAR_BELOW` times the reference's plus :data:`FAR_BELOW_SLACK`."""
    return math.isfinite(test_error) and test_error > FAR_BELOW * float(reference["test_error"]) + FAR_BELOW_SLACK
