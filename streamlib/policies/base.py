"""What every cache policy shares: parameter checks and the model check."""

from __future__ import annotations

from dataclasses import asdict


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
    """The streaming caches are written for GPT-NeoX (Pythia); anything else is refused clearly."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type != "gpt_neox":
        raise ValueError(
            f"model: policy {policy_name} supports GPT-NeoX (Pythia) models only, model_type 'gpt_neox'; "
            f"got {model_type!r}"
        )


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
