"""What a notebook opens with: its configuration and run directory in one call, then the model and tokenizer."""

from __future__ import annotations

from .experiments.config import Config
from .experiments.records import Run


def open_run(profile: str = "smoke", **parameters) -> tuple[Config, Run]:
    """The notebook's :class:`~streamlib.experiments.config.Config` (the profile, then the notebook's parameters; ``None`` keeps
    the profile's value) and its :class:`~streamlib.experiments.records.Run`; sets the figure style and says what runs where."""
    from .report.style import apply_style

    cfg = Config.load(profile, **parameters)
    run = Run(cfg)
    apply_style()
    print(f"profile {cfg.profile}{' (DRY RUN)' if cfg.dry_run else ''}: {cfg.model} on {cfg.torch_device()}, "
          f"{str(cfg.torch_dtype()).replace('torch.', '')}; records in {run.path}")
    return cfg, run


def model_and_tokenizer(cfg: Config, **load_options):
    """The profile's model on its device and dtype (``load_options`` go to :func:`streamlib.loading.models.load_model`, e.g.
    ``attn_implementation="eager"``) and its tokenizer. ``cfg.bos`` is settled here: ``None`` (as the tokenizer does)
    becomes whether this tokenizer starts a stream with BOS, so the streams and every record say which it was."""
    from .loading.data import stream_bos
    from .loading.models import load_model, load_tokenizer

    model = load_model(cfg.model, device=cfg.torch_device(), dtype=cfg.torch_dtype(), device_map=cfg.layer_map(),
                       **load_options)
    tokenizer = load_tokenizer(cfg.tokenizer_name())
    cfg.bos = stream_bos(tokenizer, cfg.bos) if tokenizer is not None else False
    return model, tokenizer
