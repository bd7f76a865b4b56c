"""Decoders and decoding: shapes, teacher forcing against step-wise decoding, beam 1 = greedy, trigram blocking,
length penalty and maximum length."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.models.decoders import DecoderSpec, MemoryProjection, build_decoder, token_loss
from medssl.report.generate import GenerateConfig, beam_search, generate, greedy, length_penalty

SPEC = dict(vocab_size=30, feature_dim=12, regions=4, views=2, dim=16, layers=2, heads=2, dropout=0.0, max_len=20,
            bos_id=2, eos_id=3, pad_id=0)


def _memory(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, DecoderSpec]:
    spec = DecoderSpec(**SPEC).validate()
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 2, 12, 2, 2, generator=g)
    views = torch.tensor([[True, True], [True, False], [True, True]][:n])
    memory, mask = MemoryProjection(spec)(maps, views)
    return memory.detach(), mask, spec


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
def test_teacher_forcing_equals_step_by_step_decoding(kind):
    torch.manual_seed(0)
    memory, mask, spec = _memory()
    dec = build_decoder(DecoderSpec(**{**SPEC, "kind": kind})).eval()
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0], [2, 4, 4, 4, 3]])
    forced = dec(memory, mask, ids)
    assert forced.shape == (3, 4, 30)
    state = dec.start(memory, mask)
    for t in range(4):
        logits, state = dec.step(state, ids[:, t])
        torch.testing.assert_close(logits, forced[:, t], atol=1e-5, rtol=1e-5)


def test_memory_masks_a_missing_view_and_refuses_a_wrong_shape():
    memory, mask, spec = _memory()
    assert memory.shape == (3, 8, 16)
    assert mask[1].tolist() == [True] * 4 + [False] * 4
    with pytest.raises(MedsslError, match="do not fit the decoder"):
        MemoryProjection(spec)(torch.zeros(1, 2, 12, 3, 3), torch.ones(1, 2, dtype=torch.bool))


def test_a_missing_view_does_not_change_what_the_lstm_attends_to():
    torch.manual_seed(0)
    memory, mask, _ = _memory()
    dec = build_decoder(DecoderSpec(**{**SPEC, "kind": "lstm"})).eval()
    ids = torch.tensor([[2, 5, 6]])
    noisy = memory[1:2].clone()
    noisy[:, 4:] = 1e3                                       # the masked (missing) view's regions
    a = dec(memory[1:2], mask[1:2], ids)
    b = dec(noisy, mask[1:2], ids)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("block", [False, True])
def test_beam_search_with_beam_1_gives_the_greedy_words(kind, block):
    for seed in range(3):
        torch.manual_seed(seed)
        memory, mask, _ = _memory(seed=seed)
        dec = build_decoder(DecoderSpec(**{**SPEC, "kind": kind})).eval()
        cfg = GenerateConfig(beam=1, max_len=15, length_penalty=0.0, block_trigrams=block)
        assert beam_search(dec, memory, mask, cfg) == greedy(dec, memory, mask, cfg)


class Scripted(nn.Module):
    """A decoder whose next-word distribution is a fixed function of the previous word: a table."""

    def __init__(self, table: dict[int, dict[int, float]], vocab: int = 8):
        super().__init__()
        self.spec = DecoderSpec(vocab_size=vocab, max_len=50, bos_id=2, eos_id=3, pad_id=0)
        self.table, self.vocab = table, vocab

    def start(self, memory, mask):
        return {"memory": memory}

    def step(self, state, tokens):
        rows = []
        for t in tokens.tolist():
            p = torch.full((self.vocab,), 1e-6)
            for w, q in self.table.get(t, {3: 1.0}).items():
                p[w] = q
            rows.append((p / p.sum()).log())
        return torch.stack(rows), state


def test_trigram_blocking_stops_a_loop():
    # after [CLS]: 4; 4 -> 5, 5 -> 4 (a loop "4 5 4 5 ..."), [SEP] unlikely everywhere
    dec = Scripted({2: {4: 1.0}, 4: {5: 0.9, 6: 0.1}, 5: {4: 0.9, 3: 0.1}, 6: {3: 1.0}})
    memory, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    loop = greedy(dec, memory, mask, GenerateConfig(beam=1, max_len=12, block_trigrams=False))[0]
    assert loop == [4, 5] * 6                               # runs to max_len
    blocked = greedy(dec, memory, mask, GenerateConfig(beam=1, max_len=12, block_trigrams=True))[0]
    assert blocked == [4, 5, 4, 5]                          # a fifth word 4 would repeat "4 5 4": [SEP] instead
    trigrams = [tuple(blocked[i:i + 3]) for i in range(len(blocked) - 2)]
    assert len(trigrams) == len(set(trigrams))


def test_beam_search_finds_the_better_sequence_greedy_misses():
    # greedy takes 4 (0.6) then a flat 0.25 each; beam sees 5 (0.4) then [SEP] (0.95): 0.38 > 0.6 * 0.25
    dec = Scripted({2: {4: 0.6, 5: 0.4}, 4: {6: 0.25, 7: 0.25, 1: 0.25, 3: 0.25}, 5: {3: 0.95, 6: 0.05},
                    6: {3: 1.0}, 7: {3: 1.0}, 1: {3: 1.0}})
    memory, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    assert greedy(dec, memory, mask, GenerateConfig(beam=1))[0][0] == 4
    assert beam_search(dec, memory, mask, GenerateConfig(beam=3, length_penalty=0.0))[0] == [5]


def test_length_penalty_favours_longer_reports():
    # [CLS] -> [SEP] (0.5) or 4 (0.5); 4 -> 5 (0.9); 5 -> [SEP] (0.9): short log 0.5 vs long log(0.5 * 0.9 * 0.9)
    dec = Scripted({2: {3: 0.5, 4: 0.5}, 4: {5: 0.9, 3: 0.1}, 5: {3: 0.9, 6: 0.1}, 6: {3: 1.0}})
    memory, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    assert beam_search(dec, memory, mask, GenerateConfig(beam=2, length_penalty=0.0))[0] == []
    assert beam_search(dec, memory, mask, GenerateConfig(beam=2, length_penalty=3.0))[0] == [4, 5]
    assert length_penalty(1, 1.0) == 1.0 and length_penalty(7, 1.0) == 2.0


def test_max_len_bounds_every_hypothesis():
    dec = Scripted({2: {4: 1.0}, 4: {4: 1.0}})              # never ends
    memory, mask = torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool)
    for beam in (1, 3):
        out = generate(dec, memory, mask, GenerateConfig(beam=beam, max_len=7, block_trigrams=False))
        assert [len(o) for o in out] == [7, 7]


def test_generate_config_and_decoder_spec_refuse_bad_values():
    with pytest.raises(MedsslError, match="beam"):
        GenerateConfig(beam=0).validate()
    with pytest.raises(MedsslError, match="length_penalty"):
        GenerateConfig(length_penalty=-1).validate()
    with pytest.raises(MedsslError, match="decoder"):
        DecoderSpec(kind="gru").validate()
    with pytest.raises(MedsslError, match="divisible"):
        DecoderSpec(kind="transformer", dim=10, heads=4).validate()


def test_token_loss_ignores_padding():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 1] = 10.0
    ids = torch.tensor([[2, 1, 0, 0]])                      # one real next word, then padding
    assert float(token_loss(logits, ids, pad_id=0)) == pytest.approx(float(torch.log1p(4 * torch.exp(
        torch.tensor(-10.0)))), rel=1e-3)


class _CountingEncoder(nn.Module):
    """forward_features: (N, 1, 8, 8) -> (N, 12, 2, 2), recording how many images it was given."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 12, 4, stride=4)
        self.seen: list[int] = []

    def forward_features(self, x):
        self.seen.append(x.shape[0])
        return self.conv(x)


def test_a_missing_view_is_not_encoded_and_the_present_ones_are_unchanged():
    from medssl.models.report_model import ReportModel

    torch.manual_seed(0)
    encoder = _CountingEncoder()
    model = ReportModel(DecoderSpec(**SPEC), encoder).eval()
    images = torch.randn(2, 2, 1, 8, 8)
    views = torch.tensor([[True, False], [True, True]])
    maps = model.feature_maps(images, views)
    assert encoder.seen == [3]                                # three present views, not four
    torch.testing.assert_close(maps[1, 1], encoder.conv(images[1, 1:2])[0])
    assert maps[0, 1].abs().sum() == 0
