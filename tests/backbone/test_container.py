import json
import struct

import pytest
import torch
import torch.nn.functional as F

from backbone.container import OmniModel, part
from backbone.transformer import ModelArgs
from heads.lm import LMHead


def logits(model, ids, head="lm"):
    with torch.no_grad():
        return model.heads[head](model(ids))


def test_round_trip(tiny_model, tmp_path):
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():  # make the tied weight differ from its init so loading must copy it
        tiny_model.backbone.tok_embeddings.weight.mul_(3.0)
    before = logits(tiny_model, ids)
    tiny_model.save_pretrained(tmp_path / "ckpt")
    loaded = OmniModel.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.config == tiny_model.config
    assert torch.equal(logits(loaded, ids), before)
    # tied weights stay tied after load
    assert loaded.heads["lm"].proj.weight is loaded.backbone.tok_embeddings.weight
    with torch.no_grad():
        loaded.backbone.tok_embeddings.weight[0, 0] = 42.0
    assert loaded.heads["lm"].proj.weight[0, 0] == 42.0


def test_checkpoint_is_safetensors_not_pickle(tiny_model, tmp_path):
    folder = tiny_model.save_pretrained(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    raw = (folder / "model.safetensors").read_bytes()
    assert not raw.startswith(b"PK")  # torch.save's zip container
    # safetensors layout: u64 header length, a JSON header, then raw tensor bytes that the
    # header's offsets cover exactly -- no room for a pickle anywhere
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    spans = sorted(tuple(t["data_offsets"]) for t in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert b"torch._utils" not in raw and b"_rebuild_tensor" not in raw
    # the tied tensor is stored once
    tied = {"backbone.tok_embeddings.weight", "heads.lm.proj.weight"}
    assert len(tied & set(header)) == 1


def test_from_pretrained_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        OmniModel.from_pretrained(missing)


def test_from_pretrained_missing_weights(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        OmniModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("cls", ["os.system", "subprocess.Popen", "torch.nn.Linear", "builtins.eval",
                                 "backbonex.evil.Thing"])
def test_config_class_outside_project_refused(cls, tmp_path):
    cfg = {"backbone": ModelArgs.from_name("tiny").to_dict(),
           "heads": {"x": {"class": cls, "kwargs": {}}}}
    with pytest.raises(ValueError, match="refusing"):
        OmniModel(cfg)


def test_config_function_inside_project_refused(tmp_path):
    # regression: any callable in an allowed module used to be called with the config's kwargs
    target = tmp_path / "pwned.txt"
    cfg = {"backbone": ModelArgs.from_name("tiny").to_dict(),
           "heads": {"x": {"class": "backbone.container.atomic_write_text",
                           "kwargs": {"path": str(target), "text": "hi"}}}}
    with pytest.raises(ValueError, match="refusing"):
        OmniModel(cfg)
    assert not target.exists()
    cfg["heads"]["x"]["class"] = "heads.lm.torch"  # a module re-exported by an allowed module
    with pytest.raises(ValueError, match="refusing"):
        OmniModel(cfg)


def test_several_heads(seed, tmp_path):
    args = ModelArgs.from_name("tiny", vocab_size=64)
    model = OmniModel.build(args, heads={
        "lm": part(LMHead, dim=args.dim, vocab_size=64),
        "codes": part(LMHead, dim=args.dim, vocab_size=17, tie=False, bias=True),
    }).eval()
    with torch.no_grad():
        model.heads["codes"].proj.bias.normal_()
    ids = torch.randint(0, 64, (1, 5))
    a, b = logits(model, ids, "lm"), logits(model, ids, "codes")
    assert a.shape == (1, 5, 64) and b.shape == (1, 5, 17)
    model.save_pretrained(tmp_path)
    loaded = OmniModel.from_pretrained(tmp_path)
    assert set(loaded.heads) == {"lm", "codes"}
    assert torch.equal(logits(loaded, ids, "lm"), a)
    assert torch.equal(logits(loaded, ids, "codes"), b)
    assert loaded.heads["codes"].proj.weight is not loaded.backbone.tok_embeddings.weight


def test_from_pretrained_dtype(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    loaded = OmniModel.from_pretrained(tmp_path, dtype=torch.float64)
    assert loaded.backbone.tok_embeddings.weight.dtype == torch.float64
    assert loaded.heads["lm"].proj.weight is loaded.backbone.tok_embeddings.weight


def test_forward_weighted_loss(seed):
    args = ModelArgs.from_name("tiny", vocab_size=64)
    model = OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=64),
                                         "aux": part(LMHead, dim=args.dim, vocab_size=8, tie=False)})
    ids = torch.randint(0, 64, (2, 6))
    y = torch.randint(0, 64, (2, 6))
    y[0, :2] = -100
    sel = torch.zeros(2, 6, dtype=torch.bool)
    sel[1, 3:] = True
    aux_y = torch.randint(0, 8, (3,))
    total, losses = model(ids, targets={"lm": y, "aux": (sel, aux_y)}, loss_weights={"aux": 0.25})
    h = model(ids)
    ref_lm = F.cross_entropy(model.heads["lm"](h)[y != -100], y[y != -100])
    ref_aux = F.cross_entropy(model.heads["aux"](h[sel]), aux_y)
    torch.testing.assert_close(losses["lm"], ref_lm)
    torch.testing.assert_close(losses["aux"], ref_aux)
    torch.testing.assert_close(total, ref_lm + 0.25 * ref_aux)
    total.backward()
    assert model.heads["aux"].proj.weight.grad is not None
    # without targets: hidden states
    assert model(ids).shape == (2, 6, args.dim)


def test_untrained_lm_loss_near_log_vocab(tiny_model):
    ids = torch.randint(0, 64, (4, 16))
    total, losses = tiny_model(ids, targets={"lm": torch.randint(0, 64, (4, 16))})
    assert abs(total.item() - torch.log(torch.tensor(64.0)).item()) < 0.1
