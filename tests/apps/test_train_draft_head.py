"""`omniar train draft-head` end to end (2 steps), then exact drafted generation from the CLI."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 40


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "apps.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_train_a_draft_head_then_generate_with_it(tmp_path):
    (tmp_path / "data.txt").write_text(TEXT)
    data = {"path": str(tmp_path / "data.txt"), "train_fraction": 0.9}
    train = {"max_steps": 2, "batch_size": 4, "lr": 3e-3, "warmup_steps": 1, "eval_every": 0, "ckpt_every": 2,
             "log_every": 1, "progress": False}
    base = {"data": data, "tokenizer": {"kind": "char"}, "model": {"preset": "tiny", "args": {"block_size": 64}},
            "train": {**train, "out_dir": str(tmp_path / "run")}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    r = cli("train", "text", "--config", tmp_path / "base.yaml", "--out", tmp_path / "model")
    assert r.returncode == 0, r.stderr[-2000:]
    head = {"model": str(tmp_path / "model"), "data": data, "head": {"n_blocks": 1, "unroll": 2},
            "train": {**train, "out_dir": str(tmp_path / "run_head")}, "eval": {"batches": 1, "batch_size": 4}}
    (tmp_path / "head.yaml").write_text(yaml.safe_dump(head))
    r = cli("train", "draft-head", "--config", tmp_path / "head.yaml", "--out", tmp_path / "with_head")
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / "with_head" / "config.json").read_text())
    assert cfg["heads"]["draft"]["class"] == "heads.draft.DraftHead"
    assert cfg["meta"]["train_command"].startswith("omniar train draft-head --config")
    assert cfg["meta"]["base_model"]["train_command"].startswith("omniar train text --config")
    common = ["generate", "--model", tmp_path / "with_head", "First", "--temperature", "0", "--max-new-tokens", "30"]
    plain = cli(*common)
    assert plain.returncode == 0, plain.stderr
    for extra in (["--draft", "head"], ["--draft", "prompt-lookup", "--gamma", "6"], ["--draft", "ngram"],
                  ["--draft", tmp_path / "model"], ["--draft", tmp_path / "model", "--fallback", "0.3"],
                  ["--draft", "head", "--fallback", "0.3"], ["--draft", "head", "--rollback", "0"]):
        r = cli(*common, *extra)
        assert r.returncode == 0 and r.stdout == plain.stdout, (extra, r.stderr)
    r = cli(*common, "--draft", tmp_path / "model", "--rollback", "1e9")  # BiLD's rollback: inexact, still runs
    assert r.returncode == 0 and r.stdout.startswith("First"), r.stderr
    r = cli(*common, "--fallback", "0.3")
    assert r.returncode == 2 and "--draft" in r.stderr and "Traceback" not in r.stderr
    r = cli(*common, "--draft", "head", "--repetition-penalty", "1.3")
    assert r.returncode == 2 and "repetition_penalty" in r.stderr and "Traceback" not in r.stderr
    r = cli("generate", "--model", tmp_path / "model", "First", "--draft", "head")
    assert r.returncode == 2 and "draft" in r.stderr and "Traceback" not in r.stderr
