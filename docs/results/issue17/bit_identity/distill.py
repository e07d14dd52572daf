import sys, numpy as np, jax, jax.numpy as jnp, optax
from flax import nnx
from diffalign.models import MLP, functional
from diffalign.distill import Distiller
from diffalign.training import make_optimizer
out = {}
for method, kw in [("dmd", {}), ("dmd2", dict(student_steps=2)), ("phased-dmd", dict(student_steps=2, phases=2, steps_per_phase=3)), ("tdm", dict(student_steps=2)), ("tdm-unify", dict(student_steps=4, steps_choices=(1,2,4)))]:
    m = "tdm" if method == "tdm-unify" else method
    model = MLP(2, (32, 32), activation="silu", time_features=8, num_classes=3 if method == "tdm-unify" else None, rngs=nnx.Rngs(0))
    apply_fn, teacher = functional(model)
    d = Distiller(m, apply_fn, teacher, make_optimizer(1e-3, clip_norm=10.0), make_optimizer(1e-3), batch_size=16, ema_decay=0.9, **kw)
    st = d.init(jax.random.key(0))
    step = jax.jit(d.make_step())
    batch = {"z": jnp.ones((16, 2)), "y": jnp.zeros((16, 2))} if m == "dmd" else {}
    for _ in range(7):
        st, met = step(st, batch)
    if hasattr(st, "experts"):
        gen, fake, ema = st.experts, st.fake, st.ema
    else:
        gen, fake, ema = st.params["generator"], st.params["fake"], st.ema_params["generator"]
    out[method] = [np.asarray(x) for x in jax.tree.leaves((gen, fake, ema))] + [np.asarray(met["loss"])]
np.savez(sys.argv[1], **{f"{k}_{i}": v for k, vs in out.items() for i, v in enumerate(vs)})
