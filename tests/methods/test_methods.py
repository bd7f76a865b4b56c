"""Methods: short optimisations lower the loss; queue, momentum and masking arithmetic checked exactly."""

import math

import pytest
import torch
import torch.nn.functional as F

from medssl.data.datasets import BatchSpec
from medssl.errors import MedsslError
from medssl.methods import METHODS, build_model
from medssl.methods.byol import BYOL, cosine_momentum
from medssl.methods.mae import MAE, patchify, random_masking, unpatchify
from medssl.methods.moco import MoCo, MoCoOptions
from medssl.methods.simclr import SimCLROptions
from medssl.models.backbones import create_backbone
from medssl.models.factory import ModelSpec
from medssl.models.trainable import Trainable
from medssl.schema import from_mapping

SIZE, BATCH = 16, 16
SMALL = {"simclr": {}, "micle": {}, "moco": {"queue_size": 32}, "byol": {"hidden_dim": 64, "proj_dim": 32}, "mae": {}}
IMAGE_ONLY = [n for n, m in METHODS.items() if not m.batch.report]  # image-text methods: test_image_text_methods.py


def tiny(name: str, backbone: str = "vit_tiny", **options) -> torch.nn.Module:
    """The method on a 2-block ViT (or a ResNet with its small-image stem) for 16 px images."""
    depth = 2 if backbone.startswith("vit") else None
    return build_model(ModelSpec(backbone=backbone, depth=depth, in_channels=1, image_size=SIZE, method=name,
                                 options=METHODS[name].Options(**{**SMALL[name], **options})))


def views(name: str) -> tuple[str, ...]:
    """The batch keys that a method declares (its BatchSpec's views)."""
    return METHODS[name].batch.views


def smooth_images(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 1, 16, 16) zero-mean images, upsampled from 4x4 noise: a shift of a pixel keeps them recognisable."""
    return F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=(SIZE, SIZE), mode="bilinear")


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A view: every image shifted by up to one pixel each way, plus a little noise."""
    shifts = torch.randint(-1, 2, (x.shape[0], 2), generator=g).tolist()
    x = torch.stack([torch.roll(img, tuple(s), dims=(1, 2)) for img, s in zip(x, shifts, strict=True)])
    return x + 0.05 * torch.randn(x.shape, generator=g)


def make_batch(name: str, images: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """The batch a method asks for (its declared views), every key an independent view of the images."""
    return {key: augment(images, g) for key in views(name)}


@pytest.mark.parametrize("name", IMAGE_ONLY)
def test_short_optimisation_lowers_the_loss(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = tiny(name)
    pool = smooth_images(4 * BATCH, g)                          # four batches, visited in turn
    batches = [pool[i * BATCH:(i + 1) * BATCH] for i in range(4)]
    if isinstance(model, MoCo):                                 # a random queue makes the first losses too low
        with torch.no_grad():
            for images in batches[2:]:                          # keys of other images than the first batches'
                model(make_batch(name, images, g))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(30):
        out = model(make_batch(name, batches[step % 4], g))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.on_step(step + 1, 1000)                           # the first 30 steps of a longer run
        losses.append(out["loss"].item())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", IMAGE_ONLY)
def test_forward_gives_a_finite_differentiable_loss_and_a_backbone_for_evaluation(name):
    torch.manual_seed(0)
    backbone = "vit_tiny" if name == "mae" else "resnet18"
    model = tiny(name, backbone)
    images = smooth_images(4, torch.Generator().manual_seed(1))
    out = model({key: images + 0.01 * torch.randn_like(images) for key in views(name)})
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert all(v.dim() == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    assert model.backbone(images).shape == (4, model.backbone.feature_dim)


def test_micle_reports_the_fraction_of_single_image_pairs():
    model = tiny("micle")
    x = smooth_images(4, torch.Generator().manual_seed(2))
    out = model({"view1": x, "view2": x, "same_image": torch.tensor([True, False, False, False])})
    assert out["pair_same_image"].item() == 0.25
    assert "pair_same_image" not in model({"view1": x, "view2": x})


def test_moco_queue_wraps_around_and_rejects_batches_larger_than_the_queue():
    model = tiny("moco", queue_size=6, proj_dim=4)
    keys = F.normalize(torch.randn(8, 4), dim=1)
    model.enqueue(keys[:4])
    assert int(model.queue_ptr) == 4 and torch.equal(model.queue[:4], keys[:4])
    model.enqueue(keys[4:])                                     # rows 4, 5, then 0, 1
    assert int(model.queue_ptr) == 2
    assert torch.equal(model.queue[[4, 5, 0, 1]], keys[4:]) and torch.equal(model.queue[2:4], keys[2:4])
    with pytest.raises(MedsslError, match="6"):
        model.enqueue(torch.randn(7, 4))


def test_moco_enqueues_the_normalised_keys_of_the_second_view_in_training_only():
    model = tiny("moco")
    g = torch.Generator().manual_seed(3)
    batch = make_batch("moco", smooth_images(8, g), g)
    model(batch)
    expected = F.normalize(model.key_head(model.key_backbone(batch["view2"])), dim=1)
    torch.testing.assert_close(model.queue[:8], expected)
    torch.testing.assert_close(model.queue.norm(dim=1), torch.ones(32))
    assert int(model.queue_ptr) == 8
    model.eval()
    model(batch)
    assert int(model.queue_ptr) == 8


def _perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize(
    "name, pairs",
    [("moco", [("key_backbone", "backbone"), ("key_head", "head")]),
     ("byol", [("target_backbone", "backbone"), ("target_projector", "projector")])],
)
def test_momentum_update_is_exact_and_follows_the_cosine_schedule(name, pairs):
    model = tiny(name)
    m0 = model.base_momentum
    for online in {o for _, o in pairs}:
        _perturb(getattr(model, online))                        # so that target and online differ
    before = {t: [p.clone() for p in getattr(model, t).parameters()] for t, _ in pairs}
    model.on_step(0, 10)
    assert model.momentum == m0
    for target, online in pairs:
        online_params = getattr(model, online).parameters()
        for t, t0, o in zip(getattr(model, target).parameters(), before[target], online_params, strict=True):
            assert torch.equal(t, m0 * t0 + (1 - m0) * o)           # bit for bit
    assert cosine_momentum(5, 10, m0) == pytest.approx(1 - (1 - m0) / 2)
    after = [p.clone() for p in getattr(model, pairs[0][0]).parameters()]
    model.on_step(10, 10)                                       # end of training: momentum 1, target frozen
    assert model.momentum == 1.0
    assert all(torch.equal(a, p) for a, p in zip(after, getattr(model, pairs[0][0]).parameters(), strict=True))


@pytest.mark.parametrize("name, frozen", [("moco", ("key_backbone", "key_head")),
                                          ("byol", ("target_backbone", "target_projector"))])
def test_momentum_networks_get_no_gradient(name, frozen):
    model = tiny(name)
    g = torch.Generator().manual_seed(4)
    model(make_batch(name, smooth_images(4, g), g))["loss"].backward()
    for attr in frozen:
        assert all(not p.requires_grad and p.grad is None for p in getattr(model, attr).parameters())
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_byol_momentum_schedule_endpoints():
    assert cosine_momentum(0, 100, 0.996) == 0.996
    assert cosine_momentum(100, 100, 0.996) == 1.0
    assert cosine_momentum(500, 100, 0.996) == 1.0              # clamped past the end
    assert isinstance(tiny("byol"), BYOL)


def test_random_masking_masks_exactly_the_ratio_in_every_sample():
    ids_keep, mask, ids_restore = random_masking(5, 16, 0.75)
    assert ids_keep.shape == (5, 4)
    assert mask.sum(dim=1).tolist() == [12.0] * 5
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)      # kept patches are the unmasked ones
    assert torch.equal(torch.gather(torch.arange(16).expand(5, -1).argsort(1), 1, ids_restore),
                       ids_restore)                             # ids_restore is a permutation per sample
    out = tiny("mae")({"image": torch.randn(3, 1, SIZE, SIZE)})
    assert out["mask_ratio"].item() == 0.75                     # 16 patches of 4 px, 12 masked


def test_mae_visible_patches_get_no_loss():
    model = tiny("mae")
    images = torch.randn(2, 1, SIZE, SIZE)
    latent, mask, ids_restore = model.forward_encoder(images)
    pred = model.forward_decoder(latent, ids_restore)
    pred.retain_grad()
    model.forward_loss(images, pred, mask).backward()
    visible = mask == 0
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(dim=-1) > 0)


def test_mae_targets_are_normalised_per_patch():
    targets = tiny("mae").patch_targets(torch.rand(2, 1, SIZE, SIZE))   # (2, 16, 16)
    torch.testing.assert_close(targets.mean(dim=-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(targets.var(dim=-1), torch.ones(2, 16), atol=1e-3, rtol=0)


def test_mae_reconstruct_keeps_visible_pixels():
    images = torch.rand(2, 1, SIZE, SIZE)
    recon, mask = tiny("mae").reconstruct(images)
    assert recon.shape == mask.shape == images.shape
    assert mask.mean().item() == 0.75
    assert torch.equal(recon[mask == 0], images[mask == 0])


def test_patchify_order_and_round_trip():
    x = torch.randn(2, 3, 8, 12)
    patches = patchify(x, 4)                                    # 2 x 3 grid of 4 px patches
    assert patches.shape == (2, 6, 48)
    torch.testing.assert_close(patches[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).flatten())
    square = torch.randn(2, 3, 16, 16)
    assert torch.equal(unpatchify(patchify(square, 4), 4, 4), square)


def test_mae_needs_a_vit():
    backbone, _ = create_backbone("resnet18", image_size=SIZE)
    with pytest.raises(MedsslError, match="ViT"):
        MAE(backbone)


def test_build_model_names_bad_values():
    with pytest.raises(MedsslError, match=r"'simclr2'.*simclr, micle, moco, byol, mae"):
        build_model(ModelSpec("resnet18", in_channels=1, image_size=SIZE, method="simclr2"))
    with pytest.raises(MedsslError, match=r"unknown key model\.options\.temprature; did you mean 'temperature'"):
        from_mapping(SimCLROptions, {"temprature": 0.2}, "model.options.")
    with pytest.raises(MedsslError, match="not SimCLROptions"):   # another method's options
        build_model(ModelSpec("resnet18", image_size=SIZE, method="simclr", options=MoCoOptions()))
    with pytest.raises(MedsslError, match="model.options.temperature"):   # Options.validate() runs on building
        build_model(ModelSpec("resnet18", image_size=SIZE, method="simclr", options=SimCLROptions(temperature=0)))
    for cls in METHODS.values():                                # every method declares its batch and options
        assert isinstance(cls.batch, BatchSpec) and issubclass(cls, Trainable)
        cls.Options().validate()


def test_build_model_passes_backbone_options_and_method_options():
    model = build_model(ModelSpec("resnet18", stem="imagenet", in_channels=3, image_size=32, method="simclr",
                                  options=SimCLROptions(temperature=0.5)))
    assert model.backbone.stem == "imagenet" and model.temperature == 0.5
    assert model.backbone.conv1.in_channels == 3
    assert math.isclose(tiny("moco", temperature=0.3).temperature, 0.3)
