"""gridbench-example: a third-party gridbench plugin.

A model that is linear in random Fourier features (``rff-linear``), a label-smoothed
cross-entropy (``smooth-ce``), two interleaved spirals (``two-spirals``): a 2-D dataset that
no linear classifier can solve in its input space, but a linear map of the right features can,
and the Lion optimizer (``lion``).
"""

__version__ = "0.1.0"
