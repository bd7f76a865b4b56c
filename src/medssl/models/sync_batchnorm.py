"""SyncBatchNorm that also runs on CPU (gloo): BatchNorm statistics over the batches of every process.

torch 2.13 has no CPU path: nn.SyncBatchNorm raises "SyncBatchNorm expected input tensor to be on GPU or XPU"
for a CPU tensor in training mode once a process group exists, and DistributedDataParallel refuses a CPU module
holding one ("SyncBatchNorm layers only work with GPU modules"). CPUSyncBatchNorm is therefore a plain
BatchNorm subclass (not an nn.SyncBatchNorm) that computes the statistics with one differentiable all_reduce of
(sum, sum of squares, count) per channel; convert_sync_batchnorm uses it on CPU and torch's layer elsewhere.
Either way the parameters and buffers are those of the BatchNorm replaced, so state-dict keys do not change and
a checkpoint loads into a model with plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
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


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all ranks in training mode (any backend, meant for CPU / gloo); (N, C, *)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: dist.ProcessGroup | None = None, bias: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: Tensor) -> Tensor:
        """Statistics over every rank's batch in training mode under torch.distributed; else plain BatchNorm."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)  # eval mode (running statistics), or no process group
        self._check_input_dim(x)
        group = self.process_group or dist.group.WORLD
        mean, var, count = self._global_stats(x, group)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
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
        return mean, var, float(n.detach())  # a count: no gradient, and no autograd warning

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        """What F.batch_norm does to the buffers: an EMA (or cumulative average) with the unbiased variance."""
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1, 1))
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu",
                           process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Every BatchNorm*d in module replaced by a synchronised one holding the same parameters and buffers.

    device: where the model will run: CPU gets CPUSyncBatchNorm, anything else torch's nn.SyncBatchNorm (its
    fused kernels). As nn.SyncBatchNorm.convert_sync_batchnorm: the module is changed in place (a bare BatchNorm
    is returned replaced); parameters and buffers keep their identity, so an optimiser made before still holds
    them, and requires_grad (False in a momentum copy) is kept.
    """
    if torch.device(device).type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (CPUSyncBatchNorm, nn.SyncBatchNorm)):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, process_group, bias=module.bias is not None)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device, process_group))
    return out
