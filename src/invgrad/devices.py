"""One check, before any work, that the torch device a user names exists on this machine."""

from __future__ import annotations

import torch


def checked_device(name: str | torch.device) -> torch.device:
    """``torch.device(name)``, refused with one clear message where this machine has no such CUDA device (rather
    than torch's driver traceback at the first transfer, after data and model were loaded)."""
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(
                f"device {name}: CUDA is not available on this machine (torch sees {count} CUDA device(s))"
            )
    return device
