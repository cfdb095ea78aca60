"""MPI for gradacc's Python workers, through the package's own binding.

gradacc needs MPI only for hierarchical reduction (``connect(...,
hierarchical=True)``) and for broadcasting non-parameter buffers
(``gradacc.torch``); a plain worker never initialises it, so it also runs
outside ``mpirun``. :func:`init` initialises MPI once (thread level
SERIALIZED) and finalises it at interpreter exit; MPI initialised by another
library of the process (e.g. mpi4py) is used as it is.
"""
import atexit

import numpy as np

from . import _core

__all__ = ["init", "initialized", "rank", "size", "barrier", "broadcast", "allreduce_sum", "World"]

_finalize_registered = False


def init():
    """Initialises MPI (idempotent) and registers its finalisation at exit."""
    global _finalize_registered
    _core.mpi_initialize()
    if not _finalize_registered:
        atexit.register(_core.mpi_finalize)
        _finalize_registered = True


def initialized():
    return _core.mpi_initialized()


def rank():
    """This process's rank in MPI_COMM_WORLD (0 when MPI is not initialised)."""
    return _core.mpi_rank()


def size():
    """Ranks in MPI_COMM_WORLD (1 when MPI is not initialised)."""
    return _core.mpi_size()


def barrier():
    _core.mpi_barrier()


def broadcast(array, root=0):
    """Overwrites a C-contiguous, writeable NumPy array with `root`'s, in place."""
    _core.mpi_broadcast(array, root)


def allreduce_sum(values):
    """The element-wise sum over every rank of a sequence of floats (as float64)."""
    array = np.ascontiguousarray(np.asarray(values, dtype=np.float64)).copy()
    _core.mpi_allreduce_sum(array)
    return array


class World:
    """MPI_COMM_WORLD as gradacc.torch's `comm` (broadcast of buffers)."""

    def __init__(self):
        init()

    @property
    def rank(self):
        return rank()

    @property
    def size(self):
        return size()

    def broadcast(self, array, root=0):
        broadcast(array, root)
