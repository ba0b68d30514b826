"""The measured past of a plan: one block of physical samples, its normalised form, what it pins.

A plan window is ``L = T_ini + N_h`` rows of ``(u, y)``; its first ``T_ini + 1`` rows are the
*measured block*: the last T_ini inputs and outputs, and the output measured now (``y_k``, whose
input is still to be chosen). Entries not measured (the current input, or outputs not measured
yet during a receding horizon's warm-up) are NaN. Every function here takes one block
(T_ini + 1, C) or a batch of them (K, T_ini + 1, C): a single plan and
:func:`~ddcontrol.tracking.batch.plan_batch` share them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddcontrol._validation import as_finite_array
from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import DimensionError
from ddcontrol.symmetry import WindowSymmetry

__all__ = ["PAST_MISMATCH_WEIGHT", "measured_block", "normalise_block", "pinned",
           "current_measured", "write_measured", "past_mismatch"]

#: Weight of a candidate's squared mismatch with the measured past in the cold-start score
#: (per normalised unit²): a window from another state is a poor start, whatever its cost.
PAST_MISMATCH_WEIGHT = 1e3


def measured_block(t_ini: int, m: int, p: int, past_u: Any, past_y: Any, current_y: Any, *,
                   batch: int | None = None) -> np.ndarray | None:
    """The measured past as a physical block, NaN where not measured.

    Parameters
    ----------
    t_ini, m, p : int
        T_ini, input and output dimensions.
    past_u, past_y : array (T_ini, m), (T_ini, p), or (K, T_ini, ·) with ``batch=K``
        The last T_ini measured samples (physical units); required if T_ini > 0.
    current_y : array (p,) or (K, p), optional
        The output measured now (the first future output).

    Returns
    -------
    ndarray (T_ini + 1, m + p), or (K, T_ini + 1, m + p); None when nothing is measured.
    """
    lead = () if batch is None else (batch,)
    if t_ini == 0 and current_y is None:
        return None
    block = np.full((*lead, t_ini + 1, m + p), np.nan)
    if t_ini:
        want_u, want_y = (*lead, t_ini, m), (*lead, t_ini, p)
        if past_u is None or past_y is None:
            raise DimensionError(f"past_u {want_u} and past_y {want_y} are required with "
                                 f"T_ini = {t_ini}")
        pu = as_finite_array(past_u, "past_u", ndim=len(want_u))
        py = as_finite_array(past_y, "past_y", ndim=len(want_y))
        if pu.shape != want_u or py.shape != want_y:
            raise DimensionError(f"past_u must be {want_u} and past_y {want_y}, got {pu.shape} "
                                 f"and {py.shape}")
        block[..., :t_ini, :m], block[..., :t_ini, m:] = pu, py
    if current_y is not None:
        cy = as_finite_array(current_y, "current_y", ndim=len(lead) + 1)
        if cy.shape != (*lead, p):
            raise DimensionError(f"current_y must be {(*lead, p)}, got {cy.shape}")
        block[..., t_ini, m:] = cy
    return block


def normalise_block(symmetry: WindowSymmetry, normalizer: Normalizer, block: np.ndarray | None,
                    frame: np.ndarray, dtype: torch.dtype, device: Any
                    ) -> tuple[Tensor | None, np.ndarray]:
    """A physical block (or K blocks) into the model's frame and units, and the plan's frame.

    With a symmetry, the first measured sample fixes the frame where it holds every channel the
    frame is read from; otherwise ``frame`` (k,) or (K, k) stays. Unmeasured entries stay NaN.
    """
    if block is None:
        return None, frame
    if not symmetry.is_identity:
        g = np.asarray(symmetry.frame_of_sample(block[..., 0, :]), dtype=float)
        frame = np.where(np.all(np.isfinite(g), axis=-1, keepdims=True), g, frame)
        block = symmetry.inverse_act(frame, block)
    return (torch.as_tensor((block - normalizer.mean) / normalizer.std, dtype=dtype,
                            device=device), frame)


def pinned(measured: Tensor | None, shape: tuple[int, int], dtype: torch.dtype, device: Any
           ) -> tuple[Tensor, Tensor]:
    """The window coordinates a measured block fixes, and their normalised values.

    Returns a bool mask (L, C) and values (L, C), or (K, L, C) for K blocks (zeros outside the
    mask). The blocks of a batch measure the same entries (the mask is the first one's).
    Nothing is pinned without a block.
    """
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    lead = () if measured is None or measured.ndim == 2 else (measured.shape[0],)
    values = torch.zeros((*lead, *shape), dtype=dtype, device=device)
    if measured is not None:
        rows = measured.shape[-2]
        known = ~torch.isnan(measured)
        mask[:rows] = known if measured.ndim == 2 else known[0]
        values[..., :rows, :] = torch.nan_to_num(measured)
    return mask, values


def current_measured(measured: Tensor | None, t_ini: int, m: int) -> bool:
    """Whether a normalised block (T_ini + 1, C), or K of them (the first one's mask, as
    :func:`pinned`), measures every output of row T_ini (the current output)."""
    if measured is None or measured.shape[-2] <= t_ini:
        return False
    row = measured[t_ini, m:] if measured.ndim == 2 else measured[0, t_ini, m:]
    return bool(torch.isfinite(row).all())


def write_measured(x: Tensor, measured: Tensor | None) -> Tensor:
    """``x`` (…, L, C) with the measured entries of its first rows replaced by ``measured``
    (broadcast against ``x[..., :T_ini + 1, :]``); in place, and returned."""
    if measured is not None:
        rows = measured.shape[-2]
        x[..., :rows, :] = torch.where(~torch.isnan(measured), measured, x[..., :rows, :])
    return x


def past_mismatch(x: Tensor, measured: Tensor) -> Tensor:
    """``PAST_MISMATCH_WEIGHT · ‖x_past − measured‖²`` over the measured entries, per window of
    ``x`` (B, L, C) against one normalised block (T_ini + 1, C): shape (B,)."""
    known = ~torch.isnan(measured)
    d = (x[:, : measured.shape[0]] - torch.nan_to_num(measured)) * known
    return PAST_MISMATCH_WEIGHT * (d * d).sum(dim=(-1, -2))
