"""The accelerate loop, the sweep / experiment protocol, checkpoints, logging and reports."""
