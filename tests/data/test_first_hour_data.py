"""A new user's first hour: README, install, `medssl data info` and the demo's help and sample montage (issue 10)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medssl.cli import build_parser
from medssl.data.records import Record
from medssl.data.summary import format_summary, summarize

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECRET_NAME = "Doe^Jane"


# ---------------------------------------------------------------- README, pyproject, Makefile (item 8)

def test_readme_links_and_files_exist():
    """Every relative link of the README, and every repository file it names in backticks, is in the checkout."""
    links = re.findall(r"\]\(([^)#]+)\)", README)
    named = re.findall(r"`((?:docs|configs|bench|tests|src)/[\w./-]+\.(?:md|py|yaml))`", README)
    assert links and named
    for rel in links + named:
        if not rel.startswith(("http://", "https://")):
            assert (ROOT / rel).exists(), rel
    assert "DESIGN.md" not in README  # the design notes live outside the repository


def test_readme_python_version_is_the_one_pyproject_requires():
    claimed = set(re.findall(r"Python (3\.\d+)", README))
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert claimed == {"3.11"} and required == ">=3.11"


def test_readme_npz_examples_name_where_the_file_is():
    """No bare `x.npz` in a command example: each is ../shared/data/NAME, and that file exists when the folder does."""
    code = "\n".join(re.findall(r"```bash\n(.*?)```", README, flags=re.S))
    paths = re.findall(r"[\w./-]+\.npz", code)
    assert paths
    for p in paths:
        assert p.startswith("../shared/data/"), p
        if (ROOT / "../shared/data").is_dir():
            assert (ROOT / p).is_file(), p
    assert "medmnist" in README.lower()  # where PneumoniaMNIST comes from on another machine


def _make_dry_run(*args: str, env: dict | None = None) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # -n: print the commands without running any; -B: as if nothing were built yet (a fresh clone)
    run = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), *args], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _pip_torch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if "pip install" in line and "torch" in line]


def test_makefile_torch_is_a_variable_with_this_machines_default():
    cuda = "torch==2.5.1 --index-url https://download.pytorch.org/whl/cu121"
    assert _pip_torch_lines(_make_dry_run("demo")) == [".venv/bin/pip install torch==2.13.0"]
    assert _pip_torch_lines(_make_dry_run("test", f"TORCH={cuda}")) == [f".venv/bin/pip install {cuda}"]
    cpu = "torch==2.5.1 --index-url https://download.pytorch.org/whl/cpu"
    assert _pip_torch_lines(_make_dry_run("demo", env={"TORCH": cpu})) == [f".venv/bin/pip install {cpu}"]
    assert "TORCH=" in README and "whl/cpu" in README and "whl/cu" in README


# ---------------------------------------------------------------- medssl data info (item 9)

def _nifti(path: Path, slices: int = 5) -> Path:
    vol = np.arange(12 * 10 * slices, dtype=np.int16).reshape(12, 10, slices)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    return path


def _dicom(path: Path, modality: str, rows: int = 8, cols: int = 6) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = modality, SECRET_NAME, "P77", "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * cols, dtype=np.uint16) * 50).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_info_counts_every_slice_of_a_nifti_volume(cli, tmp_path):
    vol = _nifti(tmp_path / "head.nii.gz")
    code, out, err = cli("data", "info", vol, "--json", tmp_path / "i.json", "--quiet")
    info = json.loads((tmp_path / "i.json").read_text())
    assert code == 0, err
    assert info["images"] == 5 and info["image_sizes"] == {"12x10": 5} and info["formats"] == {"nifti": 5}
    assert "12x10 (5)" in out


def test_info_shows_the_dicom_modality_and_no_patient_name(cli, tmp_path):
    _dicom(tmp_path / "a.dcm", "MR")
    _dicom(tmp_path / "b.dcm", "CT", rows=6, cols=6)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "c.png")
    code, out, err = cli("data", "info", tmp_path, "--json", tmp_path / "i.json", "--quiet")
    text = (tmp_path / "i.json").read_text()
    info = json.loads(text)
    assert code == 0, err
    assert info["modalities"] == {"CT": 1, "MR": 1, "unknown": 1}
    assert re.search(r"modality\s+CT 1, MR 1, unknown 1", out)
    assert all(s not in out + err + text for s in (SECRET_NAME, "Doe", "19700101"))


def test_info_says_how_many_sizes_the_terminal_list_leaves_out(cli, tmp_path):
    for k in range(12):  # 12 distinct sizes, one image each, plus two more of the first size
        for copy in range(3 if k == 0 else 1):
            Image.fromarray(np.zeros((8 + k, 8), np.uint8)).save(tmp_path / f"s{k}_{copy}.png")
    code, out, err = cli("data", "info", tmp_path, "--json", tmp_path / "i.json", "--quiet")
    info = json.loads((tmp_path / "i.json").read_text())
    assert code == 0, err
    assert len(info["image_sizes"]) == 12 and sum(info["image_sizes"].values()) == info["images"] == 14
    assert next(iter(info["image_sizes"].items())) == ("8x8", 3)  # most common first
    assert "and 2 more sizes (2 images)" in out


def test_summary_says_when_sizes_come_from_only_some_headers(tmp_path):
    for k in range(4):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / f"{k}.png")
    recs = [Record(str(tmp_path / f"{k}.png"), f"P{k}") for k in range(4)]
    s = summarize(recs, progress=False, header_limit=3)
    assert s["image_sizes"] == {"8x8": 3} and s["headers_read"] == 3 and s["files"] == 4
    assert "headers of 3 of 4 files (3 images)" in format_summary(s, "four")


# ---------------------------------------------------------------- help (item 10)

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_demo_and_data_option_has_help():
    top = _subparsers(build_parser())
    parsers = {"demo": top["demo"], "run": top["run"], **{f"data {k}": v for k, v in _subparsers(top["data"]).items()}}
    assert set(parsers) == {"demo", "run", "data synth", "data index", "data info", "data split", "data cache"}
    for name, parser in parsers.items():
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}: no help"


def test_demo_help_states_the_defaults_the_demo_uses():
    from medssl.cli import DEMO_FLAGS
    from medssl.pipeline_config import RunConfig, to_dict

    d = to_dict(RunConfig())
    demo = _subparsers(build_parser())["demo"]
    helps = {a.dest: a.help for a in demo._actions}
    for name in ("patients", "size", "seed", "pretrain_steps", "finetune_steps", "seeds"):
        section, key = DEMO_FLAGS[name].split(".")
        assert f"default {d[section][key]})" in helps[name], (name, helps[name])


def test_top_level_and_demo_help_list_examples(cli, capsys):
    for args in (["--help"], ["demo", "--help"]):
        with pytest.raises(SystemExit) as stop:
            build_parser().parse_args(args)
        out = capsys.readouterr().out
        assert stop.value.code == 0
        examples = out.split("examples:", 1)[1]
        lines = [line.strip() for line in examples.splitlines() if line.strip().startswith("medssl ")]
        assert len(lines) >= 3, out
        assert any(line.startswith("medssl demo ") for line in lines)
    top = build_parser()
    assert top.formatter_class is argparse.RawDescriptionHelpFormatter
    assert _subparsers(top)["demo"].formatter_class is argparse.RawDescriptionHelpFormatter


# ---------------------------------------------------------------- samples.png (item 11)

def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_montage_titles_neither_overlap_nor_leave_the_figure(tmp_path):
    from medssl.data.plots import montage_figure

    for k in range(3):
        Image.fromarray(np.full((16, 16), 60 * k, np.uint8)).save(tmp_path / f"{k}.png")
    long = ("pleural_effusion", "nodule", "atelectasis", "cardiomegaly")
    recs = [Record(str(tmp_path / f"{k % 3}.png"), f"P{k}", view="LATERAL" if k % 2 else "PA",
                   labels=long if k in (6, 7, 8) else ("no_finding",)) for k in range(16)]
    fig = montage_figure(recs, n=16)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_title()]
    titles = [ax.title.get_window_extent(renderer) for ax in axes]
    panels = [ax.get_window_extent(renderer) for ax in axes]
    assert len(titles) == 16
    page = fig.bbox
    for i, a in enumerate(titles):
        assert page.x0 <= a.x0 and a.x1 <= page.x1 and page.y0 <= a.y0 and a.y1 <= page.y1
        for j in range(16):  # a title meets no other title and no other image (the row above included)
            assert j == i or not (_overlaps(a, titles[j]) or _overlaps(a, panels[j])), (i, j)
    texts = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "pleural effusion" in texts[6] and "cardiomegaly" in texts[6]  # wrapped, nothing dropped
    import matplotlib.pyplot as plt

    plt.close(fig)
