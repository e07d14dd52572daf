"""Graph SDE systems (GDSS): data, the X/A score networks, the system's loss and samplers, metrics."""
