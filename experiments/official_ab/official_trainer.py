"""Run the official DEIM ``train.py`` (tree in $DEIM_OFFICIAL) with one run-time fix, no file edited.

torchvision 0.16's PIL ``adjust_hue`` adds a negative hue shift as ``np.uint8(negative)``, which
numpy 2 rejects; the replacement wraps the shift into 0..255 first (the same modular addition).
"""

import os
import runpy
import sys

import numpy as np
import torchvision.transforms._functional_pil as pil_functional
from PIL import Image


def adjust_hue_mod256(img, hue_factor):
    if img.mode in {"L", "1", "I", "F"}:
        return img
    h, s, v = img.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8) + np.uint8(int(hue_factor * 255) % 256)  # wraps modulo 256
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(img.mode)


if __name__ == "__main__":
    pil_functional.adjust_hue = adjust_hue_mod256
    tree = os.environ["DEIM_OFFICIAL"]
    sys.path.insert(0, tree)
    sys.argv = [os.path.join(tree, "train.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
