"""Zero-shot classification with an image-text model: prompts per class, ensembled class embeddings, scores.

No labelled image is used: each class is described by a few sentences ("there is pleural effusion.", "pleural
effusion is seen.", ...), the text encoder embeds them, and an image's score for a class comes from its cosine
similarity to the class's embedding (CLIP, Radford et al. 2021, section 3.1.4; CheXzero, Tiu et al. 2022, for the
positive-against-negative prompts of multi-label findings).

- Prompts: PROMPT_TEMPLATES per class, NEGATIVE_TEMPLATES for the absence of a finding, NORMAL_PROMPTS for a class
  whose name says "nothing found" (`data.tasks.NEGATIVE_NAMES`: normal, no_finding, ...); underscores read as
  spaces ("pleural_effusion" -> "pleural effusion"); a prompt file (YAML or JSON) replaces them for the classes it
  names. Every prompt goes through `text.reports.clean_text` and ends with a period, as training text does.
- Class embedding: the mean of the class's L2-normalised prompt embeddings, normalised again (prompt ensembling).
- Scores, in the shapes of `data.tasks` (always (N, K), K = task.n_outputs):
  multiclass: softmax over the C class similarities times the logit scale -> (N, C), rows sum to 1;
  binary: the same two-way softmax, column of classes[1] -> (N, 1); the negative class, when its name is in
  NEGATIVE_NAMES ("normal"), is described by the positive class's negative prompts ("no pneumonia.");
  multilabel: per finding, a two-way softmax between its positive and negative embeddings -> P(present), (N, C).
- Logit scale: 1 / temperature, where the temperature is the one passed, else the model's own `temperature`
  attribute (a number, a 0-d tensor or a method returning one, e.g. CLIP's learned one), else
  0.01 (scale 100, the largest a CLIP logit scale may reach, `losses.ClipLoss.MAX_LOGIT_SCALE`). The scale never
  changes a binary or multi-label AUC (each score is monotone in one similarity difference); it changes how
  peaked multi-class probabilities are, hence their one-vs-rest AUCs a little, never the accuracy.

Library code: imports data/, text/ and evaluate/metrics only; the command (`medssl zeroshot`) lives in the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from medssl.data.preprocess import Preprocess
from medssl.data.tasks import NEGATIVE_NAMES, Task
from medssl.errors import MedsslError
from medssl.evaluate.features import extract_features, feature_bar
from medssl.evaluate.metrics import bootstrap_intervals, classification_metrics
from medssl.text.reports import clean_text

PROMPT_TEMPLATES: tuple[str, ...] = (
    "{finding}", "there is {finding}", "{finding} is seen", "{finding} is present",
    "findings consistent with {finding}",
)
NEGATIVE_TEMPLATES: tuple[str, ...] = (
    "no {finding}", "there is no {finding}", "no evidence of {finding}", "{finding} is not seen",
)
# A class named "normal" / "no_finding": how reports say that nothing was found (see synthetic/reports.py, IU X-ray).
NORMAL_PROMPTS: tuple[str, ...] = (
    "no acute abnormality", "no acute cardiopulmonary abnormality", "no acute cardiopulmonary process",
    "normal study", "the lungs are clear",
)
DEFAULT_TEMPERATURE = 0.01  # logit scale 100
CHANCE_AUC = 0.5


class ImageTextModel(Protocol):
    """What zero-shot needs of an image-text model: both encoders give L2-normalised (B, D) embeddings.

    Optional: a `temperature` attribute (number, 0-d tensor or method) that logit_scale reads; without it the
    scale is 100.
    """

    training: bool

    def encode_image(self, x: Tensor) -> Tensor:
        """Model-input images (B, C, S, S) float -> (B, D)."""

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Token ids (B, L) and attention mask (B, L) -> (B, D)."""

    def eval(self) -> Any:
        """Evaluation mode (dropout off, BatchNorm on its running statistics)."""

    def train(self, mode: bool = True) -> Any:
        """Back to the mode it was in."""


class TextTokenizer(Protocol):
    """What zero-shot needs of a tokenizer (text.tokenizer.ReportTokenizer)."""

    def encode(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """{"ids": (B, L) int64, "mask": (B, L) int64}."""


@dataclass(frozen=True)
class ClassPrompts:
    """The sentences describing one class: positive (it is there) and negative (it is not; may be empty)."""

    name: str
    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, list[str]]:
        """Plain data (kept beside the results, so a reader sees which sentences were used)."""
        return {"positive": list(self.positive), "negative": list(self.negative)}


def finding_words(name: str) -> str:
    """A class name as words in a sentence: underscores to spaces, whitespace collapsed ("pleural_effusion")."""
    return " ".join(str(name).replace("_", " ").split())


def as_prompt(text: str) -> str:
    """One prompt in the form of training text: clean_text (lower case, one space) and a final period."""
    text = clean_text(text)
    return text if not text or text[-1] in ".!?" else text + "."


def expand(name: str, templates: Sequence[str]) -> tuple[str, ...]:
    """Each template filled with the class name's words, as prompts ("{finding} is seen" -> "nodule is seen.")."""
    words = finding_words(name)
    return tuple(dict.fromkeys(as_prompt(t.format(finding=words)) for t in templates))


def is_negative_name(name: str) -> bool:
    """Whether a class name means "nothing found" (normal, no_finding, negative, ...: data.tasks.NEGATIVE_NAMES)."""
    return str(name).lower() in NEGATIVE_NAMES


def default_prompts(name: str) -> ClassPrompts:
    """Template prompts of one class; a "nothing found" class gets NORMAL_PROMPTS and no negatives."""
    if is_negative_name(name):
        return ClassPrompts(name, tuple(as_prompt(p) for p in NORMAL_PROMPTS))
    return ClassPrompts(name, expand(name, PROMPT_TEMPLATES), expand(name, NEGATIVE_TEMPLATES))


def _prompt_list(path: Path, name: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of prompt strings from a prompt file (a single string counts as a list of one)."""
    items = [value] if isinstance(value, str) else [] if value is None else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise MedsslError(f"{path}: class {name!r}: {key} must be a list of strings, got {value!r}")
    prompts = tuple(dict.fromkeys(p for p in (as_prompt(s) for s in items) if p))
    if not prompts and key == "positive":
        raise MedsslError(f"{path}: class {name!r} has no prompts")
    return prompts


def load_prompt_file(path: str | Path) -> dict[str, ClassPrompts]:
    """Prompts from a YAML or JSON file: {class: [prompts]} or {class: {positive: [...], negative: [...]}}.

    A class without negatives gets NEGATIVE_TEMPLATES when a multi-label task needs them (build_prompts).
    MedsslError (one line naming the file) for an unreadable file, no classes, or a class with no prompts.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except OSError as e:
        raise MedsslError(f"{path}: cannot read the prompt file ({e.strerror or e})") from None
    except (ValueError, yaml.YAMLError) as e:
        raise MedsslError(f"{path}: not a valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'} prompt file "
                          f"({' '.join(str(e).split())})") from None
    if data is None or (isinstance(data, Mapping) and not data):
        raise MedsslError(f"{path}: the prompt file names no classes (expected class: [prompts, ...])")
    if not isinstance(data, Mapping):
        raise MedsslError(f"{path}: a prompt file maps class names to prompts, got a {type(data).__name__}")
    out = {}
    for name, value in data.items():
        name = str(name)
        if isinstance(value, Mapping):
            unknown = sorted(set(map(str, value)) - {"positive", "negative"})
            if unknown:
                raise MedsslError(f"{path}: class {name!r}: unknown key(s) {unknown}; use positive and negative")
            positive = _prompt_list(path, name, "positive", value.get("positive", []))
            negative = _prompt_list(path, name, "negative", value.get("negative", []))
        else:
            positive, negative = _prompt_list(path, name, "positive", value), ()
        out[name] = ClassPrompts(name, positive, negative)
    return out


def build_prompts(task: Task, prompt_file: str | Path | None = None) -> dict[str, ClassPrompts]:
    """The prompts of every class of the task, in task.classes order: the file's where it names the class, else
    the templates. Multi-label: every finding needs negatives (templates where the file gives none). Binary with a
    "nothing found" negative class not in the file: the positive class's negative prompts ("no pneumonia.").
    A file class that is not one of the task's classes is an error (a misspelt name would silently use templates).
    """
    given = load_prompt_file(prompt_file) if prompt_file is not None else {}
    unknown = [n for n in given if n not in task.classes]
    if unknown:
        raise MedsslError(f"{prompt_file}: class(es) {unknown} are not among the task's classes {list(task.classes)}")
    prompts = {n: given.get(n) or default_prompts(n) for n in task.classes}
    if task.kind == "multilabel":
        for n, p in prompts.items():
            if not p.negative:
                prompts[n] = ClassPrompts(n, p.positive, expand(n, NEGATIVE_TEMPLATES))
    elif task.kind == "binary":
        neg, pos = task.classes
        if neg not in given and is_negative_name(neg) and prompts[pos].negative:
            prompts[neg] = ClassPrompts(neg, prompts[pos].negative)
    return prompts


def _device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def encode_prompts(model: ImageTextModel, tokenizer: TextTokenizer, prompts: Sequence[str]) -> Tensor:
    """Normalised embeddings (P, D) of prompts, in eval mode and without gradients (the mode is restored)."""
    if not prompts:
        raise MedsslError("zero-shot: no prompts to encode")
    was_training = model.training
    model.eval()
    try:
        tokens = tokenizer.encode(list(prompts))
        device = _device(model)
        z = model.encode_text(tokens["ids"].to(device), tokens["mask"].to(device))  # (P, D)
    finally:
        model.train(was_training)
    return F.normalize(z.float().cpu(), dim=-1)


def class_embedding(prompt_embeddings: Tensor) -> Tensor:
    """Prompt ensembling: (P, D) -> (D,), the mean of the normalised prompt embeddings, normalised again."""
    return F.normalize(F.normalize(prompt_embeddings.float(), dim=-1).mean(dim=0), dim=0)


def logit_scale(model: Any = None, temperature: float | None = None) -> float:
    """1 / temperature: the one given, else the model's `temperature` (number, tensor or method), else 100."""
    t = temperature
    if t is None and model is not None:
        t = getattr(model, "temperature", None)
        t = t() if callable(t) else t
    t = DEFAULT_TEMPERATURE if t is None else float(t.item() if isinstance(t, Tensor) else t)
    if not (math.isfinite(t) and t > 0):
        raise MedsslError(f"zero-shot: temperature must be a positive number, got {t}")
    return 1.0 / t


@dataclass
class ZeroShotClassifier:
    """Class embeddings of a task: positive (K_c, D) with one row per task class; negative (C, D) for multilabel."""

    task: Task
    positive: Tensor
    negative: Tensor | None
    scale: float
    prompts: dict[str, ClassPrompts]

    def scores(self, images: Tensor) -> np.ndarray:
        """Normalised image embeddings (N, D) -> scores (N, K) as data.tasks expects for the task's kind."""
        return zeroshot_scores(images, self.positive, self.negative, self.task, self.scale)

    def to_dict(self) -> dict[str, Any]:
        """The prompts and the logit scale, as plain data (for a results file)."""
        return {"logit_scale": self.scale, "prompts": {n: p.to_dict() for n, p in self.prompts.items()}}


def build_classifier(model: ImageTextModel, tokenizer: TextTokenizer, task: Task,
                     prompts: Mapping[str, ClassPrompts] | None = None, prompt_file: str | Path | None = None,
                     temperature: float | None = None) -> ZeroShotClassifier:
    """Embed every class's prompts (build_prompts unless given) into a ZeroShotClassifier."""
    prompts = dict(prompts) if prompts is not None else build_prompts(task, prompt_file)
    missing = [n for n in task.classes if n not in prompts]
    if missing:
        raise MedsslError(f"zero-shot: no prompts for class(es) {missing}")
    positive = torch.stack([class_embedding(encode_prompts(model, tokenizer, prompts[n].positive))
                            for n in task.classes])                                   # (K_c, D)
    negative = None
    if task.kind == "multilabel":
        empty = [n for n in task.classes if not prompts[n].negative]
        if empty:
            raise MedsslError(f"zero-shot: multi-label finding(s) {empty} have no negative prompts")
        negative = torch.stack([class_embedding(encode_prompts(model, tokenizer, prompts[n].negative))
                                for n in task.classes])                               # (C, D)
    return ZeroShotClassifier(task, positive, negative, logit_scale(model, temperature),
                              {n: prompts[n] for n in task.classes})


def zeroshot_scores(images: Tensor, positive: Tensor, negative: Tensor | None, task: Task,
                    scale: float = 1.0 / DEFAULT_TEMPERATURE) -> np.ndarray:
    """Image embeddings (N, D), class embeddings positive (C, D) [and negative (C, D) for multilabel] -> (N, K).

    multiclass: softmax(scale * cos) over classes; binary: its classes[1] column; multilabel: per finding the
    softmax of (positive, negative) similarities, P(present). Float64 numpy, ready for evaluate.metrics.
    """
    img = F.normalize(images.double(), dim=-1)
    pos = F.normalize(positive.double(), dim=-1)
    if img.ndim != 2 or pos.ndim != 2 or img.shape[1] != pos.shape[1] or len(pos) != len(task.classes):
        raise MedsslError(f"zero-shot: image embeddings {tuple(img.shape)} and class embeddings {tuple(pos.shape)} "
                          f"do not fit a task with {len(task.classes)} classes")
    sim = scale * img @ pos.T                                                        # (N, C)
    if task.kind != "multilabel":
        probs = torch.softmax(sim, dim=1)
        return (probs[:, 1:] if task.kind == "binary" else probs).numpy()
    if negative is None or tuple(negative.shape) != tuple(pos.shape):
        raise MedsslError(f"zero-shot: a multi-label task needs negative embeddings of shape {tuple(pos.shape)}")
    sim_neg = scale * img @ F.normalize(negative.double(), dim=-1).T                 # (N, C)
    return torch.softmax(torch.stack([sim, sim_neg], dim=2), dim=2)[..., 0].numpy()  # (N, C) P(present)


@torch.no_grad()
def encode_images(model: ImageTextModel, images: Tensor, preprocess: Preprocess | None = None,
                  batch_size: int = 64, progress: bool = True, desc: str = "zero-shot: encoding images") -> Tensor:
    """Normalised embeddings (N, D) of stored images (N, 1 or C, S, S), uint8 or float in [0, 1], fed through the
    model's Preprocess in batches; eval mode, no gradients, the model's mode restored (features.extract_features
    with the model's encode_image); a tqdm bar named desc unless progress=False."""
    if images.ndim != 4 or len(images) == 0:
        raise MedsslError(f"zero-shot: expected images (N, C, S, S) with N >= 1, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise MedsslError(f"zero-shot: batch_size must be at least 1, got {batch_size}")
    with feature_bar(len(images), desc, progress) as bar:
        features = extract_features(model, images, preprocess, batch_size, bar, encode=model.encode_image)
    return F.normalize(torch.from_numpy(features), dim=-1)  # (N, D)


def _class_intervals(y: np.ndarray, scores: np.ndarray, task: Task, groups: Sequence[str], n_boot: int,
                     alpha: float, seed: int) -> list[dict[str, Any]]:
    """Per-class AUC bootstrap intervals (one-vs-rest): each class as a binary task on its own score column."""
    if task.kind == "binary":
        columns = [(np.asarray(y), scores[:, :1])] * 2                 # both classes share the one ranking
    elif task.kind == "multiclass":
        columns = [((np.asarray(y) == k).astype(np.int64), scores[:, k:k + 1]) for k in range(len(task.classes))]
    else:
        columns = [(np.asarray(y)[:, k], scores[:, k:k + 1]) for k in range(len(task.classes))]
    out = []
    for name, (yk, sk) in zip(task.classes, columns):
        iv = bootstrap_intervals(yk, sk, Task("binary", ("rest", name)), groups, metrics=("roc_auc_macro",),
                                 n_boot=n_boot, alpha=alpha, seed=seed)["roc_auc_macro"]
        out.append({"roc_auc_ci95": [iv.low, iv.high], "roc_auc_resamples": iv.resamples})
    return out


def score_zeroshot(y: np.ndarray, scores: np.ndarray, task: Task, groups: Sequence[str], n_boot: int = 1000,
                   alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Metrics of zero-shot scores (N, K) as an evaluation run has them, with patient-level bootstrap CIs.

    classification_metrics (AUC macro and per class, accuracy, ...), "ci95" and "bootstrap" (n_boot, resamples
    per metric) for roc_auc_macro and accuracy, per class "roc_auc_ci95" / "roc_auc_resamples", and "chance"
    (AUC 0.5: what scores independent of the image reach).
    """
    m = classification_metrics(y, scores, task)
    ci = bootstrap_intervals(y, scores, task, groups, metrics=("roc_auc_macro", "accuracy"), n_boot=n_boot,
                             alpha=alpha, seed=seed)
    m["ci95"] = {k: [iv.low, iv.high] for k, iv in ci.items()}
    m["bootstrap"] = {"n_boot": n_boot, "resamples": {k: iv.resamples for k, iv in ci.items()}}
    for name, extra in zip(task.classes, _class_intervals(y, scores, task, groups, n_boot, alpha, seed)):
        m["per_class"][name].update(extra)
    m["chance"] = {"roc_auc_macro": CHANCE_AUC}
    return m


def evaluate_zeroshot(model: ImageTextModel, tokenizer: TextTokenizer, images: Tensor, y: np.ndarray, task: Task,
                      groups: Sequence[str], prompt_file: str | Path | None = None,
                      preprocess: Preprocess | None = None, temperature: float | None = None, n_boot: int = 1000,
                      seed: int = 0, batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Zero-shot classification of stored images (N, C, S, S) end to end: prompts, class embeddings, image
    embeddings, scores (N, K), then score_zeroshot's metrics plus the prompts and logit scale used."""
    classifier = build_classifier(model, tokenizer, task, prompt_file=prompt_file, temperature=temperature)
    scores = classifier.scores(encode_images(model, images, preprocess, batch_size, progress))
    return {**score_zeroshot(y, scores, task, groups, n_boot=n_boot, seed=seed), **classifier.to_dict()}
