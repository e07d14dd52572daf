"""Forward SDEs with closed-form marginals, their reverses and probability-flow ODEs."""

from .base import SDE as SDE, ReverseSDE as ReverseSDE
from .registry import available_sdes as available_sdes, get_sde as get_sde, register_sde as register_sde
from .ve import VESDE as VESDE
from .vp import SubVPSDE as SubVPSDE, VPSDE as VPSDE
