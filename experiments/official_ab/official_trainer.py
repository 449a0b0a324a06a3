"""Run the official DEIM ``train.py`` (tree in $DEIM_OFFICIAL) with one run-time fix, no file edited:
torchvision 0.16's PIL ``adjust_hue`` under numpy 2 (``deim_jax/tools/official_common.patch_adjust_hue``).
"""

import os
import runpy
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deim_jax", "tools"))
import official_common  # noqa: E402  (standalone: neither jax nor deim_jax is imported)

if __name__ == "__main__":
    official_common.patch_adjust_hue()
    tree = os.environ["DEIM_OFFICIAL"]
    sys.path.insert(0, tree)
    sys.argv = [os.path.join(tree, "train.py")] + sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
