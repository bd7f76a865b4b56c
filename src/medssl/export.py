"""Export of a trained backbone alone: safetensors (state dict + the spec as metadata), TorchScript, ONNX."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from medssl import __version__
from medssl.errors import MedsslError
from medssl.inference import Bundle, load_bundle

EXPORT_FORMATS = ("safetensors", "torchscript", "onnx")


def _example(bundle: Bundle) -> Tensor:
    p = bundle.preprocess
    return torch.rand(2, p.channels, p.size, p.size, generator=torch.Generator().manual_seed(0))


def export(src: str | os.PathLike, fmt: str, out: str | os.PathLike) -> Path:
    """Write the backbone of a run (or bundle) as safetensors, TorchScript (traced) or ONNX; return the file."""
    if fmt not in EXPORT_FORMATS:
        raise MedsslError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    bundle = load_bundle(src)
    backbone = bundle.model.backbone if bundle.is_classifier else bundle.model
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = _example(bundle)
    if fmt == "safetensors":
        _export_safetensors(backbone, bundle, out)
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(backbone, example), str(out))
    else:
        _export_onnx(backbone, example, out)
    return out


def _export_safetensors(backbone: nn.Module, bundle: Bundle, out: Path) -> None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise MedsslError("safetensors export needs the 'safetensors' package (pip install safetensors)") from None
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    # enough to rebuild the module: ModelSpec.from_dict(json.loads(meta["spec"])) -> models.factory.build_backbone
    meta = {"spec": json.dumps(bundle.spec.bare().to_dict()), "preprocess": json.dumps(bundle.preprocess.to_dict()),
            "feature_dim": str(getattr(backbone, "feature_dim", "")), "medssl_version": __version__}
    save_file(state, str(out), metadata=meta)


def _export_onnx(backbone: nn.Module, example: Tensor, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch's exporter needs it; say so before torch fails deep inside)
    except ImportError:
        raise MedsslError("ONNX export needs the 'onnx' package (pip install onnx)") from None
    with torch.no_grad():
        torch.onnx.export(backbone, (example,), str(out), dynamo=False, input_names=["image"],
                          output_names=["features"], dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=17)
