"""Image grids and sample sheets: images in rows, each with its caption (wrapped) underneath."""

from __future__ import annotations

import math
import textwrap

from PIL import Image, ImageDraw, ImageFont


def image_grid(images: list[Image.Image], captions: list[str] | None = None, cols: int | None = None,
               scale: int = 1, caption_lines: int = 4) -> Image.Image:
    """Lay ``images`` (same size) out ``cols`` to a row, captions (if given) below each one."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    cols = cols or min(len(images), 8)
    rows = math.ceil(len(images) / cols)
    w, h = images[0].width * scale, images[0].height * scale
    font = ImageFont.load_default()
    chars = max(8, w // 6)
    text_h = 11 * caption_lines + 4 if captions else 0
    sheet = Image.new("RGB", (cols * w, rows * (h + text_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, img in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + text_h)
        sheet.paste(img.convert("RGB").resize((w, h), Image.NEAREST), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], chars)[:caption_lines]
            draw.multiline_text((x + 2, y + h + 2), "\n".join(lines), fill="black", font=font, spacing=1)
    return sheet
