"""A WordPiece tokenizer trained on the training split's reports (Hugging Face `tokenizers`), saved inside a checkpoint.

`ReportTokenizer.train(texts)` learns the vocabulary; `encode(texts)` gives (B, L) int64 ids and a (B, L) int64
attention mask (1 = token, 0 = padding), each row `[CLS] tokens [SEP] [PAD]...`; a report longer than the context
loses whole trailing sentences first (reports.truncate_sentences) and is cut mid-sentence only when its first
sentence alone is too long. `to_json()` is one string holding the whole tokenizer (vocabulary, normaliser, context),
so a checkpoint restores it with `from_json()` and no file. `from_pretrained(folder)` wraps the fast tokenizer of a
local Hugging Face model folder in the same interface (nothing is downloaded).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from medssl.errors import MedsslError
from medssl.text.reports import DEID, split_sentences, truncate_sentences

FORMAT = "medssl.text.tokenizer/1"
ROLES = ("pad", "cls", "sep", "unk", "mask")
BERT_SPECIALS = {"pad": "[PAD]", "cls": "[CLS]", "sep": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"}
# WordPiece's decoder puts a space around every punctuation piece and takes back only " ." " ," " ?" " !" and
# contractions: rejoin what reports write without spaces ("52-year-old", "t2/t3", "(spo2 85%)", "impression:")
_JOIN = ((re.compile(r"(?<=\w) ([-/]) (?=\w)"), r"\1"), (re.compile(r"([(\[]) "), r"\1"),
         (re.compile(r" ([)\]%:;])"), r"\1"))


def _detokenize(text: str) -> str:
    for pattern, repl in _JOIN:
        text = pattern.sub(repl, text)
    return text


class ReportTokenizer:
    """A `tokenizers.Tokenizer` with its special tokens and context length; encodes batches to padded tensors."""

    def __init__(self, tokenizer: Tokenizer, context: int = 128, specials: dict[str, str] | None = None):
        self.tokenizer = tokenizer
        self.context = int(context)
        self.specials = dict(specials or BERT_SPECIALS)
        if self.context < 3:
            raise MedsslError(f"tokenizer: context={context} must be at least 3 ([CLS], one token, [SEP])")
        missing = [f"{r}={self.specials.get(r)!r}" for r in ROLES
                   if tokenizer.token_to_id(self.specials.get(r) or "") is None]
        if missing:
            raise MedsslError(f"tokenizer: special token(s) {', '.join(missing)} not in the vocabulary")
        self.ids = {role: tokenizer.token_to_id(self.specials[role]) for role in ROLES}

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = True,
              context: int = 128) -> ReportTokenizer:
        """Learn a WordPiece vocabulary (BERT's normaliser and pre-tokeniser) from cleaned training-split reports.

        Special tokens: [PAD] [UNK] [CLS] [SEP] [MASK] and the de-identification placeholder [DEID] (ids 0-5).
        """
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise MedsslError("tokenizer: no non-empty report to train on")
        specials = [BERT_SPECIALS[r] for r in ("pad", "unk", "cls", "sep", "mask")] + [DEID]
        if vocab_size <= len(specials):
            raise MedsslError(f"tokenizer: vocab_size={vocab_size} must exceed the {len(specials)} special tokens")
        if min_frequency < 1:
            raise MedsslError(f"tokenizer: min_frequency={min_frequency} must be at least 1")
        normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=lowercase), pre_tokenizers.BertPreTokenizer()
        # tokenizers' trainer numbers the continuing-subword pieces ("##e") in hash-map order, which differs from
        # process to process, and breaks merge ties by those numbers: the same reports gave different vocabularies
        # (huggingface/tokenizers#1794). Declared up front, in sorted order, every piece has a fixed number and the
        # training is a function of the texts; the vocabulary is then rebuilt with only the real special tokens.
        alphabet = sorted({ch for t in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t))
                           for ch in word})
        pieces = [f"##{ch}" for ch in alphabet]
        if vocab_size <= len(specials) + 2 * len(alphabet):
            raise MedsslError(f"tokenizer: vocab_size={vocab_size} must exceed the {len(specials)} special tokens "
                              f"and the {2 * len(alphabet)} characters and word pieces of the reports")
        draft = Tokenizer(models.WordPiece(unk_token=BERT_SPECIALS["unk"]))
        draft.normalizer, draft.pre_tokenizer = normalizer, pre_tokenizer
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=specials + pieces, initial_alphabet=alphabet,
                                            show_progress=False)
        draft.train_from_iterator(texts, trainer)
        tok = Tokenizer(models.WordPiece(draft.get_vocab(), unk_token=BERT_SPECIALS["unk"]))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
        tok.add_special_tokens(specials)
        return cls(tok, context)

    @classmethod
    def from_pretrained(cls, folder: str | Path, context: int = 128) -> ReportTokenizer:
        """The fast tokenizer of a local Hugging Face model folder (transformers, local_files_only=True)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MedsslError(f"{folder}: not a folder with a Hugging Face tokenizer")
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise MedsslError(f"{folder}: a Hugging Face tokenizer needs `transformers` (pip install transformers)"
                              ) from e
        try:
            hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as e:
            raise MedsslError(f"{folder}: cannot load a tokenizer ({str(e).splitlines()[0]})") from e
        if not getattr(hf, "is_fast", False):
            raise MedsslError(f"{folder}: the tokenizer has no fast (tokenizers) version")
        specials = {"pad": hf.pad_token, "cls": hf.cls_token or hf.bos_token, "sep": hf.sep_token or hf.eos_token,
                    "unk": hf.unk_token, "mask": hf.mask_token}
        return cls(Tokenizer.from_str(hf.backend_tokenizer.to_str()), context, specials)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table's rows)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """The id of padding positions (mask 0)."""
        return self.ids["pad"]

    def tokenize(self, text: str) -> list[str]:
        """The word pieces of one text, without special tokens (for inspection)."""
        return self.tokenizer.encode(text, add_special_tokens=False).tokens

    def _pieces(self, texts: list[str], budget: int) -> list[list[int]]:
        """Token ids (no specials) per text, whole trailing sentences dropped to fit `budget`, then hard cut."""
        rows = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        for i, row in enumerate(rows):
            if len(row) > budget:
                sentences = split_sentences(texts[i])
                if len(sentences) > 1:
                    lengths = [len(e.ids) for e in self.tokenizer.encode_batch(sentences, add_special_tokens=False)]
                    count = dict(zip(sentences, lengths))
                    kept, _ = truncate_sentences(sentences, budget, count.__getitem__)
                    row = self.tokenizer.encode(" ".join(kept), add_special_tokens=False).ids
                rows[i] = row[:budget]
        return rows

    def encode(self, texts: Sequence[str], context: int | None = None, pad_to: str = "longest"
               ) -> dict[str, torch.Tensor]:
        """{"ids": (B, L) int64, "mask": (B, L) int64}: [CLS] text [SEP] then [PAD]; L <= context.

        pad_to="longest" pads to the batch's longest row, "context" always to the context (fixed shapes).
        """
        context = int(context or self.context)
        if context < 3:
            raise MedsslError(f"tokenizer: context={context} must be at least 3")
        if pad_to not in ("longest", "context"):
            raise MedsslError(f"tokenizer: pad_to={pad_to!r} must be 'longest' or 'context'")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise MedsslError("tokenizer: encode takes a list of strings")
        if not texts:
            raise MedsslError("tokenizer: encode got an empty batch")
        rows = [[self.ids["cls"], *r, self.ids["sep"]] for r in self._pieces(list(texts), context - 2)]
        length = context if pad_to == "context" else max(map(len, rows))
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(rows), length), dtype=torch.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            mask[i, : len(row)] = 1
        return {"ids": ids, "mask": mask}

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Texts of (B, L) ids, leaving out [PAD], [CLS] and [SEP] (other special tokens such as [DEID] stay)."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(r) for r in ids]
        if rows and not isinstance(rows[0], list):
            raise MedsslError("tokenizer: decode takes (B, L) ids")
        drop = {self.ids["pad"], self.ids["cls"], self.ids["sep"]}
        return [_detokenize(self.tokenizer.decode([i for i in row if i not in drop], skip_special_tokens=False))
                for row in rows]

    def to_json(self) -> str:
        """The whole tokenizer as one JSON string (stored in a checkpoint; restored by from_json, no file)."""
        return json.dumps({"format": FORMAT, "context": self.context, "specials": self.specials,
                           "tokenizer": self.tokenizer.to_str()})

    @classmethod
    def from_json(cls, text: str) -> ReportTokenizer:
        """The tokenizer that to_json wrote; MedsslError for anything else."""
        try:
            data = json.loads(text)
            ok = (isinstance(data, dict) and data.get("format") == FORMAT
                  and {"context", "specials", "tokenizer"} <= data.keys())
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise MedsslError(f"tokenizer: not a saved medssl tokenizer (expected JSON with format {FORMAT!r})")
        try:
            tok = Tokenizer.from_str(data["tokenizer"])
        except Exception as e:  # tokenizers raises its own Exception type for a malformed definition
            raise MedsslError(f"tokenizer: the saved tokenizer cannot be read ({e})") from e
        return cls(tok, data["context"], data["specials"])
