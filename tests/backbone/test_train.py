"""Trainer: exact resume, atomic checkpoints, DDP/FSDP equivalence, the CLI end to end."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from apps import train_text
from backbone.train import TrainConfig, latest_checkpoint, lr_at

ROOT = Path(__file__).resolve().parents[2]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40)


def tiny_config(tmp_path: Path, **train) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    return {
        "data": {"path": str(data), "train_fraction": 0.9},
        "tokenizer": {"kind": "char"},
        "model": {"preset": "tiny", "args": {"block_size": 32}},
        "train": {"out_dir": str(tmp_path / "run"), "max_steps": 6, "batch_size": 4, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 3, "ckpt_every": 2, "log_every": 1, "progress": False,
                  "seed": 7, **train},
        "eval": {"batches": 2, "batch_size": 4},
    }


def final_weights(run_dir: Path) -> dict:
    return load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_exact(tmp_path, optimizer):
    full = tiny_config(tmp_path / "a", optimizer=optimizer)
    _, m_full = train_text.run(full)

    part = tiny_config(tmp_path / "b", stop_after=5, optimizer=optimizer)  # "killed" at step 5: last checkpoint is step 4
    train_text.run(part)
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step_0000004"
    # a crash while writing leaves only a .tmp folder, which resume ignores
    (tmp_path / "b" / "run" / "ckpt" / "step_0000006.tmp").mkdir()
    resumed = tiny_config(tmp_path / "b", optimizer=optimizer)
    _, m_res = train_text.run(resumed, resume=True)

    wa, wb = final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert m_full["val_loss"] == m_res["val_loss"]
    log = [json.loads(l) for l in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # lines past the checkpoint were replaced


def test_checkpoint_folder_is_a_model(tmp_path):
    from backbone.container import OmniModel
    cfg = tiny_config(tmp_path, max_steps=4, keep_ckpts=1)
    train_text.run(cfg, out=str(tmp_path / "final"))
    ckpts = sorted((tmp_path / "run" / "ckpt").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_0000004"]  # keep_ckpts=1 pruned step 2
    m = OmniModel.from_pretrained(ckpts[0])
    ref = OmniModel.from_pretrained(tmp_path / "final")
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k
    assert set(os.listdir(ckpts[0])) >= {"config.json", "model.safetensors", "optimizer.safetensors",
                                         "trainer_state.json", "tokenizer.json"}


def _losses(run_dir: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _torchrun(cfg_path: Path, extra=()):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "apps.cli", "train", "text", "--config", str(cfg_path), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_process_gloo_matches_single_process(tmp_path, parallel):
    torch.set_num_threads(1)
    single = tiny_config(tmp_path / "single", max_steps=4, ckpt_every=0, eval_every=0)
    train_text.run(single)
    multi = tiny_config(tmp_path / "multi", max_steps=4, ckpt_every=0, eval_every=0, parallel=parallel)
    cfg_path = tmp_path / "multi.yaml"
    cfg_path.write_text(yaml.safe_dump(multi))
    _torchrun(cfg_path)
    a, b = _losses(tmp_path / "single" / "run"), _losses(tmp_path / "multi" / "run")
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, abs=2e-5), (a, b)
    wa, wb = final_weights(tmp_path / "single" / "run"), final_weights(tmp_path / "multi" / "run")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_cli_train_two_steps_then_generate(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=2)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "model"
    r = subprocess.run([sys.executable, "-m", "apps.cli", "train", "text", "--config", str(cfg_path),
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert "train text --config" in meta["train_command"]
    r = subprocess.run([sys.executable, "-m", "apps.cli", "generate", "--model", str(out), "First",
                        "--max-new-tokens", "20", "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("First") and len(r.stdout.strip()) > len("First")
    # bad input: a clear one-line error, no traceback
    for bad in (["generate", "--model", str(out), "日本"], ["generate", "--model", str(tmp_path / "nope"), "x"],
                ["generate", "--model", str(out), "x", "--top-p", "0"],
                ["generate", "--model", str(out), "x", "--max-new-tokens", "1000000000"]):
        r = subprocess.run([sys.executable, "-m", "apps.cli", *bad], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "omniar: error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
