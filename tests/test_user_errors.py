"""User errors at start-up: the real command lines print one ``error: ...`` line naming the
field/file, no traceback, and exit with status 2 (``deim_jax.cli.run``)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from deim_jax import cli, configs
from deim_jax.errors import ConfigError, UserError
from tests.train_helpers import tiny_dataset


def _run_main(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "deim_jax.main", *args], capture_output=True, text=True,
                          cwd=configs.REPO_ROOT, env=env, timeout=300)


def _assert_one_line_error(r, *names):
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in names), last


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tiny_dataset(str(tmp_path_factory.mktemp("tiny")))


# Failing while the flags are parsed (no jax/TF import): fractions of a second each.
@pytest.mark.parametrize("args, names", [
    (["--config=demo", "--config.optimzer.lr=1", "--mode=summary"],
     ["--config.optimzer.lr: no field 'optimzer' in the config (did you mean 'optimizer'?)"]),
    (["--config=demo", "--config.batch_size=abc", "--mode=summary"],
     ["--config.batch_size=abc: invalid literal for int()"]),
    (["--config=demo", "--mode=train", "--workdir=" + __file__ + "/sub"],
     [f"--workdir={__file__}/sub: cannot create or write this folder", "[Errno 20] Not a directory"]),
], ids=["misspelled-override", "override-type", "workdir-under-a-file"])
def test_flag_and_workdir_errors(args, names):
    _assert_one_line_error(_run_main(*args), *names)


def test_missing_data_is_one_line(tmp_path):
    r = _run_main("--config=demo", "--config.data.generate_demo=False",
                  f"--config.data.train.annotations={tmp_path}/none.json", "--mode=train", f"--workdir={tmp_path}/w")
    _assert_one_line_error(r, f"config.data.train.annotations = '{tmp_path}/none.json' does not exist")


def test_bad_matcher_method_fails_when_the_criterion_is_built(tiny_root, tmp_path):
    """Before this check, ``method='jax'`` failed only inside jit tracing of the train step."""
    r = _run_main(f"--config=tests/tiny_config.py:{tiny_root}", "--config.loss.matcher.method=jax",
                  "--mode=train", f"--workdir={tmp_path}/w")
    _assert_one_line_error(r, "cfg.loss.matcher.method='jax': not one of ['auto', 'device', 'scipy']")


def test_strict_files_error_reaches_the_command_line(tiny_root, tmp_path):
    root = str(tmp_path / "data")
    shutil.copytree(tiny_root, root)
    bad = sorted(os.listdir(os.path.join(root, "train")))[0]
    open(os.path.join(root, "train", bad), "wb").write(b"not an image")
    r = _run_main(f"--config=tests/tiny_config.py:{root}", "--config.data.strict_files=True",
                  "--mode=train", f"--workdir={tmp_path}/w")
    _assert_one_line_error(r, "instances_train.json: 1 of 8 train image files", f"{bad} (unreadable)")
    assert "strict_files: read and decoded 8 train image files" in r.stdout


# ------------------------------------------------------------------ the same logic, in-process

def test_unknown_override_names_the_field_and_the_closest_one():
    argv = cli.config_argv(["prog", "--config=demo", "--config.data.mosiac_prob=0.3", "--config.optimzer.lr=1"])
    assert cli.unknown_override(argv) == (
        "--config.data.mosiac_prob: no field 'mosiac_prob' in config.data (did you mean 'mosaic_prob'?)")
    assert cli.unknown_override(cli.config_argv(["prog", "--config=demo", "--config.epochs=2"])) is None
    assert cli.unknown_override(["prog", "--config.epochs=2"]) is None  # no config: absl's own message


def test_fail_prints_one_line_and_exits_2(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError) as e:
        cli.writable_folder(str(tmp_path / "file" / "sub"), "--workdir")
    with pytest.raises(SystemExit) as exit_:
        cli.fail(e.value)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --workdir={tmp_path}/file/sub: cannot create")
    with pytest.raises(ConfigError, match="--config is required; available: demo"):
        cli.require_config(type("Flag", (), {"value": None})())
    assert cli.writable_folder(str(tmp_path / "new" / "dir"), "--workdir") == str(tmp_path / "new" / "dir")


@pytest.mark.parametrize("name, field, value", [
    ("demo", "encoder.act", "relux"), ("demo", "encoder.version", "v3"), ("demo", "backbone.variant", "B9"),
    ("demo_rtdetrv2", "decoder.cross_attn_method", "nearest"), ("demo_rtdetrv2", "decoder.query_pos_method", "x"),
])
def test_model_choices_are_checked_when_built(name, field, value):
    """Values that used to fail inside tracing (or, for ``version``, to run the other encoder)."""
    from deim_jax import models

    cfg = configs.get_config(name)
    block, key = field.split(".")
    cfg.model[block][key] = value
    with pytest.raises(ConfigError, match=re.escape(f"cfg.model.{field}={value!r}: not one of [")):
        models.build(cfg)


def test_unknown_schedule_name_is_a_config_error():
    from deim_jax.train import schedule

    with pytest.raises(ConfigError, match=r"cfg.schedule.name='cosine': not one of \['flatcosine'"):
        schedule.schedule_constants({"name": "cosine", "first_step_divisor": 1.0}, 10, 1)
