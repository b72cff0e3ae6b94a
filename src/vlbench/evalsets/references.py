"""Procedural reference images: palettes, patterns, gradients and textures, made by code (numpy + PIL).

Each generator is a small pure function of (size, rng) -> uint8 [H, W, 3]. They are deterministic: a
fixed seed per image (its position in REFERENCES) with numpy's default_rng, so the same pixels come out
on every machine. They give the references a style (colour, texture, pattern) with little nameable
content, which is what "keeps the reference's style" should be tested on; the content-leak metric then
shows whether a pattern is copied rather than its look.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

SIZE = 512

Palette = list[tuple[int, int, int]]
WARM: Palette = [(122, 28, 36), (196, 69, 54), (233, 140, 62), (245, 203, 112), (250, 236, 196)]
COOL: Palette = [(16, 42, 67), (27, 94, 122), (62, 150, 160), (146, 201, 190), (226, 240, 232)]
EARTH: Palette = [(60, 45, 34), (110, 84, 58), (158, 130, 88), (196, 179, 130), (120, 132, 92)]
NEON: Palette = [(12, 10, 30), (255, 44, 140), (0, 230, 255), (250, 245, 90), (120, 60, 255)]


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (y, x), each [size, size]."""
    c = (np.arange(size) + 0.5) / size
    return np.meshgrid(c, c, indexing="ij")


def _ramp(t: np.ndarray, palette: Palette) -> np.ndarray:
    """Map t in [0, 1] through a palette by linear interpolation between its colours -> [H, W, 3] float."""
    stops = np.linspace(0.0, 1.0, len(palette))
    cols = np.array(palette, dtype=np.float64)
    t = np.clip(t, 0.0, 1.0)
    return np.stack([np.interp(t, stops, cols[:, k]) for k in range(3)], axis=-1)


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def value_noise(size: int, rng: np.random.Generator, octaves: int = 5, base: int = 4) -> np.ndarray:
    """Fractal value noise in [0, 1]: random lattices upsampled bilinearly, halving amplitude per octave."""
    y, x = _grid(size)
    total = np.zeros((size, size))
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        n = base * 2**o
        lattice = rng.random((n + 1, n + 1))
        gy, gx = y * n, x * n
        iy, ix = np.floor(gy).astype(int), np.floor(gx).astype(int)
        fy, fx = gy - iy, gx - ix
        fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep
        a, b = lattice[iy, ix], lattice[iy, ix + 1]
        c, d = lattice[iy + 1, ix], lattice[iy + 1, ix + 1]
        total += amp * ((a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy)
        norm += amp
        amp /= 2
    return total / norm


# ---- the generators: (size, rng) -> uint8 [size, size, 3] ----
def palette_bands(palette: Palette) -> Callable:
    def make(size: int, rng: np.random.Generator) -> np.ndarray:
        _, x = _grid(size)
        idx = np.minimum((x * len(palette)).astype(int), len(palette) - 1)
        return np.array(palette, dtype=np.uint8)[idx]
    return make


def checkerboard(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    cells = ((np.floor(y * 8) + np.floor(x * 8)) % 2)[..., None]
    return _u8(cells * np.array(WARM[1]) + (1 - cells) * np.array(WARM[4]))


def rings(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    r = np.hypot(y - 0.5, x - 0.5)
    return _u8(_ramp(0.5 + 0.5 * np.sin(r * 2 * np.pi * 10), COOL))


def diagonal_stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    t = np.floor((x + y) * 12) % len(NEON)
    return np.array(NEON, dtype=np.uint8)[t.astype(int)]


def sunset_gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    return _u8(_ramp(1 - np.hypot(y - 1.0, x - 0.5) / 1.2, [(30, 20, 70), *WARM[1:]]))


def linear_gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    y, _ = _grid(size)
    return _u8(_ramp(y, [COOL[0], COOL[2], EARTH[3]]))


def clouds(size: int, rng: np.random.Generator) -> np.ndarray:
    return _u8(_ramp(value_noise(size, rng), [(70, 110, 170), (150, 185, 225), (245, 245, 250)]))


def voronoi(size: int, rng: np.random.Generator) -> np.ndarray:
    """Stained-glass cells: each pixel takes its nearest seed's colour, dark leading between cells."""
    y, x = _grid(size)
    seeds = rng.random((40, 2))
    palette = np.array(WARM + COOL + NEON[1:], dtype=np.float64)
    colours = palette[rng.integers(0, len(palette), 40)]
    d = (y[..., None] - seeds[:, 0]) ** 2 + (x[..., None] - seeds[:, 1]) ** 2  # [H, W, 40]
    order = np.argsort(d, axis=-1)
    nearest, second = order[..., 0], order[..., 1]
    gap = np.sqrt(np.take_along_axis(d, second[..., None], -1)[..., 0]) - np.sqrt(
        np.take_along_axis(d, nearest[..., None], -1)[..., 0])
    lead = (gap < 0.006)[..., None]
    return _u8(np.where(lead, 25.0, colours[nearest]))


def wood(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    n = value_noise(size, rng, octaves=3)
    r = np.hypot((y - 0.5) * 0.35, x + 0.3) * 18 + 3.0 * n
    return _u8(_ramp(0.5 + 0.5 * np.sin(2 * np.pi * r), EARTH[:4]))


def marble(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    n = value_noise(size, rng, octaves=6)
    t = 0.5 + 0.5 * np.sin((x * 6 + y * 2 + 5 * n) * np.pi)
    return _u8(_ramp(t ** 3, [(240, 238, 232), (190, 190, 196), (60, 64, 80)]))


def halftone(size: int, rng: np.random.Generator) -> np.ndarray:
    """Dots on a grid whose radius follows a diagonal gradient (a print halftone)."""
    y, x = _grid(size)
    cells = 24
    cy, cx = (np.floor(y * cells) + 0.5) / cells, (np.floor(x * cells) + 0.5) / cells
    radius = (0.1 + 0.8 * (cx + cy) / 2) * 0.5 / cells
    dot = (np.hypot(y - cy, x - cx) < radius)[..., None]
    return _u8(np.where(dot, np.array(NEON[1], float), np.array((250, 244, 230), float)))


def brush_strokes(size: int, rng: np.random.Generator) -> np.ndarray:
    """Impressionist dabs: short oriented ellipses of palette colours over a toned ground."""
    img = np.ones((size, size, 3)) * np.array(EARTH[3], float)
    y, x = _grid(size)
    angle = value_noise(size, rng, octaves=2) * np.pi
    palette = np.array(WARM + COOL[1:3], float)
    for _ in range(500):
        cy, cx = rng.random(2)
        iy, ix = min(int(cy * size), size - 1), min(int(cx * size), size - 1)
        a = angle[iy, ix]
        dy, dx = y - cy, x - cx
        u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
        mask = (u / 0.05) ** 2 + (v / 0.012) ** 2 < 1
        img[mask] = palette[rng.integers(0, len(palette))]
    return _u8(img)


# name -> (generator, description). The order fixes each image's seed: never reorder, only append.
REFERENCES: dict[str, tuple[Callable, str]] = {
    "palette-warm": (palette_bands(WARM), "five vertical bands of a warm palette (crimson to cream)"),
    "voronoi-glass": (voronoi, "stained-glass cells with dark leading"),
    "checkerboard": (checkerboard, "an 8×8 two-colour checkerboard"),
    "sunset-gradient": (sunset_gradient, "a radial sunset gradient, violet to gold"),
    "clouds": (clouds, "fractal value-noise clouds in sky blues"),
    "marble": (marble, "grey-veined white marble"),
    "palette-cool": (palette_bands(COOL), "five vertical bands of a cool palette (navy to mint)"),
    "rings": (rings, "concentric rings in cool tones"),
    "diagonal-stripes": (diagonal_stripes, "diagonal stripes in neon colours on near-black"),
    "wood-grain": (wood, "wood grain in earth tones"),
    "halftone": (halftone, "pink halftone dots growing along a diagonal"),
    "brush-strokes": (brush_strokes, "impressionist brush dabs of warm and cool colours"),
}


def render(name: str, size: int = SIZE) -> np.ndarray:
    """The pixels of one procedural reference: uint8 [size, size, 3], the same on every machine."""
    make, _ = REFERENCES[name]
    rng = np.random.default_rng([15, list(REFERENCES).index(name)])
    img = make(size, rng)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8, name
    return img
