"""Strict request-body checks with the Azure SDKs' own model classes: every property a body
sends must be one the SDK's model (recursively) declares, else the contract server refuses it.

Two model styles live in the SDKs: the new `_utils.model_base.Model` (compute, network,
storage, resource) with `rest_field`s and type hints, and msrest's `_attribute_map` (msi,
authorization). Both are walked here; `unknown(...)` lists the offending property paths.
"""

from __future__ import annotations

import importlib
import re
import sys
import types
import typing
from typing import Any


def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    models = importlib.import_module(module.__name__.rsplit(".", 1)[0])
    namespace = {**vars(module), "_models": models}
    return typing.get_type_hints(cls, globalns=namespace)


def _is_new_model(tp: Any) -> bool:
    return (isinstance(tp, type) and hasattr(tp, "_attr_to_rest_field")) or (
        isinstance(tp, type)
        and any(base.__name__ == "Model" and "model_base" in base.__module__ for base in tp.__mro__)
    )


def unknown_new(data: Any, tp: Any, path: str = "") -> list[str]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        return unknown_new(data, options[0], path) if len(options) == 1 else []
    if origin is list and isinstance(data, list):
        return [
            bad
            for i, item in enumerate(data)
            for bad in unknown_new(item, typing.get_args(tp)[0], f"{path}[{i}]")
        ]
    if origin is dict and isinstance(data, dict):
        value_type = typing.get_args(tp)[1]
        return [bad for key, item in data.items() for bad in unknown_new(item, value_type, f"{path}.{key}")]
    if not _is_new_model(tp):
        return []
    if not isinstance(data, dict):
        return [f"{path} (not an object)"]
    tp.__new__(tp)  # fills _attr_to_rest_field
    fields = {field._rest_name: attr for attr, field in tp._attr_to_rest_field.items()}
    hints = _hints(tp)
    found = []
    for key, value in data.items():
        if key not in fields:
            found.append(f"{path}.{key}".lstrip("."))
        else:
            found += unknown_new(value, hints.get(fields[key]), f"{path}.{key}")
    return found


def _split(key: str) -> list[str]:
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


def unknown_msrest(data: Any, type_name: str, models: Any, path: str = "") -> list[str]:
    if type_name.startswith("[") and isinstance(data, list):
        return [
            bad
            for i, item in enumerate(data)
            for bad in unknown_msrest(item, type_name[1:-1], models, f"{path}[{i}]")
        ]
    if type_name.startswith("{") and isinstance(data, dict):
        return [
            bad
            for k, item in data.items()
            for bad in unknown_msrest(item, type_name[1:-1], models, f"{path}.{k}")
        ]
    cls = getattr(models, type_name, None)
    if cls is None or not hasattr(cls, "_attribute_map"):
        return []
    if not isinstance(data, dict):
        return [f"{path} (not an object)"]
    tree: dict[str, Any] = {}
    for spec in cls._attribute_map.values():
        node = tree
        parts = _split(spec["key"])
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = spec["type"]
    return _walk_tree(data, tree, models, path)


def _walk_tree(data: dict[str, Any], tree: dict[str, Any], models: Any, path: str) -> list[str]:
    found = []
    for key, value in data.items():
        where = f"{path}.{key}"
        if key not in tree:
            found.append(where.lstrip("."))
        elif isinstance(tree[key], dict):
            found += _walk_tree(value, tree[key], models, where) if isinstance(value, dict) else [where]
        else:
            found += unknown_msrest(value, tree[key], models, where)
    return found


def check(body: dict[str, Any], model: type) -> list[str]:
    """Unknown property paths of body for model; also proves the model deserializes it."""
    if hasattr(model, "_attribute_map"):
        model.deserialize(body)
        return unknown_msrest(
            body, model.__name__, importlib.import_module(model.__module__.rsplit(".", 1)[0])
        )
    model(body)
    return unknown_new(body, model)
