"""Trainer: exact resume, atomic checkpoints, DDP/FSDP equivalence, the CLI end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from apps.text import recipe as train_text
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


OBJECTIVE = {"meap": 0.2, "scheduled_sampling": {"max_prob": 0.5, "ramp_steps": 2}}


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "lion", "adamw+objectives"])
def test_resume_is_exact(tmp_path, optimizer):
    optimizer, _, objectives = optimizer.partition("+")

    def config(d, **kw):
        cfg = tiny_config(d, optimizer=optimizer, **kw)
        if objectives:  # MEAP masks and scheduled sampling's own samples must replay exactly too
            cfg["objective"] = OBJECTIVE
        return cfg
    full = config(tmp_path / "a")
    _, m_full = train_text.run(full)

    part = config(tmp_path / "b", stop_after=5)  # "killed" at step 5: last checkpoint is step 4
    train_text.run(part)
    assert latest_checkpoint(tmp_path / "b" / "run").name == "step_0000004"
    # a crash while writing leaves only a .tmp folder, which resume ignores
    (tmp_path / "b" / "run" / "ckpt" / "step_0000006.tmp").mkdir()
    resumed = config(tmp_path / "b")
    _, m_res = train_text.run(resumed, resume=True)

    wa, wb = final_weights(tmp_path / "a" / "run"), final_weights(tmp_path / "b" / "run")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert m_full["val_loss"] == m_res["val_loss"]
    log = [json.loads(l) for l in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]  # lines past the checkpoint were replaced
    # tokens and elapsed_s go on from the checkpoint after --resume (they restarted at 0: issue 21)
    full_log = [json.loads(l) for l in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in log] == [r["tokens"] for r in full_log]
    assert all(b["elapsed_s"] >= a["elapsed_s"] for a, b in zip(log, log[1:]))


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


class _FixedTask:
    """One fixed global batch; micro-batch m of k is rows m::k (so accumulation sees all rows)."""

    def __init__(self, vocab: int, accum: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, vocab, (8, 16), generator=g)
        self.accum = accum

    def train_batch(self, step, micro, rows):
        x = self.x[micro::self.accum][rows]
        return {"input_ids": x, "targets": {"lm": x.roll(-1, dims=1)}}

    def eval_batches(self):
        return [self.train_batch(0, 0, slice(None))]


def _tiny_model(vocab=32):
    from backbone.container import OmniModel, part
    from backbone.transformer import ModelArgs
    from heads.lm import LMHead
    torch.manual_seed(0)
    args = ModelArgs.from_name("tiny", vocab_size=vocab)
    return OmniModel.build(args, heads={"lm": part(LMHead, dim=args.dim, vocab_size=vocab)})


def test_grad_accumulation_equals_the_big_batch(tmp_path, monkeypatch):
    """Two micro-batches of 4 == one batch of 8. SGD (not Adam, which is blind to the gradient's
    scale) so that a missing 1/grad_accum would show as a doubled step."""
    import backbone.train as T
    monkeypatch.setattr(T, "make_optimizers", lambda model, cfg: [torch.optim.SGD(model.parameters(), lr=cfg.lr)])
    from backbone.train import train
    results = []
    for accum, bs in ((1, 8), (2, 4)):
        model = _tiny_model()
        cfg = TrainConfig(out_dir=str(tmp_path / f"a{accum}"), max_steps=3, batch_size=bs, grad_accum=accum,
                          warmup_steps=1, eval_every=0, ckpt_every=0, progress=False, lr=0.5, grad_clip=0)
        train(model, _FixedTask(32, accum), cfg)
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], atol=1e-6, rtol=1e-5, msg=k)
    assert not torch.equal(results[0]["backbone.layers.0.attn.wo.weight"], _tiny_model().state_dict()["backbone.layers.0.attn.wo.weight"])


def test_bf16_autocast_trains(tmp_path):
    from backbone.train import train
    model = _tiny_model()
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=30, batch_size=8, warmup_steps=2, lr=1e-2,
                      eval_every=0, ckpt_every=0, log_every=1, progress=False, bf16=True)
    metrics = train(model, _FixedTask(32, 1), cfg)
    log = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < 0.7 * log[0]["loss"]
    assert metrics["val_loss"] < 0.7 * log[0]["loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights


class _InterruptAt(_FixedTask):
    """Raises KeyboardInterrupt when asked for the batch of ``step`` (as Ctrl-C would)."""

    def __init__(self, vocab, step):
        super().__init__(vocab, 1)
        self.step = step

    def train_batch(self, step, micro, rows):
        if step == self.step:
            raise KeyboardInterrupt
        return super().train_batch(step, micro, rows)


def test_ctrl_c_saves_the_last_finished_step_and_resume_is_exact(tmp_path):
    from backbone.train import train
    cfg = lambda d: TrainConfig(out_dir=str(tmp_path / d), max_steps=6, batch_size=8, warmup_steps=1,  # noqa: E731
                                eval_every=0, ckpt_every=0, progress=False)
    ref = _tiny_model()
    train(ref, _FixedTask(32, 1), cfg("ref"))
    model = _tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train(model, _InterruptAt(32, step=3), cfg("run"))
    assert latest_checkpoint(tmp_path / "run").name == "step_0000003"
    model = _tiny_model()
    train(model, _FixedTask(32, 1), cfg("run"), resume=True)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_diverged_loss_stops_with_a_clear_error(tmp_path):
    from backbone.train import train
    model = _tiny_model()
    with torch.no_grad():
        model.backbone.layers[0].attn.wo.weight.fill_(float("nan"))
    cfg = TrainConfig(out_dir=str(tmp_path), max_steps=4, batch_size=8, ckpt_every=1, progress=False)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        train(model, _FixedTask(32, 1), cfg)
    assert latest_checkpoint(tmp_path) is None  # nothing diverged was written


def test_lion_update_is_plus_minus_lr_times_sign(tmp_path):
    """Lion (Chen et al. 2023): with zero momentum and no weight decay, the first update of
    every coordinate is exactly -lr * sign(grad); Muon-style hidden/other split does not apply."""
    from backbone.train import make_optimizers
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    x = torch.randn(16, 8)
    model(x).pow(2).sum().backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opts = make_optimizers(model, TrainConfig(optimizer="lion", lr=1e-3, weight_decay=0.0))
    assert len(opts) == 1 and type(opts[0]).__name__ == "Lion"
    opts[0].step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - before[n], -1e-3 * torch.sign(g[n]), atol=1e-7, rtol=0)  # fp32 rounding
    # decoupled weight decay shrinks matrices only: p <- p (1 - lr wd) - lr sign(update)
    model.zero_grad()
    model(x).pow(2).sum().backward()
    w0, opts = model.weight.detach().clone(), make_optimizers(model, TrainConfig(optimizer="lion", lr=1e-2, weight_decay=0.5))
    opts[0].step()
    step = model.weight.detach() - w0 * (1 - 1e-2 * 0.5)
    assert torch.allclose(step.abs(), torch.full_like(step, 1e-2), atol=1e-7)


def test_unknown_optimizer_is_named(tmp_path):
    with pytest.raises(ValueError, match="'adamw', 'muon' or 'lion'"):
        train_text.run(tiny_config(tmp_path, optimizer="sgd"))


def test_trainer_settings_from_yaml_strings():
    """YAML 1.1 reads 6e-4 (no dot) as a string, as `--set lr=6e-4` does: numbers in strings are
    accepted, words get a clear error."""
    from backbone.train import TrainConfig
    cfg = TrainConfig.from_dict({"lr": "6e-4", "max_steps": "10", "max_time_s": "1.5e3"})
    assert cfg.lr == 6e-4 and cfg.max_steps == 10 and cfg.max_time_s == 1500.0
    with pytest.raises(ValueError, match="lr must be a number"):
        TrainConfig.from_dict({"lr": "fast"})


def test_ema_is_what_ships_and_resume_keeps_it_exact(tmp_path):
    """With ``ema``, the trained model holds the average, the shadow follows the warmed-up decay,
    each checkpoint has an ema/ model folder, and an interrupted run resumes to the same average."""
    from backbone.container import OmniModel
    from backbone.ema import EMA
    from backbone.train import train
    cfg = lambda d, **kw: TrainConfig(out_dir=str(tmp_path / d), max_steps=6, batch_size=8, warmup_steps=1,  # noqa: E731
                                      eval_every=0, ckpt_every=2, progress=False, ema=0.5, **kw)
    ref = _tiny_model()
    train(ref, _FixedTask(32, 1), cfg("ref"))
    # the same run without EMA, averaging by hand: decay min(0.5, (1+n)/(10+n)) = (1+n)/(10+n) here
    raw = _tiny_model()
    shadow = {k: v.clone() for k, v in raw.named_parameters()}
    import backbone.train as T
    real_update = EMA.update

    def spy(self, model):
        real_update(self, model)
        n = self.updates
        d = min(0.5, (1 + n) / (10 + n))
        for k, p in model.named_parameters():
            shadow[k].mul_(d).add_(p.detach(), alpha=1 - d)
    T.EMA.update = spy
    try:
        train(raw, _FixedTask(32, 1), cfg("spy"))
    finally:
        T.EMA.update = real_update
    for k, p in ref.named_parameters():
        torch.testing.assert_close(p, shadow[k], atol=1e-6, rtol=1e-5, msg=k)
    ckpt = latest_checkpoint(tmp_path / "ref")
    ema_folder = OmniModel.from_pretrained(ckpt / "ema")
    for (k, a), b in zip(ref.state_dict().items(), ema_folder.state_dict().values()):
        assert torch.equal(a, b), k
    # killed after step 4 (last checkpoint), resumed: the same average, bit for bit
    model = _tiny_model()
    train(model, _FixedTask(32, 1), cfg("run", stop_after=5))
    model = _tiny_model()
    train(model, _FixedTask(32, 1), cfg("run"), resume=True)
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="ema must be in"):
        TrainConfig(ema=1.0)


def test_muon_float32_newton_schulz_matches_torch():
    """The float32 iteration used on CPUs without bf16 is torch's own, up to bf16 rounding."""
    from backbone.train import _TORCH_NEWTON_SCHULZ, _newton_schulz_fp32
    g = torch.randn(96, 40, generator=torch.Generator().manual_seed(0))
    kw = dict(ns_coefficients=(3.4445, -4.775, 2.0315), ns_steps=5, eps=1e-7)
    ours = _newton_schulz_fp32(g, **kw)
    assert ours.dtype == g.dtype and ours.shape == g.shape
    # against the same iteration written out in float64
    x = g.double().T / g.double().norm()
    for _ in range(5):
        a = x @ x.T
        x = 3.4445 * x + (-4.775 * a + 2.0315 * a @ a) @ x
    torch.testing.assert_close(ours.double(), x.T, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours, _TORCH_NEWTON_SCHULZ(g, **kw).float(), atol=0.05, rtol=0.05)
    # orthogonalised: singular values near 1 (the quintic's band is roughly 0.7-1.2)
    s = torch.linalg.svdvals(ours)
    assert 0.5 < float(s.min()) and float(s.max()) < 1.3
