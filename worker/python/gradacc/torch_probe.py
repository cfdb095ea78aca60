"""What gradacc.torch needs from autograd beyond hooks: the loss a backward() ran on, and forwards' sample counts.

Autograd's hooks see gradients, not the tensor ``backward()`` was called on
(the loss the server shows is the workers' sum of it): while a Worker is
attached, ``Tensor.backward`` is wrapped to note it (counted, restored when
the last Worker closes). The forward hook's helpers find a forward's output
tensors and its sample count.
"""
import functools
import threading
import weakref

import torch

from .errors import UsageError

_tls = threading.local()  # .root: the tensor backward() was called on, in this thread
_original_backward = None
_probe = None  # our Tensor.backward, while installed
_probe_users = 0  # Workers attached (the probe goes when the last one closes)
_workers = weakref.WeakSet()  # live Workers (the backward probe tidies up after a failed pass)
_workers_lock = threading.Lock()  # a set iterated while another thread adds to it raises


def _install_backward_probe():
    """Makes Tensor.backward note its tensor (the loss) for the workers, for as long as one is attached.

    Autograd's hooks do not see the tensor backward() was called on, and the
    server's loss is the workers' sum of it; ``torch.autograd.backward(loss)``
    does not pass through here (its loss counts as 0). Counted: the original
    comes back when the last Worker closes (_remove_backward_probe)."""
    global _original_backward, _probe, _probe_users
    with _workers_lock:
        _probe_users += 1
        if _probe is None:
            _original_backward = torch.Tensor.backward
            _probe = _backward_probe(_original_backward)
            torch.Tensor.backward = _probe


def _backward_probe(original):
    @functools.wraps(original)
    def backward(self, *args, **kwargs):
        previous = getattr(_tls, "root", None)
        _tls.root = self
        try:
            return original(self, *args, **kwargs)
        finally:
            _tls.root = previous
            # A pass that failed (a hook raised) never ran its end callback.
            me = threading.get_ident()
            with _workers_lock:
                workers = list(_workers)
            for worker in workers:
                if worker._in_backward and worker._bw_thread == me:
                    worker._in_backward = False
    return backward


def _remove_backward_probe():
    """One Worker fewer; the last one puts torch's Tensor.backward back (unless something replaced ours since)."""
    global _original_backward, _probe, _probe_users
    with _workers_lock:
        _probe_users -= 1
        if _probe_users > 0 or _probe is None:
            return
        if torch.Tensor.backward is _probe:
            torch.Tensor.backward = _original_backward
        _probe = None


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _output_tensors(value, out):
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            out.append(value)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _output_tensors(v, out)
    elif isinstance(value, dict):
        for v in value.values():
            _output_tensors(v, out)
    return out


def _default_samples_of(inputs):
    t = _first_tensor(inputs)
    if t is None or t.dim() == 0:
        raise UsageError("cannot tell the micro-batch's sample count: the model's forward got no tensor with a "
                         "leading (batch) dimension as a positional argument; pass samples_of=callable(inputs) "
                         "to gradacc.torch.connect")
    return int(t.shape[0])


class _Forward:
    """One forward of the model: its sample count, and the last backward that counted it."""
    __slots__ = ("samples", "counted_in")

    def __init__(self, samples):
        self.samples = samples
        self.counted_in = -1
