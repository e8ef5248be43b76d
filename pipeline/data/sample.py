"""Stage ``sample``: a deterministic synthetic detection dataset written as Pascal VOC.

Each image has a varied background (flat, gradient or noisy), unlabelled clutter (lines, dots,
rings), and 1..``max_objects`` labelled filled shapes at small, medium and large scale (COCO's
area buckets: < 32², < 96², >= 96² pixels), which may overlap. Every image is drawn from its own
random generator seeded by ``(seed, index)``, so the output depends only on the params.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.core.files import staged_output
from pipeline.core.params import SampleParams
from pipeline.core.records import ObjectAnnotation

#: Side length ranges (fraction of the image side) per COCO size bucket, with their weights.
SCALES = {"small": (0.06, 0.12), "medium": (0.14, 0.34), "large": (0.40, 0.60)}
SCALE_WEIGHTS = (0.35, 0.45, 0.20)
MAX_OVERLAP_IOU = 0.3
MIN_CONTRAST = 120.0
#: At most this fraction of an earlier object's box may be covered by a later object.
MAX_COVERED = 0.25


@dataclass(frozen=True)
class SampleImage:
    """One generated image and its labelled objects."""

    name: str
    image: Image.Image
    objects: tuple[ObjectAnnotation, ...]


def generate(params: SampleParams, output_dir: Path) -> dict[str, list[str]]:
    """Write the dataset to ``output_dir`` (replacing it atomically); return the split lists."""
    with staged_output(output_dir) as staging:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (staging / sub).mkdir(parents=True)
        for index in range(params.num_images):
            write_voc_image(draw_image(params, index), staging)
        splits = split_names(params)
        write_split_lists(splits, staging / "ImageSets" / "Main")
    return splits


def image_name(index: int) -> str:
    return f"sample_{index:06d}"


def split_names(params: SampleParams) -> dict[str, list[str]]:
    """Deterministic train/val/test lists from the fractions in params."""
    order = np.random.default_rng(params.seed).permutation(params.num_images)
    n_test = round(params.num_images * params.test_fraction)
    n_val = round(params.num_images * params.val_fraction)
    groups = {"test": order[:n_test], "val": order[n_test : n_test + n_val]}
    groups["train"] = order[n_test + n_val :]
    return {split: [image_name(i) for i in sorted(idx)] for split, idx in groups.items()}


def write_split_lists(splits: dict[str, list[str]], directory: Path) -> None:
    for split, names in splits.items():
        (directory / f"{split}.txt").write_text("".join(n + "\n" for n in names))
    trainval = sorted(splits["train"] + splits["val"])
    (directory / "trainval.txt").write_text("".join(n + "\n" for n in trainval))


def draw_image(params: SampleParams, index: int) -> SampleImage:
    """Draw image ``index``: background, clutter, then the labelled shapes."""
    rng = np.random.default_rng([params.seed, index])
    size = params.image_size
    image = draw_background(rng, size)
    draw_clutter(rng, ImageDraw.Draw(image), size)
    objects = []
    for _ in range(int(rng.integers(1, params.max_objects + 1))):
        placed = place_object(rng, params.classes, size, objects)
        if placed is not None:
            draw_shape(ImageDraw.Draw(image), placed, contrasting_color(rng, image, placed))
            objects.append(placed)
    return SampleImage(image_name(index), image, tuple(objects))


def draw_background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.choice(["flat", "gradient", "noise"])
    base = rng.uniform(30, 225, size=3)
    if kind == "flat":
        pixels = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "gradient":
        ramp = np.linspace(-1.0, 1.0, size)[:, None, None]
        pixels = base + ramp * rng.uniform(-60, 60, size=3)
        pixels = np.broadcast_to(pixels, (size, size, 3)) if rng.random() < 0.5 else pixels
        pixels = np.broadcast_to(pixels, (size, size, 3)).copy()
        if rng.random() < 0.5:
            pixels = pixels.transpose(1, 0, 2)
    else:
        pixels = base + rng.normal(0, 25, size=(size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(1)) if kind == "noise" else image


def draw_clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, size: int) -> None:
    """Unlabelled distractors: thin lines, dots and hollow rings."""
    for _ in range(int(rng.integers(2, 9))):
        kind = rng.choice(["line", "dot", "ring"])
        x, y = rng.uniform(0, size, 2)
        color = random_color(rng)
        if kind == "line":
            x2, y2 = rng.uniform(0, size, 2)
            draw.line([x, y, x2, y2], fill=color, width=int(rng.integers(1, 3)))
        elif kind == "dot":
            r = rng.uniform(1, 3)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            r = rng.uniform(4, size * 0.08)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=color, width=1)


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def contrasting_color(rng: np.random.Generator, image: Image.Image, box: ObjectAnnotation
                      ) -> tuple[int, int, int]:
    """A random colour at least MIN_CONTRAST (RGB distance) from the mean colour under ``box``.

    Labelled objects must be visible: an object the colour of its background is noise in the
    labels, not difficulty. Clutter stays unconstrained.
    """
    region = image.crop((box.xmin, box.ymin, box.xmax, box.ymax))
    background = np.asarray(region, dtype=float).reshape(-1, 3).mean(axis=0)
    color = random_color(rng)
    for _ in range(20):
        if np.linalg.norm(np.asarray(color) - background) >= MIN_CONTRAST:
            break
        color = random_color(rng)
    return color


def place_object(
    rng: np.random.Generator, classes: tuple[str, ...], size: int, existing: list
) -> ObjectAnnotation | None:
    """A box of random class and scale that overlaps earlier boxes by at most MAX_OVERLAP_IOU."""
    label = str(rng.choice(classes))
    scale = str(rng.choice(list(SCALES), p=SCALE_WEIGHTS))
    for _ in range(20):
        side = rng.uniform(*SCALES[scale]) * size
        w, h = side * rng.uniform(0.8, 1.25), side
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        box = ObjectAnnotation(label, round(x0), round(y0), round(x0 + w), round(y0 + h))
        if all(acceptable_overlap(box, other) for other in existing):
            return box
    return None


def acceptable_overlap(new: ObjectAnnotation, earlier: ObjectAnnotation) -> bool:
    """Overlaps are wanted, hidden objects are not: ``new`` is drawn on top of ``earlier``."""
    covered = intersection(new, earlier) / earlier.area if earlier.area else 1.0
    return iou(new, earlier) <= MAX_OVERLAP_IOU and covered <= MAX_COVERED


def intersection(a: ObjectAnnotation, b: ObjectAnnotation) -> float:
    ix = max(0.0, min(a.xmax, b.xmax) - max(a.xmin, b.xmin))
    iy = max(0.0, min(a.ymax, b.ymax) - max(a.ymin, b.ymin))
    return ix * iy


def iou(a: ObjectAnnotation, b: ObjectAnnotation) -> float:
    inter = intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def draw_shape(draw: ImageDraw.ImageDraw, box: ObjectAnnotation, color: tuple) -> None:
    """Fill the shape named by ``box.label`` so that it touches all four sides of the box."""
    x0, y0, x1, y1 = box.xmin, box.ymin, box.xmax - 1, box.ymax - 1
    outline = tuple(255 - c for c in color)
    if box.label == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=color, outline=outline)
    elif box.label == "square":
        draw.rectangle([x0, y0, x1, y1], fill=color, outline=outline)
    else:
        draw.polygon(shape_polygon(box.label, x0, y0, x1, y1), fill=color, outline=outline)


def shape_polygon(label: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple]:
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if label == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if label == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if label == "cross":
        a, b = w / 6, h / 6
        return [(cx - a, y0), (cx + a, y0), (cx + a, cy - b), (x1, cy - b), (x1, cy + b),
                (cx + a, cy + b), (cx + a, y1), (cx - a, y1), (cx - a, cy + b), (x0, cy + b),
                (x0, cy - b), (cx - a, cy - b)]
    if label == "star":
        return star_polygon(x0, y0, x1, y1)
    raise ValueError(f"unknown shape {label!r}")


def star_polygon(x0: float, y0: float, x1: float, y1: float) -> list[tuple]:
    """A five-pointed star scaled to fill the box exactly."""
    angles = [math.pi / 2 + k * math.pi / 5 for k in range(10)]
    radii = [1.0 if k % 2 == 0 else 0.45 for k in range(10)]
    pts = [(r * math.cos(a), -r * math.sin(a)) for r, a in zip(radii, angles)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    sx, sy = (x1 - x0) / (max(xs) - min(xs)), (y1 - y0) / (max(ys) - min(ys))
    return [(x0 + (px - min(xs)) * sx, y0 + (py - min(ys)) * sy) for px, py in pts]


def write_voc_image(sample: SampleImage, root: Path) -> None:
    """Write the JPEG and its Pascal VOC XML annotation."""
    filename = sample.name + ".jpg"
    sample.image.save(root / "JPEGImages" / filename, quality=92)
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    size = ET.SubElement(ann, "size")
    for tag, value in zip(("width", "height", "depth"), (*sample.image.size, 3)):
        ET.SubElement(size, tag).text = str(value)
    for obj in sample.objects:
        node = ET.SubElement(ann, "object")
        ET.SubElement(node, "name").text = obj.label
        ET.SubElement(node, "difficult").text = "0"
        ET.SubElement(node, "truncated").text = "0"
        bnd = ET.SubElement(node, "bndbox")
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(bnd, tag).text = str(int(getattr(obj, tag)))
    ET.indent(ann)
    ET.ElementTree(ann).write(root / "Annotations" / (sample.name + ".xml"), encoding="utf-8")
