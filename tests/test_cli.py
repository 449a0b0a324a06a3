"""The shared command-line plumbing: config names -> config_flags paths, the default config, the
progress line's clock (compile and evaluation time excluded)."""

import time

import pytest

from deim_jax import cli, configs
from deim_jax.errors import ConfigError
from deim_jax.train.progress import Progress, format_eta


def test_config_argv_rewrites_names_and_adds_the_default_first():
    path, _ = configs.resolve("demo")
    assert cli.config_argv(["prog", "--config=demo", "--config.epochs=1"]) == [
        "prog", f"--config={path}", "--config.epochs=1"]
    assert cli.config_argv(["prog", "--config", "demo"]) == ["prog", f"--config={path}"]
    base, arg = configs.resolve("dfine_l_baseline")
    assert cli.config_argv(["prog", "--config=dfine_l_baseline"]) == ["prog", f"--config={base}:{arg}"]
    # the default goes before any override: config_flags needs --config parsed first
    assert cli.config_argv(["prog", "--config.batch_size=4", "--out=x.png"], default="demo") == [
        "prog", f"--config={path}", "--config.batch_size=4", "--out=x.png"]
    assert cli.config_argv(["prog", "--out=x"]) == ["prog", "--out=x"]
    with pytest.raises(ConfigError, match="unknown config 'no_such_config'.*dfine_l_baseline"):
        cli.config_argv(["prog", "--config=no_such_config"])


def test_progress_rate_starts_after_the_first_step_and_skips_paused_time():
    p = Progress(total_steps=10, every_steps=2, batch_size=4)
    assert not p(1, t=50.0)  # the first call (after the compiling step) only starts the clock
    assert p(2, t=51.0) and p.steps_per_sec == pytest.approx(1.0)
    line = p.line(2, {"loss": 1.5}, 1e-3)
    assert "step 2/10" in line and "4.0 img/s" in line and "ETA 0:00:08" in line, line
    before = p._previous_time
    with p.paused():
        time.sleep(0.05)
    assert p._previous_time - before >= 0.05  # the clock moved on by the pause
    assert format_eta(float("nan")) == "?" and format_eta(3725) == "1:02:05"


def test_compilation_cache_folder_follows_the_environment(monkeypatch):
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert cli.compilation_cache_dir() == cli.DEFAULT_CACHE_DIR
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/jax_own")
    assert cli.compilation_cache_dir() == "/tmp/jax_own"
    monkeypatch.setenv(cli.CACHE_ENV, "/tmp/moved")
    assert cli.compilation_cache_dir() == "/tmp/moved"
    monkeypatch.setenv(cli.CACHE_ENV, "")
    assert cli.compilation_cache_dir() is None  # off
