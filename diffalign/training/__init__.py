"""TrainState, the pure train step, optimizers and the checkpointing, logging loop."""

from .logger import MetricLogger as MetricLogger
from .loop import (
    NonFiniteLossError as NonFiniteLossError,
    TrainResult as TrainResult,
    config_differences as config_differences,
    train as train,
)
from .optim import make_optimizer as make_optimizer, per_module as per_module
from .state import TrainState as TrainState, init_group_state as init_group_state, init_train_state as init_train_state
from .step import (
    Group as Group,
    ema_decay_at as ema_decay_at,
    make_group_step as make_group_step,
    make_multi_step as make_multi_step,
    make_train_step as make_train_step,
)
from .update import update as update
