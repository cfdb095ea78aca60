"""gradacc: distributed gradient accumulation, from Python.

The C++ client library (``gradacc._core``, built by gradacc's CMake with
Debian's pybind11) under a small Python API:

* :func:`connect` / :class:`Client`: join a job, add gradients into the
  window's buffer (NumPy views, no copies), ``step()`` to end the window;
* :mod:`gradacc.torch`: train any ``torch.nn.Module`` through gradacc, and
  turn a model and a ``torch.optim`` optimizer into a job for
  ``gradacc-server --job=...``;
* :class:`Error` / :class:`UsageError`: failures with their gRPC code and
  machine-readable reason (``ERROR_REASON_*``) and action;
* :func:`save_safetensors` / :func:`load_safetensors`: the F32 safetensors
  files the server reads and writes.

Use Debian's ``/usr/bin/python3``.
"""
from ._core import load_safetensors, save_safetensors
from .client import Client, StepResult, TensorInfo, connect, env_rank, env_world_size
from .errors import Error, UsageError

__all__ = [
    "Client", "Error", "StepResult", "TensorInfo", "UsageError", "connect", "env_rank", "env_world_size",
    "load_safetensors", "save_safetensors",
]
