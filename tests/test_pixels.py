"""Issue 26: a reference is read as the camera meant it (vlbench.pixels): upright per its EXIF orientation, and 8-bit
from its type's nominal range (16-bit 0-65535 -> 0-255, float 0-1 with values outside clipped and said once), never
stretched to its own min-max nor reduced to two values; a mode with no faithful reading is one line. Images here
are generated (numpy + PIL); the engine test runs the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlbench.engine.extract import load_reference
from vlbench.errors import UserError
from vlbench.pixels import ORIENTATIONS, as_rgb

# What a viewer does to show a stored image upright, per EXIF orientation; storing applies the inverse.
UPRIGHT = {2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
           5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE],
           8: [Image.Transpose.ROTATE_90]}
INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}


def _upright(size=(48, 32)) -> Image.Image:
    """An asymmetric picture: a red block top-left, a blue one bottom-right, a gradient elsewhere."""
    w, h = size
    x = np.linspace(0, 200, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 120, h, dtype=np.float64)[:, None].repeat(w, 1)
    a = np.stack([x, y, 255 - x], -1).astype(np.uint8)
    a[:6, :6] = (255, 0, 0)
    a[-6:, -6:] = (0, 0, 255)
    return Image.fromarray(a)


def _stored(upright: Image.Image, orientation: int, path, fmt: str = "PNG") -> Image.Image:
    """Save `upright` as a camera would: the pixels as the sensor read them, the orientation in EXIF."""
    stored = upright
    for op in UPRIGHT.get(orientation, []):
        stored = stored.transpose(INVERSE.get(op, op))
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format=fmt, exif=exif)
    return stored


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_reads_upright_and_says_what_it_did(tmp_path, orientation):
    upright = _upright()
    _stored(upright, orientation, tmp_path / "p.png")
    image, notes = load_reference(tmp_path / "p.png")
    assert image.mode == "RGB" and image.size == upright.size
    assert np.array_equal(np.asarray(image), np.asarray(upright))  # PNG: lossless, so exactly the upright pixels
    assert notes == ([ORIENTATIONS[orientation]] if orientation != 1 else [])


def test_a_phone_photo_with_orientation_6_reaches_the_vl_upright_and_the_record_says_so(engine, tmp_path):
    """A JPEG stored sideways (orientation 6): the VL reads the same pixels as the JPEG's own pixels turned upright
    and saved losslessly; source_sizes is the upright size; the record says 'rotated 90° per EXIF'."""
    from vlbench.engine.engine import Reference
    from vlbench.jobs import compact_conditioning
    from vlbench.recipe import Recipe

    upright = _upright((96, 64))  # landscape as meant; stored 64 wide, 96 tall
    _stored(upright, 6, tmp_path / "phone.jpg", "JPEG")
    with Image.open(tmp_path / "phone.jpg") as raw:
        assert raw.size == (64, 96)
        raw.convert("RGB").transpose(Image.Transpose.ROTATE_270).save(tmp_path / "turned.png")
    phone, turned = Reference.open(tmp_path / "phone.jpg"), Reference.open(tmp_path / "turned.png")
    assert phone.image.size == (96, 64) and phone.notes == ["rotated 90° per EXIF (clockwise)"] and turned.notes == []
    assert phone.cache_id != phone.sha256  # never served an extraction made from the sideways reading
    recipe = Recipe(tokens="image")
    a = engine.condition(recipe, "a fox", [phone])
    b = engine.condition(recipe, "a fox", [turned])
    assert a.embeds.shape == b.embeds.shape and bool((a.embeds == b.embeds).all())
    record = compact_conditioning(a)
    assert record["vl"]["source_sizes"] == [(96, 64)]
    assert record["warnings"] == [f"reference {tmp_path / 'phone.jpg'}: rotated 90° per EXIF (clockwise)"]
    assert compact_conditioning(b)["warnings"] == []


def _gradient16(h=4, w=256, top=65535) -> np.ndarray:
    return np.rint(np.linspace(0, top, h * w)).reshape(h, w).astype(np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_gradient_keeps_its_levels_from_the_nominal_range(tmp_path, fmt):
    data = _gradient16()
    Image.fromarray(data).save(tmp_path / f"g.{fmt.lower()}", format=fmt)
    image, notes = load_reference(tmp_path / f"g.{fmt.lower()}")
    got = np.asarray(image)
    assert got.shape == (4, 256, 3) and (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    expected = np.rint(data / 257.0).astype(np.uint8)
    assert np.abs(got[..., 0].astype(int) - expected).max() <= 1  # tolerance: one 8-bit level
    assert len(np.unique(got)) == 256  # every level of a full-range gradient, not {0, 255}
    assert notes == ["16-bit grey read as 8-bit (0–65535 → 0–255)"]


def test_a_dark_16_bit_image_stays_dark_never_stretched_to_its_own_range(tmp_path):
    data = _gradient16(top=1000)  # 0..1000 of 65535: under 4/255 of full scale
    Image.fromarray(data).save(tmp_path / "dark.png")
    got = np.asarray(load_reference(tmp_path / "dark.png")[0])
    assert got.max() <= 4 and got.min() == 0


def test_a_16_bit_pgm_read_by_pil_as_mode_i_is_16_bit(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], ">u2")
    (tmp_path / "a.pgm").write_bytes(b"P5\n4 1\n65535\n" + values.tobytes())
    with Image.open(tmp_path / "a.pgm") as raw:
        assert raw.mode == "I"
    got = np.asarray(load_reference(tmp_path / "a.pgm")[0])[0, :, 0]
    assert got.tolist() == [0, 1, 128, 255]


def test_a_float_tiff_in_0_1_keeps_its_levels(tmp_path):
    data = np.linspace(0, 1, 1024, dtype=np.float32).reshape(4, 256)
    Image.fromarray(data).save(tmp_path / "f.tif")
    image, notes = load_reference(tmp_path / "f.tif")
    got = np.asarray(image)[..., 0]
    assert np.abs(got.astype(float) - data * 255).max() <= 0.5 + 1e-6  # rounding only
    assert len(np.unique(got)) == 256 and notes == ["float grey read as 8-bit (0–1 → 0–255)"]


def test_float_values_outside_0_1_are_clipped_and_said_once(tmp_path):
    data = np.linspace(-0.5, 1.5, 1000, dtype=np.float32).reshape(10, 100)
    Image.fromarray(data).save(tmp_path / "f.tif")
    image, notes = load_reference(tmp_path / "f.tif")
    got = np.asarray(image)[..., 0]
    inside = (data >= 0) & (data <= 1)
    assert np.abs(got[inside].astype(float) - data[inside] * 255).max() <= 0.5 + 1e-6
    assert (got[data < 0] == 0).all() and (got[data > 1] == 255).all()
    outside = int((~inside).sum())
    assert len(notes) == 2 and notes[1] == f"{outside} of 1000 float samples outside 0–1 clipped (range -0.5 to 1.5)"


def test_a_float_image_with_nan_is_refused_in_one_line(tmp_path):
    data = np.full((4, 4), 0.5, np.float32)
    data[1, 1] = np.nan
    Image.fromarray(data).save(tmp_path / "nan.tif")
    with pytest.raises(UserError) as caught:
        load_reference(tmp_path / "nan.tif")
    assert caught.value.field == "image" and "NaN" in str(caught.value) and "\n" not in str(caught.value)


def test_a_32_bit_integer_tiff_is_refused_in_one_line(tmp_path):
    Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4) * 100000).save(tmp_path / "i32.tif")
    with pytest.raises(UserError) as caught:
        load_reference(tmp_path / "i32.tif")
    assert "32-bit integer image" in caught.value.problem and caught.value.value == str(tmp_path / "i32.tif")


def test_a_mode_pil_cannot_convert_is_refused_in_one_line():
    with pytest.raises(UserError) as caught:
        as_rgb(Image.new("La", (4, 4)), "x.tif")
    assert "colour mode La" in caught.value.problem and caught.value.fix


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "1", "LA"])
def test_ordinary_modes_read_as_pil_converts_them_with_no_note(mode):
    img = _upright().convert(mode)
    image, notes = as_rgb(img)
    assert notes == [] and np.array_equal(np.asarray(image), np.asarray(img.convert("RGB")))


def test_the_command_line_refuses_an_unreadable_mode_in_one_line(tmp_path, capsys):
    from vlbench.cli import main

    Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4)).save(tmp_path / "i32.tif")
    assert main(["embed", "--tiny", "--image", str(tmp_path / "i32.tif"), "--prompt", "p", "--out",
                 str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlbench: error: --image") and "32-bit integer image" in err and "\n" not in err
