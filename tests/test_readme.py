"""The README's quick start is executable documentation: run it as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quick_start_runs_and_learns_to_copy(tmp_path, monkeypatch, capsys):
    code = re.search(r"## Quick start in Python\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    generated = namespace["model"].generate(namespace["torch"].tensor([[5, 6, 7, 8, 9, 10]]), num_beams=5, max_length=12)
    assert generated[0].tolist() == [1, 5, 6, 7, 8, 9, 10, 2]
    reloaded = namespace["reloaded"].eval()
    assert reloaded.generate(namespace["torch"].tensor([[5, 6, 7, 8, 9, 10]]), num_beams=5, max_length=12).tolist() == (
        generated.tolist()
    )
    assert (tmp_path / "copy-model" / "model.safetensors").is_file()
