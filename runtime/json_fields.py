"""Rewriting JSON by key, at any depth (inside `oneOf` branches, nested objects, lists): the named properties of a
schema, what the per-request schema rules (copied fields, derived numbers, clock times) are made of, and the
named values of an answer, which those rules turn back. Standard library only."""

from __future__ import annotations

from typing import Any, Callable, Collection


def with_named_properties(node: Any, names: Collection[str], change: Callable[[str, Any], Any]) -> Any:
    """Schema `node` with every property whose name is in `names` replaced by `change(name, property)`; the rest
    copied as it is."""
    if isinstance(node, list):
        return [with_named_properties(item, names, change) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: (change(name, prop) if name in names else with_named_properties(prop, names, change))
                        for name, prop in value.items()}
        else:
            out[key] = with_named_properties(value, names, change)
    return out


def offered_per_request(schema: dict[str, Any] | None, names: Collection[str], options: Callable[[], list],
                        change: Callable[[str, Any, list], Any]) -> dict[str, Any] | None:
    """`schema` with every property named in `names` replaced by `change(name, property, found)`, where `found`
    is what `options()` finds in the request (spans, numbers, times); the schema itself when it has no such
    property to change or the request offers nothing."""
    if schema is None or not names:
        return schema
    found = options()
    if not found:
        return schema
    return with_named_properties(schema, set(names), lambda name, prop: change(name, prop, found))


def with_named_values(value: Any, names: Collection[str], change: Callable[[str, Any], Any]) -> Any:
    """JSON `value` with every member whose key is in `names` replaced by `change(key, member)` (members holding
    an object or a list are looked into instead); the rest copied as it is."""
    if isinstance(value, list):
        return [with_named_values(item, names, change) for item in value]
    if not isinstance(value, dict):
        return value
    return {key: (change(key, item) if key in names and not isinstance(item, (dict, list))
                  else with_named_values(item, names, change)) for key, item in value.items()}
