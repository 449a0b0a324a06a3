"""docs/custom_data.md runs as written: every command of its blocks marked *(run in CI)*, in order,
in a temporary folder (three generated sets, inspect_data, fine-tuning in each layout, an
evaluation), and the output the page shows is what the tool prints.

Appended to the training and evaluation commands (the page says so): ``--config.init_from=`` (no
pre-trained demo model here) and the device matcher, which the persistent compilation cache can
hold, so that the three runs compile once.
"""

import glob
import json
import os
import re
import shlex
import subprocess
import sys

from deim_jax import configs

DOC = os.path.join(configs.REPO_ROOT, "docs", "custom_data.md")
APPENDED = ["--config.init_from=", "--config.loss.matcher.method=device"]


def _blocks_run_in_ci():
    """Command lines of the bash blocks that follow a *(run in CI)* mark (continuations joined)."""
    text = open(DOC).read()
    out = []
    for block in re.findall(r"\*\(run in CI\)\*\s*\n\s*```bash\n(.*?)```", text, re.S):
        out += [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]
    return out


def _shown_output():
    """The lines of the page's ```text block (what inspect_data prints)."""
    return re.search(r"```text\n(.*?)```", open(DOC).read(), re.S).group(1).splitlines()


def _printed(expected: str, printed) -> bool:
    """``expected`` is a printed line; ``...`` in it stands for any text (an absolute path)."""
    if expected.strip() == "...":
        return True
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, line.rstrip()) for line in printed)


def test_tutorial_commands_run_as_written(tmp_path):
    commands = _blocks_run_in_ci()
    assert len(commands) == 8, commands
    env = dict(os.environ, PYTHONPATH=configs.REPO_ROOT, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"), JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    outputs = {}
    for cmd in commands:
        words = shlex.split(cmd)
        assert words[0] == "python", cmd
        words[0] = sys.executable
        if words[2] == "deim_jax.main":
            words += APPENDED
        r = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        outputs[cmd] = (r.stdout + r.stderr).splitlines()

    inspect = next(lines for cmd, lines in outputs.items() if "inspect_data" in cmd)
    missing = [line for line in _shown_output() if not _printed(line, inspect)]
    assert not missing, "docs/custom_data.md shows lines inspect_data does not print:\n" + "\n".join(missing)
    assert os.path.isfile(tmp_path / "runs" / "shapes_yolo" / "finetune_dfine_demo_data.png")

    names = ["square", "circle", "triangle", "cross"]
    for layout in ("yolo", "voc", "coco"):
        run = tmp_path / "runs" / f"shapes_{layout}"
        rows = [json.loads(line) for line in open(run / "eval.jsonl")]
        assert rows and rows[-1]["epoch"] == 4 and set(rows[-1]["per_class"]) == set(names), layout
        metas = glob.glob(str(run / "checkpoints" / "*" / "meta" / "*"))
        assert any("triangle" in open(m).read() for m in metas if os.path.isfile(m)), layout
    train_logs = {layout: next(lines for cmd, lines in outputs.items() if f"shapes_{layout}" in cmd and "init_from" in cmd)
                  for layout in ("yolo", "voc")}
    assert _printed("data format: voc ...", train_logs["voc"])
    for layout in ("yolo", "voc"):  # VOC: in the order of --config.data.voc_classes
        assert _printed("...num_classes=4 from ...: names square, circle, triangle, cross", train_logs[layout])
    evaluation = next(lines for cmd, lines in outputs.items() if "--mode=eval" in cmd)
    assert any("triangle" in line for line in evaluation)
