"""Data-layer throughput: reading PNG and DICOM, the synthetic generator, and the chest X-ray augmentation.

Prints one JSON object (and writes it with --json PATH). Per-core figures run with one thread.
Target (issue 2): augmentation >= 2,000 images/s per core on batches of 256 at 64 px.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medssl.data import io
from medssl.data.augment import Augment, preset
from medssl.synthetic import generate


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__}


def rate(fn, n_items: int, min_seconds: float = 1.0) -> float:
    """Items per second of fn() (which handles n_items), repeated until min_seconds have passed."""
    fn()  # warm-up: caches, lazy imports
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_items
    return done / (time.perf_counter() - t0)


def write_dicoms(folder: Path, images: np.ndarray) -> list[Path]:
    """Uncompressed 16-bit MONOCHROME2 DICOM files (CR, with rescale and a window) from float images."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    paths = []
    for i, img in enumerate(images):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientID, ds.StudyInstanceUID, ds.Modality, ds.ViewPosition = f"P{i}", generate_uid(), "CR", "PA"
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PixelData = (img * 4095).astype(np.uint16).tobytes()
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def bench_readers(size: int, n: int) -> dict:
    """Images/s for reading n PNG (8 and 16 bit) and n DICOM files of size x size, one thread."""
    rng = np.random.default_rng(0)
    imgs = rng.random((n, size, size)).astype(np.float32)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        png8 = [tmp / f"{i}.png" for i in range(n)]
        png16 = [tmp / f"{i}_16.png" for i in range(n)]
        for i in range(n):
            Image.fromarray((imgs[i] * 255).astype(np.uint8)).save(png8[i])
            Image.fromarray((imgs[i] * 65535).astype(np.uint16)).save(png16[i])
        dcm = write_dicoms(tmp, imgs)
        for name, paths in (("png8", png8), ("png16", png16), ("dicom16", dcm)):
            out[f"read_{name}_{size}px_per_s"] = round(rate(lambda p=paths: [io.read_image(x) for x in p], n), 1)
    return out


def bench_real_dicom() -> dict:
    """Images/s for the real CR chest radiographs shipped with pydicom-data (1955 x 1841, MONOCHROME1)."""
    try:
        import data_store
    except ImportError:
        return {"real_dicom": "pydicom-data not installed"}
    folder = Path(data_store.__file__).parent / "data"
    out = {}
    for name in ("RG1_UNCR.dcm", "RG1_J2KR.dcm"):
        if (folder / name).is_file():
            out[f"read_{name}_per_s"] = round(rate(lambda p=folder / name: io.read_image(p), 1), 2)
    return out


def bench_synthetic(size: int) -> dict:
    """Synthetic chest radiographs per second (one thread), frontal + lateral views included."""
    n_patients = 50
    n_images = len(generate(n_patients, size, seed=0).images)
    return {f"synthetic_{size}px_per_s": round(rate(lambda: generate(n_patients, size, seed=0), n_images), 1)}


def bench_augment(size: int, batch: int, threads: int) -> float:
    """Chest X-ray augmentation images/s on (batch, 1, size, size) with `threads` torch threads."""
    torch.set_num_threads(threads)
    aug = Augment(preset("chest_xray", size), seed=0)
    x = torch.rand(batch, 1, size, size)
    with torch.inference_mode():
        return rate(lambda: aug(x), batch, min_seconds=2.0)


def main() -> None:
    """Run every figure and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", help="also write the JSON here")
    ap.add_argument("--n", type=int, default=200, help="files per reader benchmark")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"benchmark": "data_throughput", "machine": machine()}
    for size in (64, 512):
        result.update(bench_readers(size, args.n if size == 64 else max(20, args.n // 10)))
    result.update(bench_real_dicom())
    result.update(bench_synthetic(64))
    for threads in (1, os.cpu_count() or 1):
        result[f"augment_chest_xray_64px_b256_{threads}thread_per_s"] = round(bench_augment(64, 256, threads), 1)
    per_core = result["augment_chest_xray_64px_b256_1thread_per_s"]
    result["augment_per_core_target"] = 2000
    result["augment_per_core_meets_target"] = per_core >= 2000
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
