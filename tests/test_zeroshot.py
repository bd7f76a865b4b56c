"""Zero-shot classification: prompts, prompt files, class embeddings, scores per task kind, metrics.

The image-text model here is a toy whose geometry is known: the text encoder sends a finding's words to that
finding's direction e_k (to e_{C+k} when the sentence holds a negation word), and the image encoder sends the
"finding k" pixel x_k to x_k * e_k + (1 - x_k) * e_{C+k}. Images of finding k thus lie near its positive prompts and
images without it near its negative prompts, so zero-shot AUC must be near 1; an image encoder that ignores the
pixels must score near chance.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.tasks import Task
from medssl.errors import MedsslError
from medssl.text.tokenizer import ReportTokenizer
from medssl.evaluate.zeroshot import (
    NEGATIVE_TEMPLATES,
    NORMAL_PROMPTS,
    PROMPT_TEMPLATES,
    ClassPrompts,
    as_prompt,
    build_classifier,
    build_prompts,
    class_embedding,
    default_prompts,
    encode_images,
    encode_prompts,
    evaluate_zeroshot,
    expand,
    finding_words,
    load_prompt_file,
    logit_scale,
    score_zeroshot,
    zeroshot_scores,
)

FINDINGS = ("pleural_effusion", "nodule", "pneumothorax")
NEGATION = ("no", "not")
SIDE = 4  # images (N, 1, 4, 4): pixel k (k < 3) says how much of finding k the image shows


def _all_prompts() -> list[str]:
    texts = [p for f in FINDINGS for p in expand(f, PROMPT_TEMPLATES) + expand(f, NEGATIVE_TEMPLATES)]
    return texts + [as_prompt(p) for p in NORMAL_PROMPTS]


@pytest.fixture(scope="module")
def tokenizer() -> ReportTokenizer:
    return ReportTokenizer.train(_all_prompts() * 2, vocab_size=400, min_frequency=1, context=32)


def _token(tokenizer: ReportTokenizer, word: str) -> int:
    """The id of a whole word (the toy text encoder reads words, so none may be split into pieces)."""
    token = tokenizer.tokenizer.token_to_id(word)
    assert token is not None, f"{word!r} is not one token of the toy vocabulary"
    return token


class ToyImageText(nn.Module):
    """Text: bag of words onto (positive block C | negative block C | filler 1); images: pixel k -> block k."""

    def __init__(self, tokenizer: ReportTokenizer, random_images: bool = False, temperature: float | None = None):
        super().__init__()
        c, vocab = len(FINDINGS), tokenizer.vocab_size
        word_class = torch.zeros(vocab, c)                  # (V, C): which finding a token names
        for k, finding in enumerate(FINDINGS):
            for word in finding.split("_"):
                word_class[_token(tokenizer, word), k] = 1.0
        negation = torch.zeros(vocab)
        for word in NEGATION:
            negation[_token(tokenizer, word)] = 1.0
        self.register_buffer("word_class", word_class)
        self.register_buffer("negation", negation)
        self.dummy = nn.Parameter(torch.zeros(1))          # a parameter gives the model its device
        self.random_images, self.modes = random_images, []
        if temperature is not None:
            self.temperature = temperature

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        bag = (F.one_hot(ids, self.word_class.shape[0]) * mask[..., None]).sum(1).float()  # (B, V) word counts
        named = bag @ self.word_class                                                        # (B, C)
        negated = (bag @ self.negation > 0).float()[:, None]                                 # (B, 1)
        filler = torch.full_like(negated, 0.1)
        return F.normalize(torch.cat([named * (1 - negated), named * negated, filler], 1), dim=1)  # (B, 2C+1)

    def encode_image(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        c = len(FINDINGS)
        if self.random_images:  # embeddings unrelated to the pixels
            g = torch.Generator().manual_seed(int(x.sum().item() * 1e4) % (2 ** 31))
            return F.normalize(torch.randn(len(x), 2 * c + 1, generator=g), dim=1)
        p = x.flatten(1)[:, :c]                                                           # (B, C) in [0, 1]
        filler = x.flatten(1)[:, c:c + 1] * 0.1
        return F.normalize(torch.cat([p, 1 - p, filler], 1), dim=1)


def _images(present: np.ndarray, seed: int = 0) -> Tensor:
    """Images (N, 1, SIDE, SIDE) uint8: pixel k is 0.6-1.0 when finding k is present, 0-0.4 when absent."""
    rng = np.random.default_rng(seed)
    x = rng.random((len(present), SIDE * SIDE))
    x[:, : len(FINDINGS)] = 0.6 * present + 0.4 * rng.random(present.shape)
    return torch.from_numpy((x * 255).round().astype(np.uint8)).reshape(-1, 1, SIDE, SIDE)


def _multilabel(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, len(FINDINGS))) < 0.4).astype(np.int64)


def _groups(n: int) -> list[str]:
    return [f"p{i // 2}" for i in range(n)]  # two images per patient


# --- prompts ---------------------------------------------------------------------------------------------------

def test_underscores_read_as_words_and_templates_fill_in():
    assert finding_words("pleural_effusion") == "pleural effusion"
    assert finding_words("  left__lower_lobe ") == "left lower lobe"
    p = default_prompts("pleural_effusion")
    assert p.positive == tuple(as_prompt(t.format(finding="pleural effusion")) for t in PROMPT_TEMPLATES)
    assert "there is pleural effusion." in p.positive and "pleural effusion is seen." in p.positive
    assert "no evidence of pleural effusion." in p.negative and "pleural effusion is not seen." in p.negative
    assert all("_" not in s and s.endswith(".") and s == s.lower() for s in p.positive + p.negative)
    assert len(p.negative) == len(NEGATIVE_TEMPLATES)


def test_prompts_are_cleaned_like_training_text():
    assert as_prompt("  There is   a  Nodule ") == "there is a nodule."
    assert as_prompt("No effusion.") == "no effusion."
    assert as_prompt("Cardiomegaly<br>seen") == "cardiomegaly seen."


def test_normal_class_gets_normal_prompts_and_binary_negative_uses_the_findings_negatives():
    assert default_prompts("no_finding").positive == tuple(as_prompt(p) for p in NORMAL_PROMPTS)
    assert default_prompts("Normal").negative == ()
    binary = build_prompts(Task("binary", ("normal", "pneumothorax")))
    assert binary["normal"].positive == expand("pneumothorax", NEGATIVE_TEMPLATES)
    assert list(binary) == ["normal", "pneumothorax"]
    other = build_prompts(Task("binary", ("benign_cyst", "tumour")))  # not a "nothing found" name: its own words
    assert other["benign_cyst"].positive == expand("benign_cyst", PROMPT_TEMPLATES)


def test_prompt_file_replaces_templates_and_multilabel_fills_missing_negatives(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("nodule:\n  - Rounded NODULAR density\n  - a nodule\n"
                    "pneumothorax:\n  positive: [visible pleural line]\n  negative: [no pneumothorax]\n")
    loaded = load_prompt_file(path)
    assert loaded["nodule"] == ClassPrompts("nodule", ("rounded nodular density.", "a nodule."), ())
    prompts = build_prompts(Task("multilabel", FINDINGS), path)
    assert prompts["nodule"].negative == expand("nodule", NEGATIVE_TEMPLATES)       # filled in
    assert prompts["pneumothorax"].negative == ("no pneumothorax.",)                # kept from the file
    assert prompts["pleural_effusion"] == default_prompts("pleural_effusion")       # not in the file: templates
    jpath = tmp_path / "prompts.json"
    jpath.write_text(json.dumps({"nodule": "a nodule"}))
    assert load_prompt_file(jpath)["nodule"].positive == ("a nodule.",)


@pytest.mark.parametrize("name, text, words", [
    ("empty.yaml", "", "no classes"),
    ("braces.yaml", "{}\n", "no classes"),
    ("list.yaml", "- nodule\n", "maps class names"),
    ("none.yaml", "nodule: []\n", "'nodule' has no prompts"),
    ("blank.yaml", "nodule: ['  ']\n", "'nodule' has no prompts"),
    ("onlyneg.yaml", "nodule:\n  negative: [no nodule]\n", "'nodule' has no prompts"),
    ("null.yaml", "nodule:\n", "'nodule' has no prompts"),
    ("numbers.yaml", "nodule: [1, 2]\n", "list of strings"),
    ("keys.yaml", "nodule:\n  pos: [a nodule]\n", "unknown key"),
    ("broken.json", "{\"nodule\": [", "not a valid JSON"),
    ("broken.yaml", "nodule: [a\n", "not a valid YAML"),
])
def test_bad_prompt_file_is_one_line_naming_the_file(tmp_path, name, text, words):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(MedsslError) as e:
        load_prompt_file(path)
    message = str(e.value)
    assert str(path) in message and words in message and "\n" not in message


def test_prompt_file_missing_or_naming_an_unknown_class(tmp_path):
    with pytest.raises(MedsslError, match="cannot read"):
        load_prompt_file(tmp_path / "absent.yaml")
    path = tmp_path / "typo.yaml"
    path.write_text("nodle: [a nodule]\n")
    with pytest.raises(MedsslError, match=r"typo\.yaml.*'nodle'.*not among"):
        build_prompts(Task("multilabel", FINDINGS), path)


# --- embeddings and scale --------------------------------------------------------------------------------------

def test_class_embedding_is_the_renormalised_mean_of_normalised_prompt_embeddings(tokenizer):
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    unit = z / z.norm(dim=1, keepdim=True)
    mean = unit.mean(0)
    assert torch.allclose(class_embedding(z), mean / mean.norm(), atol=1e-6)
    model = ToyImageText(tokenizer)
    clf = build_classifier(model, tokenizer, Task("multilabel", FINDINGS))
    for k, f in enumerate(FINDINGS):   # by hand from encode_text itself
        tokens = tokenizer.encode(list(default_prompts(f).positive))
        by_hand = F.normalize(model.encode_text(tokens["ids"], tokens["mask"]), dim=1).mean(0)
        assert torch.allclose(clf.positive[k], by_hand / by_hand.norm(), atol=1e-6)
    assert clf.positive[0, 0] > 0.9 and clf.negative[0, len(FINDINGS)] > 0.9   # e_k and e_{C+k}, as built


def test_logit_scale_from_argument_model_or_default(tokenizer):
    assert logit_scale(ToyImageText(tokenizer)) == pytest.approx(100.0)
    assert logit_scale(ToyImageText(tokenizer, temperature=0.07)) == pytest.approx(1 / 0.07)
    assert logit_scale(ToyImageText(tokenizer, temperature=0.07), temperature=0.5) == pytest.approx(2.0)
    holder = type("M", (), {"temperature": lambda self: torch.tensor(0.1)})()
    assert logit_scale(holder) == pytest.approx(10.0)
    with pytest.raises(MedsslError, match="positive"):
        logit_scale(None, temperature=0.0)


def test_encoding_runs_in_eval_mode_without_gradients_and_restores_the_mode(tokenizer, capsys):
    model = ToyImageText(tokenizer).train()
    z = encode_images(model, _images(_multilabel(10)), batch_size=4, progress=False)
    assert z.shape == (10, 2 * len(FINDINGS) + 1) and not z.requires_grad
    assert model.modes == [False, False, False] and model.training    # three batches, all in eval mode
    assert torch.allclose(z.norm(dim=1), torch.ones(10), atol=1e-6)
    assert capsys.readouterr().err == ""                                # progress=False: no bar
    encode_images(model, _images(_multilabel(3)), progress=True)
    assert "zero-shot: encoding images" in capsys.readouterr().err
    assert not encode_prompts(model, tokenizer, ["no nodule."]).requires_grad
    with pytest.raises(MedsslError, match="expected images"):
        encode_images(model, torch.zeros(5, 4, 4))


# --- scores and metrics ----------------------------------------------------------------------------------------

def test_score_shapes_and_values_per_task_kind():
    img = F.normalize(torch.randn(7, 5), dim=1)
    pos, neg = F.normalize(torch.randn(3, 5), dim=1), F.normalize(torch.randn(3, 5), dim=1)
    multi = zeroshot_scores(img, pos, None, Task("multiclass", ("a", "b", "c")), scale=10.0)
    assert multi.shape == (7, 3) and np.allclose(multi.sum(1), 1.0)
    assert np.allclose(multi, torch.softmax(10.0 * img.double() @ pos.double().T, 1).numpy())
    binary = zeroshot_scores(img, pos[:2], None, Task("binary", ("a", "b")), scale=10.0)
    sim = img.double() @ pos[:2].double().T
    assert binary.shape == (7, 1)
    assert np.allclose(binary[:, 0], torch.sigmoid(10.0 * (sim[:, 1] - sim[:, 0])).numpy())
    ml = zeroshot_scores(img, pos, neg, Task("multilabel", ("a", "b", "c")), scale=10.0)
    diff = img.double() @ pos.double().T - img.double() @ neg.double().T
    assert ml.shape == (7, 3) and np.allclose(ml, torch.sigmoid(10.0 * diff).numpy())
    with pytest.raises(MedsslError, match="negative embeddings"):
        zeroshot_scores(img, pos, None, Task("multilabel", ("a", "b", "c")))
    with pytest.raises(MedsslError, match="do not fit"):
        zeroshot_scores(img, pos, None, Task("multiclass", ("a", "b")))


def _binary_case(n: int = 80):
    y = (np.arange(n) % 2).astype(np.int64)                     # pneumothorax on every other image
    present = np.zeros((n, len(FINDINGS)), dtype=np.int64)
    present[:, 2] = y
    return Task("binary", ("normal", "pneumothorax")), _images(present, seed=1), y


def _multiclass_case(n: int = 90):
    y = (np.arange(n) % 3).astype(np.int64)
    return Task("multiclass", FINDINGS), _images(np.eye(3, dtype=np.int64)[y], seed=2), y


def _multilabel_case(n: int = 80):
    y = _multilabel(n, seed=3)
    return Task("multilabel", FINDINGS), _images(y, seed=3), y


CASES = {"binary": _binary_case, "multiclass": _multiclass_case, "multilabel": _multilabel_case}


@pytest.mark.parametrize("kind", list(CASES))
def test_zero_shot_auc_is_near_one_when_images_lie_near_their_prompts(tokenizer, kind):
    task, images, y = CASES[kind]()
    model = ToyImageText(tokenizer)
    clf = build_classifier(model, tokenizer, task)
    scores = clf.scores(encode_images(model, images, progress=False))
    assert scores.shape == (len(y), task.n_outputs) and ((scores >= 0) & (scores <= 1)).all()
    m = score_zeroshot(y, scores, task, _groups(len(y)), n_boot=200)
    assert m["roc_auc_macro"] > 0.97 and m["accuracy"] > 0.9
    assert all(m["per_class"][c]["roc_auc"] > 0.97 for c in task.classes)


@pytest.mark.parametrize("kind", list(CASES))
def test_zero_shot_is_near_chance_when_the_image_encoder_ignores_the_images(tokenizer, kind):
    task, images, y = CASES[kind](n=400)
    model = ToyImageText(tokenizer, random_images=True)
    scores = build_classifier(model, tokenizer, task).scores(encode_images(model, images, progress=False))
    m = score_zeroshot(y, scores, task, _groups(len(y)), n_boot=100)
    assert abs(m["roc_auc_macro"] - m["chance"]["roc_auc_macro"]) < 0.1
    low, high = m["ci95"]["roc_auc_macro"]
    assert low < 0.5 + 0.05 and high > 0.5 - 0.05                     # the interval does not exclude chance


def test_score_zeroshot_output_keys_and_intervals(tokenizer):
    task, images, y = _multilabel_case()
    model = ToyImageText(tokenizer)
    out = evaluate_zeroshot(model, tokenizer, images, y, task, _groups(len(y)), n_boot=150, progress=False)
    assert {"roc_auc_macro", "accuracy", "per_class", "ci95", "bootstrap", "chance", "n", "prompts",
            "logit_scale"} <= out.keys()
    assert out["chance"] == {"roc_auc_macro": 0.5} and out["n"] == len(y)
    assert out["bootstrap"]["n_boot"] == 150 and set(out["bootstrap"]["resamples"]) == {"roc_auc_macro", "accuracy"}
    assert out["logit_scale"] == pytest.approx(100.0)
    assert out["prompts"]["nodule"]["negative"] == list(expand("nodule", NEGATIVE_TEMPLATES))
    for c in task.classes:
        pc = out["per_class"][c]
        low, high = pc["roc_auc_ci95"]
        assert low <= pc["roc_auc"] + 1e-9 and high >= pc["roc_auc"] - 0.02 and 0 < pc["roc_auc_resamples"] <= 150
    json.dumps(out)                                                     # plain data, ready for metrics.json
    assert all(math.isfinite(v) for v in out["ci95"]["roc_auc_macro"])


def test_binary_per_class_intervals_match_the_macro_interval(tokenizer):
    task, images, y = _binary_case()
    scores = np.clip(np.where(y[:, None] == 1, 0.7, 0.3) + np.random.default_rng(0).normal(0, 0.3, (len(y), 1)),
                     0, 1)
    m = score_zeroshot(y, scores, task, _groups(len(y)), n_boot=100)
    assert m["per_class"]["normal"]["roc_auc_ci95"] == m["per_class"]["pneumothorax"]["roc_auc_ci95"]
    assert m["per_class"]["pneumothorax"]["roc_auc_ci95"] == m["ci95"]["roc_auc_macro"]
