"""Official PyTorch weights <-> deim_jax checkpoints.

    python -m deim_jax.tools.convert --config=NAME --pth=x.pth --out=DIR
    python -m deim_jax.tools.convert --config=NAME (--checkpoint=DIR | --workdir=DIR) --to_pth=x.pth

The first reads an official ``.pth`` (``weights_only``; its EMA weights where it has them) and
writes a checkpoint folder that ``--checkpoint`` (predict, export) and ``--config.init_from``
read; an 80-class COCO model gets COCO's class names. The second writes the EMA weights of a
deim_jax checkpoint (``--workdir``: its best-AP one) as ``{'model': state_dict}`` with the official
key names and layouts, which the official code loads (``-t`` / ``-r``, or ``load_state_dict``).
Both check that the weights fit ``--config``'s model.
"""

from __future__ import annotations

from absl import flags

from deim_jax import cli
from deim_jax.errors import UserError

_CONFIG = cli.define_config_flag()
_PTH = flags.DEFINE_string("pth", None, "Official checkpoint (.pth) to convert.")
_OUT = flags.DEFINE_string("out", None, "Checkpoint folder to write (with --pth).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "deim_jax checkpoint folder to convert (with --to_pth).")
_WORKDIR = flags.DEFINE_string("workdir", None, "deim_jax run folder: its best-AP checkpoint (with --to_pth).")
_TO_PTH = flags.DEFINE_string("to_pth", None, "PyTorch state dict to write.")
flags.DEFINE_alias("to-pth", "to_pth")


def main(argv):
    del argv
    from deim_jax.deploy import weights

    cfg = cli.require_config(_CONFIG)
    if _PTH.value and _OUT.value and not (_TO_PTH.value or _CHECKPOINT.value or _WORKDIR.value):
        print(weights.pth_to_checkpoint(cfg, _PTH.value, cli.writable_folder(_OUT.value, "--out")))
    elif _TO_PTH.value and not (_PTH.value or _OUT.value):
        print(weights.checkpoint_to_pth(cfg, _TO_PTH.value, checkpoint=_CHECKPOINT.value, workdir=_WORKDIR.value))
    else:
        raise UserError("give --pth=x.pth --out=DIR, or (--checkpoint=DIR | --workdir=DIR) --to_pth=x.pth")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
