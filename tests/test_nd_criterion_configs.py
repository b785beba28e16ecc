"""Every criterion of the plugin takes exactly its config's fields: fairseq's
``FairseqCriterion.build_criterion`` passes ``__init__`` the config fields of the same name and
silently leaves any other argument at its default, so a renamed field or argument would switch
an option off without an error. The defaults of ``__init__`` are the config's."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
from fairseq.criterions import CRITERION_DATACLASS_REGISTRY, CRITERION_REGISTRY

import fairseq_plugins  # noqa: F401  (registers the criteria)

PLUGIN_CRITERIA = ["knowledge_internalization", "negative_distillation", "unlikelihood", "negative_training"]


@pytest.mark.parametrize("name", PLUGIN_CRITERIA)
def test_init_arguments_are_the_config_fields(name: str) -> None:
    cls, config = CRITERION_REGISTRY[name], CRITERION_DATACLASS_REGISTRY[name]
    params = {p.name: p for p in inspect.signature(cls.__init__).parameters.values() if p.name not in ("self", "task")}
    fields = {f.name: f for f in dataclasses.fields(config) if f.name != "_name"}
    assert set(params) == set(fields)
    for field in fields.values():
        assert field.metadata.get("help") or str(field.default).startswith("${"), f"{name}.{field.name}: no help"
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if isinstance(default, str) and default.startswith("${"):
            continue  # interpolated from another group (common.seed, optimization.sentence_avg)
        param = params[field.name]
        if param.default is not inspect.Parameter.empty:
            assert param.default == default, f"{name}.{field.name}: __init__ {param.default!r}, config {default!r}"
