"""The WordPiece tokenizer: training, encoding to padded tensors, sentence-boundary truncation, decoding, and the
JSON round trip a checkpoint relies on (medssl.text.tokenizer)."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import shared_file
from medssl.errors import MedsslError
from medssl.text.reports import DEID, join_sections, training_text
from medssl.text.tokenizer import ReportTokenizer

CORPUS = [
    "the heart is normal in size. the lungs are clear.",
    f"there is no {DEID} of a pleural effusion. no pneumothorax.",
    "mild cardiomegaly. small left pleural effusion.",
    "the lungs are clear. no acute cardiopulmonary process.",
    "there is a 2.5 cm nodule in the right upper lobe.",
] * 4


@pytest.fixture(scope="module")
def tok() -> ReportTokenizer:
    return ReportTokenizer.train(CORPUS, vocab_size=200, min_frequency=1, context=16)


def test_training_gives_the_special_tokens_first_and_whole_words_for_frequent_ones(tok):
    assert [tok.tokenizer.id_to_token(i) for i in range(6)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", DEID]
    assert tok.pad_id == 0 and tok.ids["cls"] == 2 and tok.ids["sep"] == 3
    assert 6 < tok.vocab_size <= 200
    assert tok.tokenize("The LUNGS are clear.") == ["the", "lungs", "are", "clear", "."]  # lower-cased
    assert tok.tokenize(f"no {DEID} of") == ["no", DEID, "of"]  # the placeholder is one token, never split
    assert tok.tokenize("jq") == ["[UNK]"]  # letters never seen make an unknown word


def test_encode_pads_and_masks_a_batch(tok):
    out = tok.encode(["the lungs are clear.", "no pneumothorax."])
    ids, mask = out["ids"], out["mask"]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64 and ids.shape == mask.shape == (2, 7)
    assert mask.tolist() == [[1] * 7, [1] * 5 + [0] * 2]
    assert ids[:, 0].tolist() == [2, 2] and ids[0, 6] == 3 and ids[1, 4] == 3 and ids[1, 5:].tolist() == [0, 0]
    fixed = tok.encode(["no pneumothorax."], pad_to="context")
    assert fixed["ids"].shape == (1, 16) and fixed["mask"].sum() == 5
    assert torch.equal(fixed["ids"][:, :7], ids[1:])


def test_a_long_report_is_cut_at_a_sentence_boundary(tok):
    # 5 + 5 + 3 tokens: with context 16 (14 for text), the third sentence would still fit, a fourth would not
    text = "the lungs are clear. the heart is normal. no pneumothorax. mild cardiomegaly."
    row = tok.encode([text])["ids"][0]
    assert tok.decode(row[None]) == ["the lungs are clear. the heart is normal. no pneumothorax."]
    short = tok.encode([text], context=9)["ids"][0]  # 7 for text: only the first sentence
    assert tok.decode(short[None]) == ["the lungs are clear."]
    one_long = "the lungs are clear and the heart is normal and there is no pneumothorax or effusion."
    cut = tok.encode([one_long])
    assert cut["ids"].shape == (1, 16) and cut["ids"][0, -1] == 3  # one sentence over the budget: hard cut, [SEP]


def test_decode_inverts_encode_and_keeps_the_placeholder(tok):
    texts = ["the lungs are clear.", f"there is no {DEID} of a pleural effusion."]
    decoded = tok.decode(tok.encode(texts)["ids"])
    assert decoded == texts
    assert tok.decode([[2, 3, 0]]) == [""]


def test_decode_rejoins_hyphens_slashes_brackets_and_percent():
    tok = ReportTokenizer.train(["a 52-year-old man (spo2 85%) with t2/t3 changes. impression: x-ray stable; ok."] * 3,
                                vocab_size=200, context=64)
    text = "a 52-year-old man (spo2 85%) with t2/t3 changes. impression: x-ray stable; ok."
    assert tok.decode(tok.encode([text])["ids"]) == [text]


def test_to_json_from_json_round_trip_gives_identical_ids(tok):
    restored = ReportTokenizer.from_json(tok.to_json())
    texts = CORPUS[:5] + ["an unseen zebra word.", "x" * 40]
    a, b = tok.encode(texts), restored.encode(texts)
    assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["mask"], b["mask"])
    assert restored.context == 16 and restored.vocab_size == tok.vocab_size and restored.ids == tok.ids
    assert restored.to_json() == tok.to_json()


@pytest.mark.parametrize("text, match", [
    ("not json", "not a saved medssl tokenizer"),
    ('{"format": "something else"}', "not a saved medssl tokenizer"),
    ('{"format": "medssl.text.tokenizer/1", "context": 8, "specials": {}, "tokenizer": "{}"}', "cannot be read"),
])
def test_from_json_refuses_other_strings(text, match):
    with pytest.raises(MedsslError, match=match):
        ReportTokenizer.from_json(text)


def test_bad_input_is_one_clear_error(tok):
    with pytest.raises(MedsslError, match="no non-empty report"):
        ReportTokenizer.train(["", "  "])
    with pytest.raises(MedsslError, match="vocab_size=5"):
        ReportTokenizer.train(CORPUS, vocab_size=5)
    with pytest.raises(MedsslError, match="list of strings"):
        tok.encode("one string")
    with pytest.raises(MedsslError, match="empty batch"):
        tok.encode([])
    with pytest.raises(MedsslError, match="pad_to"):
        tok.encode(["a"], pad_to="max")
    with pytest.raises(MedsslError, match="context=2"):
        tok.encode(["a"], context=2)


def test_tokenizer_on_the_real_iu_xray_corpus():
    path = shared_file("iu_xray_reports.csv")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [training_text(join_sections({"findings": r["findings"], "impression": r["impression"]})) for r in rows]
    texts = [t for t in texts if t]
    tok = ReportTokenizer.train(texts, vocab_size=3000, min_frequency=2, context=128)
    vocab = tok.tokenizer.get_vocab()
    assert 1000 < tok.vocab_size <= 3000
    for word in ("pneumothorax", "effusion", "cardiomegaly", "consolidation", "atelectasis", "lungs", "heart"):
        assert word in vocab, word  # frequent radiology words are whole tokens
    assert not any("xxxx" in w for w in vocab)
    enc = tok.encode(texts[:200], pad_to="context")
    assert enc["ids"].shape == (200, 128)
    unk = (enc["ids"] == tok.ids["unk"]).sum().item() / enc["mask"].sum().item()
    assert unk < 0.01  # the vocabulary covers its own corpus
    long = [t for t in texts if len(tok.tokenize(t)) > 126]
    assert long, "the corpus has reports over the context"
    for row in tok.decode(tok.encode(long)["ids"]):
        assert row.endswith(".")  # cut at a sentence end, not mid-sentence


def test_training_is_a_function_of_the_texts_across_processes():
    """tokenizers numbers "##" pieces in hash-map order, which changes from process to process (and, through merge
    ties, the vocabulary itself: huggingface/tokenizers#1794); two fresh processes must agree on every id."""
    import subprocess
    import sys

    code = ("from medssl.synthetic import generate\n"
            "from medssl.text.tokenizer import ReportTokenizer\n"
            "texts = [str(r) for r in generate(60, size=16, seed=0).report]\n"
            "print(ReportTokenizer.train(texts, vocab_size=400, min_frequency=1).to_json())\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
