"""One check, before any work, that the torch device a user names exists on this machine."""

from __future__ import annotations

import torch

SUPPORTED = "cpu, cuda, cuda:N"


def checked_device(name: str | torch.device, present: bool = True) -> torch.device:
    """``torch.device(name)``, refused with one clear message where the name is not a device the project runs on
    (``foo``, ``mps``, ``meta``) or this machine has no such CUDA device (rather than torch's traceback at the
    first transfer, after data and model were loaded). ``present=False`` checks the name only (planning on a
    machine other than the one that runs the work)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a torch device; use one of {SUPPORTED}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use one of {SUPPORTED}")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"device {name!r}: there is one CPU device; use one of {SUPPORTED}")
    if device.type == "cuda" and present:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(
                f"device {name}: CUDA is not available on this machine (torch sees {count} CUDA device(s))"
            )
    return device
