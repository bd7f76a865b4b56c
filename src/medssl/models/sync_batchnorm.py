"""SyncBatchNorm that also runs on CPU (gloo): BatchNorm statistics over the batches of every process.

torch's nn.SyncBatchNorm (2.13) raises "SyncBatchNorm expected input tensor to be on GPU or XPU" for a CPU tensor
in training mode once a process group exists. SyncBatchNorm here subclasses it, keeps its fused kernels on GPU
and, on CPU, computes the statistics with one differentiable all_reduce of (sum, sum of squares, count) per
channel. Its parameters and buffers are those of the BatchNorm it replaces, so state-dict keys do not change and
a checkpoint loads into a model with plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: every rank's loss depends on the sum, so the backward sums over ranks too.

    (torch.distributed.nn.functional.all_reduce does the same in torch 2.13, but is deprecated there.)
    """

    @staticmethod
    def forward(ctx, x: Tensor, group: dist.ProcessGroup) -> Tensor:
        ctx.group = group
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """nn.SyncBatchNorm whose training-mode forward also synchronises CPU tensors (gloo); (N, C, *) -> same."""

    def forward(self, x: Tensor) -> Tensor:
        """Statistics over every rank's batch in training mode on CPU; otherwise torch's SyncBatchNorm."""
        if not (self.training and x.device.type == "cpu" and dist.is_available() and dist.is_initialized()):
            return super().forward(x)  # eval mode, one process without a group, or a GPU (torch's kernels)
        self._check_input_dim(x)
        self._check_non_zero_input_channels(x)
        group = self.process_group or dist.group.WORLD
        mean, var, count = self._global_stats(x, group)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)

    def _global_stats(self, x: Tensor, group: dist.ProcessGroup) -> tuple[Tensor, Tensor, float]:
        """Per-channel mean and biased variance (C,) over all ranks' rows and positions; the global count."""
        dims = [0, *range(2, x.ndim)]
        xs = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 sums of squares would lose the variance
        count = xs.new_full((1,), x.numel() // x.shape[1])
        local = torch.cat([xs.sum(dims), (xs * xs).sum(dims), count])       # (2C + 1,)
        total = _AllReduceSum.apply(local, group)
        c, n = x.shape[1], total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        return mean, var, float(n)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        """What F.batch_norm does to the buffers: an EMA (or cumulative average) with the unbiased variance."""
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))


def convert_sync_batchnorm(module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Every BatchNorm*d in module replaced by a SyncBatchNorm holding the same parameters and buffers.

    As nn.SyncBatchNorm.convert_sync_batchnorm: the module is changed in place (a bare BatchNorm is returned
    replaced); parameters keep their identity, so an optimiser made before still holds them, and requires_grad
    (False in a momentum copy) is kept.
    """
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group, bias=module.bias is not None)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out
