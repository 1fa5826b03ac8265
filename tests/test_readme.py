"""The README's Python example runs as written."""

from __future__ import annotations

import re

from tests.conftest import REPO


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["chunk"].shape == (1, scope["config"].chunk_size, 4)
    assert scope["action"].shape == (1, 4)
    assert (tmp_path / "my_checkpoint" / "policy_preprocessor.json").is_file()
    assert (tmp_path / "my_checkpoint" / "model.safetensors").is_file()
