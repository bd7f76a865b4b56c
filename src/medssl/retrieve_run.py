"""`medssl retrieve RUN`: the nearest cases and report sentences to a query image or text, with an image-text run;
`--evaluate` scores retrieval on the test split.

Two indexes per data source (`medssl.retrieval.Index`, cosine similarity of the run's unit embeddings):
- images: one entry per gallery image (path, patient, study, finding labels);
- sentences: one entry per (study, sentence) of the gallery's reports (`report_sentences`: cleaned training
  sections), labelled with its study's findings (the union over the study's images); absent for a source without
  report text (sentence hits are then empty and image->text is not scored).

Galleries. A single query (--image / --text) searches every split of the source: the user asks about the whole
collection, and no patient is left out (the query image itself, if it is in the gallery, comes first with cosine 1).
--evaluate queries the test split against a train+val gallery (a separate pair of indexes), leaving the query's
own patient out of every ranking, so a patient's other image or own report is never counted as a finding.

Without --data the source is the built-in synthetic set with the run's own parameters (as `medssl zeroshot`).
Indexes are built on first use and saved in RUN/retrieval/<source-key>/{images,sentences}/ (evaluate's in
RUN/retrieval/<source-key>/evaluate/{images,sentences}/), with gallery.json beside them recording the checkpoint
and the records they were built from: a retrained run or a changed source rebuilds them, as --rebuild does.

Privacy: patients and studies are shown and stored only as short SHA-256 digests of the source's ids (`p-…`,
`s-…`), never as the raw id: for DICOM the reader takes patient_id from the PatientID tag. Patient name and birth
date are never read into a record.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.checkpoint import resolve_checkpoint
from medssl.data.records import Record
from medssl.errors import MedsslError
from medssl.evaluate.data import EvalData, decode_split
from medssl.evaluate.zeroshot import encode_images, encode_prompts
from medssl.retrieval import Index, label_set, retrieval_scores
from medssl.text.reports import clean_text, report_sentences, training_text
from medssl.zeroshot_run import ImageTextRun, load_run_source

FOLDER, EVALUATE, GALLERY = "retrieval", "evaluate.json", "gallery.json"
ALL_SPLITS, EVAL_GALLERY, EVAL_QUERIES = ("train", "val", "test"), ("train", "val"), "test"
DEPTH = 1000  # --evaluate ranks this many gallery items per query (at least max K): mAP is AP@min(G, DEPTH)
TEXT_BATCH = 256
DIRECTIONS = ("image_to_image", "text_to_image", "image_to_text")


def digest(prefix: str, *parts: str) -> str:
    """A short stable pseudonym of an id (12 hex digits of SHA-256): equal ids give equal digests, the raw id
    (a DICOM PatientID, an MRN) is never shown or written."""
    return f"{prefix}-{hashlib.sha256(chr(31).join(parts).encode()).hexdigest()[:12]}"


def patient_of(r: Record) -> str:
    """The displayed and stored patient of a record: a digest of its manifest patient_id."""
    return digest("p", r.patient_id)


def study_of(r: Record) -> str:
    """The displayed and stored study of a record: a digest of (patient, study_id), the image's own path when the
    source gives no study."""
    return digest("s", r.patient_id, r.study_id or f"{r.path}#{r.index}")


def image_id(r: Record) -> str:
    """The index id of an image: its path, with the frame / slice for multi-image files."""
    return r.path if r.index is None else f"{r.path}[{r.index}]"


def run_folder(run: str | Path) -> Path:
    """The run folder of a run folder or of a checkpoint file in RUN/checkpoints/ (where retrieval/ is kept)."""
    path = Path(run)
    return path if path.is_dir() or not path.exists() else path.parent.parent


def source_key(data: str | None) -> str:
    """The folder name of a source's indexes: 'builtin' without --data, else the source's name and a digest of its
    resolved path, so two sources (or two files of one name) never share an index."""
    if data is None:
        return "builtin"
    path = Path(data).expanduser().resolve()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem or "source")[:40]
    return f"{name}-{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op thread count set to `threads` (None: the current one, which tests and OMP_NUM_THREADS set)
    for the block and restored after; yields the count, which faiss also uses."""
    before = torch.get_num_threads()
    n = before if threads is None else int(threads)
    if n < 1:
        raise MedsslError(f"--threads {n}: must be at least 1")
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


def encode_texts(aligned: ImageTextRun, texts: Sequence[str], progress: bool = False) -> np.ndarray:
    """Unit text embeddings (N, D) float32, TEXT_BATCH texts at a time, without gradients."""
    from tqdm import tqdm

    out = []
    with torch.no_grad():
        for lo in tqdm(range(0, len(texts), TEXT_BATCH), desc="retrieve: encoding sentences", unit="batch",
                       disable=not progress or len(texts) <= TEXT_BATCH, file=sys.stderr, leave=False):
            out.append(encode_prompts(aligned.model, aligned.tokenizer, list(texts[lo:lo + TEXT_BATCH])).numpy())
    return np.concatenate(out).astype(np.float32)


def encode_image_tensor(aligned: ImageTextRun, images: torch.Tensor, progress: bool = False) -> np.ndarray:
    """Unit image embeddings (N, D) float32 of decoded images (N, 1, S, S) uint8, without gradients."""
    with torch.no_grad():
        return encode_images(aligned.model, images, aligned.preprocess, progress=progress,
                             desc="retrieval: encoding images").numpy().astype(np.float32)


@dataclass
class Studies:
    """The gallery's reports cut into sentences: texts (M,), and per sentence its study, patient and labels."""

    texts: list[str]
    studies: list[str]
    patients: list[str]
    labels: list[frozenset[str]]


def group_studies(records: Sequence[Record]) -> dict[str, tuple[str, frozenset[str], str]]:
    """study -> (report, labels, patient): the first non-empty report of the study's images, the union of their
    findings as a label_set ('no finding' when none), the patient digest."""
    reports: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    patients: dict[str, str] = {}
    for r in records:
        s = study_of(r)
        labels.setdefault(s, set()).update(r.labels)
        patients.setdefault(s, patient_of(r))
        if r.report and not reports.get(s):
            reports[s] = r.report
    return {s: (reports.get(s, ""), label_set(labels[s]), patients[s]) for s in labels}


def study_sentences(records: Sequence[Record]) -> Studies:
    """One entry per (study, distinct sentence) of the records' reports, with the study's labels and patient."""
    out = Studies([], [], [], [])
    for s, (report, labels, patient) in group_studies(records).items():
        for sentence in dict.fromkeys(report_sentences(report)):
            out.texts.append(sentence)
            out.studies.append(s)
            out.patients.append(patient)
            out.labels.append(labels)
    return out


@dataclass
class Gallery:
    """The two indexes of one gallery and, per image, its study (the index keeps id, patient, labels)."""

    images: Index
    sentences: Index | None  # None when the gallery's images carry no report text
    image_studies: list[str]
    sentence_studies: list[str]
    folder: Path
    built: bool


def _fingerprint(run: str | Path, records: Sequence[Record], splits: Sequence[str]) -> dict[str, Any]:
    """What a saved gallery was built from: the checkpoint file (path, size, mtime) and a hash of the records
    (path, patient, study, labels, report), so an edited source or a retrained run is never served stale."""
    ckpt = resolve_checkpoint(run)
    stat = ckpt.stat()
    ids = "\n".join(f"{image_id(r)}\t{patient_of(r)}\t{study_of(r)}\t{'|'.join(r.labels)}\t{r.report}"
                    for r in records)
    return {"checkpoint": str(ckpt.resolve()), "checkpoint_size": stat.st_size,
            "checkpoint_mtime_ns": stat.st_mtime_ns, "splits": list(splits),
            "records_sha256": hashlib.sha256(ids.encode()).hexdigest()}


def _load_gallery(folder: Path, want: dict[str, Any], threads: int) -> Gallery | None:
    """The saved gallery in folder when it matches `want` (its fingerprint), else None."""
    meta_path = folder / GALLERY
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None
    if meta.get("fingerprint") != want:
        print(f"retrieve: {folder} was built from another checkpoint or other records; rebuilding",
              file=sys.stderr)
        return None
    try:
        images = Index.load(folder / "images", threads=threads)
        sentences = Index.load(folder / "sentences", threads=threads) if meta.get("sentence_studies") else None
    except MedsslError as e:
        print(f"retrieve: {e}; rebuilding", file=sys.stderr)
        return None
    if len(meta.get("image_studies", [])) != len(images) or (
            sentences is not None and len(meta["sentence_studies"]) != len(sentences)):
        return None
    return Gallery(images, sentences, meta["image_studies"], meta["sentence_studies"], folder, built=False)


def gallery(aligned: ImageTextRun, run: str | Path, plan: EvalData, splits: Sequence[str], folder: Path,
            rebuild: bool = False, threads: int = 1, skip_bad: bool = False, progress: bool = True) -> Gallery:
    """The image and sentence indexes of the plan's `splits`, loaded from folder when saved from the same
    checkpoint and records, else built (images decoded once and encoded, reports cut into sentences and encoded)
    and saved there."""
    records = [r for name in splits for r in plan.splits[name]]
    want = _fingerprint(run, records, splits)
    if not rebuild:
        found = _load_gallery(folder, want, threads)
        if found is not None:
            return found
    kept, images, bad = decode_split(records, aligned.preprocess, skip_bad, progress, "+".join(splits),
                                     plan.source)
    if not kept:
        raise MedsslError(f"{plan.source}: none of the {'+'.join(splits)} images could be read")
    for path, why in bad:
        print(f"retrieve: left out {path}: {why}", file=sys.stderr)
    image_index = Index.build(encode_image_tensor(aligned, images, progress), [image_id(r) for r in kept],
                              [patient_of(r) for r in kept], [label_set(r.labels) for r in kept], threads=threads)
    studies = study_sentences(kept)
    sentence_index = None
    if studies.texts:
        sentence_index = Index.build(encode_texts(aligned, studies.texts, progress),
                                     [f"{s}/{j}" for j, s in enumerate(studies.studies)], studies.patients,
                                     studies.labels, studies.texts, threads=threads)
    image_index.save(folder / "images")
    if sentence_index is not None:
        sentence_index.save(folder / "sentences")
    meta = {"source": plan.source, "fingerprint": want, "image_studies": [study_of(r) for r in kept],
            "sentence_studies": studies.studies}
    (folder / GALLERY).write_text(json.dumps(meta) + "\n")
    return Gallery(image_index, sentence_index, meta["image_studies"], studies.studies, folder, built=True)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise MedsslError(f"--k {k!r}: must be a whole number >= 1")
    return k


def hits(index: Index | None, studies: Sequence[str], query: np.ndarray, k: int, kind: str
          ) -> list[dict[str, Any]]:
    """The k best entries of one query (1, D), best first, as printable dicts ([] without an index)."""
    if index is None:
        return []
    hits = index.search(query, min(k, len(index)))
    out = []
    for rank, (row, score) in enumerate(zip(hits.rows[0], hits.scores[0]), start=1):
        if row < 0:
            break
        entry = {"rank": rank, "score": float(score), "patient": index.patients[row], "study": studies[row],
                 "labels": sorted(index.labels[row])}
        if kind == "image":
            entry["path"] = index.ids[row]
        else:
            entry["sentence"] = index.texts[row]
        out.append(entry)
    return out


def query_embedding(aligned: ImageTextRun, image: str | None, text: str | None) -> np.ndarray:
    """(1, D) unit embedding of a query image file (any format medssl reads, DICOM included) or text."""
    if image is not None:
        path = Path(image)
        if not path.is_file():
            raise MedsslError(f"{image}: no such image file")
        try:
            x = aligned.preprocess.decode(path)
        except MedsslError as e:
            raise MedsslError(f"{image}: cannot be read as an image ({str(e).splitlines()[0]})") from None
        return encode_image_tensor(aligned, x[None])
    return encode_texts(aligned, [clean_text(text or "")])


def check_query(image: str | None, text: str | None) -> None:
    """Exactly one of image / text, and a text with words; MedsslError otherwise."""
    if (image is None) == (text is None):
        raise MedsslError("retrieve: give exactly one query, --image FILE or --text \"...\" (or --evaluate)")
    if text is not None and not clean_text(text).strip():
        raise MedsslError("--text: the query text is empty")


def run_retrieve(run: str | Path, image: str | None = None, text: str | None = None, k: int = 5,
                 data: str | None = None, rebuild: bool = False, threads: int | None = None,
                 skip_bad: bool = False, progress: bool = True) -> dict[str, Any]:
    """The k nearest gallery images and report sentences to one query (every split of the source is the gallery;
    no patient is left out). Returns {"query", "k", "images": [...], "sentences": [...], "index": {...}}."""
    t0 = time.perf_counter()
    check_query(image, text)
    k = _check_k(k)
    out = run_folder(run) / FOLDER
    aligned, plan = load_run_source(run, data, out, skip_bad=skip_bad, progress=progress, classify=False)
    with torch_threads(threads) as n:
        q = query_embedding(aligned, image, text)  # an unreadable query fails before any gallery work
        g = gallery(aligned, run, plan, ALL_SPLITS, out / source_key(data), rebuild, n, skip_bad, progress)
        result = {"run": str(run), "method": aligned.spec.method, "source": plan.source,
                  "query": {"image": str(image)} if image is not None else {"text": text}, "k": k,
                  "images": hits(g.images, g.image_studies, q, k, "image"),
                  "sentences": hits(g.sentences, g.sentence_studies, q, k, "sentence"),
                  "index": {"folder": str(g.folder), "built": g.built, "images": len(g.images),
                            "sentences": len(g.sentences or ()), "splits": list(ALL_SPLITS)}}
    result["seconds"] = time.perf_counter() - t0
    return result


def rank(index: Index, queries: np.ndarray, patients: Sequence[str], depth: int) -> np.ndarray:
    """(Q, depth) gallery rows best first for queries (Q, D), never an item of the query's own patient (-1 where
    fewer than depth items of other patients exist)."""
    return index.search(queries, depth, exclude_patient=list(patients)).rows


def score_direction(index: Index, queries: np.ndarray, query_labels: Sequence[frozenset[str]],
                    query_patients: Sequence[str], ks: Sequence[int], depth: int) -> dict[str, Any]:
    """retrieval_scores of one direction: the queries ranked against the index without their own patient, scored
    with their labels (P@K, R@K, mAP, chance precision)."""
    depth = max(max(ks), min(len(index), depth))
    ranked = rank(index, queries, query_patients, depth)
    return retrieval_scores(ranked, query_labels, index.labels, ks, list(query_patients), index.patients)


def _parse_ks(ks: Sequence[int]) -> tuple[int, ...]:
    if not ks:
        raise MedsslError("--k: give at least one K")
    return tuple(sorted(set(_check_k(k) for k in ks)))


def run_evaluate_retrieval(run: str | Path, ks: Sequence[int] = (1, 5, 10), data: str | None = None,
                           rebuild: bool = False, threads: int | None = None, skip_bad: bool = False,
                           progress: bool = True, depth: int = DEPTH) -> dict[str, Any]:
    """Retrieval scores of the test split against a train+val gallery, in three directions, each query's own
    patient left out: image->image (each test image), text->image (each test study's report, its training
    sections, against the images), image->text (each test image against the gallery's report sentences; a hit
    shares a finding with the query). Written to RUN/retrieval/evaluate.json and returned."""
    t0 = time.perf_counter()
    ks = _parse_ks(ks)
    out = run_folder(run) / FOLDER
    aligned, plan = load_run_source(run, data, out, skip_bad=skip_bad, progress=progress, classify=False)
    with torch_threads(threads) as n:
        g = gallery(aligned, run, plan, EVAL_GALLERY, out / source_key(data) / "evaluate", rebuild, n, skip_bad,
                    progress)
        kept, images, bad = decode_split(plan.splits[EVAL_QUERIES], aligned.preprocess, skip_bad, progress,
                                         EVAL_QUERIES, plan.source)
        if not kept:
            raise MedsslError(f"{plan.source}: none of the test split's images could be read")
        q_img = encode_image_tensor(aligned, images, progress)
        img_labels, img_patients = [label_set(r.labels) for r in kept], [patient_of(r) for r in kept]
        reports = [(training_text(t), lab, p) for t, lab, p in group_studies(kept).values() if training_text(t)]
        directions = {
            "image_to_image": score_direction(g.images, q_img, img_labels, img_patients, ks, depth),
        }
        if g.sentences is not None:
            directions["image_to_text"] = score_direction(g.sentences, q_img, img_labels, img_patients, ks, depth)
        if reports:
            q_txt = encode_texts(aligned, [t for t, _, _ in reports], progress)
            directions["text_to_image"] = score_direction(g.images, q_txt, [lab for _, lab, _ in reports],
                                                          [p for _, _, p in reports], ks, depth)
    notes = []
    if len(kept) < 30:
        notes.append(f"only {len(kept)} test images of {len(set(img_patients))} patients: one query moves "
                     "each score by several points; compare with chance, not across runs")
    if g.sentences is None:
        notes.append("the train+val images carry no report text: image->text is not scored")
    if not reports:
        notes.append("the test split has no report text: text->image is not scored")
    metrics = {"run": str(run), "method": aligned.spec.method, "source": plan.source, "ks": list(ks),
               "depth": depth, "gallery": {"splits": list(EVAL_GALLERY), "images": len(g.images),
                                           "sentences": len(g.sentences or ()), "patients": len(set(g.images.patients)),
                                           "folder": str(g.folder)},
               "queries": {"split": EVAL_QUERIES, "images": len(kept), "reports": len(reports),
                           "patients": len(set(img_patients))},
               "directions": {d: directions[d] for d in DIRECTIONS if d in directions},
               "notes": notes, "skipped": [{"path": p, "error": e} for p, e in plan.skipped + bad],
               "seconds": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    (out / EVALUATE).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics


def _fmt(x: float) -> str:
    return "  n/a" if x != x else f"{x:.3f}"


def evaluate_lines(metrics: dict[str, Any]) -> list[str]:
    """The --evaluate table: one row per direction, P@K and R@K per K, mAP and chance P@K."""
    ks = metrics["ks"]
    g, q = metrics["gallery"], metrics["queries"]
    lines = [f"retrieval {metrics['method']}: {q['images']} test images / {q['reports']} reports of {q['patients']} "
             f"patients against {g['images']} images / {g['sentences']} sentences of train+val "
             f"({metrics['source']}); the query's own patient left out"]
    head = "  ".join([f"{'direction':<15}", *(f"P@{k:<4}" for k in ks), *(f"R@{k:<4}" for k in ks), "mAP   ",
                      "chance P@K"])
    lines.append(head)
    for name, m in metrics["directions"].items():
        cells = [f"{name.replace('_to_', '->'):<15}", *(_fmt(m[f"precision@{k}"]).ljust(6) for k in ks),
                 *(_fmt(m[f"recall@{k}"]).ljust(6) for k in ks), _fmt(m["map"]).ljust(6),
                 _fmt(m["chance_precision"])]
        lines.append("  ".join(cells))
    lines += [f"note: {n}" for n in metrics.get("notes", [])]
    return lines


def result_lines(result: dict[str, Any]) -> list[str]:
    """The single-query table: images (rank, score, patient, labels, path) then sentences."""
    q = result["query"]
    what = f"image {q['image']}" if "image" in q else f"text {q['text']!r}"
    idx = result["index"]
    lines = [f"nearest to {what} among {idx['images']} images and {idx['sentences']} report sentences of "
             f"{result['source']} (every split; index {'built' if idx['built'] else 'reused'})"]
    for kind, key in (("images", "path"), ("sentences", "sentence")):
        lines.append(f"{kind}:")
        lines.append(f"  {'rank':>4}  {'score':>6}  {'patient':<15}  {'labels':<30}  {key}")
        for e in result[kind]:
            labels = ",".join(e["labels"]) or "-"
            lines.append(f"  {e['rank']:>4}  {e['score']:>6.3f}  {e['patient']:<15}  {labels:<30}  {e[key]}")
    return lines
