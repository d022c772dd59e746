"""Sequence models (VRNN, SRNN, Gaussian and discrete HMMs) and sequential Monte Carlo."""

__all__: list[str] = []
