"""The residual-MLP denoiser at one fixed σ, with its Jacobian-transpose products written out.

The solvers evaluate v(x) = D(x, σ) and v'(x)ᵀu at one σ for many iterations in a row, at batch
sizes of 1-64, where a network of this size costs almost nothing in arithmetic and nearly all of
its time in per-operation overhead: autograd's graph, ``vmap`` over the cotangents, the noise
embedding recomputed on every call. At a fixed σ everything that depends on σ folds into constants:

    D(x) = c_skip x + c_out [W_o silu(h_L) + b_o + g (c_in W_s x + b_s)]
    h_0 = c_in W_i x + b_i,   h_{k+1} = h_k + W2_k silu(W1_k silu(h_k) + b1_k + E_k e) + b2_k

with e the noise embedding and g = exp(skip_gain(e)) / σ the linear branch's gain (see
:class:`~ddcontrol.score.networks.ResidualMLP`). :class:`FrozenResidualMLP` keeps those constants
and runs the forward pass as a handful of matrix products; :class:`ExplicitLinearization` keeps
its activations and computes v'(x)ᵀu for n cotangents at once by the chain rule written by hand,
so a pinned-coordinate Jacobian of k rows is one batch of matrix products instead of k backward
passes. Same numbers as autograd through :class:`~ddcontrol.score.precond.BehaviorDenoiser` up to
rounding (tested); no parameter gradients (the manifold never needs them).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ddcontrol.errors import DimensionError

__all__ = ["FrozenResidualMLP", "ExplicitLinearization", "VJP_ROWS"]

#: Most rows (cotangents x batch) of one matrix product in :meth:`FrozenResidualMLP.vjp`.
VJP_ROWS = 512


def _silu_and_slope(h: Tensor, ones: Tensor) -> tuple[Tensor, Tensor]:
    """silu(h) = h s(h) and silu'(h) = s(h) (1 + h (1 − s(h))), s the logistic function;
    ``ones`` (1, W) broadcasts to h. Two fused kernels (the slope is silu's backward of a unit
    cotangent) instead of five elementwise operations: at batch 1 the operations' overhead,
    not their arithmetic, is the cost (22 against 10 µs for a 256-wide layer)."""
    return F.silu(h), torch.ops.aten.silu_backward(ones, h)


class FrozenResidualMLP:
    """``BehaviorDenoiser(ResidualMLP)`` evaluated at one noise level σ (a float).

    Built by :meth:`BehaviorDenoiser.frozen`, which caches it per (σ, parameter version); the
    weights are views of the module's parameters (no copy), the σ-dependent biases and gains
    are computed once here.
    """

    def __init__(self, denoiser: Any, sigma: float) -> None:
        net = denoiser.net
        p = next(net.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.sigma = float(sigma)
        self.shape = (denoiser.window_length, denoiser.channels)
        with torch.no_grad():
            s = torch.full((1,), self.sigma, dtype=self.dtype, device=self.device)
            s2, d2 = s * s, denoiser.sigma_data ** 2
            self.c_skip = float(d2 / (s2 + d2))
            self.c_out = float(s * denoiser.sigma_data / (s2 + d2).sqrt())
            self.c_in = float(1.0 / (s2 + d2).sqrt())
            c_noise = s.log() / 4.0
            emb = net.embed(c_noise)
            self.w_in, self.b_in = net.inp.weight.detach(), net.inp.bias.detach()
            # Per block: (W1, b1 + E e + b_E, W2, b2).
            self.blocks = [(b.fc1.weight.detach(), (b.fc1.bias + b.emb(emb)[0]).detach(),
                            b.fc2.weight.detach(), b.fc2.bias.detach()) for b in net.blocks]
            self.w_out, self.b_out = net.out.weight.detach(), net.out.bias.detach()
            self._ones = torch.ones(1, self.w_in.shape[0], dtype=self.dtype, device=self.device)
            self.w_skip = None
            bias = self.b_out
            if net.skip is not None:
                gain = torch.exp(net.skip_gain(emb) - 4.0 * c_noise[:, None])[0, 0]
                # c_out g (c_in W_s x + b_s): the skip's matrix with its scalar, and its bias.
                self.w_skip = net.skip.weight.detach()
                self.skip_scale = float(self.c_out * gain * self.c_in)
                bias = bias + gain * net.skip.bias
            self.bias = (self.c_out * bias).detach()

    def _check(self, x: Tensor) -> None:
        if x.ndim != 3 or tuple(x.shape[1:]) != self.shape:
            raise DimensionError(f"BehaviorDenoiser expects windows of shape (B, {self.shape[0]}, "
                                 f"{self.shape[1]}), got {tuple(x.shape)}")

    def forward(self, x: Tensor, keep: bool = False) -> tuple[Tensor, list[Tensor] | None]:
        """D(x, σ) of windows x (B, L, C) in x's dtype; with ``keep``, also the derivatives
        silu'(·) at every pre-activation, which are all the VJPs need."""
        self._check(x)
        flat = x.reshape(x.shape[0], -1).to(self.dtype)
        h = torch.addmm(self.b_in, flat, self.w_in.t(), alpha=self.c_in)
        if not keep:
            for w1, b1, w2, b2 in self.blocks:
                z = torch.addmm(b1, F.silu(h), w1.t())
                h = h + torch.addmm(b2, F.silu(z), w2.t())
            return self._out(F.silu(h), flat, x), None
        slopes: list[Tensor] = []
        ones = self._ones
        for w1, b1, w2, b2 in self.blocks:
            a, da = _silu_and_slope(h, ones)
            z = torch.addmm(b1, a, w1.t())
            a, dz = _silu_and_slope(z, ones)
            slopes += [da, dz]
            h = h + torch.addmm(b2, a, w2.t())
        a, da = _silu_and_slope(h, ones)
        slopes.append(da)
        return self._out(a, flat, x), slopes

    def _out(self, a: Tensor, flat: Tensor, x: Tensor) -> Tensor:
        """The output layer and the skips, from the last activation ``a`` (B, W)."""
        out = torch.addmm(self.bias, a, self.w_out.t(), alpha=self.c_out)
        out = out + self.c_skip * flat
        if self.w_skip is not None:
            out = torch.addmm(out, flat, self.w_skip.t(), alpha=self.skip_scale)
        return out.reshape(x.shape).to(x.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)[0]

    def vjp(self, slopes: list[Tensor], u: Tensor) -> Tensor:
        """v'(x)ᵀu for cotangents u (..., B, L, C) (any leading axes), same shape as u.

        The n cotangents of a batch of B go through the layers together, at most
        :data:`VJP_ROWS` rows (cotangents x batch) per matrix product: past that the products'
        operands leave the core's cache. For the pinned rows of a batch of unicycle plans (42
        cotangents) an exact conditioned iteration took 90 ms in one product against 75 ms in
        chunks at batch 64, and 381 against 247 ms at batch 256 (one thread; the setting of
        ``benchmarks/bench_iteration.py``). The numbers are the same either way (tested).
        """
        shape = u.shape
        b, d = slopes[-1].shape[0], shape[-1] * shape[-2]
        uf = u.reshape(-1, d).to(self.dtype)
        n = uf.shape[0] // b
        chunk = max(1, VJP_ROWS // b)
        if n <= chunk:
            return self._vjp_rows(slopes, uf, n, b).reshape(shape).to(u.dtype)
        out = torch.empty_like(uf)
        for start in range(0, n, chunk):
            rows = slice(start * b, min(start + chunk, n) * b)
            out[rows] = self._vjp_rows(slopes, uf[rows], min(chunk, n - start), b)
        return out.reshape(shape).to(u.dtype)

    def _vjp_rows(self, slopes: list[Tensor], uf: Tensor, n: int, b: int) -> Tensor:
        """v'(x)ᵀ of n cotangents flattened to rows ``uf`` (n B, d), in the network's dtype:
        one matrix product per layer for all of them."""
        last = (uf.view(n, b, -1) @ self.w_out).mul_(self.c_out * slopes[-1])  # last hidden
        g = self._blocks_back(last, slopes, self._low(self.dtype)[2]).view(n * b, -1)
        gx = torch.addmm(uf, g, self.w_in, beta=self.c_skip, alpha=self.c_in)
        if self.w_skip is not None:
            gx = torch.addmm(gx, uf, self.w_skip, alpha=self.skip_scale)
        return gx

    @staticmethod
    def _blocks_back(g: Tensor, slopes: list[Tensor], blocks: list[tuple[Tensor, Tensor]]
                     ) -> Tensor:
        """Cotangents ``g`` (n, B, W) of the last hidden state carried back through the residual
        blocks to the first one (``g`` is overwritten: callers pass a temporary), all in g's
        dtype; the slopes (B, W) broadcast over the n cotangents. ``blocks``: each block's
        (W1, W2) in that dtype."""
        for k in range(len(blocks) - 1, -1, -1):
            w1, w2 = blocks[k]
            gz = (g @ w2).mul_(slopes[2 * k + 1])
            g.addcmul_(gz @ w1, slopes[2 * k])
        return g

    def rows(self, slopes: list[Tensor], index: Tensor, dtype: torch.dtype | None = None
             ) -> Tensor:
        """The Jacobian's rows e_iᵀ v'(x) at the flattened coordinates ``index`` (k,): (k, B, d).

        The VJPs of the unit cotangents e_i, without their arithmetic on zeros: the output layer
        and the skips are gathers of one row each, so only the hidden layers and the input layer
        are matrix products. ``dtype`` (e.g. ``torch.bfloat16``) is the precision of that
        backward pass (the products accumulated in float32 by the BLAS; their operands and
        results, the slopes and the residual stream rounded to it; the skips and the result in
        the network's dtype); the network's own by default. On CPUs with native bfloat16
        products (AVX512-BF16, AMX) and on CUDA they run 2-4.5x faster than float32 at
        40-2,560 rows (3x at 2,560 on this machine's AMX). The residual stream in bfloat16 too:
        the unicycle's 40 rows of 64 plans take 0.80x the time they took with it in float32
        (19.8 against 24.3 ms, interleaved; the casts and float32 elementwise passes around
        every bfloat16 product), their RMS error 1.3e-3 of the rows' RMS against 8.6e-4 (the
        trained model, windows near its data; the mass-spring-damper's 2.2e-3 against 1.7e-3):
        within the 2⁻⁸ (3.9e-3) of bfloat16's rounding of each row, enough for a chord
        method's Jacobian (see
        :class:`~ddcontrol.solvers.conditioned.ConditionedDRGD`'s ``row_dtype``).
        """
        b, d = slopes[-1].shape[0], self.w_out.shape[0]
        k = index.numel()
        w_out, w_in, blocks = self._low(self.dtype if dtype is None else dtype)
        low = w_in.dtype
        out = torch.empty(k, b, d, dtype=self.dtype, device=self.device)
        chunk = max(1, VJP_ROWS // b)
        last = (self.c_out * slopes[-1]).to(low)
        block_slopes = [s.to(low) for s in slopes[:-1]]  # no-ops in the network's dtype
        for start in range(0, k, chunk):
            idx = index[start:start + chunk]
            n = idx.numel()
            g = w_out[idx].unsqueeze(1) * last  # (n, B, W)
            g = self._blocks_back(g, block_slopes, blocks)
            gx = (g @ w_in).to(self.dtype).mul_(self.c_in)
            if self.w_skip is not None:
                gx += self.skip_scale * self.w_skip[idx].unsqueeze(1)
            gx[torch.arange(n, device=gx.device), :, idx] += self.c_skip
            out[start:start + n] = gx
        return out

    def _low(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """The output layer's, the input layer's and the blocks' matrices in ``dtype`` (copies
        made once; views of the weights in the network's own dtype)."""
        cache = self.__dict__.setdefault("_low_cache", {})
        if dtype not in cache:
            cache[dtype] = (self.w_out.to(dtype), self.w_in.to(dtype),
                            [(w1.to(dtype), w2.to(dtype)) for w1, _, w2, _ in self.blocks])
        return cache[dtype]


class ExplicitLinearization:
    """The :class:`~ddcontrol.manifold.Linearization` interface for a frozen residual MLP:
    ``point`` is v(x), :meth:`vjp` / :meth:`vjps` are v'(x)ᵀu by the hand-written chain rule
    (any number of times: nothing is freed)."""

    __slots__ = ("x", "output", "_frozen", "_slopes")

    def __init__(self, frozen: FrozenResidualMLP, x: Tensor) -> None:
        self.x = x.detach()
        self._frozen = frozen
        self.output, self._slopes = frozen.forward(self.x, keep=True)

    @property
    def point(self) -> Tensor:
        """v(x), shape (B, *event_shape)."""
        return self.output

    def vjp(self, u: Tensor, retain_graph: bool = False) -> Tensor:
        """v'(x)ᵀu, shape of x."""
        if u.shape != self.output.shape:
            raise DimensionError(f"cotangent must have shape {tuple(self.output.shape)}, "
                                 f"got {tuple(u.shape)}")
        return self._frozen.vjp(self._slopes, u)

    def vjps(self, u: Tensor, *, vectorize: bool = True, retain_graph: bool = False) -> Tensor:
        """v'(x)ᵀu_j for cotangents u (n, *x.shape), shape (n, *x.shape)."""
        if u.ndim != self.output.ndim + 1 or u.shape[1:] != self.output.shape:
            raise DimensionError(f"cotangents must have shape (n, *{tuple(self.output.shape)}), "
                                 f"got {tuple(u.shape)}")
        return self._frozen.vjp(self._slopes, u)

    def rows(self, index: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The Jacobian's rows e_iᵀ v'(x) at the flattened coordinates ``index`` (k,), shape
        (k, *x.shape); ``dtype``: the precision of the products (see
        :meth:`FrozenResidualMLP.rows`)."""
        out = self._frozen.rows(self._slopes, index, dtype)
        return out.reshape(index.numel(), *self.x.shape).to(self.x.dtype)
