"""What the standalone official scripts (``official_forward.py``, ``official_train_step.py``,
``official_pipeline.py``, and ``experiments/official_ab/official_trainer.py``) share; they import it
from its folder, with neither jax nor deim_jax: loading the official config and model with given
weights, the torchvision ``adjust_hue`` fix for numpy 2, and placeholder modules for what the
official tree imports at load time but a timing run never uses (``calflops`` for its FLOPs
printout, ``faster_coco_eval`` for COCO evaluation), so that the scripts also run where those are
not installed (the accelerator image)."""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

UNUSED_BY_TIMING = ("calflops", "faster_coco_eval")


class _Placeholder(types.ModuleType):
    """A module whose every attribute is a class that accepts any arguments and does nothing
    (``faster_coco_eval.init_as_pycocotools()`` runs at import)."""

    __path__ = []  # a package, so that ``from x.y import z`` resolves through the finder

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda *a, **k: None, "__call__": lambda *a, **k: None})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        pass


def stub_missing(roots=UNUSED_BY_TIMING):
    """Serve placeholders for the top-level packages in ``roots`` that are not installed; returns them."""
    missing = [r for r in roots if importlib.util.find_spec(r) is None]
    if missing:
        sys.meta_path.append(_Finder(missing))
    return missing


def _adjust_hue_mod256(img, hue_factor):
    import numpy as np
    from PIL import Image

    if img.mode in {"L", "1", "I", "F"}:
        return img
    h, s, v = img.convert("HSV").split()
    hue = np.asarray(h, dtype=np.uint8) + np.uint8(int(hue_factor * 255) % 256)  # wraps modulo 256
    return Image.merge("HSV", (Image.fromarray(hue, "L"), s, v)).convert(img.mode)


def patch_adjust_hue():
    """torchvision 0.16's PIL ``adjust_hue`` adds a negative hue shift as ``np.uint8(negative)``,
    which numpy 2 rejects; replace it (at run time, no file edited) by the same addition modulo 256."""
    import torchvision.transforms._functional_pil as pil_functional

    pil_functional.adjust_hue = _adjust_hue_mod256


def load(official: str, yaml: str, state: str, size):
    """The official ``YAMLConfig`` of ``configs/<yaml>`` in the tree ``official``, made for ``size``
    ([H, W]: anchors and position embedding), no pretrained backbone download, and its ``model``
    holding the state dict of ``state`` (an .npz of the official keys)."""
    import numpy as np
    import torch

    stub_missing()
    sys.path.insert(0, os.path.abspath(official))
    from engine.core import YAMLConfig

    cfg = YAMLConfig(os.path.join(official, "configs", yaml))
    cfg.yaml_cfg["eval_spatial_size"] = list(size)
    for backbone in ("HGNetv2", "PResNet"):
        if backbone in cfg.yaml_cfg:
            cfg.yaml_cfg[backbone]["pretrained"] = False
    arrays = np.load(state)
    cfg.model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k in arrays.files})
    return cfg
