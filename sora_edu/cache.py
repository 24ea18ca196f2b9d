"""Checkpoints that later notebooks reuse: safetensors weights + a JSON config, keyed by a
hash of the config, written atomically under ``~/.cache/sora_edu`` (``SORA_EDU_CACHE``).

A notebook asks for a model by config; if the cache holds one trained from exactly that
config it is loaded (no pickle anywhere: safetensors holds tensors only), otherwise it is
trained and stored. A file that cannot be read gives a clear error naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .viz import write_atomic


def cache_dir() -> Path:
    return Path(os.environ.get("SORA_EDU_CACHE", Path.home() / ".cache" / "sora_edu"))


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-able config (key order does not matter)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(module: torch.nn.Module, config: dict, path: Path, extra: dict | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    write_atomic(path / "model.safetensors", save(state))
    write_atomic(path / "config.json", json.dumps({"config": config, **(extra or {})}, indent=2, default=str).encode())
    return path


def load_checkpoint(module: torch.nn.Module, path: Path) -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``module``; returns the JSON record."""
    path = Path(path)
    weights, meta = path / "model.safetensors", path / "config.json"
    try:
        state = load_file(str(weights))
        record = json.loads(meta.read_text())
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as e:
        raise ValueError(f"cannot read the checkpoint in {path} ({type(e).__name__}: {e}); delete it to retrain") from e
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"the checkpoint in {path} lacks {len(missing)} weights of this model ({missing[:4]}...): "
                         f"it was trained by other code; delete it to retrain")
    if unexpected:  # weights of a module since dropped as unused (e.g. an unused text projection)
        import warnings

        warnings.warn(f"ignored {len(unexpected)} weights in {path} that this model no longer has: {unexpected[:4]}", stacklevel=2)
    return record
