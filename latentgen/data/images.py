"""Image files: which names are images, and decoding any Pillow image into 8-bit sRGB safely.

:func:`check_image` opens and fully decodes a file once and never raises: a truncated JPEG, a
text file called ``.png`` or a decompression bomb comes back as a reason (``"<kind>: <detail>"``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")  # the image files we read
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: a 10,000 x 10,000 image is refused, not decoded
DEFAULT_SIZE = 64  # the side in pixels of the images the data sets are drawn at


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image to 8-bit sRGB: transparency on white, 16-bit scaled, CMYK/ICC via LittleCMS."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        im = Image.fromarray(_to_uint8(np.asarray(im)), mode="L")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("P", "PA") or (im.mode in ("L", "RGB") and "transparency" in im.info):
        im = im.convert("RGBA")  # palette/tRNS transparency becomes alpha, not the key colour
    if im.mode in ("LA", "La", "RGBa", "RGBA"):
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    if im.mode == "LAB":
        return ImageCms.profileToProfile(im, ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
    if im.mode in ("RGB", "CMYK") and im.info.get("icc_profile"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's own conversion
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer/float grey levels to 0..255: 16-bit by /257, floats in [0, 1] by *255, else by the maximum."""
    is_float = a.dtype.kind == "f"
    a = np.nan_to_num(a.astype(np.float64))
    top = float(a.max()) if a.size else 0.0
    if is_float and 0 < top <= 1.0:
        scale = 255.0
    elif top <= 255:
        scale = 1.0
    elif top <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / top
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def load_rgb(path: str) -> Image.Image:
    """Open, fully decode, apply the EXIF orientation and convert to RGB (see ``to_rgb``)."""
    with Image.open(path) as im:
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 -- a broken EXIF block does not make the pixels unusable
            im = im.copy()
    return to_rgb(im)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (Lanczos), then crop the centre ``size`` x ``size``."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def check_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image | None, str | None]:
    """Fully decode ``path``: ``(rgb, None)`` when usable, else ``(None, reason)``; never raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check the size ourselves
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
            if w * h > max_pixels:
                limit = f"{max_pixels:,} pixel limit"
                return None, f"too many pixels: {w} x {h} is over the {limit} (a decompression bomb?)"
            return load_rgb(path), None
    except Image.DecompressionBombError as e:  # over twice Pillow's own limit: refused at open
        return None, f"too many pixels: {e}"
    except UnidentifiedImageError:
        return None, "not an image: Pillow cannot identify it (wrong extension or not an image file)"
    except PermissionError as e:
        return None, f"unreadable: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 -- truncated or corrupt: OSError, SyntaxError, struct.error, ...
        return None, f"corrupt image: {type(e).__name__}: {e}"
