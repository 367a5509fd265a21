"""What IMAGES may be (issue 13): a binary file is refused in one line, an image under
another suffix is one image, and a folder's symbolic link loops, broken links and
unreadable sub-folders are failed samples with a reason, never a crash or a silent skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cache_cli import app
from stages.errors import ConfigError
from stages.sources import list_image_sources
from tests.fixtures.images import figure_rgba, on_white
from tests.store.helpers import one_error_line

FAST = ["--frames", "8", "--steps", "4", "--decode-chunk-size", "8", "--no-progress"]


def generate(images: Path, model: Path, out: Path):
    return CliRunner().invoke(app, ["generate", str(images), "--model", str(model), "--out", str(out), *FAST])


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (bytes(range(256)) * 4, "it holds a NUL byte at offset 0"),
        (b"photos/a.png\n\xff\xfe\xfa not utf-8\n", "byte 13 is not UTF-8"),
        ("photos/a.png\n".encode("utf-16"), "it holds a NUL byte at offset 3"),  # a UTF-16 list
    ],
)
def test_a_binary_images_argument_is_refused_in_one_line(tmp_path, tiny_model_dir, content, why):
    given = tmp_path / "photos.bin"
    given.write_bytes(content)
    line = one_error_line(generate(given, tiny_model_dir, tmp_path / "c.zarr"))
    assert line == (
        f"error: {given}: is neither an image we can read (.jpg, .jpeg, .png, .webp, or another format "
        f"PIL knows) nor a UTF-8 text list of image paths ({why})"
    )
    assert not (tmp_path / "c.zarr").exists()


def test_a_large_binary_file_is_refused_from_its_first_bytes(tmp_path):
    given = tmp_path / "video.mp4"
    given.write_bytes(b"a" * 70_000 + b"\x00")  # text for the first 64 KiB, binary after
    with pytest.raises(ConfigError, match="NUL byte at offset 70000"):
        list_image_sources(given)


def test_an_image_under_another_suffix_is_one_image(tmp_path):
    tiff = tmp_path / "figure.tif"
    on_white(figure_rgba()).save(tiff)
    bare = tmp_path / "download"
    figure_rgba().save(bare, format="PNG")
    for path in (tiff, bare):
        [source] = list_image_sources(path)
        assert source.path == path and source.sample_id == path.name and source.problem is None


def test_a_list_file_with_a_byte_order_mark_reads_its_first_path(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes("\ufeffa.png\r\n# comment\r\nb.png\r\n".encode())
    assert [s.sample_id for s in list_image_sources(listing)] == ["a.png", "b.png"]


@pytest.fixture
def tangled(tmp_path) -> Path:
    """A folder with an image, a link to another image folder, two symbolic link loops
    and a broken link."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    on_white(figure_rgba(seed=1)).save(folder / "a.png")
    other = tmp_path / "elsewhere"
    other.mkdir()
    on_white(figure_rgba(seed=2)).save(other / "b.png")
    os.symlink(other, folder / "linked")
    os.symlink(folder, folder / "loop")
    os.symlink("..", folder / "sub" / "up")
    os.symlink(folder / "gone.png", folder / "broken.png")
    return folder


def test_links_are_followed_and_loops_and_broken_links_are_failed_entries(tangled):
    sources = {s.sample_id: s for s in list_image_sources(tangled)}
    assert list(sources) == ["a.png", "broken.png", "linked/b.png", "loop", "sub/up"]
    assert sources["a.png"].problem is None and sources["linked/b.png"].problem is None
    assert sources["loop"].problem == f"symbolic link loop: it leads back to {tangled.resolve()}"
    assert sources["sub/up"].problem == f"symbolic link loop: it leads back to {tangled.resolve()}"
    assert (
        sources["broken.png"].problem
        == f"broken symbolic link (its target {tangled / 'gone.png'} does not exist)"
    )


def test_an_unlistable_sub_folder_is_a_failed_entry(tangled, monkeypatch):
    # What chmod 000 does to a user; root reads any folder, so the refusal is injected here
    # and tested for real below when the tests do not run as root.
    locked = tangled / "locked"
    locked.mkdir()
    real = os.scandir

    def refusing(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", refusing)
    sources = {s.sample_id: s for s in list_image_sources(tangled)}
    assert sources["locked"].problem == "cannot list this folder (Permission denied)"
    monkeypatch.setattr(os, "scandir", lambda path: refusing(locked))
    with pytest.raises(ConfigError, match=rf"{tangled}: cannot list this folder \(Permission denied\)"):
        list_image_sources(tangled)


@pytest.mark.usefixtures("one_torch_thread")
def test_generate_and_inspect_list_loops_and_unreadable_folders_as_failed(tangled, tiny_model_dir, tmp_path):
    locked = tangled / "locked"
    locked.mkdir()
    on_white(figure_rgba(seed=3)).save(locked / "c.png")
    locked.chmod(0)
    try:
        unreadable = not os.access(locked, os.R_OK)
        out = tmp_path / "c.zarr"
        result = generate(tangled, tiny_model_dir, out)
        inspected = CliRunner().invoke(app, ["inspect", str(out)])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 0, result.output
    done, failed = (2, 4) if unreadable else (3, 3)
    assert f"{done} done now, {failed} failed" in result.output
    expected = [
        f"loop: {tangled / 'loop'}: symbolic link loop: it leads back to {tangled.resolve()}",
        f"sub/up: {tangled / 'sub' / 'up'}: symbolic link loop: it leads back to {tangled.resolve()}",
        f"broken.png: {tangled / 'broken.png'}: broken symbolic link",
    ]
    if unreadable:
        expected.append(f"locked: {locked}: cannot list this folder (Permission denied)")
    else:
        assert "locked/c.png" not in result.output  # read like any image: neither failed nor lost
    for line in expected:
        assert f"failed     {line}" in result.output, result.output
        assert f"  {line}" in inspected.output, inspected.output
    if os.geteuid() == 0 and not unreadable:
        pytest.skip("running as root: chmod 000 does not stop root from listing a folder")
