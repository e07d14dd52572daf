"""torchcfm on the tutorial setting, as its 2-D notebook runs it, for ``benchmarks/toy2d.py``.

The peer is timed in the benchmark's own process (the ``peers`` extra: a CPU build of torch and
torchcfm), interleaved with ours at the same thread count. Training is the notebook's loop: its
3x64 SELU ``MLP`` with time as an input, ``ConditionalFlowMatcher(sigma=0.1)``, Adam at its
default rate, batches of 256 from torchcfm's own ``sample_8gaussians`` / ``sample_moons``. The
sampler is 100 explicit Euler steps of the trained network on 10,000 points under
``torch.inference_mode`` (a plain loop: the cheapest way to run that sampler in torch).
"""

from __future__ import annotations

import time


def available() -> bool:
    try:
        import torch  # noqa: F401
        import torchcfm  # noqa: F401
    except ImportError:
        return False
    return True


def info() -> dict:
    import torch
    import torchcfm

    return {"name": "torchcfm", "version": torchcfm.__version__ if hasattr(torchcfm, "__version__") else _dist("torchcfm"),
            "torch": torch.__version__}


def _dist(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def train(steps: int, threads: int, batch: int = 256, seed: int = 0):
    """(seconds for ``steps`` I-CFM steps, the trained model): a fresh model each call."""
    import torch
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
    from torchcfm.models.models import MLP
    from torchcfm.utils import sample_8gaussians, sample_moons

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = MLP(dim=2, time_varying=True)
    optimizer = torch.optim.Adam(model.parameters())
    fm = ConditionalFlowMatcher(sigma=0.1)
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        x0, x1 = sample_8gaussians(batch), sample_moons(batch)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        vt = model(torch.cat([xt, t[:, None]], dim=-1))
        loss = torch.mean((vt - ut) ** 2)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0, model


def euler_sample(model, n: int, steps: int, threads: int, seed: int = 1):
    """(seconds for ``steps`` Euler steps of ``model`` from ``n`` 8-gaussian points, the samples)."""
    import torch
    from torchcfm.utils import sample_8gaussians

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x = sample_8gaussians(n)
    dt = 1.0 / steps
    with torch.inference_mode():
        t0 = time.perf_counter()
        for i in range(steps):
            t = torch.full((n, 1), i * dt)
            x = x + dt * model(torch.cat([x, t], dim=-1))
        return time.perf_counter() - t0, x
