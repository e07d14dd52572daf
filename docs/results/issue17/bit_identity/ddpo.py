import sys, numpy as np, jax, jax.numpy as jnp
from flax import nnx
from diffalign.models import MLP, functional
from diffalign.align import rl, awm
from diffalign.training import init_train_state, make_train_step, make_optimizer
apply_fn, params = functional(MLP(2, (32, 32), rngs=nnx.Rngs(0)))
loss = rl.ddpo_loss(apply_fn, rl.flow_rollout(8, (2,), steps=5, stochastic=True), lambda x, y: -jnp.sum(x**2, -1))
opt = make_optimizer(1e-3)
st = init_train_state(params, opt, jax.random.key(0), aux=rl.awm_aux(params))
step = jax.jit(make_train_step(loss, opt, awm(weighting="uniform")))
for _ in range(3):
    st, m = step(st, {})
np.savez(sys.argv[1], *[np.asarray(x) for x in jax.tree.leaves(st.params)], *[np.asarray(m[k]) for k in sorted(m)])
