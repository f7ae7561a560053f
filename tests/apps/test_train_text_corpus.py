"""The text recipe's corpus reader: one file, a glob or a list, and fortune(6) files."""
import pytest

from apps.text.recipe import read_corpus


def test_glob_and_list_concatenate_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "a.txt").write_text("ant\n")
    (tmp_path / "c.dat").write_text("binary index")
    assert read_corpus({"path": str(tmp_path / "a.txt")}) == "ant\n"
    assert read_corpus({"path": str(tmp_path / "*.txt")}) == "ant\nbee\n"
    assert read_corpus({"path": [str(tmp_path / "b.txt"), str(tmp_path / "a.txt")]}) == "ant\nbee\n"
    with pytest.raises(FileNotFoundError):
        read_corpus({"path": str(tmp_path / "*.md")})
    with pytest.raises(FileNotFoundError):
        read_corpus({"path": [str(tmp_path / "a.txt"), str(tmp_path / "missing.txt")]})


def test_fortune_separators_become_blank_lines(tmp_path):
    (tmp_path / "f").write_text("One.\n%\nTwo,\n  100%\n\t-- Someone\n%\n")
    text = read_corpus({"path": str(tmp_path / "f"), "format": "fortune"})
    assert text == "One.\n\nTwo,\n  100%\n\t-- Someone\n\n"
    with pytest.raises(ValueError, match="format"):
        read_corpus({"path": str(tmp_path / "f"), "format": "csv"})
