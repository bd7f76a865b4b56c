"""`medssl pacs pull --url URL (--study UID | --query KEY=VALUE...) --out DIR`: studies from a PACS into a folder
that every medssl command reads.

Layout: DIR/<StudyInstanceUID>/<SOPInstanceUID>.dcm (one folder per study: `medssl report generate RUN DIR` drafts
one report per study folder), DIR/manifest.csv (patient_id, study_id, view, and the series, SOP instance and
modality as extra columns; a row per frame of a multi-frame image) and DIR/pull.json (what was asked, what was
skipped, timings).

Order of work: cheap first. The search (QIDO-RS) of every study and its instances runs before anything is fetched:
a query that matches nothing, a study with no instances or one with no image instances (only reports, structured
reports, RT plans, ...) ends in one line, with nothing written. Instances of a non-image SOP class in a study
with images are skipped and listed in pull.json. Each image is then fetched (WADO-RS), pseudonymised and written
whole (beside its place, then renamed), so an interrupted pull leaves only complete files, and the next pull of
the same studies into the same folder fetches only what is missing. `jobs` instances are fetched at a time
(threads sharing one HTTP session). manifest.csv and pull.json are written last:
a failed or killed pull leaves the previous ones (or none).

What is kept on disk: `deidentify` replaces the patient id by medssl's pseudonym (data.dicom.pseudonym: the same
key the readers give, so images still group by patient) and empties the patient's name and birth date; the other
identifying patient attributes are removed. UIDs are kept: `medssl pacs push` needs them to file a report beside
its images. The folder is pseudonymised, not anonymous (dates, institution and the UIDs remain).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.data.dicom import pseudonym
from medssl.errors import MedsslError, PacsError
from medssl.pacs.client import Pacs, pacs_errors

PULL = "pull.json"
MANIFEST = "manifest.csv"
# Attributes that identify the person (PS3.15 Table E.1-1 for these): emptied (type 2) or removed. The study's
# accession number and id are the hospital's keys of the exam (often the patient's number): emptied too.
EMPTIED = ("PatientName", "PatientBirthDate", "AccessionNumber", "StudyID")
REMOVED = ("OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
           "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "PatientBirthTime",
           "ResponsiblePerson", "PatientInsurancePlanCodeSequence", "MedicalRecordLocator", "MilitaryRank",
           "CountryOfResidence", "RegionOfResidence", "PatientTelecomInformation")
QIDO_FIELDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")  # what find_instances reads
SOP_CLASS, SOP_INSTANCE, SERIES, STUDY = "00080016", "00080018", "0020000E", "0020000D"


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    sop: str
    sop_class: str

    @property
    def relpath(self) -> str:
        return f"{self.study}/{self.sop}.dcm"


def value_of(item: dict, tag: str) -> str:
    """The first value of a tag in a DICOM JSON result (QIDO-RS), or ''."""
    v = (item.get(tag) or {}).get("Value") or [""]
    return str(v[0])


def is_image_class(uid: str) -> bool:
    """Whether a SOP class holds pixels medssl reads: the DICOM 'Image Storage' classes (CR, DX, CT, MR, US,
    secondary capture, their enhanced and multi-frame forms); not SR, presentation states, RT objects,
    encapsulated documents, waveforms or segmentations."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return "Image Storage" in name and "Presentation State" not in name


def parse_query(items: list[str]) -> dict[str, str]:
    """KEY=VALUE filters of --query (DICOM keywords or tags, e.g. PatientID=..., StudyDate=20240101-20240131,
    ModalitiesInStudy=CR)."""
    from pydicom.datadict import tag_for_keyword

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise MedsslError(f"--query {item!r}: expected KEY=VALUE (e.g. StudyDate=20240101-20240131)")
        if tag_for_keyword(key) is None and not (len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key)):
            raise MedsslError(f"--query {item!r}: {key!r} is not a DICOM keyword or an 8-digit hex tag")
        out[key] = value
    return out


def shown(filters: dict[str, str] | None) -> dict[str, str]:
    """The filters as they may be printed or kept: the values of patient attributes (a name, an id, a birth date
    typed into --query) masked."""
    return {k: ("***" if k.lower().startswith("patient") or k.upper().startswith("0010") else v)
            for k, v in (filters or {}).items()}


def check_uid(uid: str, what: str = "--study") -> str:
    import re

    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid or "") or len(uid) > 64:
        raise MedsslError(f"{what} {uid!r}: not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


PAGE = 500  # QIDO-RS results asked for at a time after the first answer
CAPPED = 100  # an answer this long may be a server's cap: ask for what follows


def search_all(pacs: Pacs, what: str, search: Any, key: str, **kwargs: Any) -> list[dict]:
    """Every result of a QIDO-RS search. First asked without a limit; when the answer may have been cut by the
    server (a Warning header, PS3.18 6.7.1.2, or CAPPED results or more), pages after it are asked by offset until
    one brings nothing new. Paging from the start is not safe: Orthanc 1.10's plugin returns nothing past the first
    page when a filter such as ModalitiesInStudy is applied, and dicomweb-client's get_remaining loops for ever on
    a server that ignores offset."""
    import logging

    class Warned(logging.Handler):
        seen = False

        def emit(self, record: logging.LogRecord) -> None:
            Warned.seen = True

    log = logging.getLogger("dicomweb_client")
    handler = Warned(logging.WARNING)
    log.addHandler(handler)
    try:
        with pacs_errors(pacs, what):
            page = search(**kwargs)
        results, seen = list(page), {value_of(r, key) for r in page}
        while page and (len(page) >= CAPPED or Warned.seen):
            Warned.seen = False
            with pacs_errors(pacs, what):
                page = search(limit=PAGE, offset=len(results), **kwargs)
            page = [r for r in page if value_of(r, key) not in seen]
            seen.update(value_of(r, key) for r in page)
            results += page
        return results
    finally:
        log.removeHandler(handler)


def find_instances(pacs: Pacs, study: str | None, query: dict[str, str] | None) -> tuple[list[Instance], list[dict]]:
    """(image instances to fetch, skipped non-image instances) of the study, or of every study matching the query;
    MedsslError when nothing matches, a study is empty, or a study holds no image."""
    c = pacs.client
    if study is not None:
        studies = [check_uid(study)]
    else:
        found = search_all(pacs, "searching for studies", c.search_for_studies, STUDY, search_filters=query,
                           fields=[STUDY])
        studies = sorted({value_of(s, STUDY) for s in found} - {""})
        if not studies:
            said = " ".join(f"{k}={v}" for k, v in shown(query).items())
            raise PacsError(f"PACS {pacs.url}: no study matches {said or 'the query'}", "not_found")
    images, skipped = [], []
    for uid in studies:
        items = search_all(pacs, f"listing the instances of study {uid}", c.search_for_instances, SOP_INSTANCE,
                           study_instance_uid=uid, fields=list(QIDO_FIELDS))
        if not items:
            raise PacsError(f"PACS {pacs.url}: study {uid} not found (no instances)", "not_found")
        mine = []
        for it in items:
            inst = Instance(uid, value_of(it, SERIES), value_of(it, SOP_INSTANCE), value_of(it, SOP_CLASS))
            if not inst.series or not inst.sop:
                raise MedsslError(f"PACS {pacs.url}: study {uid}: an instance without its series or SOP instance UID")
            (mine if is_image_class(inst.sop_class) else skipped).append(inst)
        if not mine:
            from pydicom.uid import UID

            kinds = sorted({UID(value_of(it, SOP_CLASS)).name if value_of(it, SOP_CLASS) else "unknown SOP class"
                            for it in items})
            raise PacsError(f"PACS {pacs.url}: study {uid} holds no images to pull ({len(items)} instance(s) of "
                            f"{', '.join(kinds)})", "no_images")
        images += mine
    return images, [{"study": i.study, "sop_instance": i.sop, "sop_class": i.sop_class} for i in skipped]


def deidentify(ds: Any) -> Any:
    """The dataset with the patient id pseudonymised; name, birth date, accession number and study id emptied;
    other identifying patient attributes removed; any other text attribute holding the id or the name emptied
    (in place; returned)."""
    pid, name = str(ds.get("PatientID") or ""), str(ds.get("PatientName") or "")
    for elem in ds.iterall():  # the id or the name copied into another text attribute (comments, descriptions)
        if elem.VR in ("LO", "SH", "LT", "ST", "UT", "PN") and isinstance(elem.value, str) \
                and any(len(x) >= 3 and x in elem.value for x in (pid, name)) and elem.keyword not in EMPTIED:
            elem.value = ""
    ds.PatientID = pseudonym(pid) or ""
    for key in EMPTIED:
        if key in ds:
            setattr(ds, key, "")
    for key in REMOVED:
        if key in ds:
            delattr(ds, key)
    ds.PatientIdentityRemoved = "NO"  # pseudonymised, not de-identified: dates and UIDs remain
    ds.DeidentificationMethod = "medssl: patient id pseudonymised, name and birth date removed"
    return ds


def fetch_instance(pacs: Pacs, inst: Instance) -> Any:
    """One instance from the PACS as a pydicom Dataset (in its stored transfer syntax), checked to hold pixels."""
    with pacs_errors(pacs, f"retrieving instance {inst.sop} of study {inst.study}"):
        ds = pacs.client.retrieve_instance(inst.study, inst.series, inst.sop)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise MedsslError(f"PACS {pacs.url}: instance {inst.sop} of study {inst.study} came without pixel data")
    return ds


def dicom_bytes(ds: Any) -> bytes:
    """A dataset as the bytes of a DICOM file (preamble and file meta)."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _write(ds: Any, path: Path) -> int:
    from medssl.files import atomic_file

    data = dicom_bytes(ds)
    with atomic_file(path) as f:
        f.write(data)
    return len(data)


def _rows(out: Path) -> list[Any]:
    """Manifest records of every pulled image in the folder (headers only), one per frame."""
    import pydicom

    from medssl.data.records import Record

    records = []
    for f in sorted(out.glob("*/*.dcm")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - a file medssl wrote whole; anything else is named
            raise MedsslError(f"{f}: not a readable DICOM file ({type(e).__name__}); remove it and pull again") from None
        frames = int(ds.get("NumberOfFrames") or 1)
        extra = {"series_id": str(ds.get("SeriesInstanceUID", "")), "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
                 "modality": str(ds.get("Modality", ""))}
        for frame in range(frames):
            records.append(Record(path=str(f), patient_id=str(ds.get("PatientID") or "") or f"study-{f.parent.name}",
                                  study_id=str(ds.get("StudyInstanceUID", "")), view=str(ds.get("ViewPosition", "")),
                                  index=frame if frames > 1 else None, extra=extra))
    return records


def run_pull(pacs: Pacs, out: str | Path, study: str | None = None, query: list[str] | None = None,
             progress: bool = True, jobs: int = 4) -> dict[str, Any]:
    """Pull, resumably, `jobs` instances at a time; returns what pull.json says (counts, bytes, seconds, images/s)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    from medssl.data.records import write_manifest

    out = Path(out)
    if not 1 <= jobs <= 32:
        raise MedsslError(f"--jobs {jobs}: must lie in 1..32 (requests in flight to the PACS)")
    if (study is None) == (not query):
        raise MedsslError("pacs pull: give --study UID or --query KEY=VALUE (one of them)")
    filters = parse_query(query or []) if query else None
    if out.exists() and not out.is_dir():
        raise MedsslError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PULL).is_file() and not _partial(out):
        raise MedsslError(f"--out {out}: a folder that holds other files; give an empty or new folder, or one "
                          "an earlier `medssl pacs pull` wrote")
    t0 = time.perf_counter()
    images, skipped = find_instances(pacs, study, filters)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*/.*.tmp"):  # what a killed pull was writing
        stale.unlink(missing_ok=True)
    todo = [i for i in images if not (out / i.relpath).is_file()]
    fetched, nbytes = 0, 0
    t1 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc="pacs pull", disable=not progress or not todo, dynamic_ncols=True)

    def one(inst: Instance) -> int:
        return _write(deidentify(fetch_instance(pacs, inst)), out / inst.relpath)

    # a few requests in flight: the PACS and the network wait less; each file is still written whole, and the first
    # failure stops the rest (those in flight finish or time out; nothing partial stays)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="medssl-pull") as pool:
        futures = [pool.submit(one, inst) for inst in todo]
        try:
            for f in as_completed(futures):
                nbytes += f.result()
                fetched += 1
                bar.update(1)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        finally:
            bar.close()
    fetch_s = time.perf_counter() - t1
    records = _rows(out)
    write_manifest(records, out / MANIFEST)
    studies = sorted({i.study for i in images})
    previous = _read_pull(out)
    summary = {"url": pacs.url, "asked": {"study": study} if study else {"query": shown(filters)},
               "studies": sorted(set(previous.get("studies", [])) | set(studies)),
               "this_pull": {"studies": len(studies), "images": len(images), "fetched": fetched, "jobs": jobs,
                             "already_here": len(images) - fetched, "bytes": nbytes,
                             "seconds": round(time.perf_counter() - t0, 3), "fetch_seconds": round(fetch_s, 3),
                             "images_per_s": round(fetched / fetch_s, 2) if fetched and fetch_s > 0 else None},
               "skipped_non_image": skipped, "manifest_rows": len(records),
               "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from medssl.files import atomic_file

    with atomic_file(out / PULL) as f:
        f.write((json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _partial(out: Path) -> bool:
    """A folder a killed first pull left: only study folders of .dcm files (and temporary files)."""
    return all(p.is_dir() and all(f.suffix in (".dcm", ".tmp") for f in p.iterdir()) for p in out.iterdir())


def _read_pull(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / PULL).read_text())
    except (OSError, ValueError):
        return {}


def is_pull_folder(path: Path) -> bool:
    return path.is_dir() and (path / PULL).is_file()


def study_folders(path: Path) -> list[Path]:
    """The study folders of a pulled folder, in order."""
    return sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.dcm")))


def study_images(pacs: Pacs, study: str, limit: int = 16) -> list[bytes]:
    """A study's images fetched into memory (never to disk) as DICOM bytes, for `medssl serve --pacs`; at most
    `limit` (a radiograph study has a few views; a CT series is refused rather than read slice by slice)."""
    images, _ = find_instances(pacs, check_uid(study, "study"), None)
    if len(images) > limit:
        raise PacsError(f"study {study}: {len(images)} images; the service reads studies of at most {limit} (a "
                        "radiograph's views); pull larger ones with `medssl pacs pull`", "no_images")
    return [dicom_bytes(fetch_instance(pacs, inst)) for inst in images]
