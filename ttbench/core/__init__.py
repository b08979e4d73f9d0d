"""The science on tensors: losses, training-time measurement, linearisation and dynamics.

Imports only torch, numpy and scipy; knows nothing of Hydra, files or logging.
"""
