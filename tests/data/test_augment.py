"""Tests for medssl.data.augment: geometry conventions, presets, seeding, intensity ranges, blur, noise, validation."""

import math

import pytest
import torch

from medssl.data.augment import PRESETS, Augment, AugmentConfig, gaussian_blur, preset, resize, two_views
from medssl.errors import MedsslError

# every random op off: what is left is a resize of the whole image
IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation_deg=0.0, translate=0.0, brightness=0.0,
                contrast=0.0, gamma=(1.0, 1.0), noise_std=0.0, noise_p=0.0, blur_p=0.0)


def identity(size: int, **changes) -> AugmentConfig:
    return AugmentConfig(size=size, **{**IDENTITY, **changes})


def checkerboard(b: int, size: int, period: int = 2) -> torch.Tensor:
    i = torch.arange(size) // (period // 2)
    return ((i[:, None] + i[None, :]) % 2).float().expand(b, 1, size, size).contiguous()


def blob_right(b: int, size: int) -> torch.Tensor:
    """A bright disc centred at normalised x = 0.7, y = 0 (far into the right half) on black."""
    c = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    disc = ((c[None, :] - 0.7) ** 2 + c[:, None] ** 2 < 0.15**2).float()
    return disc.expand(b, 1, size, size).contiguous()


def centroid_x(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised x centroid of the bright part of each sample, and whether the blob is visible at all."""
    size = y.shape[-1]
    c = (torch.arange(size) + 0.5) / size * 2 - 1
    wgt = (y[:, 0] - 0.5).clamp(min=0)  # (B, H, W): the blob only, not the background
    mass = wgt.sum((1, 2))
    return (wgt.sum(1) * c).sum(1) / mass.clamp(min=1e-9), mass > 1.0


def test_identity_config_returns_input():
    x = torch.rand(8, 1, 24, 24)
    y = Augment(identity(24), seed=0)(x)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    assert y.data_ptr() != x.data_ptr()  # a copy: later in-place steps must never touch the caller's tensor


def test_shape_range_and_dtype_for_grey_and_colour():
    aug = Augment(AugmentConfig(size=16, brightness=1.0, contrast=1.0, noise_std=0.5, noise_p=1.0), seed=1)
    for c in (1, 3):
        for h, w in ((32, 32), (20, 28)):
            y = aug(torch.rand(6, c, h, w))
            assert y.shape == (6, c, 16, 16) and y.dtype == torch.float32
            assert y.min() >= 0 and y.max() <= 1
    assert aug(torch.rand(2, 1, 16, 16, dtype=torch.float64)).dtype == torch.float64


def test_rot90_matches_torch_rot90_counter_clockwise():
    x = torch.rand(32, 1, 16, 16)  # random pixels: no symmetry can hide a wrong direction or a flip
    cfg = identity(16, rot90=True)
    k = (Augment(cfg, seed=5).params(32)["angle"] / 90).round().long() % 4
    y = Augment(cfg, seed=5)(x)
    assert set(k.tolist()) == {0, 1, 2, 3}
    for i in range(32):  # k == 0 also checks that the grid_sample path alone is an identity
        torch.testing.assert_close(y[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)), atol=1e-4, rtol=0)


def test_rotation_turns_a_non_square_image_without_shear():
    # a centred disc in a 2:1 image is unchanged by any rotation in pixel space; in normalised space it would shear
    yy, xx = torch.meshgrid(torch.arange(32.0) - 15.5, torch.arange(64.0) - 31.5, indexing="ij")
    x = (xx**2 + yy**2 < 12.0**2).float().expand(16, 1, 32, 64)
    aug = Augment(identity(32, rotation_deg=90.0), seed=0)
    p = aug.params(16)
    assert p["angle"].abs().max() > 45
    unturned = aug.apply_params(x, {**p, "angle": torch.zeros(16)})
    assert (aug.apply_params(x, p) - unturned).abs().mean() < 0.03  # edge resampling ~0.01; sheared ~0.11


def test_chest_xray_never_flips_but_dermatology_does():
    x = blob_right(200, 32)
    cx, seen = centroid_x(Augment(preset("chest_xray", 32), seed=0)(x))
    assert seen.float().mean() > 0.5  # the crop may cut the blob out; most samples still show it
    assert (cx[seen] > 0).all()
    # dermatology without its 180-degree rotation: left-right flips alone put the blob left about half the time
    cx, seen = centroid_x(Augment(preset("dermatology", 32, rotation_deg=0.0), seed=0)(x))
    assert 0.3 < (cx[seen] < 0).float().mean() < 0.7
    cx, seen = centroid_x(Augment(preset("dermatology", 32), seed=0)(x))
    assert (cx[seen] < 0).any()


def test_seeded_reproducibility():
    x = torch.rand(8, 1, 32, 32)
    cfg = preset("chest_xray", 16)
    a, b = Augment(cfg, seed=1), Augment(cfg, seed=1)
    first = a(x)
    assert torch.equal(first, b(x))
    assert not torch.equal(first, Augment(cfg, seed=2)(x))
    assert not torch.equal(first, a(x))  # a second draw differs
    p, q = Augment(cfg, seed=1).params(8), Augment(cfg, seed=1).params(8)
    assert torch.equal(Augment(cfg).apply_params(x, p), Augment(cfg).apply_params(x, q))
    torch.testing.assert_close(Augment(cfg).apply_params(x, p), first)


def test_gamma_only_equals_input_to_the_sampled_power():
    x = torch.rand(16, 1, 16, 16)
    cfg = identity(16, gamma=(0.5, 2.0))
    g = Augment(cfg, seed=4).params(16)["gamma"]
    assert (g >= 0.5).all() and (g <= 2.0).all() and g.std() > 0.1
    torch.testing.assert_close(Augment(cfg, seed=4)(x), x ** g.view(-1, 1, 1, 1), atol=1e-6, rtol=0)


def test_brightness_scales_and_contrast_keeps_the_mean():
    x = torch.full((16, 1, 8, 8), 0.5)
    f = Augment(identity(8, brightness=0.2), seed=2).params(16)["brightness"]
    assert (f >= 0.8).all() and (f <= 1.2).all()
    expected = (0.5 * f.view(-1, 1, 1, 1)).expand_as(x)
    torch.testing.assert_close(Augment(identity(8, brightness=0.2), seed=2)(x), expected)
    x = 0.25 + 0.5 * torch.rand(16, 1, 8, 8)  # contrast 0.2 cannot push [0.25, 0.75] out of [0, 1]
    y = Augment(identity(8, contrast=0.2), seed=2)(x)
    c = Augment(identity(8, contrast=0.2), seed=2).params(16)["contrast"]
    torch.testing.assert_close(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((1, 2, 3)), c * x.std((1, 2, 3)), atol=1e-5, rtol=1e-4)


def test_blur_removes_checkerboard_and_only_touches_selected_samples():
    x = checkerboard(32, 16)
    y = Augment(identity(16, blur_p=1.0, blur_sigma=(1.0, 1.0)), seed=0)(x)
    assert y.var() < 0.05 * x.var()
    # interior pixels: the 2D gain at the Nyquist frequency is the square of the 1D alternating kernel sum
    k = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)
    gain = float((k * torch.tensor([-1.0, 1.0]).repeat(4)[:7]).sum() / k.sum()) ** 2
    torch.testing.assert_close((y[:, :, 3:-3, 3:-3] - 0.5).abs(), torch.full_like(y[:, :, 3:-3, 3:-3], 0.5 * gain))
    cfg = identity(16, blur_p=0.5, blur_sigma=(0.8, 1.0))  # sigma 0.1 would leave a selected sample as it was
    chosen = Augment(cfg, seed=3).params(32)["blur"]
    y = Augment(cfg, seed=3)(x)
    assert 0 < chosen.sum() < 32
    changed = (y - x).abs().amax((1, 2, 3)) > 1e-3
    assert torch.equal(changed, chosen)


def test_gaussian_blur_keeps_a_constant_and_per_sample_sigma():
    x = torch.full((2, 3, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(x, torch.tensor([0.5, 2.0]), 4), x)
    y = gaussian_blur(checkerboard(2, 16), torch.tensor([0.3, 1.5]), 4)
    assert y[0].var() > 10 * y[1].var()  # the wider sigma removes more


def test_noise_std_on_a_constant_image():
    x = torch.full((32, 1, 32, 32), 0.5)
    y = Augment(identity(32, noise_std=0.05, noise_p=1.0), seed=0)(x)
    assert y.std().item() == pytest.approx(0.05, rel=0.2)
    assert y.mean().item() == pytest.approx(0.5, abs=0.01)
    cfg = identity(32, noise_std=0.05, noise_p=0.5)
    chosen = Augment(cfg, seed=1).params(32)["noise"]
    noisy = Augment(cfg, seed=1)(x).std((1, 2, 3)) > 0.01
    assert torch.equal(noisy, chosen)


def test_crop_scale_zooms_in():
    cfg = identity(32, crop_scale=(0.25, 0.25))
    p = Augment(cfg, seed=0).params(16)
    torch.testing.assert_close(p["area"], torch.full((16,), 0.25))
    torch.testing.assert_close(p["crop"], torch.full((16, 2), 0.5))  # half the side each way
    assert (p["centre"].abs() <= 0.5).all()  # the crop stays inside the image
    x = checkerboard(16, 32)
    dx = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean().item()  # noqa: E731
    # 2x zoom samples the linear interpolation of the board every half pixel: steps of at most 0.5, not 1
    assert dx(x) == 1.0 and dx(Augment(cfg, seed=0)(x)) <= 0.5 + 1e-5


def test_crop_area_and_ratio_within_ranges():
    p = Augment(AugmentConfig(), seed=0).params(64)
    assert ((p["area"] >= 0.6 - 1e-6) & (p["area"] <= 1.0 + 1e-6)).all()
    ratio = p["crop"][:, 0] / p["crop"][:, 1]
    assert ((ratio >= 0.75 - 1e-5) | (p["crop"].amax(1) == 1)).all()  # a clipped crop gives up its ratio
    assert ((ratio <= 4 / 3 + 1e-5) | (p["crop"].amax(1) == 1)).all()
    assert (p["crop"] <= 1).all() and (p["centre"].abs() <= 1 - p["crop"] + 1e-6).all()


def test_none_preset_is_resize_and_resize_is_antialiased():
    x = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(Augment(preset("none", 16))(x), resize(x, 16))
    assert resize(x, 32) is x
    y = resize(checkerboard(2, 32), 16)  # area-like filter: each output pixel averages both colours
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], 0.5))


def test_presets_orientation_rules():
    assert set(PRESETS) == {"chest_xray", "dermatology", "ct", "mri", "pathology", "none"}
    for name in ("chest_xray", "ct", "mri", "none"):
        assert not PRESETS[name].hflip
    assert PRESETS["dermatology"].hflip and PRESETS["dermatology"].rotation_deg == 180
    assert PRESETS["pathology"].rot90 and PRESETS["pathology"].vflip
    assert PRESETS["ct"].brightness < PRESETS["chest_xray"].brightness
    assert preset("chest_xray", 32, noise_p=0.0).size == 32


BAD = [("size", 0), ("size", 2.5), ("crop_scale", (0.0, 1.0)), ("crop_scale", (0.5, 1.5)), ("crop_scale", (0.9, 0.6)),
       ("crop_ratio", (0.0, 1.0)), ("rotation_deg", -1.0), ("translate", 0.7), ("brightness", -0.1),
       ("contrast", 1.5), ("gamma", (0.0, 1.0)), ("noise_std", -0.01), ("noise_p", 1.5), ("blur_sigma", (-1.0, 1.0)),
       ("blur_p", -0.1), ("hflip", "yes"), ("padding_mode", "wrap"), ("translate", math.nan)]


@pytest.mark.parametrize("field,value", BAD)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(MedsslError, match=field):
        AugmentConfig(**{field: value}).validate()
    with pytest.raises(MedsslError, match=field):
        Augment(AugmentConfig(**{field: value}))


def test_preset_errors_list_known_names():
    with pytest.raises(MedsslError, match="chest_xray.*dermatology"):
        preset("xray", 32)
    with pytest.raises(MedsslError, match="hflipp"):
        preset("chest_xray", 32, hflipp=True)
    with pytest.raises(MedsslError, match="rotation_deg"):
        preset("chest_xray", 32, rotation_deg=-5.0)


def test_bad_input_raises():
    aug = Augment(AugmentConfig(size=8))
    with pytest.raises(MedsslError, match="B, C, H, W"):
        aug(torch.rand(1, 8, 8))
    with pytest.raises(MedsslError, match="uint8"):
        aug(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_two_views_differ_and_use_x2():
    x = torch.rand(8, 1, 32, 32)
    aug = Augment(preset("chest_xray", 16), seed=0)
    v1, v2 = two_views(aug, None, x)
    assert v1.shape == v2.shape == (8, 1, 16, 16) and not torch.equal(v1, v2)
    cfg = identity(16, noise_std=0.01, noise_p=1.0)
    v1, v2 = two_views(Augment(cfg, seed=0), Augment(cfg, seed=1), torch.full((4, 1, 16, 16), 0.2),
                       torch.full((4, 1, 16, 16), 0.8))
    assert v1.mean().item() == pytest.approx(0.2, abs=0.01) and v2.mean().item() == pytest.approx(0.8, abs=0.01)
    a1, a2 = Augment(preset("chest_xray", 16), seed=3), Augment(preset("chest_xray", 16), seed=4)
    v1, v2 = two_views(a1, a2, x)
    assert torch.equal(v1, Augment(preset("chest_xray", 16), seed=3)(x))
    assert torch.equal(v2, Augment(preset("chest_xray", 16), seed=4)(x))
    with pytest.raises(MedsslError, match="batch"):
        two_views(aug, None, x, x[:2])
