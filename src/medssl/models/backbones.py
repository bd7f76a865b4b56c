"""Image backbones: create_backbone(name, in_channels, image_size) -> (module, feature_dim).

Every backbone maps (B, C, H, W) to pooled features (B, feature_dim), exposes `.feature_dim`, and has
`forward_features` giving what comes before pooling (timm's interface): a feature map (B, D, h, w) for ResNets,
tokens (B, 1 + N, D) with the class token first for ViTs. Grad-CAM and word-region attention use those.

ResNets come from MONAI (the only MONAI-nets import of the package); the ViT is written here because MAE must
run the encoder on a subset of patches (`forward_features(x, ids_keep)`), which MONAI's ViT cannot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.nets import ResNet as MonaiResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck
from torch import Tensor, nn

from medssl.errors import MedsslError

# name -> (block, blocks per stage); stage widths are w, 2w, 4w, 8w (x4 for bottlenecks), w = 64 unless set
RESNETS = {
    "resnet18": (ResNetBlock, [2, 2, 2, 2]),
    "resnet34": (ResNetBlock, [3, 4, 6, 3]),
    "resnet50": (ResNetBottleneck, [3, 4, 6, 3]),
}
# name -> (embed_dim, depth, num_heads), as in DeiT-Tiny and DeiT-Small
VITS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6)}
BACKBONES = (*RESNETS, *VITS)

# stem -> (first-conv kernel, first-conv stride, max-pool); total downsampling 8, 16 and 32
STEMS = {"cifar": (3, 1, False), "small": (3, 2, False), "imagenet": (7, 2, True)}


def default_stem(image_size: int) -> str:
    """Stem for an image size: the feature map before pooling stays about 4x4 (2x2 at 16 px)."""
    if image_size <= 32:
        return "cifar"
    return "small" if image_size < 128 else "imagenet"


def default_patch_size(image_size: int) -> int:
    """ViT patch size for an image size: 4 up to 32 px, 8 below 128 px, 16 from 128 px (8x8 patches at 32/64/128)."""
    if image_size <= 32:
        return 4
    return 8 if image_size < 128 else 16


class ResNet(MonaiResNet):
    """MONAI's 2D ResNet without its classifier; `forward` global-average-pools `forward_features`.

    `feature_maps` gives every stage's output (stem, layer1..4; U-Net skips), with `feature_channels` channels.
    `width` is the first stage's width (64 in the papers); 32 costs about a quarter of the compute, for CPU runs.
    """

    def __init__(self, name: str, in_channels: int, stem: str, width: int = 64):
        block, layers = RESNETS[name]
        kernel, stride, max_pool = STEMS[stem]
        widths = [width, 2 * width, 4 * width, 8 * width]
        super().__init__(
            block, layers, widths, spatial_dims=2, n_input_channels=in_channels,
            conv1_t_size=kernel, conv1_t_stride=stride, no_max_pool=not max_pool,
            feed_forward=False, bias_downsample=False,  # a bias before BatchNorm is redundant
        )
        self.stem = stem
        self.width = width
        self.in_channels = in_channels
        self.feature_dim = 8 * width * block.expansion
        self.feature_channels = (width, *(w * block.expansion for w in widths))  # stem, layer1..4

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) -> [stem, layer1, layer2, layer3, layer4] outputs, channels `feature_channels`."""
        x = self.act(self.bn1(self.conv1(x)))                   # (B, 64, H / t, W / t), t = conv1's stride
        maps = [x]
        if not self.no_max_pool:
            x = self.maxpool(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> feature map (B, feature_dim, H / s, W / s), s = 8, 16 or 32 by stem."""
        return self.feature_maps(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, feature_dim)."""
        return self.forward_features(x).mean(dim=(2, 3))       # any memory format, unlike view()


def sincos_pos_embed_2d(dim: int, grid_size: int) -> Tensor:
    """Fixed 2D sine-cosine position embedding (Vaswani et al. 2017; as in MAE): (grid_size**2, dim), row-major."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    y = ys.flatten()[:, None] * omega[None]                     # (N, D/4)
    x = xs.flatten()[:, None] * omega[None]
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).float()  # (N, D)


class Attention(nn.Module):
    """Multi-head self-attention on (B, N, D) with PyTorch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v)             # (B, heads, N, D / heads)
        return self.proj(rearrange(x, "b h n d -> b n (h d)"))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (ViT, Dosovitskiy et al. 2021): x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """Vision Transformer encoder (Dosovitskiy et al. 2021) that can run on a subset of patches (for MAE).

    Patch embedding by a strided convolution, a class token, fixed 2D sin-cos positions, pre-norm blocks.
    Pooled features are the mean of the patch tokens (the class token gets no direct signal from MAE).
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.image_size, self.patch_size, self.in_channels = image_size, patch_size, in_channels
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.feature_dim = embed_dim
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = torch.cat([torch.zeros(1, embed_dim), sincos_pos_embed_2d(embed_dim, self.grid_size)])
        self.register_buffer("pos_embed", pos[None], persistent=False)  # (1, 1 + N, D), fixed: not saved
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(init_transformer_weights)
        w = self.patch_embed.weight.data                        # initialised like a linear layer, as in MAE
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def forward_features(self, x: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> tokens (B, 1 + N, D), class token first; with ids_keep (B, K) only those patches."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise MedsslError(f"ViT built for {self.image_size} px images got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)      # (B, N, D); a view for channels-last input
        x = x + self.pos_embed[:, 1:]
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)   # (B, 1, D)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, feature_dim): mean of the patch tokens."""
        return self.forward_features(x)[:, 1:].mean(dim=1)


def _build_vit(name: str, in_channels: int, image_size: int, patch_size: int | None, depth: int | None) -> ViT:
    """A ViT by name, checking that patches tile the image."""
    dim, default_depth, heads = VITS[name]
    patch = patch_size or default_patch_size(image_size)
    if patch < 1 or image_size % patch != 0:
        raise MedsslError(f"image size {image_size} is not a multiple of the ViT patch size {patch}")
    if depth is not None and depth < 1:
        raise MedsslError(f"ViT depth must be at least 1, got {depth}")
    return ViT(image_size, patch, in_channels, dim, depth or default_depth, heads)


def create_backbone(name: str, in_channels: int = 1, image_size: int = 64, stem: str | None = None,
                    patch_size: int | None = None, depth: int | None = None,
                    width: int | None = None) -> tuple[nn.Module, int]:
    """Backbone by name -> (module mapping (B, C, H, W) to (B, feature_dim), feature_dim).

    name: resnet18, resnet34, resnet50 (stem: 'cifar', 'small' or 'imagenet', chosen from image_size when None;
    width: the first stage's channels, 64 when None) or vit_tiny, vit_small (patch_size chosen from image_size when
    None; depth overrides the 12 blocks).
    """
    if name not in BACKBONES:
        raise MedsslError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}")
    if in_channels < 1 or image_size < 1:
        raise MedsslError(f"in_channels and image_size must be positive, got {in_channels} and {image_size}")
    if name in VITS:
        given = ", ".join(f"{k} {v!r}" for k, v in (("stem", stem), ("width", width)) if v is not None)
        if given:
            raise MedsslError(f"{given}: stem and width apply to ResNets, not to {name}")
        model = _build_vit(name, in_channels, image_size, patch_size, depth)
        return model, model.feature_dim
    if patch_size is not None or depth is not None:
        raise MedsslError(f"patch_size and depth apply to ViTs, not to {name}")
    stem = stem or default_stem(image_size)
    if stem not in STEMS:
        raise MedsslError(f"unknown stem {stem!r}; known: {', '.join(STEMS)}")
    if width is not None and not 4 <= width <= 512:
        raise MedsslError(f"width {width}: the first stage's channels, 4 to 512 (64 in the papers)")
    model = ResNet(name, in_channels, stem, 64 if width is None else width)
    return model, model.feature_dim

