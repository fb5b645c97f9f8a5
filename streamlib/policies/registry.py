"""The policies known by name: every :class:`~streamlib.policies.base.PolicyBase` subclass that declares a ``name``
registers itself here when its module is imported (``streamlib.policies`` imports every module of its folder, so a
policy in a new file there is known without editing any other file). Everything that turns a string or a record into
a policy asks this module: the command line's ``--policy``, the records read back, the report and the figures."""

from __future__ import annotations

from ..core.format import plain_value

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> None:
    """Know ``cls`` by its ``name``. A class of the same module and name replaces the one registered (a notebook cell
    run again); another class under a name already taken is refused."""
    name = cls.name
    if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
        raise ValueError(f"name: a policy's name is a lower-case identifier (the first part of its spec string); "
                         f"{cls.__qualname__} has {name!r}")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"name: {cls.__module__}.{cls.__qualname__} takes the policy name {name!r} of "
                         f"{old.__module__}.{old.__qualname__}; give it another name")
    _REGISTRY[name] = cls


def registered() -> list[type]:
    """The registered policy classes, in the order tables and legends list their kinds (Dense first)."""
    return sorted(_REGISTRY.values(), key=lambda cls: (cls.order, cls.name))


def policy_class(name: str) -> type:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"policy must be one of {sorted(_REGISTRY)}; got {name!r}") from None


def baseline():
    """The policy every other is compared with (Dense)."""
    return next(cls for cls in registered() if cls.is_baseline)()


def forms() -> list[str]:
    """Every registered policy's command-line form, e.g. ``streamingllm:{n_sink}+{window}[:noshift]``."""
    out = [cls.spec_form() for cls in registered()]
    return out + ["a bounded cache's form then :int8/:int4/:int2 [:rN] [:qsinks]"]


def parse_policy(spec: str):
    """A policy from its spec string, as the command line takes it and records store it: the policy's name, then
    its own parts (``streamingllm:4+252``, ``h2o:128+128``, ``burst:4/256:0.7``; :func:`forms` lists them all)."""
    accepted = ", ".join(forms())
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"policy must be a string of the form {accepted}; got {spec!r}")
    name, *args = spec.strip().lower().split(":")
    if name not in _REGISTRY:
        raise ValueError(f"policy must be one of the forms {accepted}; got {spec!r}")
    try:
        return _REGISTRY[name].parse(args)
    except (ValueError, TypeError) as err:
        raise ValueError(f"policy {spec!r}: {err}. Accepted forms: {accepted}") from None


def from_params(params: dict):
    """A policy from ``policy.params()`` as a record stores it: its ``spec`` string when the record has one, else
    (records written before spec strings) its name and fields."""
    params = {k: plain_value(v) for k, v in params.items()}
    if isinstance(params.get("spec"), str):
        return parse_policy(params["spec"])
    return policy_class(params.get("policy")).from_fields(params)


def policy_from_row(row: dict):
    """The policy a record row (or a row of :func:`streamlib.experiments.records.metrics_wide`) describes."""
    return from_params(row)


def policy_label(row: dict) -> str:
    """The display label of the policy a record row describes."""
    try:
        return policy_from_row(row).label()
    except (ValueError, KeyError, TypeError):
        return str(row.get("policy"))
