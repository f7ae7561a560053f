"""The one trainer: any OmniModel, any task, single process or under torchrun (DDP / FSDP2).

A *task* supplies batches; the model's forward returns ``(loss, {head: loss})`` from them:

    class Task:
        def train_batch(self, step: int, micro: int, rows: slice) -> dict   # model(**batch)
        def eval_batches(self) -> list[dict]

Batches are a pure function of (step, micro), each rank taking its ``rows`` of the global
batch. So a resumed run sees exactly the data it would have seen, and a 2-process run
follows the same loss curve as one process with the same global batch.

Checkpoints go to ``out_dir/ckpt/step_XXXXXXX/`` (model folder + optimizer.safetensors +
trainer_state.json), written to a temp folder and renamed; ``out_dir/ckpt/latest`` names the
newest complete one. Nothing is pickled.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.optim._muon as _muon
from safetensors.torch import load_file, load_model, save_file
from tqdm.auto import tqdm

from .container import OmniModel, atomic_write_text
from .ema import EMA
from .transformer import check_field_types


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 12          # global rows per micro-step, split evenly across ranks
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    optimizer: str = "adamw"      # "adamw" | "muon" (Muon for hidden matrices, AdamW for the rest) | "lion"
    muon_lr_mult: float = 1.0     # Muon lr = lr * this (updates are RMS-matched to AdamW's)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0        # 0 = off
    eval_every: int = 250         # 0 = only at the end
    ckpt_every: int = 500         # 0 = only at the end
    keep_ckpts: int = 2
    log_every: int = 10
    bf16: bool = False            # bf16 autocast (CPU or GPU)
    seed: int = 1337
    parallel: str = "ddp"         # under torchrun: "ddp" or "fsdp" (FSDP2 fully_shard)
    progress: bool = True
    stop_after: int | None = None  # end the run after this step, as if killed (tests)
    max_time_s: float | None = None  # wall-clock budget: the LR schedule follows elapsed time and
                                     # training stops at the budget (equal-time comparisons; such a
                                     # run is not bit-reproducible)
    ema: float = 0.0              # decay of an EMA of the weights (backbone/ema.py; 0 = off): the
                                  # finished model and each checkpoint's ema/ folder hold the average

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown trainer settings {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for f in fields(cls):  # YAML 1.1 reads "6e-4" (no dot) as a string: accept it, refuse words
            if f.name in d and isinstance(d[f.name], str) and f.type in ("int", "float", "float | None"):
                try:
                    d[f.name] = float(d[f.name]) if "float" in f.type else int(d[f.name])
                except ValueError:
                    raise ValueError(f"trainer setting {f.name} must be a number, got {d[f.name]!r}") from None
        return cls(**d)

    def __post_init__(self):
        check_field_types(self, "trainer")
        for name, lo in (("max_steps", 1), ("batch_size", 1), ("grad_accum", 1), ("warmup_steps", 0),
                         ("eval_every", 0), ("ckpt_every", 0), ("keep_ckpts", 1), ("log_every", 1)):
            if getattr(self, name) < lo:
                raise ValueError(f"trainer setting {name} must be >= {lo}, got {getattr(self, name)}")
        if not self.lr > 0 or self.min_lr < 0:
            raise ValueError(f"trainer settings lr must be > 0 and min_lr >= 0, got {self.lr} and {self.min_lr}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"trainer setting ema must be in [0, 1) (0 = off), got {self.ema}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ValueError(f"trainer setting max_time_s must be > 0 seconds, got {self.max_time_s}")


def lr_at(step: int, cfg: TrainConfig, time_frac: float = 0.0) -> float:
    """Linear warmup, then cosine decay to min_lr at max_steps (nanoGPT's schedule).
    With a time budget, ``time_frac`` (elapsed / budget) drives the decay when it is further along."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, max(time_frac, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizers(model: torch.nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW, with weight decay only on matrices (not norms, biases), as nanoGPT does.

    ``optimizer: muon`` gives the hidden matrices of the transformer blocks to Muon (Jordan et
    al. 2024, orthogonalised momentum; torch.optim.Muon) with AdamW-matched update RMS, and keeps
    AdamW for embeddings, heads, norms and biases, as modded-nanogpt does.

    ``optimizer: lion`` uses Lion (Chen et al. 2023, sign of an interpolated momentum; the
    lion-pytorch package) for everything, with the same decay groups. Its update has the size
    of lr in every coordinate, so the paper advises an lr 3-10x smaller than AdamW's and a
    weight decay 3-10x larger; beta1/beta2 are Lion's (paper: 0.9, 0.99).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer not in ("adamw", "muon", "lion"):
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'adamw', 'muon' or 'lion'")
    # Primer's conv taps (K, C) and an MoE router are 2-D but not hidden matrices: AdamW for those
    is_hidden = lambda n, p: (cfg.optimizer == "muon" and p.dim() == 2 and ".layers." in f".{n}"  # noqa: E731
                              and not n.endswith((".conv", ".router.weight")))
    hidden = [p for n, p in named if is_hidden(n, p)]
    rest = [p for n, p in named if not is_hidden(n, p)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    if cfg.optimizer == "lion":
        from lion_pytorch import Lion
        return [Lion(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))]
    # the fused kernel (CPU and CUDA) saves a few % per step on small models; DTensor (FSDP) params
    # take the default foreach path
    fused = all(type(p) is torch.nn.Parameter and p.dtype in (torch.float32, torch.bfloat16) for p in rest)
    opts = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)]
    if hidden:
        _muon_fp32_on_cpu_without_bf16(hidden)
        opts.append(torch.optim.Muon([{"params": hidden, "lr_mult": cfg.muon_lr_mult}], lr=cfg.lr * cfg.muon_lr_mult,
                                     weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"))
    return opts


_TORCH_NEWTON_SCHULZ = _muon._zeropower_via_newtonschulz   # torch's bf16 kernel, before any swap


def _newton_schulz_fp32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration, the same steps in float32 instead of bf16."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)                       # spectral norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(grad.dtype)


def _muon_fp32_on_cpu_without_bf16(params):
    """torch.optim.Muon orthogonalises in bf16, which CPUs without native bf16 (no AVX512-BF16 or
    AMX, e.g. many AMD EPYC hosts) emulate ~10x slower than float32: there the optimizer step
    took 2.8 s of a 3.4 s step (issue 19). On such hosts, run the same iteration in float32 (more
    precise, not less); GPUs and bf16-capable CPUs keep torch's kernel."""
    on_cpu = all(p.device.type == "cpu" for p in params)
    if on_cpu and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        _muon._zeropower_via_newtonschulz = _newton_schulz_fp32


# ---- distributed ------------------------------------------------------------------------------
def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world). Under torchrun, joins the process group: nccl on GPU, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def wrap_model(model: OmniModel, cfg: TrainConfig, device: torch.device, world: int):
    if world == 1:
        return model
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for layer in model.backbone.layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    raise ValueError(f"unknown parallel={cfg.parallel!r}; choose 'ddp' or 'fsdp'")


def unwrap(model) -> OmniModel:
    return getattr(model, "module", model)


# ---- checkpoints ------------------------------------------------------------------------------
def _flatten_optim(osd: dict) -> tuple[dict, list]:
    tensors = {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"state/{fqn}/{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, osd["param_groups"]


def _unflatten_optim(tensors: dict, groups: list) -> dict:
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith("state/"):
            fqn, k = key[len("state/"):].rsplit("/", 1)
            state.setdefault(fqn, {})[k] = v
    return {"state": state, "param_groups": groups}


def save_checkpoint(model, opts, step: int, cfg: TrainConfig, rank: int, tokenizer=None,
                    progress: dict | None = None):
    """All ranks call this (FSDP gathers); rank 0 writes tmp folder -> rename -> update 'latest'."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
    msd, osd = get_state_dict(model, opts, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    root = Path(cfg.out_dir) / "ckpt"
    final, tmp = root / f"step_{step:07d}", root / f"step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plain = type(unwrap(model))(unwrap(model).config)  # any module built from its config (OmniModel, Codec)
    plain.load_state_dict(msd, strict=False)  # tied duplicates may be absent
    plain.save_pretrained(tmp, tokenizer)
    tensors, groups = _flatten_optim(osd)
    tensors["rng/torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    np_state = np.random.get_state()
    state = {"step": step, "param_groups": groups, "config": asdict(cfg),
             "tokens": (progress or {}).get("tokens", 0), "elapsed_s": (progress or {}).get("elapsed_s", 0.0),
             "python_rng": repr(random.getstate()),
             "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    ema = (progress or {}).get("ema")
    if ema is not None:  # the shadow for --resume, and the averaged model as a folder of its own
        save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
        ema.copy_to(plain)
        plain.save_pretrained(tmp / "ema", tokenizer)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[:-cfg.keep_ckpts]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    f = Path(out_dir) / "ckpt" / "latest"
    if not f.is_file():
        return None
    path = f.parent / f.read_text().strip()
    return path if path.is_dir() else None


def load_model_weights(model: OmniModel, ckpt: Path):
    """Before wrapping: read the model weights of a checkpoint (safetensors)."""
    load_model(model, str(ckpt / "model.safetensors"), strict=True)


def load_trainer_state(model, opts, ckpt: Path) -> int:
    """After wrapping: restore optimizer and RNG state; returns the step to continue from."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    state = json.loads((ckpt / "trainer_state.json").read_text())
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng/torch"))
    osd = _unflatten_optim(tensors, state["param_groups"])
    # strict=False: a parameter that never gets a gradient (e.g. the unused token embedding of a
    # model fed only through adapters) never gets optimizer state, so the checkpoint has none for it
    set_optimizer_state_dict(model, opts, osd, options=StateDictOptions(full_state_dict=True, strict=False))
    import ast
    random.setstate(ast.literal_eval(state["python_rng"]))
    ns = state["numpy_rng"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
    return int(state["step"])


# ---- what every recipe does around the loop ---------------------------------------------------
def cli_command() -> str | None:
    """The running ``omniar train ...`` command, for a checkpoint's meta (None outside the CLI)."""
    import shlex
    import sys
    return "omniar " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if "train" in sys.argv else None


def save_trained(model: OmniModel, metrics: dict, out, tokenizer=None) -> Path:
    """Write the finished model with its final metrics in ``meta.final_metrics``."""
    model.config["meta"]["final_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    return model.save_pretrained(out, tokenizer)


def run_recipe(cfg: dict, build, out=None, device: str = "cpu", resume: bool = False,
               command: str | None = None, data_keys: set | None = None) -> tuple:
    """The one recipe runner that every task's ``run()`` goes through:
    seed, build, record the command, train, save.

    ``build(cfg, tcfg) -> (model, task, tokenizer)`` is the task's part: data, model and batches.
    The model is written with ``save_pretrained(out, tokenizer)``; an OmniModel also records the
    training command and its final metrics in ``meta``. Returns (model, final metrics).
    ``data_keys``: the settings the task reads from ``data:``; others are refused, as ``train:``'s are."""
    if data_keys is not None:
        data = cfg.get("data") or {}
        if not isinstance(data, dict):
            raise ValueError("the config's data: section must be a mapping of settings")
        if set(data) - set(data_keys):
            raise ValueError(f"unknown data settings {sorted(set(data) - set(data_keys))}; known: {sorted(data_keys)}")
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    model, task, tokenizer = build(cfg, tcfg)
    command = command or cli_command()
    meta = model.config["meta"] if isinstance(model, OmniModel) else getattr(model, "meta", None)
    if command and meta is not None:
        meta["train_command"] = command
    metrics = train(model, task, tcfg, device=device, resume=resume, tokenizer=tokenizer)
    if out and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process writes the folder
        if isinstance(model, OmniModel):
            save_trained(model, metrics, out, tokenizer)
        else:  # a model of its own class (the speech codec): its save_pretrained, the same meta
            if meta is not None:
                meta["final_metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            model.save_pretrained(out)
    return model, metrics


# ---- the loop ---------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, task, device, bf16: bool) -> dict:
    model.eval()
    totals: dict[str, float] = {}
    batches = task.eval_batches()
    for batch in batches:
        with _autocast(device, bf16):
            loss, parts = model(**_to(batch, device))
        totals["loss"] = totals.get("loss", 0.0) + float(loss)
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    model.train()
    return {f"val_{k}": v / len(batches) for k, v in totals.items()}


def _to(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _autocast(device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def train(model: OmniModel, task, cfg: TrainConfig, device: str | torch.device = "cpu",
          resume: bool = False, tokenizer=None) -> dict:
    """Train ``model`` on ``task``; returns the last metrics (incl. val loss).

    ``resume=True`` continues from ``out_dir/ckpt/latest`` exactly (weights, optimizer, RNG,
    data position). Run under ``torchrun --nproc-per-node N`` for DDP/FSDP.
    """
    device = torch.device(device)
    rank, world = init_distributed(device)
    if cfg.max_time_s is not None and world > 1:
        raise ValueError("max_time_s is single-process only (ranks could stop at different steps)")
    if cfg.optimizer == "muon" and cfg.parallel == "fsdp" and world > 1:
        raise ValueError("optimizer=muon needs whole matrices; use parallel=ddp (FSDP shards them)")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must divide evenly over {world} processes")
    rows = slice(rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world)
    out = Path(cfg.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None and rank == 0:
        print(f"[train] --resume: no checkpoint in {out}/ckpt, starting from scratch")
    if ckpt is not None:
        load_model_weights(model, ckpt)
    model.to(device).train()
    wrapped = wrap_model(model, cfg, device, world)
    opts = make_optimizers(wrapped, cfg)
    start = load_trainer_state(wrapped, opts, ckpt) if ckpt is not None else 0
    ema = None
    if cfg.ema:
        if world > 1 and cfg.parallel == "fsdp":
            raise ValueError("ema needs whole parameters on every rank; use parallel=ddp with ema")
        ema = EMA(unwrap(wrapped), cfg.ema)
        if ckpt is not None and (ckpt / "ema.safetensors").is_file():
            ema.load_state_dict(load_file(str(ckpt / "ema.safetensors"), device=str(device)))
        elif ckpt is not None and rank == 0:
            print(f"[train] {ckpt} has no EMA state: the average starts from its weights")
    log_path = out / "metrics.jsonl"
    if rank == 0:  # drop log lines from beyond the checkpoint we resume from
        old = log_path.read_text().splitlines() if (resume and log_path.exists()) else []
        atomic_write_text(log_path, "".join(l + "\n" for l in old if json.loads(l)["step"] <= start))
    log = open(log_path, "a") if rank == 0 else None

    end = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, cfg.stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.max_steps, disable=not cfg.progress or rank != 0,
               desc="train", dynamic_ncols=True)
    progress = {"done": start, "ema": ema}  # the last finished step, for an interrupted run
    if ckpt is not None:        # metrics.jsonl's tokens and elapsed_s go on from where the run stopped
        state = json.loads((ckpt / "trainer_state.json").read_text())
        progress.update(tokens=state.get("tokens", 0), elapsed_s=state.get("elapsed_s", 0.0))
    try:
        metrics = _loop(wrapped, opts, task, cfg, device, rank, world, rows, bar, log, tokenizer, progress)
        if ema is not None:  # what the recipe saves is the average
            ema.copy_to(unwrap(wrapped))
        return metrics
    except KeyboardInterrupt:
        if world == 1 and progress["done"] > start and not progress.get("updating"):
            # keep the work: one more atomic checkpoint of the last finished step, then stop
            save_checkpoint(wrapped, opts, progress["done"], cfg, rank, tokenizer, progress)
            print(f"\n[train] interrupted: saved step {progress['done']} to {out}/ckpt; continue with --resume")
        raise
    finally:
        bar.close()
        if log:
            log.close()


def _check_finite(loss: torch.Tensor, step: int, cfg: TrainConfig):
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {float(loss)} at step {step}; the last good checkpoint "
                                 f"is in {cfg.out_dir}/ckpt (lower lr or enable grad_clip, then --resume)")


def _loop(wrapped, opts, task, cfg, device, rank, world, rows, bar, log, tokenizer, progress) -> dict:
    last: dict = {}
    done, step_s = progress["done"], 0.0
    # t0 moves forward by eval/checkpoint time: budgets count training only (a resumed run goes on
    # from the training time and tokens its checkpoint recorded)
    t0, tokens = time.time() - progress.get("elapsed_s", 0.0), progress.get("tokens", 0)
    for step in bar:
        ts = time.time()
        time_frac = (ts - t0) / cfg.max_time_s if cfg.max_time_s else 0.0
        if cfg.max_time_s and ts - t0 + step_s > cfg.max_time_s:
            break  # the next step would overrun the budget
        lr = lr_at(step, cfg, time_frac)
        for g in (g for o in opts for g in o.param_groups):
            g["lr"] = lr * g.get("lr_mult", 1.0)
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            batch = _to(task.train_batch(step, micro, rows), device)
            sync = micro == cfg.grad_accum - 1
            ctx = wrapped.no_sync() if (world > 1 and not sync and hasattr(wrapped, "no_sync")) else nullcontext()
            if world > 1 and cfg.parallel == "fsdp":
                wrapped.set_requires_gradient_sync(sync)
            with ctx, _autocast(device, cfg.bf16):
                loss, _ = wrapped(**batch)
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.detach().float() / cfg.grad_accum
            tokens += batch["input_ids"].numel() * world if "input_ids" in batch else 0
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
        progress["updating"] = True  # an interrupt in here would leave half-updated weights
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        if progress["ema"] is not None:
            progress["ema"].update(unwrap(wrapped))
        progress["updating"] = False
        if world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        done = progress["done"] = step + 1
        progress.update(tokens=tokens, elapsed_s=round(time.time() - t0, 3))
        rec = None
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            _check_finite(loss_sum, done, cfg)
            rec = {"step": done, "loss": float(loss_sum), "lr": lr, "tokens": tokens,
                   "elapsed_s": round(time.time() - t0, 3)}
            bar.set_postfix(loss=f"{float(loss_sum):.4f}")
        step_s = time.time() - ts
        out_of_time = cfg.max_time_s is not None and time.time() - t0 + step_s > cfg.max_time_s
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.max_steps or out_of_time:
            te = time.time()
            with progress["ema"].applied(unwrap(wrapped)) if progress["ema"] is not None else nullcontext():
                rec = {**(rec or {"step": done}), **evaluate(wrapped, task, device, cfg.bf16)}
            t0 += time.time() - te
        if rec and log:
            log.write(json.dumps(rec) + "\n")
            log.flush()
        last = rec or last
        if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == cfg.max_steps or out_of_time:
            _check_finite(loss_sum, done, cfg)  # never checkpoint diverged weights
            te = time.time()
            save_checkpoint(wrapped, opts, done, cfg, rank, tokenizer, progress)
            t0 += time.time() - te
    return {**last, "step": done, "tokens": tokens, "train_time_s": time.time() - t0}
