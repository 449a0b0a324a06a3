"""The accelerator suite runs end to end on CPU (``--dry-run``) without TensorFlow, tfds,
pycocotools or clu (the accelerator image has none of them), and writes its table; with
``DEIM_OFFICIAL_DIR`` set it also times the official code. The official scripts' import
placeholders stand in only for what is not installed."""

import json
import os
import subprocess
import sys

from deim_jax import configs
from deim_jax.tools import official_common

REPO = configs.REPO_ROOT
ABSENT_ON_ACCELERATOR = ("tensorflow", "tensorflow_datasets", "pycocotools", "clu")


def test_accelerator_suite_dry_run_without_tensorflow(tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        f"import sys\nsys.modules.update(dict.fromkeys({ABSENT_ON_ACCELERATOR!r}))\n")
    # the official side only where the environment names a tree (a local .official/ is not used)
    env = {**os.environ, "PYTHONPATH": str(blocker),
           "DEIM_OFFICIAL_DIR": os.environ.get("DEIM_OFFICIAL_DIR", str(tmp_path / "no_official_tree"))}
    r = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "accelerator.sh"), "--dry-run", "--configs=dfine_n",
                        f"--out={tmp_path}"], capture_output=True, text=True, env=env, cwd=REPO, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "accelerator_cpu_dry_run.json").read_text())
    works = {(row["work"], row["dtype"], row["batch"]) for row in result["rows"]}
    for dtype in ("float32", "bfloat16"):
        assert ("train", dtype, 2) in works and ("eval", dtype, 1) in works
    assert {"matcher (device)", "matcher (scipy)"} <= {w for w, _, _ in works}
    assert result["peak_tflops"] > 0
    assert all(row["ms"] > 0 for row in result["rows"])
    if os.environ.get("DEIM_OFFICIAL_DIR"):
        assert {"train (official)", "eval (official)"} <= {w for w, _, _ in works}
    table = (tmp_path / "accelerator_cpu_dry_run.md").read_text()
    assert "| dfine_n | train | float32 | 2 |" in table


def test_official_import_placeholders_only_for_missing_packages():
    assert official_common.stub_missing(("json", "deim_jax_no_such_package")) == ["deim_jax_no_such_package"]
    from deim_jax_no_such_package.core import mask  # noqa: F401 - resolved by the placeholder finder
    import deim_jax_no_such_package

    assert deim_jax_no_such_package.init_as_pycocotools() is not None  # a do-nothing instance
    assert not isinstance(sys.modules["json"], type(deim_jax_no_such_package))
