import sys, numpy as np, jax
from diffalign.gcrl import smore as S, gridworld as G
world = G.four_rooms()
data = G.generate_dataset(jax.random.key(3), world, 100, 0.1)
st, log = S.train_smore(jax.random.key(4), data, world.n_states, S.SMOReConfig(steps=200, batch_size=64), 100)
st2, log2 = S.train_gcbc(jax.random.key(4), data, world.n_states, S.GCBCConfig(steps=200, batch_size=64), 100)
lg, log3 = S.train_gcbc_mlp(jax.random.key(4), data, world.n_states, S.GCBCConfig(steps=50, batch_size=64), 16, 25)
np.savez(sys.argv[1], *[np.asarray(x) for x in jax.tree.leaves((st.params, log, st2.params, log2, lg, log3))])
