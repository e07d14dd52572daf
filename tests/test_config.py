"""The config machinery: nested loop settings behind flat names, in Python and on the command line,
and the loop's refusal to overwrite a run when resume is off."""

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest

from diffalign.checkpoint import CheckpointError
from diffalign.config import (
    LoopConfig, add_config_arguments, as_dict, build, config_from_args, field, replace,
)
from diffalign.experiments import graphs, toy2d
from diffalign.training import init_train_state, make_train_step, train


@dataclasses.dataclass(frozen=True)
class Tiny:
    steps: int = field(10, "training steps")
    loop: LoopConfig = field(LoopConfig(log_every=5), "loop", nested_help={"log_every": "log every N epochs"},
                             nested_aliases={"log_every": "--log-every-epochs"})


def _parse(cls, argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p, cls)
    return p, config_from_args(cls, p.parse_args(argv))


def test_flat_names_reach_the_nested_loop_config():
    cfg = build(Tiny, steps=3, seed=7, log_every=2)
    assert cfg.steps == 3 and cfg.loop == LoopConfig(seed=7, log_every=2)
    again = replace(cfg, checkpoint_every=9, steps=4)
    assert again.loop.checkpoint_every == 9 and again.loop.seed == 7 and again.loop.log_every == 2 and again.steps == 4
    assert as_dict(again) == {"steps": 4, "seed": 7, "steps_per_call": 100, "log_every": 2, "checkpoint_every": 9,
                              "resume": True}
    with pytest.raises(TypeError, match="has no setting lr"):
        build(Tiny, lr=0.1)
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        replace(cfg, log_every=0)


def test_nested_defaults_of_an_experiment_survive_a_flat_change():
    # the experiment's own loop defaults (not LoopConfig's) are the base a flat change edits
    cfg = replace(toy2d.Config(), seed=3)
    assert cfg.loop.checkpoint_every == toy2d.Config().loop.checkpoint_every != LoopConfig().checkpoint_every
    assert cfg.loop.seed == 3


def test_the_command_line_is_flat_with_help_overrides_and_aliases():
    p, cfg = _parse(Tiny, ["--seed", "4", "--log-every-epochs", "3", "--no-resume"])
    assert cfg.loop == LoopConfig(seed=4, log_every=3, resume=False)
    assert _parse(Tiny, ["--log-every", "6"])[1].loop.log_every == 6
    text = p.format_help()
    assert "log every N epochs" in text and "--steps-per-call" in text and "--loop" not in text
    # a real experiment: graphs train keeps its epoch flags
    _, g = _parse(graphs.TrainConfig, ["--log-every-epochs", "2", "--checkpoint-every-epochs", "4", "--seed", "1"])
    assert (g.loop.log_every, g.loop.checkpoint_every, g.loop.seed) == (2, 4, 1)


def test_a_name_twice_after_flattening_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Clash:
        seed: int = field(0, "seed")
        loop: LoopConfig = field(LoopConfig(), "loop")

    with pytest.raises(TypeError, match="'seed' appears twice"):
        as_dict(Clash())


def _train(workdir, resume, num_steps=4):
    opt = optax.sgd(0.1)
    state = init_train_state({"w": jnp.zeros(2)}, opt, jax.random.key(0))
    step = make_train_step(lambda p, b, k: {"per_example": (p["w"] - b) ** 2}, opt)
    return train(state, step, lambda i: jnp.ones(2), num_steps=num_steps, workdir=workdir, steps_per_call=2,
                 log_every=2, checkpoint_every=2, progress=False, resume=resume)


def test_no_resume_refuses_a_directory_with_a_checkpoint_and_deletes_nothing(tmp_path):
    import os

    first = _train(str(tmp_path), resume=False)
    assert first.summary["steps_run"] == 4
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(CheckpointError, match="resume is off"):
        _train(str(tmp_path), resume=False, num_steps=6)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert _train(str(tmp_path), resume=True, num_steps=6).summary["resumed_from"] == 4
