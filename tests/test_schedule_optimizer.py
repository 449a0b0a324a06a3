"""Flat-cosine schedule (with the trainer's off-by-one), parameter groups and AdamW vs torch."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from deim_jax.convert import torch_key_to_flax
from deim_jax.train import optimizer as opt_lib
from deim_jax.train import schedule as sched_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.environ.get("DEIM_PARITY_DIR", os.path.join(REPO, "..", "shared", "parity"))
MODELS = ["n", "l", "rtdetrv2_r18"]


def _load(model):
    if not os.path.isdir(PARITY):
        pytest.skip(f"parity fixtures not found at {PARITY}")
    path = os.path.join(PARITY, model, "schedule.json")
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    return json.load(open(path))


def _run(d):
    """(iters_per_epoch, epochs) of the fixture's schedule."""
    return d["assumptions"]["iter_per_epoch"], d["scheduler"]["epoches"]


def _cfg(d):
    sc = d["scheduler"]
    o = d["optimizer"]
    groups = o["param_groups"]
    return dict(
        epochs=sc["epoches"],
        optimizer=dict(
            lr=o["lr"], weight_decay=o["weight_decay"], betas=tuple(o["betas"]), eps=groups[-1]["eps"],
            clip_norm=o["clip_max_norm"],
            groups=[dict(regex=g["regex"], lr=g["lr"], weight_decay=g["weight_decay"]) for g in groups if g["regex"]],
        ),
        schedule=dict(
            name="flatcosine", warmup_iter=sc["warmup_iter"], flat_epoch=sc["flat_epoch"],
            no_aug_epoch=sc["no_aug_epoch"], lr_gamma=sc["lr_gamma"],
            first_step_divisor=sc.get("linear_warmup_duration", 500),
            iters_per_epoch=d["assumptions"]["iter_per_epoch"], epochs=sc["epoches"],
        ),
    )


@pytest.mark.parametrize("model", MODELS)
def test_schedule_constants(model):
    d = _load(model)
    c = sched_lib.schedule_constants(_cfg(d)["schedule"], *_run(d))
    sc = d["scheduler"]
    assert (c["total_iter"], c["flat_iter"], c["no_aug_iter"]) == (sc["total_iter"], sc["flat_iter"], sc["no_aug_iter"])


@pytest.mark.parametrize("model", MODELS)
def test_every_lr_in_schedule_json(model):
    d = _load(model)
    cfg = _cfg(d)
    groups = d["optimizer"]["param_groups"]
    its = np.array([e["iter"] for e in d["iterations"]])
    dense_its = np.array([e["iter"] for e in d["dense"]])
    run = _run(d)
    used_jit = jax.jit(lambda s, lr: sched_lib.lr_used_at_step(s, lr, cfg["schedule"], *run))
    for g, group in enumerate(groups):
        lr0 = group["lr"]
        ref_used = np.array([e["lr_used_by_optimizer_step"][g] for e in d["iterations"]])
        ref_sched = np.array([e["lr_scheduled"][g] for e in d["iterations"]])
        ref_dense = np.array([e["lr_scheduled"][g] for e in d["dense"]])
        # float32 (ours) vs the float64 Python of the official scheduler: a handful of float32
        # roundings (division, square or cosine, product), each <= 6e-8 relative; rtol 1e-6 ~ 16 of them.
        np.testing.assert_allclose(np.asarray(used_jit(its, lr0)), ref_used, rtol=1e-6, atol=0)
        np.testing.assert_allclose(np.asarray(sched_lib.lr_scheduled(its, lr0, cfg["schedule"], *run)), ref_sched,
                                   rtol=1e-6, atol=0)
        np.testing.assert_allclose(np.asarray(sched_lib.lr_scheduled(dense_its, lr0, cfg["schedule"], *run)), ref_dense,
                                   rtol=1e-6, atol=0)
        # used(t) == scheduled(t - 1) on the dense grid, and the optax schedule is the same function
        sched = sched_lib.make_schedule(lr0, cfg["schedule"], *run)
        np.testing.assert_allclose(
            np.asarray(sched(jnp.asarray(dense_its[1:] + 1))), ref_dense[1:], rtol=1e-6, atol=0)
        # first step: lr0 / duration of the leftover LinearWarmup; second step: lr(0) = 0
        assert float(sched(0)) == pytest.approx(lr0 / cfg["schedule"]["first_step_divisor"], rel=1e-6)
        assert float(sched(1)) == 0.0


def _trainable_names(model):
    path = os.path.join(PARITY, model, "manifest.json")
    m = json.load(open(path))
    return m, [k for k, v in m.items() if v["kind"] == "param" and v["trainable"]]


@pytest.mark.parametrize("model", MODELS)
def test_group_membership_exact(model):
    d = _load(model)
    cfg = _cfg(d)
    _, names = _trainable_names(model)
    groups = d["optimizer"]["param_groups"]
    regexes = [g["regex"] for g in groups if g["regex"]]
    idx = opt_lib.assign_groups(names, regexes)
    for g, group in enumerate(groups):
        got = [n for n, i in zip(names, idx) if i == g]
        assert got == group["param_names"], (model, g)
    # the same through a Flax params tree (torch names derived from Flax paths) and the report
    rows = opt_lib.param_group_report(_manifest_params(model), cfg)
    for g, group in enumerate(groups):
        assert sorted(rows[g]["names"]) == sorted(group["param_names"])
        assert rows[g]["num_params"] == group["num_params"] and rows[g]["numel"] == group["numel"]
        assert rows[g]["lr"] == group["lr"] and rows[g]["weight_decay"] == group["weight_decay"]
    assert rows[-1]["num_params"] == 0


def test_frozen_params_get_no_update():
    params = {
        "backbone": {"conv": {"kernel": jnp.ones((3, 3))}},
        "decoder": {"up": jnp.full((1,), 0.5), "reg_scale": jnp.full((1,), 4.0), "proj": {"bias": jnp.ones((3,))}},
    }
    cfg = dict(epochs=1, optimizer=dict(lr=0.1, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-8, clip_norm=0.1,
                                        groups=[]),
               schedule=dict(name="constant", first_step_divisor=1))
    frozen = lambda path: path[0] == "backbone"  # noqa: E731  (full params paths, as models' frozen filters)
    labels = traverse_util.flatten_dict(opt_lib.param_labels(params, cfg, frozen))
    assert labels[("decoder", "up")] == "frozen" and labels[("decoder", "reg_scale")] == "frozen"
    assert labels[("backbone", "conv", "kernel")] == "frozen" and labels[("decoder", "proj", "bias")] == "group_0"
    tx = opt_lib.build_optimizer(cfg, params, 1, frozen=frozen)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 100.0), params)
    p = params
    for _ in range(2):
        upd, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, upd)
    assert np.array_equal(p["decoder"]["up"], params["decoder"]["up"])
    assert np.array_equal(p["decoder"]["reg_scale"], params["decoder"]["reg_scale"])
    assert np.array_equal(p["backbone"]["conv"]["kernel"], params["backbone"]["conv"]["kernel"])
    assert not np.array_equal(p["decoder"]["proj"]["bias"], params["decoder"]["proj"]["bias"])
    # the backbones' own filters (full paths) select the same leaves
    from deim_jax import configs, models
    stem_frozen = configs.get_config("dfine_n")
    stem_frozen.model.backbone.freeze_at = 0
    hg = models.frozen_filter(stem_frozen)
    assert hg(("backbone", "stem", "stem1", "conv", "kernel")) and not hg(("decoder", "proj", "bias"))
    # frozen grads do not count in the clipping norm: only the 3 bias grads (norm 100*sqrt(3)) do
    clip = opt_lib.clip_by_global_norm_torch(0.1)
    zero = opt_lib.zero_frozen(opt_lib.param_labels(params, cfg, frozen))
    g2, _ = zero.update(grads, zero.init(params))
    g3, _ = clip.update(g2, clip.init(params))
    np.testing.assert_allclose(np.asarray(g3["decoder"]["proj"]["bias"]), 100.0 * 0.1 / (100.0 * np.sqrt(3) + 1e-6), rtol=1e-6)


def test_adamw_matches_torch_with_groups_clip_and_schedule():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    init = {
        "backbone": {"conv": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)}},
        "decoder": {"norm": {"scale": rng.normal(size=(4,)).astype(np.float32)},
                    "proj": {"kernel": rng.normal(size=(4, 2)).astype(np.float32),
                             "bias": rng.normal(size=(2,)).astype(np.float32)}},
    }
    cfg = dict(
        epochs=2,
        optimizer=dict(lr=0.05, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8, clip_norm=0.1,
                       groups=[dict(regex=r"^(?=.*backbone)(?!.*norm|bn).*$", lr=0.01, weight_decay=0.3)]),
        schedule=dict(name="flatcosine", warmup_iter=2, flat_epoch=1, no_aug_epoch=0, lr_gamma=0.5,
                      first_step_divisor=500, iters_per_epoch=3, epochs=2),
    )
    steps = 5
    grads_seq = [jax.tree_util.tree_map(lambda x: rng.normal(size=x.shape).astype(np.float32) * 3.0, init)
                 for _ in range(steps)]

    tx = opt_lib.build_optimizer(cfg, init, 3)
    params = jax.tree_util.tree_map(jnp.asarray, init)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads_seq:
        upd, state = update(g, state, params)
        params = optax.apply_updates(params, upd)

    # torch: official trainer order (clip, AdamW step with the lr the scheduler left, then scheduler.step)
    flat = traverse_util.flatten_dict(init)
    names = {p: ".".join(p) for p in flat}
    tp = {p: torch.nn.Parameter(torch.tensor(v)) for p, v in flat.items()}
    bb = [tp[p] for p in flat if p[0] == "backbone"]
    rest = [tp[p] for p in flat if p[0] != "backbone"]
    topt = torch.optim.AdamW([dict(params=bb, lr=0.01, weight_decay=0.3), dict(params=rest, lr=0.05, weight_decay=0.1)],
                             lr=0.05, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    for t, g in enumerate(grads_seq):
        gflat = traverse_util.flatten_dict(g)
        for p, param in tp.items():
            param.grad = torch.tensor(gflat[p])
        torch.nn.utils.clip_grad_norm_(list(tp.values()), max_norm=0.1)
        for group in topt.param_groups:
            lr0 = group.setdefault("initial_lr", group["lr"])
            group["lr"] = float(sched_lib.lr_used_at_step(t, lr0, cfg["schedule"], 3, 2))
        topt.step()
        topt.zero_grad()
    del names
    got = traverse_util.flatten_dict(jax.tree_util.tree_map(np.asarray, params))
    # Two float32 implementations (torch, optax): each of the 5 steps rounds p a few times (decay
    # product, update subtraction) and the update itself (|lr * adam| <= 0.05) carries a few ulps of
    # its own, so the parameters agree to ~10 ulps of their magnitude; allow 16.
    for p, param in tp.items():
        ref = param.detach().numpy()
        atol = 16 * float(np.spacing(np.float32(np.abs(ref).max())))
        np.testing.assert_allclose(got[p], ref, rtol=0, atol=atol, err_msg=str(p))
        assert not np.allclose(got[p], flat[p])


def _manifest_params(model):
    manifest, names = _trainable_names(model)
    flat = {}
    for n in names:
        _, path = torch_key_to_flax(n, len(manifest[n]["shape"]))
        flat[path] = jax.ShapeDtypeStruct(tuple(manifest[n]["shape"]), jnp.float32)
    return traverse_util.unflatten_dict(flat)


def test_repo_configs_reproduce_official_groups_and_lrs():
    """The repo's dfine_n / dfine_l configs through build_optimizer give the official groups and lrs."""
    from deim_jax.configs import get_config

    for model in ("n", "l"):
        d = _load(model)
        cfg = get_config(f"dfine_{model}")
        params = _manifest_params(model)
        rows = opt_lib.param_group_report(params, cfg)
        for g, group in enumerate(d["optimizer"]["param_groups"]):
            assert sorted(rows[g]["names"]) == sorted(group["param_names"]), (model, g)
            assert (rows[g]["lr"], rows[g]["weight_decay"]) == (group["lr"], group["weight_decay"])
        iters = d["assumptions"]["iter_per_epoch"]
        tx = opt_lib.build_optimizer(cfg, params, iters)
        jax.eval_shape(tx.init, params)  # builds for the full model without allocating it
        for g, group in enumerate(d["optimizer"]["param_groups"]):
            its = np.array([e["iter"] for e in d["iterations"]])
            ref = np.array([e["lr_used_by_optimizer_step"][g] for e in d["iterations"]])
            got = sched_lib.lr_used_at_step(its, group["lr"], cfg.schedule, iters, int(cfg.epochs))
            np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6, atol=0)


def test_linear_warmup_schedule_of_the_dfine_baseline():
    """D-FINE's LinearWarmup(500), stepped after every optimizer step: step t uses lr0 * min(1, (t + 1) / 500)."""
    cfg = dict(name="linear_warmup", warmup_iter=500, first_step_divisor=500)
    t = np.array([0, 1, 2, 249, 498, 499, 500, 10_000])
    got = np.asarray(sched_lib.lr_used_at_step(t, 2.5e-4, cfg, 1, 1))  # iters/epochs: unused by this schedule
    np.testing.assert_allclose(got, 2.5e-4 * np.minimum(1.0, (t + 1) / 500), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["dfine_l_baseline", "rtdetrv2_r50_baseline"])
def test_setup_freezes_the_backbone_of_the_frozen_baselines(name):
    """The one training setup builds the optimizer with the config's frozen-parameter filter
    (the benchmarks and tests use it too): the stem and, with freeze_norm, every backbone BN are frozen."""
    from deim_jax import models
    from deim_jax.configs import get_config
    from deim_jax.train import setup as setup_lib

    cfg = get_config(name)
    s = setup_lib.setup(cfg, steps_per_epoch=10)
    assert s.frozen is not None
    shapes = models.init_shapes(s.model, cfg)["params"]
    rows = {r["group"]: r for r in opt_lib.param_group_report(shapes, cfg, s.frozen)}
    stem = "backbone.stem." if cfg.model.family == "dfine" else "backbone.conv1."
    frozen = rows["frozen"]["names"]
    assert any(n.startswith(stem) for n in frozen)
    assert ("decoder.up" in frozen) == (cfg.model.family == "dfine")  # D-FINE's FDR constants, always frozen
    assert not any(n.startswith(stem) for g, r in rows.items() if g != "frozen" for n in r["names"])
    # the optimizer state has no moments for the frozen leaves (optax.set_to_zero in multi_transform)
    state = jax.eval_shape(s.tx.init, shapes)
    n_moments = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state) if x.ndim > 0)
    trainable = sum(r["numel"] for g, r in rows.items() if g != "frozen")
    assert n_moments == 2 * trainable
