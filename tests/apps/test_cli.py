"""The CLI refuses bad settings with one line naming the problem, before any model loads (issue 21's rows:
--device bogus / cuda without a GPU, --temperature inf, finetune-forecast --batch-size 0)."""
import pytest
import torch

from apps.cli import check_device, main


@pytest.mark.parametrize("argv,match", [
    (["generate", "x", "--device", "bogus"], "is not a device"),
    (["generate", "x", "--temperature", "inf"], "finite number"),
    (["generate", "x", "--temperature", "nan"], "finite number"),
    (["t2i", "x", "-o", "x.png", "--temperature", "inf"], "temperature in"),
    (["t2i", "x", "-o", "x.png", "--cfg", "1e9"], "cfg in"),
])
def test_bad_settings_get_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("omniar: error:") and match in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert main(["generate", "x", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_check_device_accepts_cpu():
    assert check_device("cpu") == "cpu"


def test_finetune_batch_size_zero(tmp_path, capsys):
    csv = tmp_path / "s.csv"
    csv.write_text("y\n" + "".join(f"{i % 24}\n" for i in range(400)))
    assert main(["finetune-forecast", str(csv), "--column", "y", "-o", str(tmp_path / "out"),
                 "--batch-size", "0", "--run-dir", str(tmp_path / "run")]) == 2
    assert "batch size must be in [1, 4096]" in capsys.readouterr().err
