"""The decoded-image cache: every image of a source decoded once per image size into one uint8 array on disk, which
every later run, command, loader worker and DDP rank memory-maps (they share the page cache's pages, not copies).

Why a plain numpy memmap and not zarr or LMDB: the images of one (source, size) are fixed-size rows, read by row
index; a raw (rows, size, size) uint8 file is that with no dependency, no per-read decoding and no per-row
overhead, and the OS page cache makes it shared memory for free. Compression would save disk but cost every read.

One cache folder per (source, size) holds:
- `images.u8`: rows x size x size uint8 (a row per image, in the order first decoded; rows are appended, never
  moved);
- `index.npz`: per row the record key (path and frame), the file's size and mtime (ns) when decoded, whether it
  decoded, and the reader's error if not;
- `manifest.json`: format and reader versions, size, rows, source; written last, atomically: a folder without it
  (or whose versions differ) is never trusted;
- `progress.npz`: during a build only, the rows decoded so far (written after their pixels are flushed), so a
  killed build resumes where it stopped;
- `lock`: an exclusive flock while a process checks or builds; others wait for it.

A later open stats every file: rows whose file changed are decoded again in place, new files are appended, and
nothing else is read. The cache lives beside the data when that folder is writable, else under $MEDSSL_CACHE or
~/.cache/medssl; `cache=` (--cache) names the root outright, and "off" (or MEDSSL_CACHE=off) decodes into memory
every time instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from medssl.data.records import Record
from medssl.errors import MedsslError

FORMAT = 1  # the folder's layout
READER = 1  # bump when a reader or Preprocess.decode changes its output: every cache is then rebuilt
ENV = "MEDSSL_CACHE"
BESIDE = ".medssl-cache"
CHUNK = 256  # rows per pool task and per progress write
SERIAL_BELOW = 1024  # fewer images to decode than this: in this process (a pool's start-up costs more)


def _key(r: Record) -> str:
    return f"{r.path}#{'' if r.index is None else r.index}"


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def enabled(cache: str | os.PathLike | None = None) -> bool:
    """Whether images go through the cache: not when cache (data.cache / --cache) or $MEDSSL_CACHE is "off"."""
    return str(cache) != "off" and os.environ.get(ENV) != "off"


def cache_root(source: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """Where the caches of a source live: `cache` if given, else $MEDSSL_CACHE, else beside the data when its
    folder is writable, else ~/.cache/medssl."""
    if cache is not None:
        return Path(cache)
    if os.environ.get(ENV) and os.environ[ENV] != "off":
        return Path(os.environ[ENV])
    src = Path(source)
    folder = src if src.is_dir() else src.parent
    if _writable(folder):
        return folder / BESIDE
    return user_root()


def user_root() -> Path:
    """$MEDSSL_CACHE, else ~/.cache/medssl (XDG_CACHE_HOME respected)."""
    if os.environ.get(ENV) and os.environ[ENV] != "off":
        return Path(os.environ[ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medssl"


def cache_dir(source: str | os.PathLike, size: int, cache: str | os.PathLike | None = None) -> Path:
    """The folder of one (source, size): named after the source, with a hash of its absolute path."""
    src = Path(source).resolve()
    digest = hashlib.sha1(str(src).encode()).hexdigest()[:10]
    return cache_root(source, cache) / f"{src.stem or 'root'}-{size}px-{digest}"


@contextlib.contextmanager
def _locked(folder: Path, progress: bool) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process building {folder} ...", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _blob(texts: Sequence[str]) -> np.ndarray:
    """Strings as one NUL-separated UTF-8 byte array (a fixed-width numpy string array of a million paths would
    take the longest path's width for every row)."""
    return np.frombuffer("\0".join(texts).encode("utf-8"), dtype=np.uint8)


def _unblob(blob: np.ndarray, n: int) -> list[str]:
    return blob.tobytes().decode("utf-8").split("\0") if n else []


@dataclass
class Index:
    """Per row: record key, file size and mtime at decoding (-2: not decoded yet), decoded or not, the error."""

    keys: list[str]
    sizes: list[int]
    mtimes: list[int]
    ok: list[bool]
    errors: list[str]

    @classmethod
    def empty(cls) -> "Index":
        return cls([], [], [], [], [])

    @classmethod
    def load(cls, path: Path, size: int) -> "Index":
        """The index saved at path; ValueError when it is damaged or of another format, reader or image size."""
        with np.load(path, allow_pickle=False) as z:
            if z["meta"].tolist() != [FORMAT, READER, size]:
                raise ValueError(f"{path}: another format, reader or size")
            n = len(z["sizes"])
            index = cls(_unblob(z["keys"], n), z["sizes"].tolist(), z["mtimes"].tolist(), z["ok"].tolist(),
                        _unblob(z["errors"], n))
        if not len(index.keys) == len(index.errors) == n:
            raise ValueError(f"{path}: inconsistent index")
        return index

    def save(self, path: Path, size: int) -> None:
        """Atomically (temporary file, fsync, rename)."""
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array([FORMAT, READER, size], dtype=np.int64), keys=_blob(self.keys), sizes=np.array(self.sizes, dtype=np.int64),
                     mtimes=np.array(self.mtimes, dtype=np.int64), ok=np.array(self.ok, dtype=bool),
                     errors=_blob(self.errors))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def __len__(self) -> int:
        return len(self.keys)


def _trusted(folder: Path, size: int) -> Index:
    """The committed index of a cache folder, or an empty one (no manifest, other versions, damaged files)."""
    try:
        m = json.loads((folder / "manifest.json").read_text())
        if (m.get("format"), m.get("reader"), m.get("size")) != (FORMAT, READER, size):
            return Index.empty()
        index = Index.load(folder / "index.npz", size)
        if len(index) != m["rows"] or (folder / "images.u8").stat().st_size < m["rows"] * size * size:
            return Index.empty()
        return index
    except (OSError, ValueError, KeyError, TypeError):
        return Index.empty()


def _grow(path: Path, rows: int, size: int) -> None:
    """images.u8 holds at least `rows` rows (new rows read as zero until decoded)."""
    need = rows * size * size
    with open(path, "ab") as f:
        if f.tell() < need:
            f.truncate(need)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _decode_rows(images: str, size: int, rows: int, todo: list[tuple[int, Record]]) -> list[tuple[int, str | None]]:
    """Decode records into their rows of images.u8 (opened here: a pool worker writes its own rows); returns
    (row, error or None) per record. Pixels are flushed before returning."""
    from medssl.data.preprocess import Preprocess

    pre = Preprocess(size)
    out = np.memmap(images, dtype=np.uint8, mode="r+", shape=(rows, size, size))
    result = []
    for row, record in todo:
        try:
            out[row] = pre.decode(record)[0].numpy()
            result.append((row, None))
        except MedsslError as e:
            result.append((row, str(e)))
    out.flush()
    del out
    return result


def _workers(n: int, workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    return 1 if n < SERIAL_BELOW else max(1, len(os.sched_getaffinity(0)))


def _build(folder: Path, records: Sequence[Record], size: int, index: Index, progress: bool,
           workers: int | None, source: str) -> tuple[Index, int]:
    """Bring the folder's rows up to date with the records (caller holds the lock): the committed index and how
    many images were decoded now."""
    resumed = folder / "progress.npz"
    if resumed.is_file():  # a killed build: its flushed rows count, the rest is decoded again
        with contextlib.suppress(OSError, ValueError, KeyError):
            index = Index.load(resumed, size)
    cur = Index(list(index.keys), list(index.sizes), list(index.mtimes), list(index.ok), list(index.errors))
    keys, sizes, mtimes, ok, errors = cur.keys, cur.sizes, cur.mtimes, cur.ok, cur.errors
    row_of = {k: i for i, k in enumerate(keys)}
    todo: list[tuple[int, Record, int, int]] = []
    for r in records:
        stat = _stat(r.path)
        row = row_of.get(_key(r))
        if row is not None and (sizes[row], mtimes[row]) == stat and stat[0] >= 0:
            continue
        if row is None:  # a new file: appended
            row = row_of[_key(r)] = len(keys)
            keys.append(_key(r))
            sizes.append(-2), mtimes.append(-2), ok.append(False), errors.append("")
        else:  # changed (or never finished): decoded again into its own row
            sizes[row], mtimes[row] = -2, -2
        todo.append((row, r, *stat))
    if not todo and not resumed.is_file():
        return index, 0
    images = folder / "images.u8"
    _grow(images, len(keys), size)

    stats = {row: (s, m) for row, _, s, m in todo}
    chunks = [[(row, r) for row, r, _, _ in todo[i : i + CHUNK]] for i in range(0, len(todo), CHUNK)]
    n_workers = _workers(len(todo), workers)
    bar = tqdm(total=len(todo), desc=f"caching images ({n_workers} process{'es' if n_workers > 1 else ''})",
               unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True)

    def finished(result: list[tuple[int, str | None]]) -> None:
        for row, error in result:
            sizes[row], mtimes[row] = stats[row]
            ok[row], errors[row] = error is None, error or ""
        cur.save(resumed, size)  # the pixels of these rows are on disk: a kill from here on keeps them
        bar.update(len(result))

    t0 = time.perf_counter()
    try:
        if n_workers == 1:
            for chunk in chunks:
                finished(_decode_rows(str(images), size, len(keys), chunk))
        else:
            import multiprocessing

            with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker) as pool:
                futures = [pool.submit(_decode_rows, str(images), size, len(keys), c) for c in chunks]
                try:
                    for f in as_completed(futures):
                        finished(f.result())
                except BrokenProcessPool:
                    raise MedsslError(f"{folder}: a decoding process died (out of memory, or killed); the rows "
                                      "written so far are kept: run again to go on") from None
    finally:
        bar.close()
    cur.save(folder / "index.npz", size)
    manifest = {"format": FORMAT, "reader": READER, "size": size, "rows": len(cur), "source": source,
                "decoded_now": len(todo), "seconds": round(time.perf_counter() - t0, 2),
                "workers": n_workers, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = folder / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, folder / "manifest.json")
    resumed.unlink(missing_ok=True)
    return cur, len(todo)


@dataclass
class Cached:
    """The records a cache holds and where: images (rows, 1, size, size) uint8 memory-mapped (copy-on-write, so
    no process can change the file through it), rows[i] the row of records[i]; bad: (path, error) of the others."""

    records: list[Record]
    images: torch.Tensor
    rows: torch.Tensor
    bad: list[tuple[str, str]]
    folder: Path
    decoded: int  # images decoded by this call (0: everything came from the cache)


def open_images(path: Path, rows: int, size: int) -> torch.Tensor:
    """images.u8 as a (rows, 1, size, size) uint8 tensor over a copy-on-write memory map (no copy is made)."""
    if rows == 0:
        return torch.empty(0, 1, size, size, dtype=torch.uint8)
    mm = np.memmap(path, dtype=np.uint8, mode="c", shape=(rows, size, size))
    return torch.from_numpy(mm).view(rows, 1, size, size)


def cached_images(records: Sequence[Record], size: int, source: str | os.PathLike, *, skip_bad: bool = False,
                  progress: bool = True, cache: str | os.PathLike | None = None,
                  workers: int | None = None) -> Cached:
    """Every record's decoded image from the cache of (source, size), decoding first what it lacks or what
    changed. Without skip_bad the first unreadable image ends the run, named; with it, it is left out and listed."""
    folder = cache_dir(source, size, cache)
    try:
        with _locked(folder, progress):
            index, decoded = _build(folder, records, size, _trusted(folder, size), progress, workers, str(source))
    except OSError as e:
        raise MedsslError(f"{folder}: cannot write the image cache ({e.strerror}); set {ENV} or --cache to a "
                          "writable folder") from None
    row_of = {k: i for i, k in enumerate(index.keys)}
    kept, rows, bad = [], [], []
    for r in records:
        row = row_of[_key(r)]
        if index.ok[row]:
            kept.append(r)
            rows.append(row)
        elif not skip_bad:
            raise MedsslError(f"{index.errors[row]} (--skip-bad goes on past unreadable images and lists them)")
        else:
            bad.append((r.path, str(index.errors[row])))
    return Cached(kept, open_images(folder / "images.u8", len(index), size), torch.tensor(rows, dtype=torch.long),
                  bad, folder, decoded)


def clear(root: str | os.PathLike) -> list[Path]:
    """Remove every cache folder under root (a folder is one with a manifest.json or a progress.npz)."""
    import shutil

    root = Path(root)
    gone = []
    for folder in sorted(root.glob("*-*px-*")) if root.is_dir() else []:
        if (folder / "manifest.json").is_file() or (folder / "progress.npz").is_file() or (folder / "lock").is_file():
            shutil.rmtree(folder)
            gone.append(folder)
    return gone


def describe(folder: Path) -> dict[str, Any]:
    """What a cache folder holds (for `medssl data cache`)."""
    m = json.loads((folder / "manifest.json").read_text())
    index = Index.load(folder / "index.npz", int(m["size"]))
    return {**m, "folder": str(folder), "bytes": (folder / "images.u8").stat().st_size,
            "unreadable": len(index) - sum(index.ok)}
