"""Lazy imports of the heavy optional packages, each failing with the exact install hint."""
from __future__ import annotations

import importlib

from ..errors import MissingDependency

GEN_HINT = ("pip install 'mosaicdb[gen]' (install torch first: pip install torch==2.13.0 for the CPU build, "
            "or the CUDA build for your GPU from pytorch.org)")
RAY_HINT = "pip install 'mosaicdb[ray]'"


def _need(module: str, what: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependency(f"{what} needs {module.split('.')[0]} ({e.name or module} is not installed): {hint}") from None


def torch():
    return _need("torch", "generation", GEN_HINT)


def diffusers():
    torch()  # diffusers imports without torch but cannot run a pipeline
    mod = _need("diffusers", "generation", GEN_HINT)
    _need("transformers", "generation", GEN_HINT)
    _quiet_hf_libraries()
    return mod


def ray():
    _need("ray.data", "--executor ray", RAY_HINT)
    return importlib.import_module("ray")


def _quiet_hf_libraries() -> None:
    """Our own progress bar covers generation; the libraries' per-step and loading bars and
    their info chatter would interleave with it."""
    import diffusers.utils.logging as dlog
    dlog.disable_progress_bar()
    dlog.set_verbosity_error()
    try:
        import transformers.utils.logging as tlog
        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def gen_available() -> bool:
    """True when torch, diffusers and transformers all import (for tests and capability checks)."""
    try:
        for m in ("torch", "diffusers", "transformers"):
            importlib.import_module(m)
    except ImportError:
        return False
    return True
