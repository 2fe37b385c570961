"""The training engine: the loop, precision, checkpoints, logs. It runs any registered method
without knowing which (see ciard_fast.methods.base for the contract)."""
