"""modules/images.py: image_grid and draw_grid_annotations (rows x cols grid; labels above the
columns and left of the rows), GridAnnotation."""

import math

from PIL import Image, ImageDraw


def image_grid(imgs, batch_size=1, rows=None):
    rows = rows or max(1, round(math.sqrt(len(imgs))))
    rows = min(rows, len(imgs))
    cols = math.ceil(len(imgs) / rows)
    w, h = map(max, zip(*(img.size for img in imgs)))
    grid = Image.new("RGB", size=(cols * w, rows * h), color="white")
    for i, img in enumerate(imgs):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


class GridAnnotation:
    def __init__(self, text="", is_active=True):
        self.text = text
        self.is_active = is_active
        self.size = None


def draw_grid_annotations(im, width, height, hor_texts, ver_texts, margin=0):
    pad_left = 0 if sum(len(t) for t in ver_texts) == 0 else width * 3 // 4
    pad_top = 0 if sum(len(t) for t in hor_texts) == 0 else 24
    result = Image.new("RGB", (im.width + pad_left, im.height + pad_top), "white")
    result.paste(im, (pad_left, pad_top))
    draw = ImageDraw.Draw(result)
    for col, texts in enumerate(hor_texts):
        draw.text((pad_left + col * width + 2, 2), " ".join(t.text for t in texts), fill="black")
    for row, texts in enumerate(ver_texts):
        draw.text((2, pad_top + row * height + height // 2), " ".join(t.text for t in texts), fill="black")
    return result
