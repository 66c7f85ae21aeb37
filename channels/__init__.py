"""Wireless physics for fedsim: geometry, path loss, fading, rates, compute and latency.

Pure NumPy/SciPy. Nothing in this package imports torch, flwr or ray, so every model here is
tested directly against its theory and can be used without the simulator.
"""
