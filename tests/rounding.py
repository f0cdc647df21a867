"""What "equal up to float rounding" means for signed-gradient attacks run in groups of another shape."""

import torch

# The same divergence in the losses: 0.5 % relative after 8 signed-Adam iterations on that CPU. A wrong recombination
# of groups (experiments swapped, a restart lost) moves a loss by far more (here 0.13 against 0.24).
LOSS_RTOL = 1e-2


def rounding_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4, share: float = 0.98) -> bool:
    """Another group shape takes other kernels, which round differently. Under signed steps a gradient component
    near zero may then take the other sign, and its pixel moves by one step (lr) where the other run's does not:
    a few pixels differ by steps while the rest agree within ``atol``. How large that share is depends on the CPU's
    kernels (on an AVX-512 Xeon, 8 iterations left 0.7 % of the pixels apart), hence a bound on the share that
    differs, not on the largest difference."""
    return bool(((a - b).abs() <= atol).float().mean() >= share)
