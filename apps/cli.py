"""The ``omniar`` command line.

    omniar train text --config configs/text_shakespeare.yaml [--out assets/text-shakespeare] [--resume]
    omniar generate --model assets/text-shakespeare "ROMEO:" --max-new-tokens 200
    omniar crystal "SrTiO3" --n 10 [--spacegroup Pm-3m] -o out/
    omniar t2i "a red circle to the left of a blue square" -o out.png --seed 0 --steps 25 --cfg 3 --n 4
    omniar caption image.png
    omniar tts "Hello world." -o out.wav [--voice-prompt ref.wav --prompt-text "..."] [--seed 0]
    omniar demo [--port 7860]
    omniar export-hf --model assets/text-shakespeare --out /tmp/hf --arch llama

Multi-process training goes through torchrun:
    torchrun --nproc-per-node 2 -m apps.cli train text --config ...
"""
from __future__ import annotations

import argparse
import sys

from apps.t2i import DEFAULT_CHECKPOINT as DEFAULT_IMAGE


def _train(a):
    import yaml
    from apps.text import recipe as train_text
    if a.task == "forecast":
        from apps.forecast import recipe
        cfg = train_text.load_config(a.config, required=("model", "train", "seg_len"))
    elif a.task == "forecast-bins":
        from apps.forecast import bins_recipe as recipe
        cfg = train_text.load_config(a.config, required=("data", "model", "train", "context_length",
                                                         "prediction_length"))
    elif a.task == "t2i":
        from apps.t2i import recipe
        cfg = train_text.load_config(a.config, required=("model", "train"))
    elif a.task == "codec":
        from apps.tts import codec_recipe as recipe
        cfg = train_text.load_config(a.config, required=("train",))
    elif a.task == "tts":
        from apps.tts import recipe as recipe
        cfg = train_text.load_config(a.config, required=("model", "train"))
    elif a.task == "draft-head":
        from apps.text import draft_recipe as recipe
        cfg = recipe.load_config(a.config)
    else:  # text and crystal share the token-LM recipe
        recipe, cfg = train_text, train_text.load_config(a.config)
    overrides = {}
    for o in a.set or []:
        if "=" not in o:
            raise ValueError(f"--set expects KEY=VALUE, got {o!r}")
        k, v = o.split("=", 1)
        overrides[k.strip()] = yaml.safe_load(v)
    if a.max_steps:
        overrides["max_steps"] = a.max_steps
    if a.run_dir:
        overrides["out_dir"] = a.run_dir
    cfg["train"] = {**cfg["train"], **overrides}
    _, metrics = recipe.run(cfg, out=a.out or cfg.get("out"), resume=a.resume, device=a.device)
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})


def _generate(a):
    import torch
    from apps.text.model import make_drafter, stream_text
    from backbone.container import OmniModel
    from backbone.sampling import SamplingParams
    from modalities.text import load_tokenizer
    if not a.draft and (a.fallback is not None or a.rollback is not None):
        raise ValueError("--fallback and --rollback are policies of drafted decoding; add --draft")
    model = OmniModel.from_pretrained(a.model, device=a.device)
    tok = load_tokenizer(a.model)
    params = SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                            repetition_penalty=a.repetition_penalty, max_new_tokens=a.max_new_tokens,
                            stop_strings=a.stop or [], seed=a.seed)
    kw = {}
    if a.penalty_alpha:
        params.penalty_alpha = a.penalty_alpha
    if a.draft:
        kw = dict(drafter=make_drafter(a.draft, model, a.device, a.ngram_n, a.fallback), gamma=a.gamma,
                  rollback=a.rollback)
    sys.stdout.write(a.prompt)
    with torch.inference_mode():
        for piece in stream_text(model, tok, a.prompt, params, **kw):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")


def _t2i(a):
    from apps.t2i import model as t2i
    t2i.cli_text_to_image(a)


def _tts(a):
    from apps.tts import model as tts
    tts.cli_tts(a)


def _caption(a):
    from apps.t2i import model as t2i
    t2i.cli_caption(a)


def _forecast(a):
    from apps.forecast import cli as forecast_cli
    forecast_cli.main(a)


def _finetune_forecast(a):
    from apps.forecast import finetune as forecast_finetune
    forecast_finetune.main(a)


def _serve(a):
    from apps.api import launch
    launch.main(a)


def _serve_forecast(a):
    from apps.api import launch
    launch.main(a, defaults=("assets/forecast-zeroshot",))


def _crystal(a):
    from apps.crystal import model as crystal
    crystal.main(a)


def _demo(a):
    from apps import launcher
    argv = ["--host", a.host, "--port", str(a.port)]
    if a.text_model:
        argv += ["--text-model", a.text_model]
    if a.crystal_model:
        argv += ["--crystal-model", a.crystal_model]
    if a.forecast_model:
        argv += ["--forecast-model", a.forecast_model]
    if a.image_model:
        argv += ["--image-model", a.image_model]
    if a.speech_model:
        argv += ["--speech-model", a.speech_model]
    launcher.main(argv)


def _export(a):
    from backbone.container import OmniModel
    from backbone.hf_import import export_hf
    export_hf(OmniModel.from_pretrained(a.model), a.out, model_type=a.arch)
    print(f"wrote a Hugging Face {a.arch} folder to {a.out}")


SERVE_MODELS = ("assets/text-shakespeare", "assets/text-fortunes-bpe", "assets/crystal-cif", DEFAULT_IMAGE,
                "assets/speech-tts", "assets/forecast-zeroshot")


def launch_args(ap: argparse.ArgumentParser, models=SERVE_MODELS, port: int = 8000):
    """The flags of ``omniar serve`` (apps/api/launch.py)."""
    ap.add_argument("--model", action="append", help=f"checkpoint folder to serve (repeat it; default: "
                    f"{' '.join(models)})")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: %(default)s, loopback only)")
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-rows", type=int, default=32, help="rows per continuous batch (default %(default)s)")
    ap.add_argument("--max-queue", type=int, default=64, help="waiting requests per model; beyond: 429")
    ap.add_argument("--max-tokens", type=int, default=1024, help="max_tokens limit per choice")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default %(default)s)")
    ap.add_argument("--max-body-mb", type=float, default=8.0, help="request body cap (413 beyond)")
    ap.add_argument("--no-batching", action="store_true", help="one request at a time (the baseline)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omniar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("task", choices=["text", "crystal", "draft-head", "forecast", "forecast-bins", "t2i", "codec", "tts"],
                   help="crystal: a CIF language model (CrystaLLM); draft-head: a speculative draft head "
                        "on a trained model (Chimera/EAGLE)")
    t.add_argument("--config", required=True)
    t.add_argument("--out", help="write the finished checkpoint folder here (default: the config's 'out')")
    t.add_argument("--run-dir", help="where checkpoints and metrics.jsonl go (default: the config's out_dir)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint")
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-steps", type=int)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a trainer setting")
    t.set_defaults(fn=_train)

    g = sub.add_parser("generate", help="stream text from a checkpoint")
    g.add_argument("prompt")
    g.add_argument("--model", default="assets/text-shakespeare")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--top-k", type=int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--min-p", type=float)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--seed", type=int)
    g.add_argument("--device", default="cpu")
    g.add_argument("--draft", metavar="KIND", help="exact speculative decoding: prompt-lookup | ngram | head "
                   "(the model's draft head) | a draft model folder (same tokenizer)")
    g.add_argument("--gamma", type=int, default=4, help="tokens drafted per round (default %(default)s)")
    g.add_argument("--ngram-n", type=int, default=3, help="context length + 1 of --draft ngram (default %(default)s)")
    g.add_argument("--fallback", type=float, metavar="P", help="BiLD's fallback policy (Big Little Decoder): a "
                   "draft model or head stops drafting once its top probability is below P (still exact)")
    g.add_argument("--rollback", type=float, metavar="NATS", help="BiLD's rollback policy, greedy only and NOT "
                   "exact: keep a draft token while the model's cross-entropy on it is at most NATS")
    g.add_argument("--penalty-alpha", type=float, help="contrastive search with --top-k candidates")
    g.set_defaults(fn=_generate)

    ti = sub.add_parser("t2i", help="text to image (a PNG; a grid for --n > 1)")
    ti.add_argument("prompt")
    ti.add_argument("-o", "--out", required=True, help="PNG file to write")
    ti.add_argument("--model", default=DEFAULT_IMAGE)
    ti.add_argument("--n", type=int, default=1, help="images per prompt (written as a grid)")
    ti.add_argument("--steps", type=int, default=25, help="denoising steps per patch")
    ti.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = off)")
    ti.add_argument("--temperature", type=float, default=1.0)
    ti.add_argument("--seed", type=int, default=0)
    ti.add_argument("--rerank", type=int, default=1, metavar="K", help="draw K candidates per image and keep the "
                    "one the model's own captioning scores likeliest for the prompt (default %(default)s: off)")
    ti.add_argument("--layout-temperature", type=float, default=1.0, help="of the plan a layout checkpoint "
                    "writes first (0-10; lower: the likeliest layouts, less varied; default %(default)s)")
    ti.add_argument("--device", default="cpu")
    ti.set_defaults(fn=_t2i)

    ts = sub.add_parser("tts", help="text to speech (a 16 kHz WAV; long text is spoken sentence by sentence)")
    ts.add_argument("text")
    ts.add_argument("-o", "--out", required=True, help="WAV file to write")
    ts.add_argument("--voice-prompt", metavar="WAV", help="a 1-10 s clip of the voice to speak in (needs --prompt-text)")
    ts.add_argument("--prompt-text", help="the exact words spoken in --voice-prompt")
    ts.add_argument("--model", default="assets/speech-tts")
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--temperature", type=float, default=1.0, help="above 0, at most 2 (default %(default)s)")
    ts.add_argument("--device", default="cpu")
    ts.set_defaults(fn=_tts)

    ca = sub.add_parser("caption", help="describe an image (PNG/JPEG) with the text-to-image model")
    ca.add_argument("image")
    ca.add_argument("--model", default=DEFAULT_IMAGE)
    ca.add_argument("--device", default="cpu")
    ca.set_defaults(fn=_caption)

    f = sub.add_parser("forecast", help="forecast one column of a CSV (median and quantiles)")
    f.add_argument("csv")
    f.add_argument("--column", required=True, help="the value column, e.g. OT")
    f.add_argument("--horizon", type=int, default=96)
    f.add_argument("--quantiles", default="0.1,0.5,0.9", help="comma-separated (default %(default)s)")
    f.add_argument("--model", default="assets/forecast-zeroshot")
    f.add_argument("-o", "--out", default="forecast.csv")
    f.add_argument("--force", action="store_true", help="overwrite --out (and --plot)")
    f.add_argument("--season", type=int, metavar="M",
                   help="season length in points (12: monthly data, yearly cycle; 24: hourly, daily; 1: none); "
                        "default: detected from the series")
    f.add_argument("--plot", metavar="PNG", help="also draw the history, the median and the 10-90%% band here")
    f.set_defaults(fn=_forecast)

    ft = sub.add_parser("finetune-forecast", help="fine-tune a forecaster on one column of a CSV")
    ft.add_argument("csv")
    ft.add_argument("--column", required=True)
    ft.add_argument("--model", default="assets/forecast-zeroshot")
    ft.add_argument("-o", "--out", required=True, help="folder for the fine-tuned checkpoint")
    ft.add_argument("--steps", type=int, default=200)
    ft.add_argument("--season", type=int, metavar="M", help="season length in points (default: detected)")
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--batch-size", type=int, default=32)
    ft.add_argument("--val-frac", type=float, default=0.2, help="held-out tail (default %(default)s)")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--run-dir", help="trainer checkpoints (default runs/finetune-<out name>)")
    ft.add_argument("--resume", action="store_true")
    ft.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    ft.add_argument("--device", default="cpu")
    ft.set_defaults(fn=_finetune_forecast)

    sv = sub.add_parser("serve", help="the HTTP API (OpenAI-compatible completions, images, speech; forecasts) "
                        "with continuous batching, on 127.0.0.1")
    launch_args(sv)
    sv.set_defaults(fn=_serve)
    sf = sub.add_parser("serve-forecast", help="alias: omniar serve with only the forecasting model")
    launch_args(sf, models=("assets/forecast-zeroshot",))
    sf.set_defaults(fn=_serve_forecast)

    c = sub.add_parser("crystal", help="generate crystal structures (CIF) for a composition")
    c.add_argument("composition", help="cell composition, e.g. SrTiO3 or C8")
    c.add_argument("--n", type=int, default=10, help="candidates to sample (default: %(default)s)")
    c.add_argument("--spacegroup", help="Hermann-Mauguin symbol to prompt with, e.g. Pm-3m")
    c.add_argument("-o", "--out", default="crystals", help="output folder (default: %(default)s)")
    c.add_argument("--model", default="assets/crystal-cif")
    c.add_argument("--temperature", type=float, default=0.7, help="(default %(default)s, chosen on held-out val)")
    c.add_argument("--top-k", type=int, default=10)
    c.add_argument("--rank", choices=["consensus", "likelihood"], default="consensus",
                   help="order of the valid candidates: most-sampled structure first, or most likely")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--max-new-tokens", type=int, help="default: the rest of the context")
    c.add_argument("--device", default="cpu")
    c.set_defaults(fn=_crystal)

    d = sub.add_parser("demo", help="launch all apps on 127.0.0.1")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=7860)
    d.add_argument("--text-model")
    d.add_argument("--crystal-model")
    d.add_argument("--image-model")
    d.add_argument("--forecast-model")
    d.add_argument("--speech-model")
    d.set_defaults(fn=_demo)

    e = sub.add_parser("export-hf", help="write a checkpoint as a Hugging Face transformers folder")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--arch", choices=["gpt2", "llama"], default="llama")
    e.set_defaults(fn=_export)
    return p


def check_device(name: str) -> str:
    """A ``--device`` value -> itself, or ValueError naming the problem (an unknown device type, or
    a CUDA/MPS device this machine does not have), before any model loads."""
    import torch
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: only cpu, cuda and mps are supported")
    return name


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if getattr(a, "device", None) is not None:
            check_device(a.device)
        a.fn(a)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"omniar: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
