"""Backbones: feature sizes, stem choice by image size, ViT patch subsets, errors naming the bad value."""

import pytest
import torch

from medssl.errors import MedsslError
from medssl.models.backbones import create_backbone, sincos_pos_embed_2d
from medssl.models.heads import LinearHead, PredictionHead, ProjectionHead


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_resnet_feature_dim(name, dim, size):
    model, feature_dim = create_backbone(name, in_channels=1, image_size=size)
    assert feature_dim == model.feature_dim == dim
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, dim)


@pytest.mark.parametrize("name, dim", [("vit_tiny", 192), ("vit_small", 384)])
@pytest.mark.parametrize("size", [16, 32, 64])
def test_vit_feature_dim(name, dim, size):
    model, feature_dim = create_backbone(name, in_channels=1, image_size=size, depth=1)
    assert feature_dim == model.feature_dim == dim
    with torch.no_grad():
        assert model(torch.rand(2, 1, size, size)).shape == (2, dim)


@pytest.mark.parametrize(
    "size, stem, side",
    [
        (16, "cifar", 2),       # 3x3 stride 1, no max-pool: /8
        (32, "cifar", 4),
        (64, "small", 4),       # 3x3 stride 2, no max-pool: /16
        (128, "imagenet", 4),   # 7x7 stride 2 + max-pool: /32
    ],
)
def test_default_stem_keeps_a_small_feature_map(size, stem, side):
    model, _ = create_backbone("resnet18", image_size=size)
    assert model.stem == stem
    assert model.forward_features(torch.rand(1, 1, size, size)).shape == (1, 512, side, side)


def test_stem_override():
    model, _ = create_backbone("resnet18", image_size=32, stem="imagenet")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2) and not model.no_max_pool
    assert model.forward_features(torch.rand(2, 1, 32, 32)).shape == (2, 512, 1, 1)
    model, _ = create_backbone("resnet18", image_size=128, stem="cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.no_max_pool


@pytest.mark.parametrize("size, patch", [(16, 4), (32, 4), (64, 8), (128, 16)])
def test_vit_patch_size_follows_image_size_and_tokens_include_the_class_token(size, patch):
    model, _ = create_backbone("vit_tiny", image_size=size, depth=1)
    n = (size // patch) ** 2
    assert model.patch_size == patch and model.num_patches == n
    assert model.forward_features(torch.rand(2, 1, size, size)).shape == (2, 1 + n, 192)


def test_vit_runs_on_a_subset_of_patches():
    model, _ = create_backbone("vit_tiny", image_size=16, depth=1)
    ids_keep = torch.tensor([[0, 5, 15], [3, 2, 1]])
    assert model.forward_features(torch.rand(2, 1, 16, 16), ids_keep).shape == (2, 4, 192)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_three_channels_and_channels_last_give_the_same_features(name):
    model, dim = create_backbone(name, in_channels=3, image_size=16, **({"depth": 1} if name == "vit_tiny" else {}))
    model.eval()
    x = torch.rand(2, 3, 16, 16)
    out = model(x)
    assert out.shape == (2, dim)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": "resnet19"}, "resnet19"),
        ({"name": "vit_tiny", "image_size": 30}, "30"),
        ({"name": "vit_tiny", "image_size": 32, "patch_size": 5}, "5"),
        ({"name": "resnet18", "stem": "huge"}, "huge"),
        ({"name": "vit_small", "stem": "cifar"}, "cifar"),
        ({"name": "resnet18", "depth": 2}, "resnet18"),
    ],
)
def test_bad_values_raise_medssl_error_naming_them(kwargs, fragment):
    with pytest.raises(MedsslError, match=fragment):
        create_backbone(**kwargs)


def test_vit_rejects_images_of_another_size():
    model, _ = create_backbone("vit_tiny", image_size=16, depth=1)
    with pytest.raises(MedsslError, match="16"):
        model(torch.rand(1, 1, 32, 32))


def test_sincos_pos_embed_first_row_is_sin_zero_cos_one():
    pos = sincos_pos_embed_2d(8, 3)                             # (9, 8): [sin y, cos y, sin x, cos x] x 2 freqs
    assert pos.shape == (9, 8)
    torch.testing.assert_close(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))


def test_heads_shapes_and_layers():
    proj = ProjectionHead(16, 32, 8, num_layers=3)
    assert proj(torch.rand(4, 16)).shape == (4, 8)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in proj) == 2
    assert len(ProjectionHead(16, 32, 8, num_layers=1)) == 1
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in ProjectionHead(16, 32, 8, batch_norm=False))
    assert PredictionHead(8, 16, 8)(torch.rand(4, 8)).shape == (4, 8)
    assert LinearHead(16, 3, batch_norm=True)(torch.rand(4, 16)).shape == (4, 3)
    assert LinearHead(16, 1)(torch.rand(4, 16)).shape == (4, 1)       # always 2-D, a binary head too


@pytest.mark.parametrize("name, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_width_scales_every_stage_and_is_kept_in_the_spec(name, expansion):
    from medssl.models.factory import ModelSpec, build_backbone

    narrow, dim = create_backbone(name, in_channels=1, image_size=32, stem="small", width=16)
    assert dim == narrow.feature_dim == 8 * 16 * expansion
    assert narrow.feature_channels == (16, *(w * expansion for w in (16, 32, 64, 128)))
    with torch.no_grad():
        maps = narrow.feature_maps(torch.rand(2, 1, 32, 32))
    assert [m.shape[1] for m in maps] == list(narrow.feature_channels)
    full = create_backbone(name, in_channels=1, image_size=32, stem="small")[0]
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 10
    spec = ModelSpec(name, stem="small", image_size=32, width=16)
    again = build_backbone(ModelSpec.from_dict(spec.to_dict()))        # the width travels with the checkpoint
    assert again.feature_channels == narrow.feature_channels
    assert ModelSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "width"}).width is None  # older ones


def test_width_is_refused_for_a_vit_and_out_of_range():
    with pytest.raises(MedsslError, match="stem and width apply to ResNets"):
        create_backbone("vit_tiny", image_size=32, width=32)
    with pytest.raises(MedsslError, match="width 2"):
        create_backbone("resnet18", image_size=32, width=2)
