"""Self-supervised methods: one nn.Module each, forward(batch) -> dict with "loss".

METHODS is the one list of them (no registry decorators); BATCH_KEYS tells the data layer what each batch holds.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from medssl.errors import MedsslError
from medssl.methods.byol import BYOL
from medssl.methods.mae import MAE
from medssl.methods.micle import MICLe
from medssl.methods.moco import MoCo
from medssl.methods.simclr import SimCLR
from medssl.models.backbones import create_backbone

METHODS: dict[str, type[nn.Module]] = {"simclr": SimCLR, "micle": MICLe, "moco": MoCo, "byol": BYOL, "mae": MAE}

# method -> batch keys, each (B, C, H, W); MICLe's view1 and view2 are two images of one patient
BATCH_KEYS: dict[str, tuple[str, ...]] = {
    "simclr": ("view1", "view2"),
    "micle": ("view1", "view2"),
    "moco": ("view1", "view2"),
    "byol": ("view1", "view2"),
    "mae": ("image",),
}


def build_method(name: str, backbone_name: str, in_channels: int, image_size: int,
                 backbone_options: Mapping[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Backbone + method by name; backbone_options go to create_backbone (stem, patch_size, depth), kwargs to the
    method's constructor (e.g. temperature=0.2)."""
    if name not in METHODS:
        raise MedsslError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    cls = METHODS[name]
    known = set(inspect.signature(cls).parameters) - {"backbone", "feature_dim"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise MedsslError(f"unknown option(s) {', '.join(unknown)} for method {name!r}; "
                          f"known: {', '.join(sorted(known))}")
    backbone, feature_dim = create_backbone(backbone_name, in_channels, image_size, **(backbone_options or {}))
    return cls(backbone, feature_dim, **kwargs)
