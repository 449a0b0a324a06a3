"""What a config's data set holds, checked before training (no model is built, nothing compiled).

``python -m deim_jax.tools.inspect_data --config=NAME [--config.a.b=value] [--out=DIR] [--epoch=E]``

Prints, for train and val (as the training run loads them, ``data.load_split``; missing files are
counted, not an error): the boxes per class with the names, the boxes by COCO area range
(original image pixels: small < 32^2, medium < 96^2, large), images without boxes, the most boxes
of one image against ``config.data.max_boxes`` and ``config.model.decoder.num_queries`` (with the
warnings training logs), and the defects found while loading with what happens to each (the table
of ``deim_jax.data.coco``). ``--out=DIR`` also writes ``DIR/<config name>_data.png``: one batch of
augmented training samples with their boxes; ``--epoch`` picks the epoch whose augmentation
policy is shown (default: the first augmented epoch, with Mosaic/MixUp), ``--config.seed`` the
random stream. ``--config`` (default ``demo``) and the overrides are those of ``deim_jax.main``;
the demo set is generated if missing (``data.generate_demo``).
"""

from __future__ import annotations

import os
from typing import List, Sequence

from absl import flags

from deim_jax import cli, data
from deim_jax.data import census, coco, prepare, voc, yolo
from deim_jax.data.classes import adopt_num_classes
from deim_jax.evaluate.visualize import draw_batch

_CONFIG = cli.define_config_flag()
_OUT = flags.DEFINE_string("out", None, "Folder for the PNG of augmented training samples (default: none).")
_EPOCH = flags.DEFINE_integer("epoch", None, "Epoch whose augmentation policy the PNG shows.")

_AREA_TEXT = {"small": "area < 32^2", "medium": "32^2 <= area < 96^2", "large": "area >= 96^2"}


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> List[str]:
    """Text table lines: numbers right-aligned, everything else left-aligned (header included)."""
    widths = [max(len(str(v)) for v in col) for col in zip(header, *rows)]
    numeric = [any(isinstance(r[i], int) for r in rows) for i in range(len(header))]

    def line(row):
        return "  ".join(str(v).rjust(w) if num else str(v).ljust(w)
                         for v, w, num in zip(row, widths, numeric)).rstrip()

    return [line(header)] + [line(r) for r in rows]


def _class_lines(train, val) -> List[str]:
    counts = [census.class_counts(r) for r in (train, val)]
    labels = sorted(set(train.category_names) | set(val.category_names))
    rows = [[label, train.label_to_category.get(label, val.label_to_category.get(label, "-")),
             train.category_names.get(label) or val.category_names[label],
             counts[0].get(label, 0), counts[1].get(label, 0)] for label in labels]
    rows.append(["", "", "(all)", len(train.labels), len(val.labels)])
    lines = _table(["label", "category", "name", "train", "val"], rows)
    if train.label_to_category != val.label_to_category:
        lines.append("note: train and val list different categories; the model's labels are the train set's")
    return lines


def _size_lines(train, val, max_boxes: int, num_queries: int) -> List[str]:
    areas = [census.area_counts(r) for r in (train, val)]
    per_image = [census.boxes_per_image(r) for r in (train, val)]
    rows = [[f"{name} ({_AREA_TEXT[name]})", areas[0][name], areas[1][name]] for name in areas[0]]
    rows += [["images without boxes"] + [int((c == 0).sum()) for c in per_image],
             ["most boxes in one image"] + [int(c.max(initial=0)) for c in per_image],
             [f"images over max_boxes={max_boxes}"] + [int((c > max_boxes).sum()) for c in per_image],
             [f"images over num_queries={num_queries}"] + [int((c > num_queries).sum()) for c in per_image]]
    return _table(["boxes (original pixels)", "train", "val"], rows)


STATS_BEHAVIOUR = {**coco.STATS_BEHAVIOUR, **yolo.STATS_BEHAVIOUR, **voc.STATS_BEHAVIOUR}


def _defect_lines(train, val, max_boxes: int) -> List[str]:
    """The loaders' counters (``stats``) of both splits, with what happens to each (unknown ones: -)."""
    keys = [k for k in STATS_BEHAVIOUR if k in train.stats or k in val.stats]
    keys += sorted((set(train.stats) | set(val.stats)) - set(STATS_BEHAVIOUR) - {"boxes"})
    rows = [[*STATS_BEHAVIOUR.get(key, (key, "-"))[:1], train.stats.get(key, "-"), val.stats.get(key, "-"),
             STATS_BEHAVIOUR.get(key, (key, "-"))[1]] for key in keys]
    rows.append([f"more boxes than max_boxes={max_boxes}", census.boxes_beyond(train, max_boxes),
                 census.boxes_beyond(val, max_boxes), "the first max_boxes (annotation order) kept, the rest dropped"])
    return _table(["defects found while loading", "train", "val", "what happens"], rows) + [
        "unreadable image files are found by decoding them: --config.data.strict_files=True checks every "
        "file at start-up"]


def report(train, val, max_boxes: int, num_queries: int) -> List[str]:
    """The printed report of the train and val records (see the module docstring)."""
    head = [f"{split}: {len(r)} images, {len(r.labels)} boxes from {r.annotations_file}"
            for split, r in (("train", train), ("val", val))]
    warnings = [f"warning: {w}" for w in census.startup_warnings(train, val, max_boxes, num_queries)]
    return (head + [""] + _class_lines(train, val) + [""] + _size_lines(train, val, max_boxes, num_queries)
            + [""] + _defect_lines(train, val, max_boxes) + warnings)


def write_samples(config, records, out_dir: str, epoch=None) -> str:
    """Write ``out_dir/<config name>_data.png`` (one train batch of ``epoch``'s policy, boxes drawn and
    named; a batch with MixUp preferred when the epoch has it); returns a line saying what it wrote."""
    config.data.base_size_repeat = None  # show every sample at the same size
    epoch = int(config.data.policy_epochs[0]) if epoch is None else epoch
    it = data.build_train_iterator(config.data, seed=config.seed, state=dict(epoch=epoch, pos=0, step_in_epoch=0),
                                   records=records)
    batch = next(it)
    for _ in range(10):
        if batch["mixup"][0] or int(batch["epoch"][0]) >= int(config.data.mixup_epochs[1]):
            break
        batch = next(it)
    path = os.path.join(cli.writable_folder(out_dir, "--out"), f"{config.name}_data.png")
    draw_batch(batch, records.category_names).save(path)
    return f"wrote {path} (epoch {epoch}, mixup {bool(batch['mixup'][0])}, {int(batch['mask'].sum())} boxes)"


def main(argv):
    del argv
    config = cli.require_config(_CONFIG)
    prepare.check_or_generate(config.data)
    train = data.load_split(config.data, "train", missing="drop")
    adopt_num_classes(config.data, train)
    census.adopt_max_boxes(config.data, train, int(config.model.decoder.num_queries))
    val = data.load_split(config.data, "val", missing="drop")
    print(f"config {config.name}: {int(config.num_classes)} classes")
    print("\n".join(report(train, val, int(config.data.max_boxes), int(config.model.decoder.num_queries))))
    if _OUT.value:
        print(write_samples(config, train, _OUT.value, _EPOCH.value))


if __name__ == "__main__":
    cli.run(main, default_config="demo")
