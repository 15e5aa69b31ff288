"""Per-file gradients of many runs at once: the compute of the lockstep engine.

N runs of one network (different parameters, seeds and data), f files of s samples
each::

    grads, losses = BatchedGradients(model)(params, x, y)
    # params (N, d); x (N, f, s, *sample_shape); y (N, f, s) int64
    # grads (N, f, d): grads[n, j] is the gradient of the mean cross-entropy over file j
    # of run n, in the order of byzshield.gradients.flat_params; losses (N, f) float32

This is the gradient :func:`byzshield.gradients.file_gradients` computes one file at a
time, but not its bits: the sums run in another order (measured: within 1e-7 of it for
cnn1d). What it does guarantee, and ``tests/test_batched.py`` checks: a run's rows do not
depend on which other runs share the call or where it sits among them, so a lockstep run
gives the same bits alone or in any group.

Two implementations, chosen by network:

- ``cnn1d`` (the MNIST-1D network of the sweeps) has a dedicated kernel: one dense
  forward and backward per run written as batched matrix products (im2col), and each
  file's weight gradient as one batched product over the (run, file) pairs. No graph, no
  per-file dispatch: about 10x the per-file passes on 2 cores (``benchmarks/lockstep.py``).
- every other network goes through ``torch.func``: for each run, ``vmap`` over its files
  of ``grad`` of :func:`torch.func.functional_call` (a vmap over runs too would tie a
  run's bits to its neighbours'). BatchNorm layers use each
  file's own batch statistics (exactly what a worker's per-file pass does); their
  running statistics are not tracked (the server recomputes them before evaluating).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byzshield.networks import CNN1d

__all__ = ["BatchedGradients"]


class BatchedGradients:
    """(params (N, d), x (N, f, s, ...), y (N, f, s)) -> (N, f, d) file gradients and
    (N, f) losses, for networks shaped like ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.shapes = [(name, p.shape) for name, p in model.named_parameters()]
        self.d = sum(p.numel() for p in model.parameters())
        if isinstance(model, CNN1d) and _cnn1d_supported(model):
            self.kernel = "cnn1d"
            self._impl = _Cnn1dKernel(model)
        else:
            self.kernel = "vmap"
            self._impl = _VmapKernel(model, self.shapes)

    def __call__(self, params: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if params.dim() != 2 or params.shape[1] != self.d:
            raise ValueError(f"params must be (N, {self.d}), got {tuple(params.shape)}")
        if y.dim() != 3 or x.shape[:3] != y.shape or x.shape[0] != params.shape[0]:
            raise ValueError(
                f"x must be (N, f, s, ...) and y (N, f, s) with N = {params.shape[0]}, got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        return self._impl(params, x, y)


# --------------------------------------------------------------------------------------
# The generic path: torch.func


class _VmapKernel:
    def __init__(self, model: nn.Module, shapes):
        template = copy.deepcopy(model)
        for m in template.modules():  # per-file batch statistics, nothing tracked
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean = None
                m.running_var = None
                m.num_batches_tracked = None
                m.track_running_stats = False
        template.train()
        self.template, self.shapes = template, shapes
        from torch.func import functional_call, grad_and_value, vmap

        def loss(params, xb, yb):
            return F.cross_entropy(functional_call(template, params, (xb,)), yb)

        # one run per call: a vmap over runs would make a run's bits depend on the others
        self.fn = vmap(grad_and_value(loss), in_dims=(None, 0, 0))

    def __call__(self, params: Tensor, x: Tensor, y: Tensor):
        n, f = y.shape[:2]
        out = torch.empty(n, f, params.shape[1], dtype=params.dtype)
        losses = torch.empty(n, f, dtype=params.dtype)
        for run in range(n):
            views, offset = {}, 0
            for name, shape in self.shapes:
                size = shape.numel()
                views[name] = params[run, offset : offset + size].view(shape)
                offset += size
            grads, losses[run] = self.fn(views, x[run], y[run])
            offset = 0
            for name, shape in self.shapes:
                size = shape.numel()
                out[run, :, offset : offset + size] = grads[name].reshape(f, size)
                offset += size
        return out, losses


# --------------------------------------------------------------------------------------
# cnn1d: conv1d -> ReLU (x3) -> flatten -> linear, as batched matrix products


_NARROW = 16
"""A per-file weight gradient with fewer columns (C * k) than this is computed on columns
padded with zeros to this width: a batched product with 5 output columns rounds
differently by its place in the batch (measured on this machine's BLAS; 16 and 75 columns
do not)."""


def _cnn1d_supported(model: CNN1d) -> bool:
    convs = (model.conv1, model.conv2, model.conv3)
    return all(
        c.dilation == (1,) and c.groups == 1 and c.bias is not None and c.padding_mode == "zeros"
        for c in convs
    )


class _Cnn1dKernel:
    """Activations are kept channels-last, (N, B, L, C), so that each convolution is one
    batched product of the im2col matrix (N, B * L', C * k) with the run's weights and
    each file's weight gradient one batched product over the N * f (run, file) pairs of
    (O, s * L') by (s * L', C * k). Every operand of a batched product is contiguous: with
    a transposed one the product's bits depend on the batch it sits in (measured)."""

    def __init__(self, model: CNN1d):
        self.convs = [
            (c.kernel_size[0], c.stride[0], c.padding[0], c.out_channels, c.in_channels)
            for c in (model.conv1, model.conv2, model.conv3)
        ]
        self.classes = model.linear.out_features

    @torch.no_grad()
    def __call__(self, params: Tensor, x: Tensor, y: Tensor):
        n, f, s = y.shape
        b = f * s
        out = torch.empty(n, f, params.shape[1], dtype=params.dtype)
        offsets, offset = [], 0
        views = []
        for k, _, _, o, c in self.convs:
            w = params[:, offset : offset + o * c * k].reshape(n, o, c * k).contiguous()
            bias = params[:, offset + o * c * k : offset + o * c * k + o][:, None, :]
            views.append((w, w.transpose(1, 2).contiguous(), bias))
            offsets.append(offset)
            offset += o * c * k + o
        h = x.reshape(n, b, *x.shape[3:]).transpose(2, 3)  # (N, B, L, C)
        saved = []
        for (k, stride, pad, o, c), (_, w_t, bias) in zip(self.convs, views, strict=True):
            length = h.shape[2]
            cols = F.pad(h, (0, 0, pad, pad)).unfold(2, k, stride)  # (N, B, L', C, k)
            lp = cols.shape[2]
            cols = cols.reshape(n, b * lp, c * k)
            z = torch.baddbmm(bias, cols, w_t).view(n, b, lp, o)
            saved.append((cols, z, length, lp))
            h = z.clamp_min(0)
        classes, lin_off = self.classes, offset
        l3, c3 = h.shape[2], h.shape[3]
        feats = h.reshape(n, b, l3 * c3)
        # the linear layer reads flatten((C, L)); the activations are (L, C): permute W
        wl = params[:, lin_off : lin_off + classes * c3 * l3].reshape(n, classes, c3, l3)
        wl = wl.transpose(2, 3).reshape(n, classes, l3 * c3).contiguous()
        bl = params[:, lin_off + classes * c3 * l3 : lin_off + classes * c3 * l3 + classes]
        logits = torch.baddbmm(bl[:, None, :], feats, wl.transpose(1, 2).contiguous())
        logp = torch.log_softmax(logits, dim=2)
        target = y.reshape(n, b, 1)
        losses = -logp.gather(2, target).view(n, f, s).mean(2)
        # d(mean over the file of cross-entropy) / d logits = (softmax - onehot) / s; the
        # softmax row by row: a flat exp would round a run's entries differently by where
        # they fall in the vector loop, so a run's bits would depend on its neighbours
        g = torch.softmax(logits, dim=2)
        g.scatter_add_(2, target, torch.full(target.shape, -1.0, dtype=g.dtype))
        g.mul_(1.0 / s)
        pairs = g.view(n * f, s, classes)
        dwl = torch.bmm(pairs.transpose(1, 2).contiguous(), feats.view(n * f, s, l3 * c3))
        dst = out[:, :, lin_off : lin_off + classes * c3 * l3].view(n, f, classes, c3, l3)
        dst.copy_(dwl.view(n, f, classes, l3, c3).transpose(3, 4))
        end = lin_off + classes * c3 * l3
        torch.sum(pairs, 1, out=out[:, :, end : end + classes].view(n * f, classes))
        grad_h = torch.bmm(g, wl).view(n, b, l3, c3)
        for i in range(len(self.convs) - 1, -1, -1):
            k, stride, pad, o, c = self.convs[i]
            w, _, _ = views[i]
            cols, z, length, lp = saved[i]
            grad_z = torch.ops.aten.threshold_backward(grad_h, z, 0.0).contiguous()  # ReLU
            per_file = grad_z.view(n * f, s * lp, o)
            start = offsets[i]
            dst = out[:, :, start : start + o * c * k].view(n * f, o, c * k)
            pair_cols = cols.view(n * f, s * lp, c * k)
            if c * k < _NARROW:  # pad: a narrow product's bits depend on its batch position
                wide = torch.zeros(n * f, s * lp, _NARROW, dtype=cols.dtype)
                wide[:, :, : c * k] = pair_cols
                pair_cols = wide
            product = torch.bmm(per_file.transpose(1, 2).contiguous(), pair_cols)
            dst.copy_(product[:, :, : c * k])
            torch.sum(
                per_file, 1, out=out[:, :, start + o * c * k : start + o * c * k + o].view(n * f, o)
            )
            if i == 0:
                break
            grad_cols = torch.bmm(grad_z.view(n, b * lp, o), w).view(n, b, lp, c, k)
            padded = torch.zeros(n, b, length + 2 * pad, c, dtype=grad_z.dtype)
            for t in range(k):  # col2im: each tap adds back where it was read
                padded[:, :, t : t + stride * (lp - 1) + 1 : stride, :] += grad_cols[..., t]
            grad_h = padded[:, :, pad : pad + length, :]
        return out, losses
