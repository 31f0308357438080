"""Engine bindings: turn function specs and bound calls into an engine's functions."""
