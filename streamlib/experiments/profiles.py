"""Reading a profile: its YAML grouped by notebook (a user edits one section), a profile that extends another
(``base: offline`` and only what changes), and errors that name the parameter and the nearest known one."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

# Each parameter in the section of the notebook that reads it (the run's own settings first). A profile may also
# give a parameter at the top level; a parameter in another notebook's section is refused, naming the right one.
SECTIONS = {
    "run": ["profile", "run_dir", "model", "tokenizer", "device", "device_map", "dtype", "datasets", "bos", "n_sink",
            "window", "pos_shift", "h2o_heavy_shares", "notebooks", "export_figures", "figures_dir", "dry_run", "force"],
    "baseline": ["ppl_tokens", "flops_tokens", "speed_prompt_tokens", "speed_new_tokens", "speed_batch_sizes",
                 "speed_repeats", "compare_compiled"],
    "sweep": ["sweep_cache_sizes", "sweep_sinks", "sweep_sink_cache", "sweep_recompute", "sweep_scored_cache_sizes",
              "sweep_more_policies", "sweep_tokens", "burst_configs", "burst_tokens", "burst_new_tokens", "quant_bits",
              "quant_budget", "quant_tokens"],
    "long_stream": ["long_stream_corpus", "long_stream_tokens", "long_stream_policies", "trace_tokens", "trace_every",
                    "max_dense_tokens", "recompute_window", "recompute_tokens"],
    "generation": ["generation_prompt", "generation_prompt_tokens", "generation_new_tokens", "generation_temperature",
                   "generation_top_p", "generation_seed", "chat_turns", "chat_new_tokens"],
    "retrieval": ["retrieval_cache", "retrieval_context_tokens", "retrieval_depths", "retrieval_seeds",
                  "retrieval_scored_seeds", "retrieval_new_tokens", "task_policies", "streameval_tokens", "streameval_lines_back",
                  "streameval_every", "streameval_scored_tokens", "recall_turns", "recall_turns_back",
                  "recall_more_policies", "head_split_shares", "head_split_tokens", "head_split_depths",
                  "head_split_seeds", "head_split_scored_seeds", "head_map_method", "harness_seeds"],
}
SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}


class ProfileError(ValueError):
    """A profile that cannot be read; the message names the file and the parameter."""


def nearest(name: str, known) -> str:
    """``"; did you mean 'x'?"`` for the known name nearest ``name``, or nothing."""
    match = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def check_names(values: dict, known, where: str) -> None:
    """Every key of ``values`` must be a known parameter; an unknown one is named beside the nearest known one."""
    for name in values:
        if name not in known:
            raise ProfileError(f"{where}: unknown parameter {name!r}{nearest(name, known)} (sections: "
                               f"{', '.join(SECTIONS)})")


def read_profile(path: Path, known, profiles_dir: Path, seen: tuple = ()) -> dict:
    """The flat parameters of the profile at ``path``: its ``base`` profile's first (from the same folder, else the
    project's ``profiles_dir``), then its own, each section's parameters and the top-level ones alike."""
    if path in seen:
        raise ProfileError(f"profile {str(path)!r}: base profiles form a loop ({' -> '.join(p.stem for p in seen)})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"profile {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {str(path)!r} must be a mapping of parameter: value; got {type(raw).__name__}")
    values = {}
    base = raw.pop("base", None)
    if base is not None:
        found = [folder / f"{base}.yaml" for folder in (path.parent, profiles_dir) if isinstance(base, str)]
        found = [p for p in found if p.is_file()]
        if not found:
            names = sorted({p.stem for folder in (path.parent, profiles_dir) for p in folder.glob("*.yaml")})
            raise ProfileError(f"profile {str(path)!r}: base must be one of {names}; got {base!r}")
        values.update(read_profile(found[0], known, profiles_dir, seen + (path,)))
        values.pop("profile", None)  # a profile is named by its own file
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ProfileError(f"profile {str(path)!r}: section {key!r} must be a mapping of parameter: value")
            check_names(value, known, f"profile {str(path)!r}, section {key!r}")
            for name in value:
                if SECTION_OF.get(name, key) != key:
                    raise ProfileError(f"profile {str(path)!r}: {name} belongs in section {SECTION_OF[name]!r}, "
                                       f"not {key!r}")
            values.update(value)
        else:
            check_names({key: value}, known, f"profile {str(path)!r}")
            values[key] = value
    values.setdefault("profile", path.stem)
    return values
