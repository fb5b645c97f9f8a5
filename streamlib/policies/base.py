"""What every cache policy shares: a name, flat parameters for records, a budget, and the model check."""

from __future__ import annotations

from dataclasses import asdict

from ..arch import family_of


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
