"""Suite-wide settings.

The tests use tiny tensors, for which a second intra-op thread only spin-waits (and, on a loaded
machine, slows a test by an order of magnitude): run them on one thread.
"""

import torch


def pytest_configure(config):
    torch.set_num_threads(1)
