"""The model identity covers the weights' bytes (issue 13), with a digest cache that is
reused only while a file is unchanged and never makes a run fail."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cache_schema import StoreMetadata, digest
from pipeline.cache_cli import app
from stages.sv3d import weight_digests
from stages.sv3d.loading import model_identity
from stages.sv3d.tiny import save_tiny_sv3d

FAST = ["--frames", "8", "--steps", "4", "--decode-chunk-size", "8", "--no-progress"]
PAST_NS = 1_600_000_000 * 10**9  # long ago: digests of files this old are cached


@pytest.fixture
def model(tiny_model_dir, tmp_path, monkeypatch) -> Path:
    """A private copy of the tiny model whose files are old enough to be cached, with
    the per-user cache under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    (copy / weight_digests.CACHE_NAME).unlink(missing_ok=True)
    for path in copy.rglob("*"):
        os.utime(path, ns=(PAST_NS, PAST_NS))
    return copy


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the files actually read by the hash, in order."""
    calls: list[str] = []
    real = weight_digests.sha256_file

    def counting(path: Path) -> str:
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(weight_digests, "sha256_file", counting)
    return calls


def weight_file(model: Path) -> Path:
    return next((model / "unet").glob("*.safetensors"))


def flip_last_byte(path: Path) -> None:
    """Other bytes of the same size: a weight changed, the shapes not."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the old mtime is not trusted


def test_identity_hashes_weight_content_and_caches_the_digests(model, hashed):
    first = model_identity(model)
    assert len(hashed) == 3 and all(len(w["sha256"]) == 64 for w in first["weights"])
    assert first["weights"][0]["sha256"] == weight_digests.sha256_file(model / first["weights"][0]["file"])
    hashed.clear()
    assert model_identity(model) == first
    assert hashed == []  # every digest came from the cache beside the model
    assert json.loads((model / weight_digests.CACHE_NAME).read_text())["version"] == 1

    flip_last_byte(weight_file(model))
    changed = model_identity(model)
    assert hashed == [weight_file(model).name]  # only the changed file is read again
    assert changed["config_sha256"] == first["config_sha256"]
    assert [w["bytes"] for w in changed["weights"]] == [w["bytes"] for w in first["weights"]]
    assert changed["weights"] != first["weights"]


def test_a_new_mtime_or_size_invalidates_the_cached_digest(model, hashed):
    model_identity(model)
    target = weight_file(model)
    os.utime(target, ns=(PAST_NS, PAST_NS + 10**9))
    hashed.clear()
    model_identity(model)
    assert hashed == [target.name]
    cache = model / weight_digests.CACHE_NAME
    entries = json.loads(cache.read_text())["files"]
    name = target.relative_to(model).as_posix()
    entries[name]["key"][0] += 1  # a cache entry of another size must not be trusted
    cache.write_text(json.dumps({"version": 1, "files": entries}))
    hashed.clear()
    model_identity(model)
    assert hashed == [target.name]


def test_a_recently_written_file_is_hashed_every_time(model, hashed):
    os.utime(weight_file(model))  # now: may change again within the same mtime tick
    model_identity(model)
    hashed.clear()
    model_identity(model)
    assert hashed == [weight_file(model).name]


def test_a_damaged_cache_is_ignored_and_rewritten(model, hashed):
    first = model_identity(model)
    cache = model / weight_digests.CACHE_NAME
    cache.write_bytes(b"\xff\x00 not json")
    hashed.clear()
    assert model_identity(model) == first
    assert len(hashed) == 3
    assert json.loads(cache.read_text())["version"] == 1


def test_an_unwritable_model_folder_falls_back_to_the_user_cache(model, hashed, tmp_path):
    # A folder where the cache file would go makes every write there fail, as a
    # read-only model folder does (chmod cannot show it: tests may run as root).
    (model / weight_digests.CACHE_NAME).mkdir()
    first = model_identity(model)
    user = weight_digests.user_cache_path(model.resolve())
    assert user.is_relative_to(tmp_path / "user-cache") and user.is_file()
    hashed.clear()
    assert model_identity(model) == first and hashed == []
    # Neither place writable: the digests are computed every time, and nothing fails.
    user.unlink()
    user.parent.rmdir()
    user.parent.write_text("a file where the user cache folder should be")
    hashed.clear()
    assert model_identity(model) == first and len(hashed) == 3
    assert not list(model.glob("*.tmp"))


def generate(model: Path, image: Path, out: Path):
    return CliRunner().invoke(app, ["generate", str(image), "--model", str(model), "--out", str(out), *FAST])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_model_with_other_weights_of_the_same_shapes_is_refused(tiny_model_dir, good_images, tmp_path):
    other = save_tiny_sv3d(tmp_path / "other", seed=1)  # same classes, configs and shapes
    assert [w["bytes"] for w in model_identity(other)["weights"]] == [
        w["bytes"] for w in model_identity(tiny_model_dir)["weights"]
    ]
    out = tmp_path / "c.zarr"
    assert generate(tiny_model_dir, good_images / "rgba.png", out).exit_code == 0
    line = one_error_line(generate(other, good_images / "rgba.png", out))
    assert f"error: {out} was made with a different model or config" in line
    assert "model.weights" in line and "--overwrite" in line


@pytest.mark.usefixtures("one_torch_thread")
def test_a_store_of_size_only_identity_is_refused_with_a_clear_message(tiny_model_dir, good_images, tmp_path):
    out = tmp_path / "c.zarr"
    assert generate(tiny_model_dir, good_images / "rgba.png", out).exit_code == 0
    # Rewrite its metadata as a version before weight hashing wrote it.
    node = json.loads((out / "zarr.json").read_text())
    meta = StoreMetadata.from_dict(node["attributes"]["keydiff3d"])
    model = {k: v for k, v in meta.model.items() if k != "fingerprint"}
    model["weights"] = [{"file": w["file"], "bytes": w["bytes"]} for w in model["weights"]]
    model["fingerprint"] = digest({k: v for k, v in model.items() if k != "path"})
    node["attributes"]["keydiff3d"] = dataclasses.replace(meta, model=model).to_dict()
    (out / "zarr.json").write_text(json.dumps(node))
    assert CliRunner().invoke(app, ["inspect", str(out)]).exit_code == 0  # still readable
    line = one_error_line(generate(tiny_model_dir, good_images / "rgba.png", out))
    assert "older keydiff3d that identified the model by its weight file sizes only" in line
    assert "--overwrite" in line
