"""What every cache policy shares: parameter checks and the model check."""

from __future__ import annotations

from dataclasses import asdict

from ..arch import family_of


def check_int(name: str, value, minimum: int) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer >= ``minimum`` (bools are not integers)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def check_model(model, policy_name: str) -> None:
    """The caches are written for the families of :mod:`streamlib.arch`; anything else is refused clearly."""
    family_of(model, f"policy {policy_name}")


class PolicyBase:
    """Mixin for the policy dataclasses: a stable name and a flat parameter dict for result records."""

    name: str = "policy"

    def params(self) -> dict:
        return {"policy": self.name, **asdict(self)}

    @property
    def budget(self) -> int | None:
        """Tokens kept between steps, or None when unbounded."""
        return None

    def label(self) -> str:
        return self.name
