"""A rule-based CheXpert-style finding labeller: 14 observations read from report text, no model, no network.

After NegBio (Peng et al. 2018) and the CheXpert labeller (Irvin et al. 2019): the FINDINGS + IMPRESSION
(`training_text`) are split into sentences, each sentence into clauses at "but", "however", "although", ";",
"which", "that" (a negation or an uncertainty never crosses them: "no pneumothorax, but a small effusion").
In each clause, phrase lists find the mentions of each observation; cues then decide each mention's status:

1. double negations are uncertain ("cannot be excluded", "not ruled out", "cannot rule out", "no new"), found
   first so that their "not" is not read as a negation;
2. negations: "no", "without", "not", "negative for", "free of", "clear of", "absence of", "resolved", "removed",
   "ruled out"; "no" and the like reach forward to the clause end (or the next "there is"), "resolved" and "not
   seen" back as well. Change phrases ("no change in", "no interval change", "without change", "not changed")
   hide their "no": "no change in the left pleural effusion" is positive, as is "stable cardiomegaly";
3. uncertainty: "may", "possible", "probably", "questionable", "concerning for", "suspicious for", "suggest",
   "could represent", "differential", "borderline", "unlikely", and two mentions side by side joined by "or",
   "versus" or "/" ("atelectasis or pneumonia": both). "Likely" and "consistent with" are not uncertain
   (CheXpert reads them so); negation wins over uncertainty ("no focal opacity to suggest pneumonia": negative).

A mention's statuses in a report combine as positive > uncertain > negative (CheXpert's aggregation).

Some phrases name a place, not a finding, and need a qualifier close by (only linking words between): "heart
size", "cardiac silhouette", "mediastinum", "cardiomediastinal silhouette", lung markings, costophrenic angles,
pulmonary vascularity. "Heart size is normal" / "within normal limits" / "unremarkable" / "upper limits of normal"
is negative for cardiomegaly, "the heart is enlarged" positive, "borderline" uncertain; an enlarged
cardiomediastinal silhouette is positive for enlarged_cardiomediastinum and uncertain for cardiomegaly (the report
does not say which part is enlarged). Sharp costophrenic angles: effusion negative; blunting: effusion uncertain
(CheXpert). A place without a qualifier ("stable cardiomediastinal silhouette") labels nothing.

Choices where CheXpert's lists leave room, each for a stated reason:
- "Lungs are clear" labels nothing (as CheXpert): it is not a statement about a named observation.
- Calcified nodules and granulomas are not lung_lesion, nor is a nodule its sentence calls calcified or a
  granuloma, and calcified densities are not lung_opacity: healed infection, not a lesion to work up (CheXpert
  excludes "calcified nodule"). Bony lesions are not lung_lesion. A "density" is lung_opacity only where its clause
  names a lung place (bone, soft tissue, a hernia or a device is dense too); "nodular opacity" is both.
- Vascular congestion, vascular prominence and cephalization are edema uncertain (CheXpert): they precede edema.
- Fibrosis and scarring are lung_opacity (parenchymal reticular opacity); pleural thickening, pleural scarring,
  plaques and apical caps are pleural_other.
- Support devices: tubes, catheters, lines named as such (PICC, central line), pacemakers and leads, wires,
  surgical clips, stents, ports, drains, valves, hardware, and a "tip" at the SVC, atrium or carina (what IU X-ray's
  redaction leaves of "XXXX tip in the SVC"). "Sternotomy" alone (a procedure) is not a device.
- No finding: positive when no pathology (all but no_finding and support_devices) is positive or uncertain, as
  CheXpert; a text with no sentence at all gets no label.

bench/labeler_agreement.py measures the agreement with the MeSH tags of the IU X-ray reports, and why it differs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medssl.errors import MedsslError
from medssl.text.reports import split_sentences, training_text

OBSERVATIONS: tuple[str, ...] = (
    "no_finding", "enlarged_cardiomediastinum", "cardiomegaly", "lung_opacity", "lung_lesion", "edema",
    "consolidation", "pneumonia", "atelectasis", "pneumothorax", "pleural_effusion", "pleural_other", "fracture",
    "support_devices")
POSITIVE, NEGATIVE, UNCERTAIN = "positive", "negative", "uncertain"
PATHOLOGIES: tuple[str, ...] = tuple(o for o in OBSERVATIONS if o not in ("no_finding", "support_devices"))
# medssl's synthetic finding names (medssl.synthetic.reports.FINDINGS) -> observations.
SYNTHETIC_TO_CHEXPERT: dict[str, str] = {
    "cardiomegaly": "cardiomegaly", "pleural_effusion": "pleural_effusion", "consolidation": "consolidation",
    "nodule": "lung_lesion", "pneumothorax": "pneumothorax", "atelectasis": "atelectasis", "no_finding": "no_finding"}
_RANK = {NEGATIVE: 0, UNCERTAIN: 1, POSITIVE: 2}


def _words(*phrases: str) -> re.Pattern:
    """One pattern for regex phrases matched as whole words ("plate" does not match "plate-like")."""
    return re.compile(r"(?<![\w-])(?:" + "|".join(phrases) + r")(?![\w-])")


_BONE = r"(?:lytic|destructive|bony|bone|osseous|sclerotic|blastic|expansile|lucent|rib|skin)"
# A density is a lung opacity only where the clause places it in the lung: bone, soft tissue, a hernia or a device
# is dense too ("substernal density", "densities over the breast shadows").
_LUNG_PLACE = _words(r"lungs?", r"\w*lobes?", r"lingula\w*", r"midlung", r"bases?", r"\w*basilar", r"ap(?:ex|ices)",
                     r"\w*apical", r"perihilar", r"parenchymal?", r"air ?-?space", r"pulmonary", r"alveolar")
# A nodule the same sentence calls calcified or a granuloma is healed infection, not a lesion (CheXpert excludes
# "calcified nodule"; this reads "nodular density ... represents a granuloma" the same way).
_BENIGN = re.compile(r"granulom|calcifi|calcific")
_BENIGN_DENIED = re.compile(r"(?:\bnot|\bwithout|\bno|\bnon-?)(?:\s+\w+)?\s*$")  # "not definitively calcified"
# (observation, phrases that name it, look-alikes that do not, status, a place the clause must name or None);
# status UNCERTAIN for what precedes a finding rather than being it (vascular congestion before edema).
MENTIONS: tuple[tuple[str, re.Pattern, re.Pattern | None, str, re.Pattern | None], ...] = tuple(
    (obs, _words(*phrases), _words(*unmention) if unmention else None, status, context)
    for obs, phrases, unmention, status, context in (
        ("enlarged_cardiomediastinum", (r"widen\w* (?:of )?(?:the )?(?:superior )?mediastin\w*",
                                        r"mediastinal (?:widening|enlargement)",
                                        r"(?:widened|enlarged|wide) (?:superior )?mediastinum"), (), POSITIVE, None),
        ("cardiomegaly", (r"cardiomegaly", r"cardiac enlargement", r"enlarged heart"), (), POSITIVE, None),
        ("lung_opacity", (r"opaci\w*", r"infiltra\w*", r"air[- ]?space (?:disease|process)", r"haz(?:y|iness)",
                          r"reticula\w*", r"reticulonodular", r"reticular-nodular", r"ground[- ]glass",
                          r"interstitial (?:pattern|prominence|thickening|changes?|abnormalit\w*)",
                          r"interstitial (?:lung )?disease", r"scar\w*", r"fibros[ie]s", r"fibrotic", r"fibronodular",
                          r"(?:peribronchial|bronchial wall) (?:thickening|cuffing)"),
         (r"pleural (?:\w+ )?scar\w*", r"pleural-?(?:parenchymal|peripheral) scar\w*", r"pleuro-?parenchymal scar\w*",
          r"pleural fibros[ie]s"), POSITIVE, None),
        ("lung_opacity", (r"densit(?:y|ies)",), (r"(?:calcified|calcific|bone|bony) densit(?:y|ies)",), POSITIVE,
         _LUNG_PLACE),
        ("lung_lesion", (r"nodul\w*", r"mass(?:es)?", r"lesions?", r"tumou?rs?", r"neoplasm\w*", r"carcinoma\w*",
                         r"malignan\w*", r"metasta\w*", r"lump"),
         (r"calcified nodul\w*", r"mass effect", _BONE + r" (?:or \w+ )?lesions?", r"lesions? of the (?:\w+ )?ribs?"),
         POSITIVE, None),
        ("edema", (r"edema\w*", r"heart failure", r"chf", r"fluid overload"),
         (r"(?:soft tissue|subcutaneous|soft-tissue) edema",), POSITIVE, None),
        ("edema", (r"(?:pulmonary |vascular |venous |interstitial )*congestion", r"vascular (?:prominence|engorgement)",
                   r"cephali[sz]ation"), (), UNCERTAIN, None),
        ("consolidation", (r"consolidat\w*",), (), POSITIVE, None),
        ("pneumonia", (r"pneumonia\w*", r"bronchopneumonia", r"infectio\w*", r"infectious process"),
         (r"(?:old|prior|previous|remote|healed|granulomatous) (?:\w+ ){0,3}(?:infection|pneumonia)",), POSITIVE, None),
        ("atelectasis", (r"atelecta\w*", r"collapsed?"), (r"(?:vertebral|vertebra|vertebrae|body|bodies) collapsed?",),
         POSITIVE, None),
        ("pneumothorax", (r"(?:hydro|hemo)?pneumothora(?:x|ces|xes)", r"pleural air(?: collections?)?"), (), POSITIVE,
         None),
        ("pleural_effusion", (r"effusions?", r"pleural fluid", r"hydrothorax", r"hydropneumothora(?:x|ces)"),
         (r"pericardial effusions?",), POSITIVE, None),
        ("pleural_other", ((r"pleural (?:\w+ )?(?:thickening|scar\w*|plaques?|calcifications?|fibros[ie]s|"
                           r"abnormalit\w*)"),
                           r"thickening of the pleura", r"pleuro-?parenchymal (?:scar\w*|thickening|changes?)",
                           r"pleural-(?:parenchymal|peripheral) (?:scar\w*|thickening)", r"fibrothorax",
                           r"apical caps?", r"(?:apical |pleural )capping", r"(?:interlobar )?fissural thickening",
                           r"thickening (?:of|in) the (?:\w+ )?fissures?"), (), POSITIVE, None),
        ("fracture", (r"fractur\w*",), (r"(?:catheter|line|lead|wire|screw)s? (?:is |are )?fractur\w*",
                                         r"fracture of the (?:\w+ ){0,3}(?:screw|lead|wire|catheter)s?"),
         POSITIVE, None),
        ("support_devices", (r"tubes?", r"tubing", r"catheters?", r"picc", (r"(?:central|venous|arterial|midline|picc|"
                             r"subclavian|jugular|dialysis|swan[- ]ganz) lines?"), r"lines? tips?", r"ports?",
                             r"mediport", r"port-?a-?cath", r"pace(?:maker|r)s?", r"a?icds?", r"defibrillators?",
                             (r"(?:monitor|monitoring|ekg|ecg|pacemaker|pacer|pacing|cardiac|epicardial|"
                             r"transvenous|defibrillator) leads?"), r"(?:the|and|with) leads",
                             r"leads (?:terminat\w*|overl\w*|project\w*|extend\w*)", r"wires?", r"clips?", r"stents?",
                             r"prosthetic", r"valve (?:replacement|prosthesis)", r"drains?", r"hardware", r"screws?",
                             r"(?:fixation|fusion|orthopedic|surgical) (?:rods?|plates?)", r"internal fixation",
                             r"devices?", r"cannula", r"coils?", r"arthroplast\w*", r"prosthes[ie]s", r"tracheostomy",
                             r"shunt", r"generator", r"\w*stimulator", r"(?:bone|suture) anchors?", r"electrodes?",
                             r"(?:ivc )?filter", r"(?:graft|bypass|surgical) markers?",
                             # what redaction leaves of a line: "[DEID] with tip projecting over the lower svc"
                             (r"tips? (?:\w+ ){0,5}(?:svc|vena cava|cavoatrial|caval|atri(?:um|al)|carina|"
                             r"brachiocephalic|ventricle|stomach)")), (), POSITIVE, None),
    ))

# Places that need a qualifier. (pattern, {qualifier class or "": [(observation, status)]}); "" = no qualifier.
_HEART = r"heart(?! failure)(?: size| shadow| silhouette| contours?)?|cardiac (?:silhouette|size|shadow|contours?)" \
         r"|cardiopericardial silhouette|size of the heart"
_MEDIASTINUM = r"(?:superior )?mediastin(?:um|al (?:silhouette|contours?|width|shadow|configuration|structures))"
_CARDIOMEDIASTINAL = r"cardio ?-?mediastinal(?: silhouette| contours?| shadow| structures| size)?|cardiomediastinum" \
                     r"|(?:cardiac|heart) and mediastinal (?:silhouettes?|contours?)|heart and mediastinum" \
                     r"|mediastinal and (?:cardiac|heart) (?:silhouettes?|contours?)"
SITES: tuple[tuple[re.Pattern, dict[str, list[tuple[str, str]]]], ...] = tuple((_words(p), rules) for p, rules in (
    (_CARDIOMEDIASTINAL, {"normal": [("cardiomegaly", NEGATIVE), ("enlarged_cardiomediastinum", NEGATIVE)],
                          "enlarged": [("enlarged_cardiomediastinum", POSITIVE), ("cardiomegaly", UNCERTAIN)],
                          "borderline": [("enlarged_cardiomediastinum", UNCERTAIN), ("cardiomegaly", UNCERTAIN)]}),
    (_HEART, {"normal": [("cardiomegaly", NEGATIVE)], "enlarged": [("cardiomegaly", POSITIVE)],
              "borderline": [("cardiomegaly", UNCERTAIN)]}),
    (_MEDIASTINUM, {"normal": [("enlarged_cardiomediastinum", NEGATIVE)],
                    "enlarged": [("enlarged_cardiomediastinum", POSITIVE)],
                    "borderline": [("enlarged_cardiomediastinum", UNCERTAIN)]}),
    (r"(?:interstitial|reticular) markings?", {"normal": [("lung_opacity", NEGATIVE)],
                                               "": [("lung_opacity", POSITIVE)]}),
    (r"(?:(?:bronchovascular|lung|pulmonary|perihilar|basilar|parenchymal) )+markings?",
     {"normal": [("lung_opacity", NEGATIVE)], "increased": [("lung_opacity", POSITIVE)]}),
    (r"(?:lateral )?costophrenic(?: angles?| sulc[iu]s?| recess\w*)?",
     {"sharp": [("pleural_effusion", NEGATIVE)], "blunted": [("pleural_effusion", UNCERTAIN)]}),
    (r"(?:pulmonary |central )?(?:vascularity|vasculature|vessels|vascular markings)",
     {"increased": [("edema", UNCERTAIN)]}),
))
QUALIFIERS: dict[str, re.Pattern] = {
    "normal": _words(r"within (?:the )?(?:limits of normal|normal limits)", r"(?:upper|high|top)(?:[- ]normal| limits?"
                     r" of normal| range of normal)", r"limits of normal", r"normal(?: in size| size)?",
                     r"unremarkable", r"non-?enlarged", r"not (?:\w+ )?(?:enlarged|widened)"),
    "enlarged": _words(r"enlarge\w*", r"large", r"larger", r"increased?", r"prominen\w*", r"widen\w*", r"globular"),
    "borderline": _words(r"borderline"),
    "increased": _words(r"increase\w*", r"prominen\w*", r"coarse\w*", r"accentuat\w*", r"thicken\w*", r"engorge\w*",
                        r"congested", r"cephali[sz]ed"),
    "sharp": _words(r"sharp\w*", r"clear", r"preserved", r"normal", r"well[- ]defined"),
    "blunted": _words(r"blunt\w*"),
}
# Words that may stand between a place and its qualifier ("the heart size and pulmonary vascularity appear within").
_LINK = frozenset(
    "is are was were be been appears appear appearing remains remain seems seem looks look again now still otherwise "
    "overall grossly mildly mild moderately moderate markedly marked severely severe slightly slight minimally "
    "minimal somewhat very at the of in and size sizes contour contours silhouette silhouettes mediastinal "
    "mediastinum cardiac heart hilar hila hilum pulmonary vascularity vasculature vessels both [deid] stable stably "
    "unchanged for age configuration appearance limits upper top high bilaterally bilateral left right angles angle "
    "sulci not also , well within persistently significantly currently lung central".split())
_COPULA = frozenset("is are was were be been appears appear appearing remains remain seems seem now otherwise again "
                    "still also grossly [deid]".split())

_CHANGE_ADJ = (r"(?:significant|appreciable|interval|substantial|definite|major|acute|radiographic|visible|further|"
               r"marked|gross|notable|overall|apparent|real|measurable|\[DEID\])")
# Cues: (pattern, kind, direction); "f" reaches forward to the clause end, "b" back to its start. Earlier entries win
# where two overlap, so the change phrases and double negations hide their "no" and "not" from the negations.
CUES: tuple[tuple[re.Pattern, str, str], ...] = tuple((_words(*p), kind, d) for p, kind, d in (
    ((r"(?:no|without) (?:" + _CHANGE_ADJ + r" ){0,3}(?:change|changes|progression|worsening|increase|decrease|"
      r"improvement)(?: in| of)?", r"not (?:\w+ )?changed", r"unchanged",
      r"to (?:suggest|indicate|explain|represent)", r"not previously (?:seen|visualized|identified|present)",
      (r"not (?:seen|present|visualized|identified|evident|appreciated) (?:on|in) (?:the )?(?:prior|previous|"
      r"earlier|comparison)\w*")), "neutral", "fb"),
    (((r"(?:cannot|can ?not|could not|can't|couldn't|may not|does not|do not|not) (?:be )?(?:entirely |completely |"
      r"totally |fully |definitely |definitively |absolutely )?(?:excluded|exclude|ruled out|rule out)"),
      r"(?:difficult|impossible|hard) to (?:entirely |completely )?(?:exclude|rule out)",
      r"no evidence to rule out", r"not (?:entirely |completely )?(?:excluded|ruled out)"), "dneg", "fb"),
    ((r"no new",), "dneg", "f"),
    ((r"not (?:well|clearly|definitely|optimally)[- ](?:seen|visualized|evaluated|assessed|identified)",
      r"(?:poorly|incompletely) (?:seen|visualized|evaluated|assessed)"), "unc", "b"),
    ((r"no", r"without", r"negative for", r"free of", r"clear of", r"absence of", r"lack of", r"resolution of",
      r"removal of", r"disappearance of", r"clearing of", r"rather than", r"instead of", r"neither", r"nor"),
     "neg", "f"),
    ((r"(?:is|are|was|were) negative", r"ruled out", r"excluded"), "neg", "b"),
    (((r"not (?:\w+ )?(?:seen|identified|present|visuali[sz]ed|evident|demonstrated|appreciated|detected|noted|"
      r"apparent|visible|shown|found|observed|enlarged|widened|increased|engorged|prominent|dilated)"),), "neg", "b"),
    ((r"not", r"\w+n't"), "neg", "f"),
    ((r"no longer", r"absent", r"none", r"(?:has |have |had )?(?:been )?(?:resolved|cleared|removed|disappeared)",
      r"resolution"), "neg", "fb"),
    ((r"(?:may|might|could|can|would) (?:also )?(?:possibly )?be (?:present|seen|noted|identified|superimposed)",
      (r"(?:is|are|was|were|be|remains?) (?:also |still )?(?:possible|questionable|suspected|questioned|equivocal|"
      r"considered|favored)")), "unc", "b"),
    (((r"(?:may|might|could|can|would) (?:also )?(?:possibly )?(?:represent|reflect|indicate|be|include|suggest|"
      r"signify|relate)"), r"concern(?:ing|s)? for", r"suspicious for", r"suspicion (?:of|for)", r"worrisome for",
      r"suggest\w*", r"suggestion of", r"question of", r"differential", r"consider(?:ed|ation)?", r"(?:to )?rule out",
      r"(?:to )?exclude", r"correlat\w*", r"secondary to", r"perhaps",
      r"maybe", r"presum\w*", r"possible", r"possibly", r"probable", r"probably", r"questionabl[ey]",
      r"suspect\w*", r"question", r"evaluation for", r"versus", r"vs\.?"), "unc", "f"),  # versus: and the _OR pair
    ((r"may", r"might", r"could", r"equivocal", r"borderline", r"unlikely", r"less likely",
      r"indeterminate"), "unc", "fb"),
))
# Ends a clause: no cue reaches across it.
_CLAUSE_END = re.compile(r";|(?<![\w-])(?:but|however|although|though|whereas|except|apart from|aside from|"
                         r"with the exception of|which|that|while)(?![\w-])")
# Ends what a forward negation reaches: a new subject ("no effusion, there is a small pneumothorax", "no
# pneumothorax and the heart is enlarged"; "no effusion and pneumothorax" stays one negated list).
_FORWARD_END = _words(r"there (?:is|are|has been|have been|was|were)", r"and the")
# What may stand between two mentions joined by "or" ("atelectasis or scarring", "opacity, atelectasis versus ...").
_OR = re.compile(r"^,?\s*(?:[\w\[\]-]+\s+){0,3}?,?\s*(?:or|and/or|versus|vs\.?)\s+(?:[\w\[\]-]+\s+){0,3}$|^\s*/\s*$")


@dataclass(frozen=True)
class Mention:
    """One observation named in a clause: its span and the status it has before any cue (a qualifier's)."""

    observation: str
    start: int
    end: int
    status: str
    finding: bool  # named as a finding ("effusion"), not as a place with a qualifier ("heart size is normal")


def _overlaps(a: tuple[int, int], spans: Sequence[tuple[int, int]]) -> bool:
    return any(a[0] < e and s < a[1] for s, e in spans)


def _qualifier(clause: str, start: int, end: int, classes: Sequence[str], after_only: bool = False) -> str | None:
    """The class of the nearest qualifier joined to the place at clause[start:end] by linking words only; a comma
    only with a verb ("the heart, pulmonary [DEID] and mediastinum are normal", not "heart size, enlarged aorta").
    after_only: a finding's own predicate ("vascular engorgement appears within normal limits"), copulas only.
    Two qualifiers joined by "or" / "to" ("upper limits of normal or mildly enlarged") are borderline."""
    found: list[tuple[int, str, re.Match]] = []
    for name in classes:
        for m in QUALIFIERS[name].finditer(clause):
            after = m.start() >= end
            gap = clause[end:m.start()] if after else clause[m.end():start] if m.end() <= start else None
            if gap is None or (after_only and not after):
                continue
            words = re.findall(r"\[deid\]|[\w-]+|,", gap.lower())
            allowed = _COPULA if after_only else _LINK
            if len(words) <= 7 and all(w in allowed for w in words) and ("," not in words or _COPULA & set(words)):
                found.append((len(words), name, m))
    if not found:
        return None
    _, name, m = min(found, key=lambda f: f[0])
    joined = {n for n in classes if n != name for o in QUALIFIERS[n].finditer(clause, m.end())
              if re.fullmatch(r"\s*(?:or|to|versus|vs\.?)\s+(?:\w+\s+)?", clause[m.end():o.start()])}
    both = joined | {name}
    return "borderline" if "normal" in both and both & {"enlarged", "borderline"} else name


def _mentions(clause: str) -> list[Mention]:
    """Findings named in the clause, and places whose qualifier gives a status."""
    found: list[Mention] = []
    for obs, pattern, unmention, status, context in MENTIONS:
        if context and not context.search(clause):
            continue
        excluded = [m.span() for m in unmention.finditer(clause)] if unmention else []
        for m in pattern.finditer(clause):
            if not _overlaps(m.span(), excluded):
                normal = _qualifier(clause, m.end(), m.end(), ["normal"], after_only=True)  # "... appear normal"
                found.append(Mention(obs, *m.span(), NEGATIVE if normal else status, True))
    taken: list[tuple[int, int]] = []
    for pattern, rules in SITES:
        for m in pattern.finditer(clause):
            if _overlaps(m.span(), taken):
                continue  # "heart" inside "heart and mediastinum", already read as one place
            taken.append(m.span())
            name = _qualifier(clause, *m.span(), [c for c in rules if c])
            found += [Mention(obs, *m.span(), status, False) for obs, status in rules.get(name or "", [])]
    return found


def _in_scope(cue: re.Match, direction: str, mention: Mention, clause: str, kind: str) -> bool:
    """Whether a cue reaches the mention: forward to the clause end (a negation stops at "there is"), or back."""
    if "f" in direction and cue.end() <= mention.start:
        return not (kind == "neg" and _FORWARD_END.search(clause, cue.end(), mention.start))
    return "b" in direction and cue.start() >= mention.end


def _label_clause(clause: str) -> list[tuple[str, str]]:
    """(observation, status) for every mention in one clause."""
    mentions = _mentions(clause)
    if not mentions:
        return []
    cues: list[tuple[re.Match, str, str]] = []
    for pattern, kind, direction in CUES:
        for m in pattern.finditer(clause):
            if not _overlaps(m.span(), [c.span() for c, _, _ in cues]):
                cues.append((m, kind, direction))
    statuses = []
    for mention in mentions:
        kinds = {kind for cue, kind, direction in cues if kind != "neutral"
                 and not _overlaps(cue.span(), [(mention.start, mention.end)])
                 and _in_scope(cue, direction, mention, clause, kind)}
        if mention.status == NEGATIVE:
            status = NEGATIVE  # "heart size is normal": the qualifier already said it
        elif "dneg" in kinds:
            status = UNCERTAIN
        elif "neg" in kinds:
            status = NEGATIVE
        elif "unc" in kinds:
            status = UNCERTAIN
        else:
            status = mention.status
        statuses.append(status)
    for i, a in enumerate(mentions):  # "atelectasis or pneumonia": each uncertain, unless negated
        for j, b in enumerate(mentions):
            between = [m for m in mentions if m.finding and a.end <= m.start < b.start]
            if a.finding and b.finding and a.end <= b.start and not between and _OR.match(clause[a.end:b.start]):
                for k in (i, j):
                    if statuses[k] == POSITIVE:
                        statuses[k] = UNCERTAIN
    return [(m.observation, s) for m, s in zip(mentions, statuses)]


def label_sentence(sentence: str) -> dict[str, str]:
    """observation -> status for one cleaned, lower-case sentence (the strongest status of its mentions)."""
    labels: dict[str, str] = {}
    start = 0
    for end in [m.start() for m in _CLAUSE_END.finditer(sentence)] + [len(sentence)]:
        for obs, status in _label_clause(sentence[start:end]):
            if obs not in labels or _RANK[status] > _RANK[labels[obs]]:
                labels[obs] = status
        start = end
    if labels.get("lung_lesion") in (POSITIVE, UNCERTAIN) and any(
            not _BENIGN_DENIED.search(sentence[:m.start()]) for m in _BENIGN.finditer(sentence)):
        del labels["lung_lesion"]  # "nodular density ... represents a granuloma", "calcified right hilar nodules"
    return labels


def label_report(text: str) -> dict[str, str]:
    """observation -> status for the observations the FINDINGS + IMPRESSION mention, plus no_finding: POSITIVE when
    no pathology is positive or uncertain (CheXpert's rule). A text with no sentence gives {}."""
    sentences = split_sentences(training_text(text or ""))
    labels: dict[str, str] = {}
    for sentence in sentences:
        for obs, status in label_sentence(sentence).items():
            if obs not in labels or _RANK[status] > _RANK[labels[obs]]:
                labels[obs] = status
    if sentences and not any(labels.get(o) in (POSITIVE, UNCERTAIN) for o in PATHOLOGIES):
        labels["no_finding"] = POSITIVE
    return {o: labels[o] for o in OBSERVATIONS if o in labels}


def label_reports(texts: Sequence[str]) -> list[dict[str, str]]:
    """label_report of each text, in order."""
    return [label_report(t) for t in texts]


def label_matrix(texts: Sequence[str], uncertain: str = "positive") -> np.ndarray:
    """(N, 14) float 0/1 in OBSERVATIONS order: 1 for positive, and for uncertain when uncertain="positive" (the
    R2Gen / CheXpert clinical-efficacy convention); 0 for negative and not mentioned."""
    if uncertain not in (POSITIVE, NEGATIVE):
        raise MedsslError(f"label_matrix: uncertain={uncertain!r} must be 'positive' or 'negative'")
    ones = {POSITIVE, UNCERTAIN} if uncertain == POSITIVE else {POSITIVE}
    out = np.zeros((len(texts), len(OBSERVATIONS)), dtype=np.float32)
    for i, labels in enumerate(label_reports(texts)):
        for j, obs in enumerate(OBSERVATIONS):
            out[i, j] = labels.get(obs) in ones
    return out
