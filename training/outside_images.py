"""Images that are none of the three kinds the models read, made offline and deterministically.

Every image is a function of (family, split, index): the same call gives the same pixels on every
machine, and nothing is downloaded. The sources are what the project's own dependencies ship:
fonts bundled in matplotlib's wheel (DejaVu, STIX, Computer Modern), scikit-image's, scikit-learn's
and matplotlib's bundled sample photos, pydicom's and matplotlib's bundled CT/MR test images, and
procedural noise and shapes drawn with NumPy and Pillow.

Two splits keep what a gate is fitted on apart from what its refusal rate is measured on:

- `fit`: seeds from one range; document fonts from FIT_FONTS; photos from FIT_PHOTOS; scans
  from FIT_SCANS.
- `measure`: other seeds; the held-out fonts (MEASURE_FONTS), photos and scans; and whole families
  never used for fitting (MEASURE_ONLY: charts rendered with matplotlib, receipts), so the measured
  rate says how the gate generalises, not how well it remembers.

The other two tasks' genuine images (a chest X-ray sent as a skin lesion) are not made here: they
are read from those models' split.csv rows by training.gate.
"""

from __future__ import annotations

import functools
import io
import random
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Raise when a generator's pixels change: cached features of outside images are keyed by it.
VERSION = 1
SPLITS = ("fit", "measure")
# Families a gate is fitted on (their measure split uses other seeds and held-out sources) ...
FIT_FAMILIES = ("document", "form", "screenshot", "shapes", "noise", "photo", "scan")
# ... and families that only ever measure.
MEASURE_ONLY = ("chart", "receipt")
FAMILIES = FIT_FAMILIES + MEASURE_ONLY

FIT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Italic.ttf",
             "STIXGeneral.ttf", "DejaVuSansMono.ttf", "cmr10.ttf")
MEASURE_FONTS = ("DejaVuSans-Oblique.ttf", "DejaVuSerif-Bold.ttf", "STIXGeneralBol.ttf", "cmss10.ttf",
                 "DejaVuSansMono-Bold.ttf", "cmtt10.ttf")
# scikit-image samples that ship inside its wheel (the fetched ones would download).
FIT_PHOTOS = ("skimage:astronaut", "skimage:coffee", "skimage:chelsea", "skimage:rocket", "skimage:camera",
              "skimage:coins", "skimage:moon", "skimage:page", "skimage:text", "skimage:grass",
              "skimage:gravel", "skimage:brick", "skimage:immunohistochemistry", "skimage:retina",
              "skimage:hubble_deep_field", "skimage:colorwheel", "skimage:logo", "skimage:clock")
MEASURE_PHOTOS = ("sklearn:china.jpg", "sklearn:flower.jpg", "matplotlib:grace_hopper.jpg",
                  "skimage:horse", "skimage:cell", "skimage:microaneurysms", "skimage:stereo_motorcycle",
                  "skimage:checkerboard", "matplotlib:Minduka_Present_Blue_Pack.png")
# CT, MR, nuclear-medicine and ultrasound images ship with pydicom (its test files) and matplotlib.
FIT_SCANS = ("pydicom:CT_small.dcm", "pydicom:693_J2KI.dcm", "pydicom:MR_small.dcm", "pydicom:JPEG2000.dcm",
             "pydicom:examples_palette.dcm")
MEASURE_SCANS = ("pydicom:examples_overlay.dcm", "pydicom:examples_ybr_color.dcm", "matplotlib:s1045.ima.gz")

WORDS = (
    "patient", "report", "invoice", "total", "amount", "date", "name", "address", "phone", "email",
    "account", "balance", "payment", "order", "number", "item", "quantity", "price", "tax", "summary",
    "results", "page", "section", "table", "figure", "appendix", "meeting", "agenda", "notes",
    "project", "status", "review", "approved", "pending", "delivery", "reference", "signature", "the",
    "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "at", "from", "this", "that", "be",
    "are", "was", "were", "it", "an", "or"
)


def _seed(family: str, split: str, index: int) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    # A stable hash (Python's hash() of a str changes per process).
    return zlib.crc32(f"{family}/{split}/{index}".encode())


@functools.cache
def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.cache
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_dir() / name), size)


def _fonts(split: str) -> tuple[str, ...]:
    return FIT_FONTS if split == "fit" else MEASURE_FONTS


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _paper(rng: random.Random) -> tuple[int, int, int]:
    return rng.choice([(255, 255, 255), (250, 247, 238), (245, 245, 245), (255, 253, 245), (236, 240, 244),
                       (30, 30, 34), (255, 255, 230)])


def _ink(background: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    dark = sum(background) < 300
    base = rng.randint(200, 255) if dark else rng.randint(0, 70)
    return (base, base, min(255, base + rng.randint(0, 40)))


def document(split: str, rng: random.Random) -> Image.Image:
    """A page of text: title, paragraphs in one to three columns, sometimes a table or a rule."""
    width = rng.choice([420, 500, 600, 700])
    height = int(width * rng.choice([1.414, 1.29, 0.75, 1.0]))
    paper = _paper(rng)
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    fonts = _fonts(split)
    body = _font(rng.choice(fonts), rng.randint(9, 16))
    title = _font(rng.choice(fonts), rng.randint(18, 30))
    ink = _ink(paper, rng)
    margin = rng.randint(15, 60)
    y = margin
    draw.text((margin, y), _sentence(rng, rng.randint(2, 5)).title(), font=title, fill=ink)
    y += title.size + rng.randint(8, 20)
    columns = rng.choice([1, 1, 2, 3])
    column_width = (width - 2 * margin) // columns
    line = body.size + rng.randint(2, 6)
    for column in range(columns):
        x, yy = margin + column * column_width, y
        while yy < height - margin - line:
            if rng.random() < 0.08:          # paragraph break
                yy += line
                continue
            if rng.random() < 0.03:          # a table
                rows, cells = rng.randint(2, 6), rng.randint(2, 4)
                cell_width = (column_width - 10) // cells
                for r in range(rows):
                    for c in range(cells):
                        box = (x + c * cell_width, yy + r * line,
                               x + (c + 1) * cell_width, yy + (r + 1) * line)
                        draw.rectangle(box, outline=ink)
                        draw.text((box[0] + 2, box[1] + 1), rng.choice(WORDS), font=body, fill=ink)
                yy += (rows + 1) * line
                continue
            text = _sentence(rng, 12)
            while text and draw.textlength(text, font=body) > column_width - 10:
                text = text.rsplit(" ", 1)[0]
            draw.text((x, yy), text, font=body, fill=ink)
            yy += line
    return image


def form(split: str, rng: random.Random) -> Image.Image:
    """A form: labelled fields with boxes or underlines, checkboxes, a header band, a signature line."""
    width, height = rng.choice([(500, 700), (600, 800), (640, 480), (480, 640)])
    paper = _paper(rng)
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    fonts = _fonts(split)
    font = _font(rng.choice(fonts), rng.randint(10, 15))
    ink = _ink(paper, rng)
    accent = tuple(rng.randint(0, 255) for _ in range(3))
    band = rng.randint(30, 70)
    draw.rectangle((0, 0, width, band), fill=accent)
    draw.text((15, band // 3), _sentence(rng, 3).upper(), font=_font(rng.choice(fonts), 18),
              fill=(255, 255, 255))
    y = band + 20
    while y < height - 60:
        label = _sentence(rng, rng.randint(1, 3)).capitalize() + ":"
        draw.text((20, y), label, font=font, fill=ink)
        x0 = 30 + int(draw.textlength(label, font=font))
        kind = rng.random()
        if kind < 0.4:
            draw.rectangle((x0, y - 3, width - 20, y + font.size + 4), outline=ink)
        elif kind < 0.7:
            draw.line((x0, y + font.size + 2, width - 20, y + font.size + 2), fill=ink)
        else:
            for k in range(rng.randint(2, 4)):
                bx = x0 + k * 90
                draw.rectangle((bx, y, bx + 12, y + 12), outline=ink)
                if rng.random() < 0.4:
                    draw.line((bx, y, bx + 12, y + 12), fill=ink, width=2)
                draw.text((bx + 16, y - 1), rng.choice(WORDS), font=font, fill=ink)
        y += font.size + rng.randint(14, 30)
    draw.line((20, height - 30, width // 2, height - 30), fill=ink)
    return image


def screenshot(split: str, rng: random.Random) -> Image.Image:
    """An application window: title bar, toolbar, sidebar, panels with text, buttons and icons."""
    width, height = rng.choice([(800, 500), (640, 480), (1024, 640), (360, 720), (720, 720)])
    dark = rng.random() < 0.3
    background = (32, 33, 36) if dark else rng.choice([(255, 255, 255), (243, 243, 243), (248, 249, 250)])
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    fonts = _fonts(split)
    font = _font(rng.choice(fonts), rng.randint(10, 14))
    ink = (230, 230, 230) if dark else (30, 30, 30)
    accent = tuple(rng.randint(0, 255) for _ in range(3))
    bar = rng.randint(24, 40)
    draw.rectangle((0, 0, width, bar), fill=accent if rng.random() < 0.5 else (60, 60, 60))
    for k in range(3):
        draw.ellipse((8 + k * 18, bar // 2 - 5, 18 + k * 18, bar // 2 + 5),
                     fill=[(255, 95, 86), (255, 189, 46), (39, 201, 63)][k])
    draw.text((70, bar // 2 - 7), _sentence(rng, 3), font=font, fill=(255, 255, 255))
    side = rng.choice([0, 120, 180, 220]) if width > 500 else 0
    if side:
        draw.rectangle((0, bar, side, height), fill=(45, 45, 48) if dark else (230, 232, 236))
        for k in range(bar + 15, height - 20, 28):
            draw.text((15, k), _sentence(rng, rng.randint(1, 2)), font=font, fill=ink)
    y = bar + 15
    while y < height - 40:
        x = side + 15
        kind = rng.random()
        if kind < 0.3:     # a row of buttons
            while x < width - 100:
                w = rng.randint(60, 120)
                colour = accent if rng.random() < 0.4 else ((70, 70, 75) if dark else (220, 220, 224))
                draw.rounded_rectangle((x, y, x + w, y + 26), radius=rng.randint(0, 12), fill=colour)
                draw.text((x + 8, y + 6), rng.choice(WORDS), font=font, fill=ink)
                x += w + 10
            y += 40
        elif kind < 0.5:   # a card with an image placeholder
            h = rng.randint(60, 140)
            draw.rounded_rectangle((x, y, width - 15, y + h), radius=8, outline=(120, 120, 120),
                                   fill=(50, 50, 55) if dark else (255, 255, 255))
            draw.rectangle((x + 10, y + 10, x + 10 + h - 20, y + h - 10),
                           fill=tuple(rng.randint(0, 255) for _ in range(3)))
            draw.text((x + h, y + 12), _sentence(rng, 4), font=font, fill=ink)
            y += h + 12
        else:              # list rows
            for _ in range(rng.randint(2, 6)):
                draw.text((x, y), _sentence(rng, rng.randint(3, 9)), font=font, fill=ink)
                y += font.size + 10
            draw.line((x, y, width - 15, y), fill=(128, 128, 128))
            y += 8
    return image


def receipt(split: str, rng: random.Random) -> Image.Image:
    """A till receipt (measure only): a narrow strip of monospaced lines, prices, a total."""
    width, height = rng.randint(220, 320), rng.randint(500, 800)
    image = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    font = _font(rng.choice(("DejaVuSansMono.ttf", "cmtt10.ttf", "DejaVuSansMono-Bold.ttf")),
                 rng.randint(10, 13))
    y = 15
    draw.text((width // 4, y), _sentence(rng, 2).upper(), font=font, fill=(20, 20, 20))
    y += 30
    while y < height - 60:
        item = _sentence(rng, rng.randint(1, 2))[:18]
        draw.text((10, y), f"{item:<18}{rng.randint(1, 999) / 10:>8.2f}", font=font, fill=(20, 20, 20))
        y += font.size + 5
    draw.text((10, height - 40), f"TOTAL {rng.randint(100, 9999) / 10:>12.2f}", font=font, fill=(0, 0, 0))
    return image


def chart(split: str, rng: random.Random) -> Image.Image:
    """A matplotlib chart (measure only): lines, bars, scatter or pie, with axes and labels."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    np_rng = np.random.default_rng(rng.randrange(2**32))
    figure = Figure(figsize=(rng.uniform(4, 7), rng.uniform(3, 5)), dpi=80)
    axes = figure.subplots()
    kind = rng.choice(["line", "bar", "scatter", "pie", "hist"])
    if kind == "line":
        for _ in range(rng.randint(1, 4)):
            axes.plot(np.cumsum(np_rng.normal(size=50)))
    elif kind == "bar":
        axes.bar([rng.choice(WORDS) for _ in range(6)], np_rng.uniform(1, 10, 6))
    elif kind == "scatter":
        axes.scatter(np_rng.normal(size=200), np_rng.normal(size=200), c=np_rng.uniform(size=200), s=10)
    elif kind == "pie":
        axes.pie(np_rng.uniform(1, 5, 5), labels=[rng.choice(WORDS) for _ in range(5)])
    else:
        axes.hist(np_rng.normal(size=500), bins=30)
    axes.set_title(_sentence(rng, 3))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def shapes(split: str, rng: random.Random) -> Image.Image:
    """Coloured shapes (circles, ellipses, polygons, rectangles) on a plain, gradient or noisy ground."""
    size = rng.choice([224, 300, 400, 512])
    np_rng = np.random.default_rng(rng.randrange(2**32))
    ground = rng.random()
    if ground < 0.4:
        array = np.full((size, size, 3), [rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    elif ground < 0.7:
        ramp = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        a, b = np_rng.uniform(0, 255, 3), np_rng.uniform(0, 255, 3)
        array = np.broadcast_to(a + (b - a) * ramp, (size, size, 3)).copy()
    else:
        array = np_rng.normal(rng.randint(60, 200), rng.randint(5, 40), (size, size, 3))
    image = Image.fromarray(array.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 12)):
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        x, y = rng.randint(0, size), rng.randint(0, size)
        r = rng.randint(size // 20, size // 2)
        kind = rng.random()
        if kind < 0.4:
            draw.ellipse((x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r), fill=colour)
        elif kind < 0.7:
            draw.rectangle((x - r, y - r // 2, x + r, y + r), fill=colour)
        else:
            points = [(x + r * np.cos(t), y + r * np.sin(t))
                      for t in sorted(rng.uniform(0, 2 * np.pi) for _ in range(rng.randint(3, 7)))]
            draw.polygon(points, fill=colour)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1, 6)))
    return image


def noise(split: str, rng: random.Random) -> Image.Image:
    """Uniform, Gaussian, smoothed or salt-and-pepper noise, gradients, stripes, checkerboards, solids."""
    size = rng.choice([224, 256, 320])
    np_rng = np.random.default_rng(rng.randrange(2**32))
    grey = rng.random() < 0.5
    channels = 1 if grey else 3
    kind = rng.choice(["uniform", "gaussian", "smooth", "salt", "gradient", "stripes", "checker", "solid"])
    if kind == "uniform":
        array = np_rng.uniform(0, 255, (size, size, channels))
    elif kind == "gaussian":
        array = np_rng.normal(rng.randint(40, 215), rng.randint(10, 70), (size, size, channels))
    elif kind == "smooth":
        coarse = np_rng.uniform(0, 255, (rng.randint(3, 24),) * 2 + (channels,)).astype(np.uint8)
        image = Image.fromarray(coarse.squeeze(-1) if grey else coarse).resize((size, size),
                                                                              Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32).reshape(size, size, channels)
    elif kind == "salt":
        array = np.where(np_rng.uniform(size=(size, size, 1)) < rng.uniform(0.05, 0.5), 255.0, 0.0)
        array = np.repeat(array, channels, axis=-1)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / size
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy)
        ramp = (ramp - ramp.min()) / (np.ptp(ramp) or 1)
        a, b = np_rng.uniform(0, 255, channels), np_rng.uniform(0, 255, channels)
        array = a + (b - a) * ramp[..., None]
    elif kind == "stripes":
        period = rng.randint(4, 40)
        stripes = ((np.arange(size) // period) % 2 * 255.0)
        array = np.broadcast_to(stripes[None, :, None] if rng.random() < 0.5 else stripes[:, None, None],
                                (size, size, channels)).copy()
    elif kind == "checker":
        period = rng.randint(4, 56)
        yy, xx = np.mgrid[0:size, 0:size] // period
        array = np.repeat(((yy + xx) % 2 * 255.0)[..., None], channels, axis=-1)
    else:
        array = np.full((size, size, channels), np_rng.uniform(0, 255, channels))
    array = array.clip(0, 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if grey else array).convert("RGB")


def _to_rgb(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] not in (3, 4):
        array = array[array.shape[0] // 2]               # a 3-D stack: its middle slice
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        low, high = np.percentile(array, 0.5), np.percentile(array, 99.5)
        array = ((array - low) / ((high - low) or 1.0) * 255).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


@functools.cache
def _source(name: str) -> Image.Image:
    """One bundled sample image, by "package:name"."""
    package, _, item = name.partition(":")
    if package == "skimage":
        import skimage.data

        value = getattr(skimage.data, item)()
        return _to_rgb(value[0] if isinstance(value, tuple) else value)
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return _to_rgb(load_sample_image(item))
    if package == "matplotlib":
        import gzip

        import matplotlib.cbook

        path = Path(matplotlib.cbook.get_sample_data(item, asfileobj=False))
        if item == "s1045.ima.gz":    # raw 256x256 16-bit MR slice
            raw = np.frombuffer(gzip.decompress(path.read_bytes()), dtype="<u2").reshape(256, 256)
            return _to_rgb(raw)
        return _to_rgb(np.asarray(Image.open(path)))
    if package == "pydicom":
        import pydicom
        import pydicom.data

        dataset = pydicom.dcmread(pydicom.data.get_testdata_file(item))
        pixels = dataset.pixel_array
        if pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3):
            pixels = pixels[len(pixels) // 2]        # a multi-frame file: its middle frame
        return _to_rgb(pixels)
    raise ValueError(f"unknown sample source {name!r}")


def _variant(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop, flip, rotation and colour change of a sample image."""
    width, height = image.size
    scale = rng.uniform(0.35, 1.0)
    w, h = max(32, int(width * scale)), max(32, int(height * scale * rng.uniform(0.75, 1.33)))
    w, h = min(w, width), min(h, height)
    x, y = rng.randint(0, width - w), rng.randint(0, height - h)
    out = image.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:
        out = out.rotate(rng.choice([90, 180, 270]), expand=True)
    array = np.asarray(out, dtype=np.float32)
    if rng.random() < 0.3:
        array = np.repeat(array.mean(axis=-1, keepdims=True), 3, axis=-1)
    array = array * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30)
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def photo(split: str, rng: random.Random) -> Image.Image:
    return _variant(_source(rng.choice(FIT_PHOTOS if split == "fit" else MEASURE_PHOTOS)), rng)


def scan(split: str, rng: random.Random) -> Image.Image:
    """A CT, MR or dose slice: another modality, windowed and cropped differently each time."""
    image = _variant(_source(rng.choice(FIT_SCANS if split == "fit" else MEASURE_SCANS)), rng)
    return image.convert("L").convert("RGB") if rng.random() < 0.8 else image


GENERATORS: dict[str, Callable[[str, random.Random], Image.Image]] = {
    "document": document, "form": form, "screenshot": screenshot, "shapes": shapes, "noise": noise,
    "photo": photo, "scan": scan, "chart": chart, "receipt": receipt,
}


def make(family: str, split: str, index: int) -> Image.Image:
    """The `index`th image of `family` in `split` (the same pixels on every call and machine)."""
    if family not in GENERATORS:
        raise ValueError(f"unknown family {family!r}; families are {list(GENERATORS)}")
    if split == "fit" and family in MEASURE_ONLY:
        raise ValueError(f"{family!r} is a measure-only family: it never fits a gate")
    image = GENERATORS[family](split, random.Random(_seed(family, split, index)))
    return image.convert("RGB")


def families(split: str) -> tuple[str, ...]:
    return FIT_FAMILIES if split == "fit" else FAMILIES


def images(split: str, per_family: int) -> Iterator[tuple[str, int, Image.Image]]:
    """(family, index, image) for `per_family` images of every family of `split`."""
    for family in families(split):
        for index in range(per_family):
            yield family, index, make(family, split, index)
