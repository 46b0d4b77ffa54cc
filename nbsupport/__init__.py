"""Tested numerics behind the book *ReLU networks as random piecewise-linear systems*.

One module per idea; see the API page of the book for the reference.
"""

__version__ = "0.1.0"
