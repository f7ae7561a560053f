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
    (["t2i", "x", "-o", "x.png", "--rerank", "0"], "--rerank must be in [1, 16]"),
    (["t2i", "x", "-o", "x.png", "--rerank", "99"], "--rerank must be in [1, 16]"),
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


def test_generate_max_new_tokens_has_a_stated_limit(capsys):
    assert main(["generate", "x", "--max-new-tokens", "1000000"]) == 2
    assert "max_new_tokens must be in [1, 100000]" in capsys.readouterr().err


@pytest.mark.parametrize("out, words", [("{d}/", "not a folder"), ("{d}", "not a folder"),
                                        ("{d}/no/such/f.csv", "does not exist")])
def test_forecast_output_must_be_a_file_and_leaves_no_tmp(tmp_path, capsys, out, words):
    csv = tmp_path / "s.csv"
    csv.write_text("y\n" + "".join(f"{i % 24}\n" for i in range(200)))
    d = tmp_path / "outdir"
    d.mkdir()
    assert main(["forecast", str(csv), "--column", "y", "--horizon", "5", "-o", out.format(d=d)]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.tmp"))


GOOD_TEXT_CONFIG = """
data: {path: ../shared/data/tinyshakespeare.txt, train_fraction: 0.9}
tokenizer: {kind: char}
model: {preset: nano, args: {n_layer: 1, n_head: 2, dim: 32, block_size: 32}}
train: {max_steps: 2, batch_size: 2, progress: false}
"""


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.replace("max_steps: 2", "max_steps: -5"), "max_steps must be >= 1"),
    (lambda c: c.replace("batch_size: 2", "batch_size: 2, lr: [1, 2]"), "lr must be a finite number"),
    (lambda c: c.replace("n_layer: 1", 'n_layer: "four"'), "n_layer must be a whole number"),
    (lambda c: c.replace("train_fraction: 0.9", "train_fraction: 0.9, shuffle: true"), "unknown data settings"),
    (lambda c: c.replace("train_fraction: 0.9", "train_fraction: 2"), "train_fraction must be"),
    (lambda c: c.replace("data: {", "data: [{"), "not valid YAML"),
])
def test_bad_training_configs_get_one_line(tmp_path, capsys, edit, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(edit(GOOD_TEXT_CONFIG))
    assert main(["train", "text", "--config", str(cfg), "--out", str(tmp_path / "out"),
                 "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omniar: error:") and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()                     # nothing saved as if finished


def test_tts_with_a_text_checkpoint_names_the_kinds(tmp_path, capsys):
    assert main(["tts", "Hello.", "-o", str(tmp_path / "a.wav"), "--model", "assets/text-shakespeare"]) == 2
    err = capsys.readouterr().err
    assert "is a text checkpoint, not a text-to-speech one" in err and len(err.strip().splitlines()) == 1


def test_tts_text_length_has_a_stated_limit(tmp_path, capsys):
    assert main(["tts", "Hello there. " * 10_000, "-o", str(tmp_path / "a.wav")]) == 2
    assert "takes at most 5000" in capsys.readouterr().err


def test_finetune_forecast_csv_rows_have_a_stated_limit(tmp_path, capsys):
    csv = tmp_path / "big.csv"
    csv.write_text("y\n" + "1.0\n" * 200_001)
    assert main(["finetune-forecast", str(csv), "--column", "y", "-o", str(tmp_path / "out"),
                 "--run-dir", str(tmp_path / "run")]) == 2
    assert "more than 200000 rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_t2i_checks_length_and_output_before_generating(tmp_path, capsys):
    assert main(["t2i", "a red circle", "-o", str(tmp_path / "a.txt")]) == 2
    assert "-o must name an image file" in capsys.readouterr().err
    assert main(["t2i", " ".join(["red"] * 25_000), "-o", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert "the prompt has 25000 words; this model takes at most" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("task, cfg", [
    ("forecast", "seg_len: 16\nmodel: {}\ntrain: {max_steps: 1}\ndata: {ett: [], bogus: 1}\n"),
    ("t2i", "model: {}\ntrain: {max_steps: 1}\ndata: {caption_frac: 0.3, bogus: 1}\n"),
    ("codec", "train: {max_steps: 1}\ndata: {n_train: 10, bogus: 1}\n"),
])
def test_unknown_data_settings_are_refused_in_every_recipe(tmp_path, capsys, task, cfg):
    path = tmp_path / "c.yaml"
    path.write_text(cfg)
    assert main(["train", task, "--config", str(path), "--out", str(tmp_path / "out"),
                 "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown data settings ['bogus']" in err and len(err.strip().splitlines()) == 1, err
