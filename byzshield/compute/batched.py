"""Per-file gradients of many runs at once: the compute of the lockstep engine.

N runs of one network (different parameters, seeds and data), f files of s samples
each::

    grads, losses = BatchedGradients(model)(params, x, y)
    # params (N, d); x (N, f, s, *sample_shape); y (N, f, s) int64
    # grads (N, f, d): grads[n, j] is the gradient of the mean cross-entropy over file j
    # of run n, in the order of byzshield.compute.params.flat_params; losses (N, f) float32

This is the gradient :func:`byzshield.compute.gradients.file_gradients` computes one file at a
time, but not its bits: the sums run in another order (measured: within 1e-7 of it for
cnn1d). What it does guarantee, and ``tests/test_batched.py`` checks: a run's rows do not
depend on which other runs share the call or where it sits among them, so a lockstep run
gives the same bits alone or in any group; and a file's row does not depend on which
other files of its run share the call, so a worker may compute all its files in one pass
and honest replicas stay bit-identical. A call with fewer than :data:`MIN_ROWS` samples
per run is padded with copies of its files for that (small passes round otherwise).

Three implementations, chosen by network:

- ``cnn1d`` (the MNIST-1D network of the sweeps) has a dedicated kernel: one dense
  forward and backward per run written as batched matrix products (im2col), and each
  file's weight gradient as one batched product over the (run, file) pairs. No graph, no
  per-file dispatch: about 10x the per-file passes on 2 cores (``benchmarks/lockstep.py``).
- a network whose parameters all sit in convolutions and linear layers (``lenet``): one
  dense forward and one backward pass per run for the gradients at each layer's output,
  then each file's weight gradient as a batched product over the files;
- every other network goes through ``torch.func``: for each run, ``vmap`` over its files
  of ``grad`` of :func:`torch.func.functional_call` (a vmap over runs too would tie a
  run's bits to its neighbours'; a single file is computed as a batch of two copies of
  it, because a vmap over one file rounds otherwise than over several). BatchNorm layers use each
  file's own batch statistics (exactly what a worker's per-file pass does); their
  running statistics are not tracked (the server recomputes them before evaluating).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byzshield.compute.networks import CNN1d
from byzshield.compute.params import load_flat

__all__ = ["BatchedGradients"]

MIN_ROWS = 32
"""Samples per run below which a call is padded with copies of its files (and the copies'
rows dropped): with fewer than 16 samples in a pass, the dense and vmap kernels round a
file otherwise than in a larger pass on an AVX-512 Xeon (measured: LeNet alone on one
file of 6, 8, 12 or 15 samples, VGG-11 on 1-3 files of 4), which would make a worker
holding one small file disagree with its replicas; 32 leaves a margin for other CPUs
(``tests/test_batched.py`` checks the property on the machine it runs on)."""


class BatchedGradients:
    """(params (N, d), x (N, f, s, ...), y (N, f, s)) -> (N, f, d) file gradients and
    (N, f) losses, for networks shaped like ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.shapes = [(name, p.shape) for name, p in model.named_parameters()]
        self.d = sum(p.numel() for p in model.parameters())
        if isinstance(model, CNN1d) and _cnn1d_supported(model):
            self.kernel = "cnn1d"
            self._impl = _Cnn1dKernel(model)
        elif _dense_supported(model):
            self.kernel = "dense"
            self._impl = _DenseKernel(model)
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
        n, f, spf = y.shape
        if f * spf >= MIN_ROWS:
            return self._impl(params, x, y)
        reps = -(-MIN_ROWS // (f * spf))  # a small pass rounds otherwise: pad with copies
        out, losses = self._impl(
            params, x.repeat(1, reps, *[1] * (x.dim() - 2)), y.repeat(1, reps, 1)
        )
        return out[:, :f].contiguous(), losses[:, :f].contiguous()


# --------------------------------------------------------------------------------------
# Networks whose parameters all sit in convolutions and linear layers: one dense pass


_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def _dense_supported(model: nn.Module) -> bool:
    """Every parameter belongs to a Conv1d/Conv2d/Linear with a bias, no BatchNorm (its
    statistics would mix files), and the layers are not shared."""
    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    owned = {id(p) for m in layers for p in m.parameters(recurse=False)}
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    if any(m.bias is None for m in layers) or len(owned) != len(list(model.parameters())):
        return False
    convs = [m for m in layers if not isinstance(m, nn.Linear)]
    return all(c.groups == 1 and c.padding_mode == "zeros" for c in convs)


class _DenseKernel:
    """One forward pass over all of a run's files, one backward pass for the gradient at
    each layer's output (``autograd.grad`` with respect to the outputs: no weight
    gradient is formed), then each file's weight gradient as a batched product over the
    files of the layer's input (im2col for convolutions) and its output gradient. Every
    per-sample operation is the dense network's, so a file's rows do not depend on the
    other files of the pass (``tests/test_batched.py``)."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model)  # loaded with each run's parameters in turn
        for p in self.model.parameters():  # the graph runs from the input, so that the
            p.requires_grad_(False)  # backward forms output gradients, no weight gradient
        self.layers = [m for m in self.model.modules() if isinstance(m, _LAYERS)]
        sizes = [p.numel() for p in self.model.parameters()]
        start = {id(p): sum(sizes[:k]) for k, p in enumerate(self.model.parameters())}
        self.offsets = [(start[id(m.weight)], start[id(m.bias)]) for m in self.layers]

    def __call__(self, params: Tensor, x: Tensor, y: Tensor):
        n, f, s = y.shape
        out = torch.empty(n, f, params.shape[1], dtype=params.dtype)
        losses = torch.empty(n, f, dtype=params.dtype)
        saved: dict = {}

        def keep(module, inputs, output):
            saved[module] = (inputs[0], output)

        self.model.train()
        for run in range(n):
            load_flat(self.model, params[run])
            hooks = [m.register_forward_hook(keep) for m in self.layers]
            try:
                with torch.enable_grad():
                    inputs = x[run].reshape(f * s, *x.shape[3:]).requires_grad_(True)
                    logits = self.model(inputs)
                    per_file = F.cross_entropy(logits, y[run].reshape(-1), reduction="none")
                    per_file = per_file.view(f, s).mean(dim=1)
                    grads = torch.autograd.grad(per_file.sum(), [saved[m][1] for m in self.layers])
            finally:
                for h in hooks:
                    h.remove()
            losses[run] = per_file.detach()
            for m, grad_out, (w_at, b_at) in zip(self.layers, grads, self.offsets, strict=True):
                inp = saved[m][0].detach()
                self._weight_grads(m, inp, grad_out, f, s, out[run], w_at, b_at)
            saved.clear()
        return out, losses

    @staticmethod
    def _weight_grads(m, inp: Tensor, grad_out: Tensor, f: int, s: int, dst, w_at, b_at):
        """dst[:, weight] and dst[:, bias] for each of the f files (s samples each)."""
        nw, nb = m.weight.numel(), m.bias.numel()
        if isinstance(m, nn.Linear):
            g = grad_out.reshape(f, s, -1)
            cols = inp.reshape(f, s, -1).contiguous()
        else:
            if isinstance(m, nn.Conv1d):
                cols = F.unfold(
                    inp[:, :, None, :],
                    (1, m.kernel_size[0]),
                    dilation=(1, m.dilation[0]),
                    padding=(0, m.padding[0]),
                    stride=(1, m.stride[0]),
                )
            else:
                cols = F.unfold(
                    inp, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride
                )  # (B, C * k * k, L)
            length = cols.shape[2]
            cols = cols.transpose(1, 2).reshape(f, s * length, -1).contiguous()
            g = grad_out.reshape(f * s, m.out_channels, length).transpose(1, 2)
            g = g.reshape(f, s * length, m.out_channels)
        width = cols.shape[2]
        if width < _NARROW:  # pad: a narrow product's bits depend on its batch position
            wide = torch.zeros(f, cols.shape[1], _NARROW, dtype=cols.dtype)
            wide[:, :, :width] = cols
            cols = wide
        product = torch.bmm(g.transpose(1, 2).contiguous(), cols)[:, :, :width]
        dst[:, w_at : w_at + nw] = product.reshape(f, nw)
        dst[:, b_at : b_at + nb] = g.sum(dim=1)


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
            xs, ys = x[run], y[run]
            if f == 1:  # a vmap over one file rounds otherwise than over several: pad
                xs, ys = xs.expand(2, *xs.shape[1:]), ys.expand(2, *ys.shape[1:])
            grads, file_losses = self.fn(views, xs, ys)
            losses[run] = file_losses[:f]
            grads = {k: v[:f] for k, v in grads.items()}
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
