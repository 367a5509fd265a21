"""Input images: every supported mode converts, every defect raises a clear error."""

import numpy as np
import pytest
from PIL import Image

from stages.errors import ConfigError, ImageLoadError
from stages.images import load_image, prepare_image, prepared_to_source, white_background_mask
from stages.sources import list_image_sources, sample_seed
from tests.fixtures.images import figure_rgba, write_bad_images, write_good_images


def test_every_good_mode_loads_with_a_plausible_mask(tmp_path):
    paths = write_good_images(tmp_path)
    reference = load_image(paths[0], 20, 10**8).mask.sum()
    for path in paths:
        loaded = load_image(path, 20, 10**8)
        assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (96, 96, 3)
        assert abs(int(loaded.mask.sum()) - int(reference)) < 0.15 * reference, path.name
        assert (loaded.rgb[~loaded.mask] == 255).all(), f"{path.name}: background not white"


def test_sixteen_bit_grey_is_rescaled_not_clipped(tmp_path):
    grey = np.full((40, 40), 255, dtype=np.uint16) * 257
    grey[10:30, 10:30] = 128 * 257
    Image.fromarray(grey).save(tmp_path / "g16.png")
    loaded = load_image(tmp_path / "g16.png", 20, 10**8)
    assert loaded.rgb[20, 20].tolist() == [128, 128, 128]
    assert loaded.mask[20, 20] and not loaded.mask[2, 2]


@pytest.mark.parametrize(
    "defect,message",
    [
        ("empty", "empty file"),
        ("truncated", "corrupt or truncated"),
        ("text", "not a readable image"),
        ("huge", "exceeds max_image_pixels"),
        ("blank", "no foreground"),
    ],
)
def test_bad_files_raise_errors_naming_the_file(tmp_path, defect, message):
    path = write_bad_images(tmp_path)[defect]
    with pytest.raises(ImageLoadError, match=message) as info:
        load_image(path, 20, 10_000_000)
    assert str(path) in str(info.value)


def test_prepare_centres_the_object_and_maps_back_to_source():
    img = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (150, 20, 190, 80))  # 40 x 60 box, centre (170, 50)
    path_like = img
    rgba = np.asarray(path_like)
    from stages.images import LoadedImage

    loaded = LoadedImage(rgba[..., :3].copy(), rgba[..., 3] > 0, "RGBA")
    prepared = prepare_image(loaded, 64, object_fraction=0.75)
    assert prepared.image.shape == (3, 64, 64) and prepared.mask.shape == (64, 64)
    assert prepared.crop_box.tolist() == [130.0, 10.0, 80.0]  # side = 60 / 0.75
    ys, xs = np.nonzero(prepared.mask)
    assert abs(xs.mean() + 0.5 - 32) < 1 and abs(ys.mean() + 0.5 - 32) < 1
    assert (ys.max() - ys.min() + 1) == pytest.approx(48, abs=2)  # 0.75 of 64
    centre = prepared_to_source(np.array([32.0, 32.0]), prepared.crop_box, 64)
    assert np.allclose(centre, [170, 50])
    # the part of the square outside the source image is white
    assert (prepared.image[:, :, -3:] == 255).all()


def test_white_background_mask():
    view = np.full((3, 20, 20), 255, dtype=np.uint8)
    view[:, 5:15, 5:15] = 40
    view[:, 0, 0] = 0  # an isolated dark pixel is noise
    mask = white_background_mask(view, 20)
    assert mask.dtype == np.uint8 and mask[10, 10] == 1 and mask[0, 0] == 0
    assert mask.sum() == pytest.approx(100, abs=8)


def test_sources_from_folder_list_file_and_single_image(tmp_path):
    write_good_images(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored")
    found = list_image_sources(tmp_path / "imgs")
    assert [s.sample_id for s in found] == [
        "grey.png",
        "nested/deep16.png",
        "nested/photo.webp",
        "palette.png",
        "rgb.jpg",
        "rgba.png",
    ]
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nimgs/rgba.png\n\nimgs/missing.png\n")
    listed = list_image_sources(listing)
    assert [s.sample_id for s in listed] == ["imgs/rgba.png", "imgs/missing.png"]
    assert listed[0].path == tmp_path / "imgs" / "rgba.png"
    figure_rgba().save(tmp_path / "one.png")
    assert [s.sample_id for s in list_image_sources(tmp_path / "one.png")] == ["one.png"]
    listing.write_text("a.png\na.png\n")
    with pytest.raises(ConfigError, match="list.txt:2"):
        list_image_sources(listing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        list_image_sources(tmp_path / "empty")


def test_sample_seed_depends_only_on_seed_and_id():
    assert sample_seed(0, "a.png") == sample_seed(0, "a.png")
    assert sample_seed(0, "a.png") != sample_seed(1, "a.png")
    assert sample_seed(0, "a.png") != sample_seed(0, "b.png")
    assert 0 <= sample_seed(7, "x") < 2**63
