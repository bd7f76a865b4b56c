"""MAE (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners"), after facebookresearch/mae.

The ViT encoder sees only the visible patches (25 % by default); a light decoder gets the encoded patches back
in place, mask tokens elsewhere, and predicts the pixels of every patch; the loss counts the masked patches only.
forward_encoder -> forward_decoder -> forward_loss, as in models_mae.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from medssl.data.datasets import ONE_IMAGE
from medssl.errors import MedsslError
from medssl.losses import masked_mse
from medssl.models.backbones import TransformerBlock, ViT, init_transformer_weights, sincos_pos_embed_2d
from medssl.models.factory import ModelSpec, build_backbone
from medssl.models.trainable import Trainable
from medssl.schema import bad, check_positive


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p * p * C) patches in row-major order."""
    return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch_size, q=patch_size)


def unpatchify(patches: Tensor, patch_size: int, grid_size: int) -> Tensor:
    """(B, N, p * p * C) -> (B, C, H, W); the inverse of patchify for a square grid."""
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_size, p=patch_size, q=patch_size)


def random_masking(batch_size: int, num_patches: int, mask_ratio: float, device: torch.device | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking by sorting uniform noise -> ids_keep (B, K), mask (B, N) 1 = masked, ids_restore.

    Exactly int(N * (1 - mask_ratio)) patches are kept in every sample.
    """
    keep = int(num_patches * (1 - mask_ratio))
    noise = torch.rand(batch_size, num_patches, device=device)
    ids_shuffle = noise.argsort(dim=1)                          # ascending: the first `keep` are kept
    ids_restore = ids_shuffle.argsort(dim=1)                    # position of every patch in the shuffled order
    mask = torch.ones(batch_size, num_patches, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


class MAEDecoder(nn.Module):
    """Light transformer decoder: encoded visible tokens + mask tokens -> pixels of every patch."""

    def __init__(self, encoder_dim: int, grid_size: int, patch_dim: int, dim: int = 128,
                 depth: int = 2, num_heads: int = 4):
        super().__init__()
        if dim % num_heads or dim % 4:
            raise MedsslError(f"MAE decoder_dim {dim} must be divisible by 4 and by decoder_heads {num_heads}")
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.cat([torch.zeros(1, dim), sincos_pos_embed_2d(dim, grid_size)])
        self.register_buffer("pos_embed", pos[None], persistent=False)   # (1, 1 + N, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, 1 + K, D_enc), ids_restore (B, N) -> predicted patches (B, N, patch_dim)."""
        x = self.embed(latent)                                  # (B, 1 + K, dim)
        b, n = ids_restore.shape
        masks = self.mask_token.expand(b, n - (x.shape[1] - 1), -1)           # (B, N - K, dim)
        x_ = torch.cat([x[:, 1:], masks], dim=1)                # (B, N, dim), in shuffled order
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))  # back in place
        x = torch.cat([x[:, :1], x_], dim=1) + self.pos_embed  # class token first
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]                   # (B, N, patch_dim)


@dataclass
class MAEOptions:
    """MAE's options (`model.options` in a config)."""

    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def validate(self) -> None:
        """Raise MedsslError naming a bad value."""
        check_positive(self, "model.options", ("decoder_dim", "decoder_depth", "decoder_heads"))
        if not 0 < self.mask_ratio < 1:
            raise bad("model.options.mask_ratio", self.mask_ratio, "must be between 0 and 1 (exclusive)")


class MAE(Trainable):
    """Masked autoencoder on a ViT backbone ('vit_tiny', 'vit_small'). Batch key: image (B, C, H, W).

    norm_pix_loss: targets are the pixels of each patch normalised by that patch's mean and variance.
    """

    Options = MAEOptions
    batch = ONE_IMAGE

    @classmethod
    def build(cls, spec: ModelSpec) -> "MAE":
        """Fresh ViT backbone + decoder, from the spec and its MAEOptions."""
        o = spec.options or cls.Options()
        return cls(build_backbone(spec), o.mask_ratio, o.decoder_dim, o.decoder_depth, o.decoder_heads,
                   o.norm_pix_loss)

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 128,
                 decoder_depth: int = 2, decoder_heads: int = 4, norm_pix_loss: bool = True):
        super().__init__()
        if not isinstance(backbone, ViT):
            raise MedsslError(f"MAE needs a ViT backbone (vit_tiny, vit_small), got {type(backbone).__name__}")
        if not 0 < mask_ratio < 1:
            raise MedsslError(f"MAE mask_ratio must be between 0 and 1 (exclusive), got {mask_ratio}")
        self.backbone = backbone                                # kept for evaluation; the decoder is dropped
        self.patch_size, self.grid_size = backbone.patch_size, backbone.grid_size
        self.decoder = MAEDecoder(backbone.feature_dim, backbone.grid_size,
                                  backbone.patch_size**2 * backbone.in_channels, decoder_dim, decoder_depth,
                                  decoder_heads)
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss

    def forward_encoder(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images -> latent (B, 1 + K, D) of the visible patches, mask (B, N) 1 = masked, ids_restore (B, N)."""
        ids_keep, mask, ids_restore = random_masking(images.shape[0], self.backbone.num_patches, self.mask_ratio,
                                                     images.device)
        return self.backbone.forward_features(images, ids_keep), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor) -> Tensor:
        """latent (B, 1 + K, D) -> predicted patches (B, N, p * p * C)."""
        return self.decoder(latent, ids_restore)

    def patch_targets(self, images: Tensor) -> Tensor:
        """images -> target patches (B, N, p * p * C), normalised per patch when norm_pix_loss."""
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        return target

    def forward_loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches only."""
        return masked_mse(pred, self.patch_targets(images), mask)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss and the measured mask ratio."""
        images = batch["image"]
        latent, mask, ids_restore = self.forward_encoder(images)
        pred = self.forward_decoder(latent, ids_restore)
        return {"loss": self.forward_loss(images, pred, mask), "mask_ratio": mask.mean()}

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images -> (reconstruction, mask image), both (B, C, H, W): visible patches are copied from the input,
        masked ones predicted (in pixel units: with norm_pix_loss, de-normalised by the true patch statistics)."""
        latent, mask, ids_restore = self.forward_encoder(images)
        pred = self.forward_decoder(latent, ids_restore)        # (B, N, P)
        patches = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = patches.mean(dim=-1, keepdim=True), patches.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        m = mask[..., None]                                     # (B, N, 1)
        recon = unpatchify(patches * (1 - m) + pred * m, self.patch_size, self.grid_size)
        return recon, unpatchify(m.expand_as(patches), self.patch_size, self.grid_size)
