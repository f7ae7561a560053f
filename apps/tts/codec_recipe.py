"""Train the speech codec (modalities/speech_codec.py) on the espeak-ng corpus with the one trainer.

    omniar train codec --config configs/speech_codec.yaml

The corpus is built first if its folder is missing (modalities/speech_corpus.py, about a minute).
"""
from __future__ import annotations

from pathlib import Path

import torch

from backbone.train import TrainConfig, cli_command, train
from modalities.speech_codec import Codec, CodecTask
from modalities.speech_corpus import Corpus, build_corpus


def load_corpus(d: dict) -> Corpus:
    """The ``data:`` config -> a Corpus, building it when ``data.folder`` does not exist yet."""
    folder = Path(d.get("folder", "runs/speech/corpus"))
    if not (folder / "manifest.jsonl").is_file():
        build_corpus(folder, d.get("n_train", 6000), d.get("n_val", 100), d.get("n_test", 100), d.get("seed", 0))
    return Corpus(folder)


def run(cfg: dict, out: str | None = None, device: str = "cpu", resume: bool = False) -> tuple[Codec, dict]:
    tcfg = TrainConfig.from_dict(cfg["train"])
    torch.manual_seed(tcfg.seed)
    corpus = load_corpus(cfg.get("data", {}))
    codec = Codec(cfg.get("codec"))
    task = CodecTask(corpus, tcfg.batch_size, cfg.get("data", {}).get("seconds", 1.0), tcfg.seed)
    metrics = train(codec, task, tcfg, device=device, resume=resume)
    if out:
        codec.meta = {"train_command": cli_command(), "final_metrics": {k: v for k, v in metrics.items()
                                                                        if isinstance(v, (int, float))}}
        codec.save_pretrained(out)
    return codec, metrics
