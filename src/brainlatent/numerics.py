"""Strict float32 arithmetic on GPU: TF32 off for matmuls and cuDNN convolutions.

PPL divides image distances by ε² = 1e-8, so the ~1e-3 relative rounding of TF32 (10-bit mantissa)
swamps the ε-sized image differences: emulated TF32 raised a ``w_full`` PPL from 160 to 2740.
NVlabs' metric code turns both TF32 flags off for this reason. The evaluate stage and both
trainers call :func:`strict_float32` first; the metric JSONs record :func:`numerics_info`.

Example:
    >>> info = strict_float32()
    >>> info["cuda_matmul_allow_tf32"], info["cudnn_allow_tf32"], info["float32_matmul_precision"]
    (False, False, 'highest')
"""

from __future__ import annotations

from typing import Any

import torch


def strict_float32() -> dict[str, Any]:
    """Turn TF32 off (cuBLAS matmuls and cuDNN convolutions) for this process; return the numerics.

    Sets ``torch.backends.cuda.matmul.allow_tf32 = False``, ``torch.backends.cudnn.allow_tf32 =
    False`` and ``torch.set_float32_matmul_precision("highest")``. Harmless on CPU-only machines.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return numerics_info()


def numerics_info(device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The arithmetic a computation runs with: device, dtype, torch/CUDA versions and the TF32 flags.

    Args:
        device: where the computation runs (recorded as text; ``None`` leaves it out).
        dtype: the network's parameter dtype (recorded without the ``torch.`` prefix).
    """
    info: dict[str, Any] = {}
    if device is not None:
        info["device"] = str(device)
        dev = torch.device(device)
        if dev.type == "cuda" and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(dev)
    if dtype is not None:
        info["dtype"] = str(dtype).removeprefix("torch.")
    info.update(
        {
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }
    )
    return info


def module_dtype(module: Any, default: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of a module's first floating-point parameter or buffer (``default`` if it has none)."""
    tensors = []
    if isinstance(module, torch.nn.Module):
        tensors = [*module.parameters(), *module.buffers()]
    return next((t.dtype for t in tensors if t.is_floating_point()), default)
