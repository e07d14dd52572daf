"""Offline goal-conditioned RL at small scale: a four-rooms grid world with exact references
(``gridworld``) and SMORe with its goal-conditioned behaviour-cloning baseline (``smore``)."""
