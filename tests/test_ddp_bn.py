"""BatchNorm under DDP on two CPU processes (gloo): SyncBatchNorm equals one process on the joined batch (outputs,
running statistics, gradients); MoCo's shuffle-BN is a true, shared permutation that it undoes exactly; and fit
with `train.sync_bn=true` pretrains MoCo on two spawned processes into a checkpoint that loads as a plain model.

The two-rank checks share one spawn: starting a process (torch, medssl) is most of their time on two cores.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medssl.methods.byol import ema_update
from medssl.methods.moco import MoCo, batch_shuffle, batch_unshuffle
from medssl.models.sync_batchnorm import CPUSyncBatchNorm, convert_sync_batchnorm

from _ddp import WORLD, process_group, spawn

BATCH, EPS = 8, 1e-5  # BATCH: the global batch; each rank holds BATCH // WORLD rows


def _rows(rank: int) -> slice:
    return slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)


# ---- SyncBatchNorm ---------------------------------------------------------------------------------------------

def _hand_derived_stats(rank: int) -> None:
    """Rank r's rows all equal 2r: the joined batch has mean 1 and (biased) variance 1 in every channel."""
    x = torch.full((BATCH // WORLD, 3, 2, 2), 2.0 * rank)
    synced, local = convert_sync_batchnorm(nn.BatchNorm2d(3)), nn.BatchNorm2d(3)
    assert isinstance(synced, CPUSyncBatchNorm)
    n = BATCH * 2 * 2                                       # values per channel in the joined batch
    torch.testing.assert_close(synced(x), torch.full_like(x, (2 * rank - 1) / math.sqrt(1 + EPS)))
    torch.testing.assert_close(synced.running_mean, torch.full((3,), 0.1 * 1))
    torch.testing.assert_close(synced.running_var, torch.full((3,), 0.9 * 1 + 0.1 * n / (n - 1)))  # unbiased
    # without the sync each rank sees a constant batch: zero output, its own mean, no variance
    torch.testing.assert_close(local(x), torch.zeros_like(x))
    torch.testing.assert_close(local.running_mean, torch.full((3,), 0.1 * 2 * rank))
    torch.testing.assert_close(local.running_var, torch.full((3,), 0.9))


def _sync_bn_checks(rank: int) -> None:
    """Outputs, running statistics and gradients of SyncBatchNorm + DDP on half a batch = one process on it all."""
    _hand_derived_stats(rank)
    torch.manual_seed(0)                                    # same data and weights on both ranks
    x = torch.randn(BATCH, 3, 4, 4) * 3 + 2                 # (B, C, H, W), joined batch
    c = torch.randn(BATCH, 3, 4, 4)                         # loss weights: a plain sum has no gradient through BN
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-1, 1)
    ref, plain = copy.deepcopy(net), copy.deepcopy(net)
    x_ref = x.clone().requires_grad_()
    y_ref = ref(x_ref)                                      # one process, joined batch
    (y_ref * c).mean().backward()

    ddp = DistributedDataParallel(convert_sync_batchnorm(net))  # averages parameter gradients over ranks
    x_r = x[_rows(rank)].clone().requires_grad_()
    y = ddp(x_r)
    (y * c[_rows(rank)]).mean().backward()                  # this rank's mean: the ranks' mean is the joined one
    torch.testing.assert_close(y, y_ref[_rows(rank)], rtol=0, atol=1e-5)
    for key, value in ref[1].state_dict().items():          # running mean / var, num_batches_tracked
        torch.testing.assert_close(net[1].state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-5, msg=name)
    # an input's gradient is that of the sum of the ranks' losses (W x the joined mean); DDP's average of the
    # parameter gradients divides that W out
    torch.testing.assert_close(x_r.grad, WORLD * x_ref.grad[_rows(rank)], rtol=0, atol=1e-5)

    y_plain = plain(x[_rows(rank)])                         # control: per-rank statistics
    assert (y_plain - y_ref[_rows(rank)]).abs().max() > 1e-2
    assert (plain[1].running_mean - ref[1].running_mean).abs().max() > 1e-3
    with pytest.raises(ValueError, match="expected input tensor to be on GPU"):  # why CPUSyncBatchNorm exists
        nn.SyncBatchNorm(3)(x)


def test_cpu_conversion_avoids_torch_syncbatchnorm_which_ddp_rejects_on_cpu():
    assert not issubclass(CPUSyncBatchNorm, nn.SyncBatchNorm)   # "SyncBatchNorm layers only work with GPU modules"
    gpu = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(2)), device="cuda")  # conversion only, no GPU needed
    assert isinstance(gpu[0], nn.SyncBatchNorm)


def _tiny_backbone(batch_norm: bool) -> nn.Module:
    """(B, 12) -> (B, 6): Linear (+ BatchNorm1d); feature_dim as MoCo asks."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 6), nn.BatchNorm1d(6)) if batch_norm else nn.Sequential(nn.Linear(12, 6))
    net.feature_dim = 6
    return net


def test_conversion_keeps_keys_identities_and_momentum_copies_consistent():
    model = MoCo(_tiny_backbone(batch_norm=True), proj_dim=4, hidden_dim=8, queue_size=16)
    plain = copy.deepcopy(model)
    params = {name: id(p) for name, p in model.named_parameters()}
    convert_sync_batchnorm(model)
    assert isinstance(model.backbone[1], CPUSyncBatchNorm) and isinstance(model.key_backbone[1], CPUSyncBatchNorm)
    assert {name: id(p) for name, p in model.named_parameters()} == params  # an optimiser made before still fits
    assert not any(p.requires_grad for p in model.key_backbone.parameters())  # the key encoder stays frozen
    assert model.backbone[1].weight is not model.key_backbone[1].weight      # two copies, not one shared
    state = model.state_dict()
    assert list(state) == list(plain.state_dict())          # same keys, same order
    plain.load_state_dict(state, strict=True)               # a synced run's checkpoint loads into plain BatchNorm
    model.load_state_dict(plain.state_dict(), strict=True)      # and the other way
    with torch.no_grad():
        model.backbone[1].weight.fill_(2.0)
    ema_update(model.key_backbone, model.backbone, 0.5)     # parameter by parameter, in the same order
    torch.testing.assert_close(model.key_backbone[1].weight, torch.full((6,), 1.5))


def test_without_a_process_group_the_synced_layer_is_plain_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    plain = nn.BatchNorm2d(3)
    synced = convert_sync_batchnorm(copy.deepcopy(plain))
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced.running_var, plain.running_var)


# ---- MoCo shuffle-BN -------------------------------------------------------------------------------------------

def _keys(backbone: nn.Module, x: torch.Tensor, shuffle: bool) -> torch.Tensor:
    torch.manual_seed(1)                                    # same heads on both ranks
    moco = MoCo(backbone, proj_dim=4, hidden_dim=8, queue_size=16, shuffle_bn=shuffle).train()
    return moco.keys(x)


def _shuffle_bn_checks(rank: int) -> None:
    """batch_shuffle / batch_unshuffle and MoCo.keys with shuffle-BN, with and without BatchNorm."""
    b = BATCH // WORLD
    torch.manual_seed(0)                                    # rank 0 draws the permutation
    x = torch.arange(b * 12, dtype=torch.float32).view(b, 12) + 1000.0 * rank   # every row distinct
    joined = torch.cat([torch.arange(b * 12, dtype=torch.float32).view(b, 12) + 1000.0 * r
                        for r in range(WORLD)])
    shuffled, perm = batch_shuffle(x)
    perms = [torch.empty_like(perm) for _ in range(WORLD)]
    dist.all_gather(perms, perm)
    assert all(torch.equal(p, perm) for p in perms)         # one permutation on every rank
    assert sorted(perm.tolist()) == list(range(BATCH))      # a true permutation of the global batch
    assert torch.equal(shuffled, joined[perm[_rows(rank)]])  # this rank's share of the shuffled batch
    assert set(perm[_rows(rank)].tolist()) != set(range(rank * b, (rank + 1) * b))  # not its own rows
    assert torch.equal(batch_unshuffle(shuffled, perm), x)  # unshuffle(shuffle(x)) == x, exactly

    torch.manual_seed(2)
    data = torch.randn(BATCH, 12)[_rows(rank)] * 2 + 1      # (B / W, 12): this rank's half
    with_bn = [_keys(_tiny_backbone(batch_norm=True), data, s) for s in (True, False)]
    assert (with_bn[0] - with_bn[1]).abs().max() > 1e-3     # normalised with another mix of samples
    without_bn = [_keys(_tiny_backbone(batch_norm=False), data, s) for s in (True, False)]
    torch.testing.assert_close(without_bn[0], without_bn[1], rtol=0, atol=1e-6)  # back in the right rows


def _two_rank_worker(rank: int, store: str) -> None:
    with process_group(rank, store):
        _sync_bn_checks(rank)
        _shuffle_bn_checks(rank)


def test_two_ranks_sync_bn_equals_one_process_and_shuffle_bn_is_undone_exactly():
    spawn(_two_rank_worker)


def test_moco_shuffle_bn_is_a_no_op_on_one_process():
    from medssl.config import load_config

    torch.manual_seed(2)
    data = torch.randn(4, 12)
    keys = [_keys(_tiny_backbone(batch_norm=True), data, s) for s in (True, False)]
    assert torch.equal(keys[0], keys[1])
    assert load_config(None, ["method=moco"]).model.options.shuffle_bn    # on by default


# ---- through fit ----------------------------------------------------------------------------------------------

class _ReportingMoCo(MoCo):
    """MoCo that logs how many of its BatchNorm layers are synchronised in the process that trains it."""

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        synced = sum(isinstance(m, CPUSyncBatchNorm) for m in self.modules())
        return {**super().forward(batch), "synced_bn": torch.tensor(float(synced)),
                "threads": torch.tensor(float(torch.get_num_threads()))}


def test_fit_with_sync_bn_on_two_spawned_processes_writes_a_checkpoint_that_loads_plainly(tmp_path):
    """MoCo (ResNet-18, shuffle-BN on) 2 steps on 2 processes, fit fed as run_pretrain feeds it; with no
    train.threads each process takes its share of the cores, not all of them."""
    import csv  # imported here, not at the top: spawned workers import this module, and start faster without them

    from medssl.checkpoint import load_checkpoint
    from medssl.config import load_config
    from medssl.inference import load_bundle
    from medssl.pretrain import load_records, make_loader, run_spec, write_data
    from medssl.train import fit, process_threads

    cfg = load_config(None, ["method=moco", "data.size=16", "data.batch_size=8", "data.synthetic_patients=4",
                             "data.num_workers=0", "model.stem=small", "model.width=8", "model.options.hidden_dim=32",
                             "model.options.queue_size=64", "train.epochs=null", "train.steps=2",
                             "train.log_every=1", "train.accelerator=cpu", "train.devices=2",
                             "train.strategy=ddp_spawn", "train.sync_bn=true"])
    run = tmp_path / "run"
    write_data(cfg, run, progress=False)
    records = load_records(cfg, run)
    torch.manual_seed(cfg.train.seed)
    model = _ReportingMoCo.build(cfg.model_spec())
    bn_layers = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())   # query and key backbones
    metrics = fit(model, functools.partial(make_loader, cfg, records, False), run_spec(cfg, "synthetic"), run,
                  progress=False)
    assert metrics["steps"] == 2 and metrics["world_size"] == 2 and math.isfinite(metrics["final_loss"])
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["synced_bn"]) for r in rows] == [bn_layers, bn_layers]
    assert [float(r["threads"]) for r in rows] == [process_threads(cfg.train, 2)] * 2
    assert list(load_checkpoint(run)["model"]) == list(model.state_dict())   # a plain model's keys (the parent's)
    bundle = load_bundle(run)                               # a strict load into a plain-BatchNorm backbone
    assert not any(isinstance(m, CPUSyncBatchNorm) for m in bundle.model.modules())
    with torch.no_grad():
        features = bundle.model(torch.zeros(2, 1, 16, 16))
    assert features.shape == (2, bundle.model.feature_dim) and torch.isfinite(features).all()

