"""Symmetries of a system's behaviour: group actions on trajectory windows and canonical frames.

If a system's dynamics commute with a group action ``g`` on its signals (the unicycle: move the
plane, turn it and shift the heading by the same angle), then ``g`` maps behaviour windows to
behaviour windows. A model learned on *canonical* windows ``c(w) = g(w)⁻¹ · w``, with ``g(w)``
read off the window's first sample, then covers every frame the data cover in any one frame:
data collected near the origin serve a figure of eight 8 m away.

A :class:`WindowSymmetry` acts on physical windows ``(..., L, m + p)`` (channels ``(u, y)``,
inputs first) and on group elements ``g`` of shape ``(..., k)``. Every method works on numpy
arrays and on torch tensors alike (solvers differentiate through :meth:`act`), batched over the
leading dimensions. The identity (:class:`Identity`, ``k = 0``) is the symmetry of a system
that declares none.

Systems declare their symmetry as plain data (``Dynamics.symmetry_spec()`` in ``envs``, or a
``"symmetry"`` entry in a dataset's metadata, for a user's own system); :func:`symmetry_for`
turns that declaration into the action on the dataset's window channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ddcontrol.data.normalize import Normalizer
from ddcontrol.errors import ConfigurationError, DimensionError

__all__ = ["WindowSymmetry", "Identity", "PlanarSymmetry", "symmetry_from_spec", "symmetry_for",
           "SYMMETRY_KINDS"]

SYMMETRY_KINDS = ("none", "planar")


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _copy(x: Any) -> Any:
    return x.clone() if _is_torch(x) else np.array(x, dtype=float, copy=True)


class WindowSymmetry:
    """A group action on physical trajectory windows, and the canonical frame it defines.

    Subclasses implement :meth:`frame`, :meth:`act` and :meth:`inverse_act`. ``g`` has shape
    ``(..., group_dim)``; a window ``w`` has shape ``(..., L, C)`` with the same leading dims
    (or none, for one ``g`` applied to a batch).
    """

    group_dim: int = 0
    kind: str = "none"

    @property
    def is_identity(self) -> bool:
        return self.group_dim == 0

    def frame(self, w: Any) -> Any:
        """The group element read off the first sample of windows ``w`` (..., L, C) → (..., k)."""
        raise NotImplementedError

    def frame_of_sample(self, sample: Any) -> Any:
        """The group element of a single sample ``(..., C)`` (the first row of a window)."""
        return self.frame(sample[..., None, :])

    def act(self, g: Any, w: Any) -> Any:
        """``g · w``: move windows (..., L, C) from the canonical frame into frame ``g``."""
        raise NotImplementedError

    def inverse_act(self, g: Any, w: Any) -> Any:
        """``g⁻¹ · w``: move windows (..., L, C) from frame ``g`` into the canonical frame."""
        raise NotImplementedError

    def canonicalize(self, w: Any) -> tuple[Any, Any]:
        """``(g(w)⁻¹ · w, g(w))``: windows in their canonical frame, and the frames."""
        g = self.frame(w)
        return self.inverse_act(g, w), g

    def windows(self, dataset: Any, length: int, stride: int = 1) -> np.ndarray:
        """A dataset's windows (N * S, length, C) in their canonical frames, physical units."""
        return self.canonicalize(dataset.windows(length, stride))[0]

    def fit_normalizer(self, windows: np.ndarray, input_dim: int) -> Normalizer:
        """Per-channel statistics of canonical windows (channels the group mixes share a scale,
        so that the action stays an isometry in normalised units)."""
        return Normalizer.fit(windows, input_dim)

    def gain(self, normalizer: Normalizer) -> float:
        """A bound, over every group element, on the norm of the action's linear part in the
        normalised units of ``normalizer`` (1: an isometry there)."""
        raise NotImplementedError

    def identity_element(self, batch_shape: Sequence[int] = ()) -> np.ndarray:
        return np.zeros((*batch_shape, self.group_dim))

    def to_spec(self) -> dict[str, Any]:
        """A JSON-able description (stored in checkpoints; :func:`symmetry_from_spec` reads it)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_spec()})"


class Identity(WindowSymmetry):
    """No symmetry: every window is its own canonical form (``g`` has no coordinates)."""

    def frame(self, w: Any) -> Any:
        shape = tuple(w.shape[:-2]) + (0,)
        if _is_torch(w):
            import torch

            return torch.zeros(shape, dtype=w.dtype, device=w.device)
        return np.zeros(shape)

    def act(self, g: Any, w: Any) -> Any:
        return w

    def inverse_act(self, g: Any, w: Any) -> Any:
        return w

    def gain(self, normalizer: Normalizer) -> float:
        return 1.0

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "none"}


class PlanarSymmetry(WindowSymmetry):
    """Moves and turns of the plane: SE(2) acting on a position and a heading.

    ``g = (t_x, t_y, φ)`` maps a position ``p`` to ``R(φ) p + t`` and a heading ``θ`` to ``θ + φ``;
    every other channel (inputs, speeds, turn rates) is unchanged. The canonical frame puts the
    window's first position at the origin and, if a heading is measured, its first heading at
    zero. Without a heading channel only translations are used (``φ = 0``): a single sample does
    not show which way the system faces.

    Parameters
    ----------
    x, y : int
        Window channel indices (inputs first) of the position coordinates, metres.
    heading : int, optional
        Window channel index of the heading, radians (unwrapped).
    """

    kind = "planar"
    group_dim = 3

    def __init__(self, x: int, y: int, heading: int | None = None) -> None:
        idx = [x, y] + ([] if heading is None else [heading])
        if len(set(idx)) != len(idx) or any(int(i) < 0 for i in idx):
            raise ConfigurationError(f"planar symmetry channels must be distinct and >= 0, got "
                                     f"x={x}, y={y}, heading={heading}")
        self.x, self.y = int(x), int(y)
        self.heading = None if heading is None else int(heading)

    @property
    def channels(self) -> list[int]:
        return [self.x, self.y] + ([] if self.heading is None else [self.heading])

    def frame(self, w: Any) -> Any:
        first = w[..., 0, :]
        phi = first[..., self.heading] if self.heading is not None else first[..., self.x] * 0
        if _is_torch(w):
            import torch

            return torch.stack([first[..., self.x], first[..., self.y], phi], dim=-1)
        return np.stack([first[..., self.x], first[..., self.y], phi], axis=-1)

    def _apply(self, g: Any, w: Any, inverse: bool) -> Any:
        xp_torch = _is_torch(w)
        if xp_torch:
            import torch

            g = torch.as_tensor(g, dtype=w.dtype, device=w.device)
            cos, sin = torch.cos, torch.sin
        else:
            g = np.asarray(g, dtype=float)
            cos, sin = np.cos, np.sin
        if g.shape[-1] != 3:
            raise DimensionError(f"a planar group element has 3 coordinates, got {tuple(g.shape)}")
        tx, ty, phi = (g[..., i][..., None] for i in range(3))  # broadcast over time
        c, s = cos(phi), sin(phi)
        px, py = w[..., self.x], w[..., self.y]
        out = _copy(w)
        if inverse:
            dx, dy = px - tx, py - ty
            out[..., self.x] = c * dx + s * dy
            out[..., self.y] = -s * dx + c * dy
            if self.heading is not None:
                out[..., self.heading] = w[..., self.heading] - phi
        else:
            out[..., self.x] = c * px - s * py + tx
            out[..., self.y] = s * px + c * py + ty
            if self.heading is not None:
                out[..., self.heading] = w[..., self.heading] + phi
        return out

    def act(self, g: Any, w: Any) -> Any:
        return self._apply(g, w, inverse=False)

    def inverse_act(self, g: Any, w: Any) -> Any:
        return self._apply(g, w, inverse=True)

    def gain(self, normalizer: Normalizer) -> float:
        """‖D⁻¹ R(φ) D‖ ≤ max/min of the x, y scales D (1 when they share one, as
        :meth:`fit_normalizer` makes them); translations and heading shifts are not linear."""
        s = normalizer.std[[self.x, self.y]]
        return float(s.max() / s.min())

    def fit_normalizer(self, windows: np.ndarray, input_dim: int) -> Normalizer:
        norm = Normalizer.fit(windows, input_dim)
        std = norm.std.copy()
        std[[self.x, self.y]] = std[[self.x, self.y]].max()
        return Normalizer(mean=norm.mean, std=std, input_dim=norm.input_dim)

    def to_spec(self) -> dict[str, Any]:
        return {"kind": "planar", "x": self.x, "y": self.y, "heading": self.heading}


def symmetry_from_spec(spec: dict[str, Any] | None) -> WindowSymmetry:
    """The symmetry described by ``to_spec()`` output (channel indices); None → identity."""
    if spec is None or spec.get("kind", "none") == "none":
        return Identity()
    if not isinstance(spec, dict):
        raise ConfigurationError(f"a symmetry spec must be a dict, got {type(spec).__name__}")
    if spec["kind"] == "planar":
        return PlanarSymmetry(int(spec["x"]), int(spec["y"]),
                              None if spec.get("heading") is None else int(spec["heading"]))
    raise ConfigurationError(f"unknown symmetry kind {spec['kind']!r}; known: {SYMMETRY_KINDS}")


def _declared(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The symmetry a dataset's system declares, by output names (metadata, else the env)."""
    if "symmetry" in metadata:
        return metadata["symmetry"]
    env_id = metadata.get("env_id")
    if not env_id:
        return None
    try:
        from envs.registry import make_dynamics

        dyn = make_dynamics(env_id, metadata.get("env_kwargs"))
    except Exception:  # an environment without ddcontrol dynamics declares nothing
        return None
    declare = getattr(dyn, "symmetry_spec", None)
    return declare() if callable(declare) else None


def symmetry_for(metadata: dict[str, Any], input_dim: int, which: str = "auto"
                 ) -> WindowSymmetry:
    """The window symmetry of a dataset's system.

    Parameters
    ----------
    metadata : dict
        Dataset metadata: ``output_names`` and either a ``"symmetry"`` declaration by output
        names (``{"kind": "planar", "x": "px", "y": "py", "heading": "psi"}``, heading optional)
        or an ``env_id`` whose dynamics declare one.
    input_dim : int
        m (window channels are inputs first).
    which : "auto" | "none" | "planar"
        "auto": what the system declares (identity if nothing); "none": identity; "planar":
        require a planar declaration.
    """
    if which not in ("auto",) + SYMMETRY_KINDS:
        raise ConfigurationError(f"symmetry must be 'auto' or one of {SYMMETRY_KINDS}, got "
                                 f"{which!r}")
    if which == "none":
        return Identity()
    decl = _declared(metadata)
    if decl is None or decl.get("kind", "none") == "none":
        if which == "planar":
            raise ConfigurationError("symmetry='planar' but the data's system declares no planar "
                                     "symmetry: add metadata['symmetry'] = {'kind': 'planar', "
                                     "'x': NAME, 'y': NAME, 'heading': NAME or None}")
        return Identity()
    names = list(metadata.get("output_names") or [])

    def channel(name: str | None) -> int | None:
        if name is None:
            return None
        if name not in names:
            raise ConfigurationError(f"symmetry channel {name!r} is not among the outputs {names}")
        return input_dim + names.index(name)

    if decl.get("kind") != "planar":
        raise ConfigurationError(f"unknown symmetry kind {decl.get('kind')!r}")
    if "symmetry" in metadata:  # a user's own declaration names measured channels only
        return PlanarSymmetry(channel(decl.get("x")), channel(decl.get("y")),
                              channel(decl.get("heading")))
    # An environment declares its full symmetry; use what its chosen outputs measure.
    if decl.get("x") not in names or decl.get("y") not in names:
        return Identity()  # position not measured: nothing to move
    heading = decl.get("heading") if decl.get("heading") in names else None
    return PlanarSymmetry(channel(decl["x"]), channel(decl["y"]), channel(heading))
