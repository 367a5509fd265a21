"""The README's Python snippets run against a real (tiny) store, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.generate import GenerateJob, run_generate
from stages.config import GenerationConfig, OrbitConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_snippets_run(tmp_path, tiny_model_dir, good_images, monkeypatch):
    config = GenerationConfig(orbit=OrbitConfig(num_frames=8), num_inference_steps=2, decode_chunk_size=8)
    run_generate(GenerateJob(good_images, tiny_model_dir, tmp_path / "example.zarr", config, progress=False))
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(snippets) >= 2
    monkeypatch.chdir(tmp_path)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {})
