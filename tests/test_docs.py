"""The commands in README.md and docs/ name modules, scripts, configs and fields that exist, and
the quick ones run (command 2 of the README is what CI runs; command 1 is the demo)."""

import glob
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from deim_jax import configs

DOCS = [os.path.join(configs.REPO_ROOT, "README.md")] + sorted(
    glob.glob(os.path.join(configs.REPO_ROOT, "docs", "*.md"))
    + glob.glob(os.path.join(configs.REPO_ROOT, "experiments", "**", "README.md"), recursive=True))


def _commands():
    """Every command line of the docs' bash blocks (continuations joined, comments dropped)."""
    out = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", open(path).read(), re.S):
            text = re.sub(r"\\\n\s*", " ", block)
            for line in text.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line and not line.startswith("#"):
                    out.extend(c.strip() for c in line.split("&&"))
    return out


def test_docs_have_commands():
    assert len(_commands()) >= 8


@pytest.mark.parametrize("cmd", _commands())
def test_command_names_what_exists(cmd):
    words = shlex.split(cmd)
    for i, w in enumerate(words):
        if w == "-m" and words[i + 1].startswith("deim_jax"):
            assert importlib.util.find_spec(words[i + 1]) is not None, words[i + 1]
        if w.endswith(".py") and "/" in w and not w.startswith("--"):
            assert os.path.isfile(os.path.join(configs.REPO_ROOT, w)), w
        if w.endswith(".sh"):
            assert os.path.isfile(os.path.join(configs.REPO_ROOT, w)), w
    names = [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    for name in names:
        cfg = configs.get_config(name)
        for w in words:
            if w.startswith("--config.") and "=" in w:
                node = cfg
                for key in w[len("--config."):].split("=", 1)[0].split("."):
                    assert key in node, f"{cmd}: {w} names no field of {name}"
                    node = node[key]


def test_summary_command_runs():
    r = subprocess.run([sys.executable, "-m", "deim_jax.main", "--config=dfine_l", "--mode=summary"],
                       capture_output=True, text=True, cwd=configs.REPO_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "31,289,848" in r.stdout or "31289848" in r.stdout, r.stdout[-2000:]
