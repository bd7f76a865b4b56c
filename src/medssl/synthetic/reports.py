"""Free-text chest radiograph reports for the synthetic studies: FINDINGS and IMPRESSION in radiology language.

Every positive finding is stated in at least one sentence that names it (a word from KEYWORDS) and carries no
negation cue; an absent finding is either not mentioned or stated in a negated sentence. A sentence is never
half positive, half negated, so a sentence-level labeller (keyword + negation cue) reads the labels back exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# The finding names; phantoms.py imports them from here so the two files cannot disagree.
FINDINGS: tuple[str, ...] = (
    "cardiomegaly", "pleural_effusion", "consolidation", "nodule", "pneumothorax", "atelectasis",
)
NO_FINDING = "no_finding"

# Words that name a finding in a report (lower case); every positive sentence contains one of its finding's words.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("cardiomegaly", "enlarged", "enlargement"),
    "pleural_effusion": ("effusion",),
    "consolidation": ("consolidation", "airspace opacity", "airspace disease"),
    "nodule": ("nodule", "nodular"),
    "pneumothorax": ("pneumothorax",),
    "atelectasis": ("atelectasis",),
}
# Words that make a sentence negated; positive sentences never contain them.
NEGATION_CUES: tuple[str, ...] = ("no", "without", "not", "negative")

_POSITIVE: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "The heart is {adv} enlarged.", "{Deg} cardiomegaly.", "The cardiac silhouette is {adv} enlarged.",
        "There is {deg} enlargement of the cardiac silhouette.", "Cardiomegaly is present, {deg} in degree.",
    ),
    "pleural_effusion": (
        "There {be} {a_size} {side} pleural {effusion}.", "{Size} {side} pleural {effusion} with blunting of {angle}.",
        "{A_size} {side} pleural {effusion} {be} present.",
        "Blunting of {angle}, consistent with {a_size} pleural {effusion}.",
        "Meniscus-shaped opacity at {base}, in keeping with {a_size} pleural {effusion}.",
    ),
    "consolidation": (
        "There is consolidation in the {lobe}.",
        "Patchy airspace opacity in the {lobe}, consistent with consolidation.",
        "Focal consolidation is seen in the {lobe}.", "Airspace consolidation involving the {lobe}.",
        "Ill-defined airspace opacity in the {lobe}, compatible with consolidation.",
    ),
    "nodule": (
        "There is a {mm} mm nodule in the {side} {zone} lung zone.",
        "A {mm} mm nodular opacity projects over the {side} {zone} lung.",
        "A well-circumscribed {mm} mm nodule is seen in the {side} {zone} zone.",
        "Rounded {mm} mm nodular density in the {side} {zone} lung.",
    ),
    "pneumothorax": (
        "There is a {size} {side} apical pneumothorax.",
        "{Size} {side} pneumothorax with a visible visceral pleural line.",
        "A {size} {side}-sided pneumothorax is identified.",
        "A visceral pleural line is seen at the {side} apex, consistent with a {size} pneumothorax.",
    ),
    "atelectasis": (
        "Plate-like atelectasis at the {side} lung base.",
        "There is {side} basilar atelectasis with mild elevation of the {side} hemidiaphragm.",
        "Linear opacity at the {side} base, likely subsegmental atelectasis.",
        "{Side} lower lobe atelectasis with volume loss.",
        "Band-like opacity in the {side} lower zone, compatible with atelectasis, and elevation of the {side} "
        "hemidiaphragm.",
    ),
}
_IMPRESSION: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("{Deg} cardiomegaly.", "Cardiomegaly.", "Enlarged cardiac silhouette."),
    "pleural_effusion": ("{Size} {side} pleural {effusion}.", "{Side} pleural {effusion}, {size}."),
    "consolidation": ("{Lobe} consolidation, concerning for pneumonia.", "{Lobe} consolidation.",
                      "{Lobe} airspace disease, which could represent pneumonia in the appropriate clinical setting."),
    "nodule": ("{Mm} mm {side} lung nodule; CT of the chest is recommended for further evaluation.",
               "Pulmonary nodule in the {side} {zone} lung, measuring {mm} mm.", "{Side} {zone} zone nodule."),
    "pneumothorax": ("{Size} {side} pneumothorax.", "{Side} pneumothorax, {size}."),
    "atelectasis": ("{Side} basilar atelectasis.", "Atelectasis at the {side} lung base."),
}
_NEGATED: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (
        "The heart size is normal.", "Cardiomediastinal silhouette is within normal limits.", "Heart size is normal.",
        "The cardiac silhouette is normal in size.", "Normal heart size.",
        "The cardiomediastinal silhouette is unremarkable.",
        "No cardiomegaly.",
    ),
    "pleural_effusion": ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusions are seen.",
                         "The costophrenic angles are sharp."),
    "pneumothorax": ("There is no pneumothorax.", "No pneumothorax.", "No pneumothorax is identified."),
    "consolidation": ("No focal consolidation.", "There is no focal consolidation.", "No consolidation is seen."),
    "nodule": ("No suspicious pulmonary nodules.", "No pulmonary nodule is identified.", "No focal nodular opacity."),
    "atelectasis": ("No atelectasis.", "There is no evidence of atelectasis."),
}
_NO_PLEURAL = ("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.",
               "No pneumothorax or pleural effusion is seen.")
_CLEAR = ("Lungs are clear.", "The lungs are clear.", "The lungs are well expanded and clear.",
          "Clear lungs bilaterally.", "The lungs are clear without focal consolidation.")
_BONES = ("No acute osseous abnormality.", "The visualized osseous structures are unremarkable.",
          "Osseous structures are intact.", "Degenerative changes of the thoracic spine.")
_NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                      "Normal chest radiograph.", "No acute intrathoracic process.",
                      "No radiographic evidence of acute cardiopulmonary disease.")
_LUNG = ("consolidation", "nodule", "atelectasis")
_PLEURA = ("pleural_effusion", "pneumothorax")
_DEGREE = {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[int(rng.integers(len(options)))]


def random_details(finding: str, rng: np.random.Generator) -> dict[str, object]:
    """Side, size and place of a finding when the caller has no image geometry to describe."""
    side = _pick(("right", "left"), rng)
    if finding == "pleural_effusion":
        side = _pick(("right", "left", "bilateral"), rng)
    lobe = f"{side} " + _pick(("upper lobe", "lower lobe", "middle lobe" if side == "right" else "lingula"), rng)
    return {"side": side, "size": _pick(("small", "moderate", "large"), rng), "degree": _pick(tuple(_DEGREE), rng),
            "zone": _pick(("upper", "mid", "lower"), rng), "mm": int(rng.integers(6, 22)),
            "lobe": lobe.replace("left lingula", "lingula")}


def _fields(d: Mapping[str, object]) -> dict[str, str]:
    """Template fields (lower- and capitalised forms) from a finding's details."""
    side, size = str(d.get("side", "right")), str(d.get("size", "small"))
    deg = str(d.get("degree", "mild"))
    f = {"side": side, "size": size, "deg": deg, "adv": _DEGREE.get(deg, "mildly"), "zone": str(d.get("zone", "mid")),
         "mm": str(d.get("mm", 10)), "lobe": str(d.get("lobe", f"{side} lower lobe")),
         "effusion": "effusions" if side == "bilateral" else "effusion", "be": "are" if side == "bilateral" else "is",
         "angle": "both costophrenic angles" if side == "bilateral" else f"the {side} costophrenic angle",
         "base": "both lung bases" if side == "bilateral" else f"the {side} lung base",
         "a_size": size if side == "bilateral" else f"a {size}"}  # plural effusions take no article
    f.update({k[0].upper() + k[1:]: v[0].upper() + v[1:] for k, v in list(f.items())})
    if f["lobe"] == "lingula":
        f["Lobe"] = "Lingular"  # "Lingular consolidation", not "Lingula consolidation"
    return f


def _findings_section(present: Sequence[str], details: Mapping[str, Mapping[str, object]],
                      rng: np.random.Generator) -> list[str]:
    """Sentences of the FINDINGS section: lungs, pleura, heart (sometimes heart first), sometimes bones."""
    lung = [_pick(_POSITIVE[f], rng).format(**_fields(details[f])) for f in _LUNG if f in present]
    if not any(f in present for f in _LUNG + _PLEURA) and rng.random() < 0.8:
        lung.append(_pick(_CLEAR, rng))
    else:
        lung += [_pick(_NEGATED[f], rng) for f in _LUNG if f not in present and rng.random() < 0.4]
    pleura = [_pick(_POSITIVE[f], rng).format(**_fields(details[f])) for f in _PLEURA if f in present]
    if not any(f in present for f in _PLEURA) and rng.random() < 0.7:
        pleura.append(_pick(_NO_PLEURAL, rng))
    else:
        pleura += [_pick(_NEGATED[f], rng) for f in _PLEURA if f not in present and rng.random() < 0.8]
    if "cardiomegaly" in present:
        heart = [_pick(_POSITIVE["cardiomegaly"], rng).format(**_fields(details["cardiomegaly"]))]
    else:
        heart = [_pick(_NEGATED["cardiomegaly"], rng)] if rng.random() < 0.9 else []
    parts = [heart, lung, pleura] if rng.random() < 0.35 else [lung, pleura, heart]
    bones = [_pick(_BONES, rng)] if rng.random() < 0.35 else []
    return [s for part in parts for s in part] + bones or [_pick(_CLEAR, rng)]  # never an empty section


def make_report(findings: Sequence[str], rng: np.random.Generator,
                details: Mapping[str, Mapping[str, object]] | None = None) -> str:
    """A report 'FINDINGS: ... IMPRESSION: ...' for the positive findings; details give side/size/place per finding."""
    present = [f for f in FINDINGS if f in findings]
    unknown = set(findings) - set(FINDINGS) - {NO_FINDING}
    if unknown:
        raise ValueError(f"unknown finding(s) {sorted(unknown)}; expected names from {FINDINGS}")
    details = {f: (details or {}).get(f) or random_details(f, rng) for f in present}
    body = _findings_section(present, details, rng)
    if present:
        impression = [_pick(_IMPRESSION[f], rng).format(**_fields(details[f])) for f in present]
        if rng.random() < 0.3:
            impression.append("Otherwise, no acute cardiopulmonary process.")
    else:
        impression = [_pick(_NORMAL_IMPRESSION, rng)]
    return "FINDINGS: " + " ".join(body) + " IMPRESSION: " + " ".join(impression)
