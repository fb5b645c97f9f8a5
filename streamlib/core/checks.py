"""Argument checks: each raises a ValueError that names the parameter and the values it allows."""

from __future__ import annotations

import torch


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """``value`` must be an integer in ``[minimum, maximum]`` (bools are not integers here)."""
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer {allowed}; got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {allowed}; got {value}")


def check_ints(name: str, values, minimum: int, maximum: int | None = None) -> None:
    """Every item of the list ``values`` must pass :func:`check_int`; the message names the list."""
    for value in values:
        try:
            check_int(name, value, minimum, maximum)
        except ValueError as err:
            raise ValueError(str(err).replace(f"{name} must be an integer", f"{name} must hold integers")) from None


def check_choice(name: str, value, choices: list) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")


def check_choices(name: str, values, choices: list) -> None:
    """``values`` must be a list whose every item is one of ``choices``."""
    if not isinstance(values, list) or any(v not in choices for v in values):
        raise ValueError(f"{name} must be a list of {choices}; got {values!r}")


def check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")


def check_input_ids(input_ids, *, batch_one: bool = False, min_len: int = 1) -> None:
    """``input_ids`` must be a 2-D integer tensor of a usable shape."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of shape (batch, T); got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.long, torch.int32):
        raise ValueError(f"input_ids must have an integer dtype (torch.long); got {input_ids.dtype}")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, T); got shape {tuple(input_ids.shape)}")
    if batch_one and input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, T): one stream; got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] < min_len:
        raise ValueError(f"input_ids must hold at least {min_len} tokens; got {input_ids.shape[1]}")


def check_sampling(max_new_tokens, do_sample: bool, temperature, top_p) -> None:
    check_int("max_new_tokens", max_new_tokens, 1)
    if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be > 0 when sampling; got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1]; got {top_p!r}")
