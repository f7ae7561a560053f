"""The text recipe's issue-8 switches end to end: YAML in, trained checkpoint out (2-6 steps)."""
import json

import pytest
import torch

from apps.text import recipe as train_text
from backbone.container import OmniModel
from backbone.generate import generate
from backbone.sampling import SamplingParams

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30


def config(tmp_path, steps=3, **extra) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    cfg = {"data": {"path": str(data)}, "tokenizer": {"kind": "char"},
           "model": {"preset": "tiny", "args": {"block_size": 32}},
           "train": {"out_dir": str(tmp_path / "run"), "max_steps": steps, "batch_size": 4, "lr": 3e-3,
                     "warmup_steps": 1, "eval_every": 0, "ckpt_every": 0, "progress": False, "seed": 1},
           "eval": {"batches": 1, "batch_size": 4}}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


@pytest.mark.parametrize("switch", [
    {"model": {"preset": "tiny", "args": {"block_size": 32, "mlp": "relu2", "qkv_conv": 3}}},
    {"model": {"preset": "tiny", "args": {"block_size": 32, "n_experts": 2, "n_null_experts": 2}}},
    {"objective": {"prefix_lm": True}},
    {"objective": {"meap": 0.15}},
    {"objective": {"scheduled_sampling": {"max_prob": 0.25, "ramp_steps": 2}}},
    {"train": {"optimizer": "lion", "lr": 1e-3}},
], ids=["primer", "adamoe", "prefix_lm", "meap", "scheduled_sampling", "lion"])
def test_each_switch_trains_saves_and_generates(tmp_path, switch):
    model, metrics = train_text.run(config(tmp_path, **switch), out=str(tmp_path / "out"))
    assert metrics["step"] == 3 and metrics["val_loss"] == metrics["val_loss"]  # finite, not NaN
    loaded = OmniModel.from_pretrained(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    if "objective" in switch:
        assert cfg["meta"]["objective"] == switch["objective"]
    if switch.get("objective", {}).get("prefix_lm"):
        assert loaded.args.prefix_lm
    if "meap" in switch.get("objective", {}):  # one extra id for [MASK], past the tokenizer's
        vocab = len(set(TEXT))
        assert loaded.heads["lm"].vocab_size == vocab + 1 and cfg["meta"]["mask_token_id"] == vocab
    out = list(generate(loaded, [[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=5)))
    assert len(out) == 5


def test_emo_fine_tune_continues_a_checkpoint(tmp_path):
    base, _ = train_text.run(config(tmp_path / "a"), out=str(tmp_path / "base"))
    ft_cfg = config(tmp_path / "b")
    ft_cfg["model"] = {"init_from": str(tmp_path / "base"), "emo": True}
    ft_cfg.pop("tokenizer")
    ft, _ = train_text.run(ft_cfg, out=str(tmp_path / "ft"))
    # the cost geometry is the starting model's embeddings, frozen; the weights moved on
    torch.testing.assert_close(ft.heads["lm"].cost_embedding, base.backbone.tok_embeddings.weight)
    assert not torch.equal(ft.backbone.tok_embeddings.weight, base.backbone.tok_embeddings.weight)
    reloaded = OmniModel.from_pretrained(tmp_path / "ft")
    assert reloaded.heads["lm"].emo and reloaded.config["meta"]["init_from"] == str(tmp_path / "base")
    torch.testing.assert_close(reloaded.heads["lm"].cost_embedding, base.backbone.tok_embeddings.weight)
    # a CE fine-tune of the same start is the control: same code path, emo off
    ce_cfg = config(tmp_path / "c")
    ce_cfg["model"] = {"init_from": str(tmp_path / "base")}
    ce_cfg.pop("tokenizer")
    ce, _ = train_text.run(ce_cfg)
    assert not ce.heads["lm"].emo


def test_init_from_a_missing_folder_is_a_clear_error(tmp_path):
    cfg = config(tmp_path)
    cfg["model"] = {"init_from": str(tmp_path / "nowhere")}
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_text.run(cfg)
