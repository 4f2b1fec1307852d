"""Example prompts the bundled model draws well: the app's Generate tab offers them as clickable examples.

The bundled model knows two kinds of prompt:

* shapes scenes: ``a {size} {colour} {shape} at {position}``, up to three joined by ``and``, in the
  shapes vocabulary (``latentgen.data.shapes``: sizes small, large; colours red, orange, yellow, green,
  blue, purple; shapes circle, square, triangle; positions top left, top, top right, left, center,
  right, bottom left, bottom, bottom right). ``HELDOUT`` names colour-shape pairs that no training
  image draws: the model composes them from the words alone.
* OpenMoji names (``latentgen data emoji``): round yellow faces, hearts, fruit and flags come out best.

Each shapes prompt here is drawn right by the shapes checker (``latentgen.eval.shapes.check_image``)
at the model card's settings for seeds 0 to 3, and each emoji is drawn nearer its own OpenMoji render
than most of the 4,000 others.
"""

SHAPES = (
    "a large red circle at center",
    "a small blue square at top left",
    "a large yellow triangle at bottom right",
    "a small blue square at top left and a large yellow triangle at bottom right",
    "a large purple circle at left and a large orange square at right",
    "a large green square at top and a small red triangle at bottom",
)
HELDOUT = (
    "a large purple square at center",
    "a large orange triangle at center",
    "a large green circle at right",
)
EMOJI = (
    "grinning face",
    "winking face",
    "smiling face with smiling eyes",
    "red heart",
    "blue heart",
    "red apple",
    "flag of austria",
    "flag of ukraine",
)
EXAMPLE_PROMPTS = SHAPES + HELDOUT + EMOJI
