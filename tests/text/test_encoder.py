"""The text encoder: output shapes, the mask respected (padding never changes a report's features), pooling by hand,
the spec round trip a checkpoint relies on, that it learns, and a local Hugging Face folder (medssl.text.encoder)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medssl.errors import MedsslError
from medssl.text.encoder import TextEncoder, TextSpec
from medssl.text.tokenizer import ReportTokenizer

TEXTS = ["the lungs are clear.", "small left pleural effusion.", "no pneumothorax.",
         "the heart is enlarged. there is a small right pleural effusion."]


@pytest.fixture(scope="module")
def tok() -> ReportTokenizer:
    return ReportTokenizer.train(TEXTS * 3, vocab_size=120, min_frequency=1, context=24)


def tiny(tok: ReportTokenizer, **kw) -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(TextSpec(vocab_size=tok.vocab_size, width=32, depth=2, heads=4, context=24, **kw)).eval()


def test_default_spec_is_tiny_for_cpu():
    spec = TextSpec()
    assert (spec.width, spec.depth, spec.heads, spec.context, spec.pooling) == (128, 2, 4, 128, "mean")
    enc = TextEncoder(spec)
    assert enc.feature_dim == 128 and sum(p.numel() for p in enc.parameters()) < 2_000_000


def test_output_shapes(tok):
    batch = tok.encode(TEXTS)
    out = tiny(tok)(batch["ids"], batch["mask"])
    b, length = batch["ids"].shape
    assert out["pooled"].shape == (b, 32) and out["tokens"].shape == (b, length, 32)
    assert out["mask"].dtype == torch.bool and torch.equal(out["mask"], batch["mask"].bool())
    assert torch.all(out["tokens"][~out["mask"]] == 0)  # padded positions carry no feature


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_the_features(tok, pooling):
    enc = tiny(tok, pooling=pooling)
    short, padded = tok.encode(TEXTS), tok.encode(TEXTS, pad_to="context")
    assert padded["ids"].shape[1] > short["ids"].shape[1]
    with torch.no_grad():
        a, b = enc(short["ids"], short["mask"]), enc(padded["ids"], padded["mask"])
        alone = enc(**{k: v[:1, : int(short["mask"][0].sum())] for k, v in short.items()})  # no padding at all
    torch.testing.assert_close(a["pooled"], b["pooled"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["tokens"], b["tokens"][:, : short["ids"].shape[1]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone["pooled"], a["pooled"][:1], atol=1e-5, rtol=1e-5)


def test_pooling_by_hand(tok):
    batch = tok.encode(TEXTS)
    with torch.no_grad():
        mean = tiny(tok)(batch["ids"], batch["mask"])
        cls = tiny(tok, pooling="cls")(batch["ids"], batch["mask"])
    n = batch["mask"].sum(1)
    for i in range(len(TEXTS)):
        torch.testing.assert_close(mean["pooled"][i], mean["tokens"][i, : n[i]].mean(0))
    torch.testing.assert_close(cls["pooled"], cls["tokens"][:, 0])  # same weights (seed 0): same tokens
    torch.testing.assert_close(cls["tokens"], mean["tokens"])


def test_spec_round_trip_rebuilds_the_same_module(tok):
    enc = tiny(tok, pooling="cls", dropout=0.0)
    data = enc.spec.to_dict()
    assert data == {"vocab_size": tok.vocab_size, "width": 32, "depth": 2, "heads": 4, "context": 24,
                    "pooling": "cls", "dropout": 0.0, "hf_path": None}
    rebuilt = TextEncoder(TextSpec.from_dict(data)).eval()
    rebuilt.load_state_dict(enc.state_dict())
    batch = tok.encode(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(batch["ids"], batch["mask"])["pooled"],
                                   enc(batch["ids"], batch["mask"])["pooled"])


@pytest.mark.parametrize("data, match", [
    ({"width": 30, "heads": 4}, "text.width=30 must be a multiple of text.heads=4"),
    ({"pooling": "max"}, "text.pooling='max' must be one of mean, cls"),
    ({"depth": 0}, "text.depth=0 must be at least 1"),
    ({"dropout": 1.0}, "text.dropout=1.0"),
    ({"widht": 64}, "unknown key text.widht; did you mean 'width'"),
    ({"width": "wide"}, "text.width='wide' has the wrong type"),
])
def test_bad_specs_are_one_clear_error(data, match):
    with pytest.raises(MedsslError, match=match):
        TextSpec.from_dict(data)


def test_bad_batches_are_one_clear_error(tok):
    enc = tiny(tok)
    ids = torch.ones(2, 30, dtype=torch.int64)
    with pytest.raises(MedsslError, match="30 tokens exceed the context of 24"):
        enc(ids, torch.ones_like(ids))
    with pytest.raises(MedsslError, match="no token"):
        enc(ids[:, :5], torch.tensor([[1] * 5, [0] * 5]))
    with pytest.raises(MedsslError, match=r"must both be \(B, L\)"):
        enc(ids[0], ids[0])


def test_the_encoder_learns(tok):
    """A linear head on the pooled embedding separates effusion reports from the others after a few steps."""
    batch = tok.encode(TEXTS)
    target = torch.tensor([0, 1, 0, 1])
    enc = tiny(tok, dropout=0.0).train()
    head = torch.nn.Linear(32, 2)
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.cross_entropy(head(enc(batch["ids"], batch["mask"])["pooled"]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_a_missing_hf_folder_is_one_clear_error(tmp_path):
    with pytest.raises(MedsslError, match="no such folder"):
        TextEncoder(TextSpec(hf_path=str(tmp_path / "nowhere")))


def test_a_local_hugging_face_folder(tmp_path):
    """A tiny BERT saved with save_pretrained (no network): same output dict, mask respected, tokenizer wrapped."""
    transformers = pytest.importorskip("transformers", reason="transformers not installed: the optional Hugging "
                                       "Face text encoder is untested (pip install transformers)")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "lungs", "are", "clear", "no", "pneumo",
             "##thorax", "small", "effusion", "."]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(str(tmp_path))
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(tmp_path))

    tok = ReportTokenizer.from_pretrained(tmp_path, context=32)
    assert tok.ids == {"pad": 0, "cls": 2, "sep": 3, "unk": 1, "mask": 4}
    assert tok.tokenize("No pneumothorax.") == ["no", "pneumo", "##thorax", "."]
    restored = ReportTokenizer.from_json(tok.to_json())  # no file needed any more
    texts = ["the lungs are clear.", "no pneumothorax."]
    assert torch.equal(restored.encode(texts)["ids"], tok.encode(texts)["ids"])

    enc = TextEncoder(TextSpec(hf_path=str(tmp_path), context=32)).eval()
    assert enc.feature_dim == 16
    short, padded = tok.encode(texts), tok.encode(texts, pad_to="context")
    with torch.no_grad():
        a, b = enc(short["ids"], short["mask"]), enc(padded["ids"], padded["mask"])
    assert a["pooled"].shape == (2, 16) and b["tokens"].shape == (2, 32, 16)
    torch.testing.assert_close(a["pooled"], b["pooled"], atol=1e-5, rtol=1e-5)
    with pytest.raises(MedsslError, match="exceeds the model's max_position_embeddings=32"):
        TextEncoder(TextSpec(hf_path=str(tmp_path), context=64))



def test_the_text_layer_imports_transformers_lazily_and_nothing_above_its_floor():
    """Module-level imports of text/ are torch, numpy, tokenizers and floor-1 medssl files (errors, schema) or text/
    itself; transformers is imported only inside the functions that load a Hugging Face folder."""
    import ast
    from pathlib import Path

    import medssl.text

    allowed = {"__future__", "collections", "dataclasses", "html", "json", "pathlib", "re", "typing", "numpy",
               "torch", "tokenizers", "medssl.errors", "medssl.schema", "medssl.text"}
    lazy = []
    for path in Path(medssl.text.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    assert any(name == a or name.startswith(a + ".") for a in allowed), f"{path.name}: {name}"
        lazy += [(path.name, node.module) for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module == "transformers"]
    assert sorted(lazy) == [("encoder.py", "transformers"), ("tokenizer.py", "transformers")]
