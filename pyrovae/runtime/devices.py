"""Which device a command runs on: resolved once, from a config's or a flag's ``device``."""

from __future__ import annotations

import os

import torch

from pyrovae.errors import ConfigError
from pyrovae.runtime import distributed


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; under torchrun with CUDA, ``auto`` and ``cuda``
    are the GPU of the process's local rank; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if distributed.active() and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
