"""ConVIRT, CLIP and GLoRIA: losses reach every encoder, joint embeddings, soft targets, padding, --init keys."""

import dataclasses
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medssl.checkpoint import load_weights
from medssl.config import load_config
from medssl.data.datasets import BatchSpec
from medssl.errors import MedsslError
from medssl.losses import clip_loss, convirt_loss
from medssl.methods import METHODS, build_model
from medssl.methods.image_text import (CLIP, IMAGE_REPORT, CLIPOptions, ConVIRT, ConVIRTOptions, GLoRIA,
                                       GLoRIAOptions, ImageText, image_regions, word_mask)
from medssl.models.factory import ModelSpec
from medssl.schema import from_mapping

NAMES = ("convirt", "clip", "gloria")
SIZE, BATCH, LENGTH, VOCAB = 16, 8, 14, 40
PAD, CLS, SEP = 0, 2, 3                                         # the ids ReportTokenizer gives these specials
TINY = {"vocab_size": VOCAB, "context": 24, "text_width": 32, "text_depth": 1, "text_heads": 2, "text_dropout": 0.0,
        "proj_dim": 16}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def tiny(name: str, backbone: str = "resnet18", seed: int = 0, **options) -> ImageText:
    """The method on a ResNet-18 with the CIFAR stem (a 2x2 map at 16 px) and a 1-layer, 32-wide text encoder."""
    torch.manual_seed(seed)
    depth = 1 if backbone.startswith("vit") else None
    return build_model(ModelSpec(backbone, depth=depth, in_channels=1, image_size=SIZE, method=name,
                                 options=METHODS[name].Options(**{**TINY, **options})))


def reports(lengths: list[int], g: torch.Generator, length: int = LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """ids, mask (B, length): [CLS] random word ids [SEP] then padding, each row as long as `lengths` says."""
    ids = torch.randint(6, VOCAB, (len(lengths), length), generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n - 1], ids[i, n:] = CLS, SEP, PAD
        mask[i, :n] = 1
    return ids, mask


def make_batch(seed: int = 0, n: int = BATCH) -> dict[str, torch.Tensor]:
    """n image-report pairs: smooth 16 px images, reports of 4 to 4 + n - 1 tokens, distinct 3-bit findings rows."""
    g = torch.Generator().manual_seed(seed)
    images = F.interpolate(torch.randn(n, 1, 4, 4, generator=g), size=(SIZE, SIZE), mode="bilinear")
    ids, mask = reports([4 + i % (LENGTH - 3) for i in range(n)], g)
    findings = torch.tensor([[(i >> b) & 1 for b in range(3)] for i in range(n)], dtype=torch.float32)
    return {"image": images, "ids": ids, "mask": mask, "findings": findings}


def test_methods_declare_the_image_report_batch_of_the_data_side():
    assert isinstance(IMAGE_REPORT, BatchSpec), "medssl.data.datasets.IMAGE_REPORT is missing"
    assert IMAGE_REPORT.report and IMAGE_REPORT.views == ("image",) and IMAGE_REPORT.min_per_process >= 2
    assert [METHODS[n] for n in NAMES] == [ConVIRT, CLIP, GLoRIA]
    assert all(METHODS[n].batch is IMAGE_REPORT for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_a_finite_loss_whose_gradient_reaches_both_encoders(name):
    model = tiny(name)
    out = model(make_batch())
    assert out["loss"].requires_grad and torch.isfinite(out["loss"])
    assert {"temperature", "pos_cos", "z_std"} <= set(out)
    assert all(v.dim() == 0 and not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    for part in ("backbone", "text_encoder", "image_proj", "text_proj"):
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert all(g is not None for g in grads), part
        assert sum(g.abs().sum().item() for g in grads) > 0, part
    if name == "clip":                                          # the learned temperature is trained too
        assert model.loss.logit_scale.grad.abs().item() > 0
        assert out["temperature"].item() == pytest.approx(0.07, rel=1e-5)
    if name == "gloria":
        assert model.region_proj.weight.grad.abs().sum().item() > 0
        assert out["loss"].item() == pytest.approx(out["global_loss"].item() + out["local_loss"].item(), rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_encoders_give_unit_norm_joint_embeddings_that_the_loss_is_computed_on(name):
    model = tiny(name).eval()
    batch = make_batch()
    img, txt = model.encode_image(batch["image"]), model.encode_text(batch["ids"], batch["mask"])
    assert img.shape == txt.shape == (BATCH, TINY["proj_dim"])
    torch.testing.assert_close(img.norm(dim=1), torch.ones(BATCH))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(BATCH))
    with torch.no_grad():
        out = model(batch)
    if name == "convirt":                                       # lambda 0.75, temperature 0.1
        torch.testing.assert_close(out["loss"], convirt_loss(img, txt, 0.1, 0.75))
    elif name == "clip":
        torch.testing.assert_close(out["loss"], clip_loss(img, txt, 0.07))
    else:                                                       # global term: InfoNCE at tau3
        torch.testing.assert_close(out["global_loss"], clip_loss(img, txt, 0.1))
    assert out["pos_cos"].item() == pytest.approx((img * txt).sum(1).mean().item(), abs=1e-5)


@pytest.mark.parametrize("backbone", ["resnet18", "vit_tiny"])
def test_regions_average_to_the_backbones_pooled_features(backbone):
    model = tiny("gloria", backbone).eval()
    x = make_batch()["image"]
    regions = image_regions(model.backbone, x)
    assert regions.shape == ((BATCH, 4, 512) if backbone == "resnet18" else (BATCH, 16, 192))  # 2x2 map; 4 px patches
    torch.testing.assert_close(regions.mean(dim=1), model.backbone(x))
    assert torch.isfinite(model(make_batch())["loss"])


@pytest.mark.parametrize("name", NAMES)
def test_short_optimisation_on_fixed_pairs_lowers_the_loss(name):
    model = tiny(name, "vit_tiny")                              # one block: a ResNet-18's Adam steps take seconds
    batch = make_batch(n=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", NAMES)
def test_soft_targets_change_the_loss_only_when_two_findings_rows_are_equal(name):
    hard = tiny(name).eval()
    soft = tiny(name, soft_targets=True).eval()
    soft.load_state_dict(hard.state_dict())
    batch = make_batch()                                        # 8 distinct findings rows
    with torch.no_grad():
        base = hard(batch)["loss"]
        torch.testing.assert_close(soft(batch)["loss"], base)   # only its own report is a positive
        assert torch.equal(hard({**batch, "findings": torch.zeros(BATCH, 3)})["loss"], base)  # off: ignored
        batch["findings"][1] = batch["findings"][0]              # two reports state the same findings
        assert not torch.isclose(soft(batch)["loss"], base)
    with pytest.raises(MedsslError, match="soft_targets"):
        soft({**batch, "findings": torch.zeros(BATCH, 0)})      # a data set without finding labels
    with pytest.raises(MedsslError, match="soft_targets"):
        soft({k: v for k, v in batch.items() if k != "findings"})


def test_word_mask_leaves_out_cls_sep_and_padding():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    expected = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0], [0, 1, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(word_mask(mask), expected)


def test_gloria_ignores_padding_words():
    model = tiny("gloria").eval()
    batch = make_batch()
    g = torch.Generator().manual_seed(5)
    longer = torch.randint(6, VOCAB, (BATCH, LENGTH + 6), generator=g)   # garbage ids at the padding positions
    longer[:, :LENGTH] = batch["ids"]
    longer[:, :LENGTH][batch["mask"] == 0] = torch.randint(6, VOCAB, (int((batch["mask"] == 0).sum()),), generator=g)
    padded = {**batch, "ids": longer, "mask": F.pad(batch["mask"], (0, 6))}
    with torch.no_grad():
        a, b = model(batch), model(padded)
    for key in ("loss", "local_loss", "global_loss"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    attention = model.attention(batch["image"], batch["ids"], batch["mask"])
    assert attention.shape == (BATCH, LENGTH, 4)
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(BATCH, LENGTH))   # a softmax over the regions


def test_gloria_refuses_a_report_with_no_words():
    ids, mask = reports([2, 5], torch.Generator().manual_seed(0), length=6)        # [CLS] [SEP] only
    batch = {**make_batch(n=2), "ids": ids, "mask": mask}
    with pytest.raises(MedsslError, match=r"report\(s\) \[0\].*no words"):
        tiny("gloria")(batch)


@pytest.mark.parametrize("options, key", [
    (ConVIRTOptions(context=2), "context"),
    (ConVIRTOptions(text_width=30, text_heads=4), "text_width"),
    (ConVIRTOptions(pooling="max"), "pooling"),
    (ConVIRTOptions(proj_dim=0), "proj_dim"),
    (ConVIRTOptions(text_dropout=1.0), "text_dropout"),
    (ConVIRTOptions(hf_path="/no/such/folder"), "hf_path"),
    (ConVIRTOptions(weight=1.5), "weight"),
    (ConVIRTOptions(temperature=0.0), "temperature"),
    (ConVIRTOptions(hidden_dim=0), "hidden_dim"),
    (CLIPOptions(init_temperature=0.001), "init_temperature"),
    (GLoRIAOptions(tau1=0.0), "tau1"),
    (GLoRIAOptions(local_weight=-1.0), "local_weight"),
    (GLoRIAOptions(local_weight=0.0, global_weight=0.0), "local_weight"),
])
def test_options_validation_names_the_bad_value(options, key):
    with pytest.raises(MedsslError, match=rf"model\.options\.{key}="):
        options.validate()


def test_options_parse_from_config_mappings_with_suggestions():
    assert from_mapping(GLoRIAOptions, {"tau1": 0.5, "text_width": 64}, "model.options.").tau1 == 0.5
    with pytest.raises(MedsslError, match=r"unknown key model\.options\.temprature; did you mean 'temperature'"):
        from_mapping(ConVIRTOptions, {"temprature": 0.2}, "model.options.")
    with pytest.raises(MedsslError, match="not CLIPOptions"):
        build_model(ModelSpec("resnet18", image_size=SIZE, method="clip", options=ConVIRTOptions()))
    for name in NAMES:
        METHODS[name].Options().validate()                      # the defaults are valid


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_restores_the_joint_embeddings(name):
    model = tiny(name).eval()
    if name == "clip":
        with torch.no_grad():
            model.loss.logit_scale.fill_(3.0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    other = tiny(name, seed=1).eval()
    batch = make_batch()
    assert not torch.allclose(other.encode_text(batch["ids"], batch["mask"]),
                              model.encode_text(batch["ids"], batch["mask"]))
    other.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(other(batch)["loss"], model(batch)["loss"])
        torch.testing.assert_close(other.encode_image(batch["image"]), model.encode_image(batch["image"]))
    if name == "clip":
        assert other.loss.temperature == pytest.approx(math.exp(-3.0))


@pytest.mark.parametrize("name", NAMES)
def test_backbone_keys_match_simclr_so_init_from_a_pretrain_run_loads_the_image_encoder(name):
    torch.manual_seed(3)
    simclr = build_model(ModelSpec("resnet18", in_channels=1, image_size=SIZE, method="simclr"))
    model = tiny(name)
    ours = {k for k in model.state_dict() if k.startswith("backbone.")}
    assert ours == {k for k in simclr.state_dict() if k.startswith("backbone.")}
    report = load_weights(model, simclr.state_dict())          # what train.fit does with --init
    assert set(report["loaded"]) == ours and not report["mismatched"]
    assert all(k.startswith(("text_encoder.", "image_proj.", "text_proj.", "loss.", "region_proj."))
               for k in report["missing"])
    for key, value in simclr.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_config_file_loads_and_builds_its_method(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", ["data.size=16", "model.stem=cifar", "model.options.text_depth=1"])
    assert cfg.method == name and isinstance(cfg.model.options, METHODS[name].Options)
    spec = cfg.model_spec()
    spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, vocab_size=VOCAB))  # the tokenizer's
    model = build_model(spec)
    assert isinstance(model, METHODS[name]) and model.text_encoder.token_embed.num_embeddings == VOCAB
    assert torch.isfinite(model(make_batch(n=4))["loss"])


@pytest.mark.parametrize("name", NAMES)
def test_a_local_hugging_face_text_encoder_sets_the_word_width(name, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers not installed: hf_path is untested")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(tmp_path))   # a folder on disk: nothing is downloaded
    model = tiny(name, hf_path=str(tmp_path))
    assert model.text_encoder.feature_dim == 24 and model.text_proj(torch.zeros(1, 24)).shape == (1, 16)
    if name == "gloria":
        assert model.region_proj.weight.shape == (24, 512)      # regions into the words' width
    out = model(make_batch())
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    grads = {k: p.grad for k, p in model.text_encoder.named_parameters() if ".pooler." not in k}  # pooler: unused
    assert len(grads) > 10 and all(g is not None for g in grads.values())
