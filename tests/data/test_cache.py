"""The decoded-image cache: built once, reused, invalidated per file, resumable after a kill, shared by workers."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medssl.data import cache as C
from medssl.data.datasets import ImageDataset
from medssl.data.preprocess import Preprocess
from medssl.data.records import Record

from tests.test_cli import one_error_line

ROOT = Path(__file__).resolve().parents[2]


def _pngs(folder: Path, n: int, side: int = 24, seed: int = 0) -> list[Record]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        path = folder / f"img{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(path)
        out.append(Record(path=str(path), patient_id=f"p{i}"))
    return out


def _same_as_decoding(found: C.Cached, size: int) -> bool:
    pre = Preprocess(size)
    return all(torch.equal(found.images[row], pre.decode(r)) for r, row in zip(found.records, found.rows.tolist()))


def test_built_once_then_reused_and_invalidated_per_file(tmp_path):
    records = _pngs(tmp_path / "src", 12)
    first = C.cached_images(records, 16, tmp_path / "src", progress=False)
    assert first.decoded == 12 and first.images.shape == (12, 1, 16, 16) and _same_as_decoding(first, 16)
    again = C.cached_images(records, 16, tmp_path / "src", progress=False)
    assert again.decoded == 0 and torch.equal(again.images, first.images)
    # one file changes (new pixels and mtime), one is added: only they are decoded, the changed one in its own row
    time.sleep(0.01)
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(records[3].path)
    more = records + _pngs(tmp_path / "more", 1, seed=1)
    found = C.cached_images(more, 16, tmp_path / "src", progress=False)
    assert found.decoded == 2 and found.rows.tolist() == list(range(13)) and _same_as_decoding(found, 16)
    assert int(found.images[3].sum()) == 0
    # another size is another cache; the records' order does not matter
    other = C.cached_images(list(reversed(records)), 8, tmp_path / "src", progress=False)
    assert other.decoded == 12 and other.folder != found.folder and _same_as_decoding(other, 8)


def test_unreadable_files_are_named_or_skipped_and_remembered(tmp_path):
    records = _pngs(tmp_path / "src", 6)
    Path(records[2].path).write_bytes(b"not a png")
    with pytest.raises(C.MedsslError, match=r"img00002.png: not a readable .*--skip-bad"):
        C.cached_images(records, 16, tmp_path / "src", progress=False)
    found = C.cached_images(records, 16, tmp_path / "src", skip_bad=True, progress=False)
    assert found.decoded == 0                                   # the failed build committed what it read
    assert [r.path for r in found.records] == [r.path for i, r in enumerate(records) if i != 2]
    assert len(found.bad) == 1 and found.bad[0][0] == records[2].path and _same_as_decoding(found, 16)
    os.remove(records[4].path)                                  # a file gone since: an error, not stale pixels
    found = C.cached_images(records, 16, tmp_path / "src", skip_bad=True, progress=False)
    assert [p for p, _ in found.bad] == [records[2].path, records[4].path] and "no such file" in found.bad[1][1]


def test_where_it_lives(tmp_path, monkeypatch):
    monkeypatch.delenv(C.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    src = tmp_path / "data"
    src.mkdir()
    assert C.cache_root(src) == src / C.BESIDE                 # beside the data when writable
    assert C.cache_root(src / "manifest.csv") == src / C.BESIDE
    assert C.cache_root(src, tmp_path / "mine") == tmp_path / "mine"
    src.chmod(0o555)
    try:
        if not os.access(src, os.W_OK):                         # (root writes anywhere: nothing to check then)
            assert C.cache_root(src) == tmp_path / "home" / "medssl"
    finally:
        src.chmod(0o755)
    monkeypatch.setenv(C.ENV, str(tmp_path / "env"))
    assert C.cache_root(src) == tmp_path / "env" and C.enabled()
    monkeypatch.setenv(C.ENV, "off")
    assert not C.enabled() and C.cache_root(src) == src / C.BESIDE
    assert not C.enabled("off")


def test_a_pool_decodes_the_same_pixels(tmp_path):
    records = _pngs(tmp_path / "src", 40)
    pooled = C.cached_images(records, 16, tmp_path / "src", progress=False, workers=2, cache=tmp_path / "a")
    serial = C.cached_images(records, 16, tmp_path / "src", progress=False, workers=1, cache=tmp_path / "b")
    assert pooled.decoded == serial.decoded == 40
    assert torch.equal(pooled.images[pooled.rows], serial.images[serial.rows]) and _same_as_decoding(pooled, 16)
    assert json.loads((pooled.folder / "manifest.json").read_text())["workers"] == 2


def test_a_killed_build_is_never_trusted_and_resumes(tmp_path):
    records = _pngs(tmp_path / "src", 600, side=16)
    script = tmp_path / "build.py"
    script.write_text(f"""
import time
from medssl.data import cache, preprocess
from medssl.data.sources import load_source
slow = preprocess.Preprocess.decode
def decode(self, source):
    time.sleep(0.004)
    return slow(self, source)
preprocess.Preprocess.decode = decode
cache.CHUNK = 32
records = [r for r in load_source({str(tmp_path / 'src')!r}, progress=False)[0]]
cache.cached_images(records, 16, {str(tmp_path / 'src')!r}, progress=False, workers=1, cache={str(tmp_path / 'c')!r})
""")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    folder = C.cache_dir(tmp_path / "src", 16, tmp_path / "c")
    deadline = time.time() + 120
    while not (folder / "progress.npz").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (folder / "progress.npz").is_file() and not (folder / "manifest.json").exists()
    assert len(C._trusted(folder, 16)) == 0                     # nothing a later run would take as complete
    done = sum(C.Index.load(folder / "progress.npz", 16).ok)
    assert 0 < done < 600
    from medssl.data.sources import load_source

    again = load_source(tmp_path / "src", progress=False)[0]
    found = C.cached_images(again, 16, tmp_path / "src", progress=False, workers=1, cache=tmp_path / "c")
    assert found.decoded == 600 - done and len(found.records) == 600 and _same_as_decoding(found, 16)
    assert not (folder / "progress.npz").exists() and (folder / "manifest.json").is_file()


def test_another_reader_version_rebuilds(tmp_path, monkeypatch):
    records = _pngs(tmp_path / "src", 5)
    C.cached_images(records, 16, tmp_path / "src", progress=False)
    monkeypatch.setattr(C, "READER", C.READER + 1)
    assert C.cached_images(records, 16, tmp_path / "src", progress=False).decoded == 5


def test_image_dataset_maps_the_cache_and_travels_as_a_file_name(tmp_path):
    records = _pngs(tmp_path / "src", 30)
    subset = records[5:25]                                      # e.g. the train split of the source's records
    ds = ImageDataset(subset, Preprocess(16), source=tmp_path / "src")
    memory = ImageDataset(subset, Preprocess(16))
    assert ds.mapped is not None and memory.mapped is None
    idx = np.array([0, 7, 19, 3])
    assert torch.equal(ds.batch(idx), memory.batch(idx)) and torch.equal(ds[4], memory[4])
    blob = pickle.dumps(ds)                                     # what a spawned loader worker receives
    assert len(blob) < 16 * 16 * len(subset)                    # the rows' pixels are not in it
    back = pickle.loads(blob)
    assert torch.equal(back.batch(idx), memory.batch(idx))
    assert ImageDataset(subset, Preprocess(16), source=tmp_path / "src", cache="off").mapped is None


def test_cli_builds_reports_and_clears(cli, tmp_path):
    _pngs(tmp_path / "src", 10)
    code, out, err = cli("data", "cache", tmp_path / "src", "--size", 16, "--cache", tmp_path / "c", "--quiet")
    assert code == 0, err
    assert "10 images at 16 px" in out and "10 decoded now" in out
    code, out, err = cli("data", "cache", tmp_path / "src", "--size", 16, "--cache", tmp_path / "c", "--quiet")
    assert code == 0 and "0 decoded now" in out and "10 from the cache" in out
    code, out, err = cli("data", "cache", "--clear", "--cache", tmp_path / "c")
    assert code == 0 and "removed 1 cache folder" in out and not list((tmp_path / "c").glob("*px*"))
    code, out, err = cli("data", "cache", tmp_path / "src", "--quiet")
    assert code == 2
    one_error_line(err, "give a SOURCE and --size N")
    code, out, err = cli("data", "cache", tmp_path / "nowhere", "--size", 16, "--quiet")
    assert code == 2
    one_error_line(err, "nowhere: no such file or folder")


def test_a_second_pretrain_on_the_same_source_decodes_nothing(cli, tmp_path):
    _pngs(tmp_path / "src", 40)
    args = ["pretrain", "--config", ROOT / "configs" / "simclr.yaml", "--data", tmp_path / "src", "--quiet",
            "--set", "data.size=16", "--set", "data.batch_size=16", "--set", "train.steps=1", "--set",
            "model.width=8", "--set", "data.num_workers=0", "--set", f"data.cache={tmp_path / 'c'}"]
    code, out, err = cli(*args, "--out", tmp_path / "r1")
    assert code == 0, err
    folder = next((tmp_path / "c").glob("src-16px-*"))
    written = json.loads((folder / "manifest.json").read_text())["written"]
    time.sleep(1.1)
    code, out, err = cli(*args, "--out", tmp_path / "r2")
    assert code == 0, err
    assert json.loads((folder / "manifest.json").read_text())["written"] == written   # nothing was decoded again


def test_cache_off_in_a_config_means_off(tmp_path):
    from medssl.config import load_config

    assert load_config(None, ["data.cache=off"]).data.cache == "off"       # YAML reads a bare off as false
    assert load_config(None, [f"data.cache={tmp_path}"]).data.cache == str(tmp_path)


def test_report_studies_read_the_same_images_through_the_cache(tmp_path, monkeypatch):
    from medssl.report.studies import load_studies
    from medssl.synthetic.builtin import builtin_source

    monkeypatch.setenv(C.ENV, str(tmp_path / "c"))
    manifest = builtin_source(tmp_path / "syn", size=16, patients=20, seed=0, progress=False)
    cached = load_studies(manifest, Preprocess(16), views=2, progress=False)
    assert (next((tmp_path / "c").glob("manifest-16px-*")) / "manifest.json").is_file()   # through the cache
    monkeypatch.setenv(C.ENV, "off")
    plain = load_studies(manifest, Preprocess(16), views=2, progress=False)
    assert torch.equal(cached.images, plain.images)
    assert [st.images for s in cached.studies for st in cached.studies[s]] == \
        [st.images for s in plain.studies for st in plain.studies[s]]
