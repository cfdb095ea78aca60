"""Staged gradients: ``.grad`` tensors of gradacc.torch's own, copied into the window's buffer.

What CUDA parameters always get (and CPU ones with ``staging=True``): one
flat float32 buffer on the parameters' device, each parameter's ``.grad`` a
piece of it (sharing its storage, with a version counter of its own), cut
into buckets of consecutive tensors (``bucket_mb``, as DDP's buckets). The
window's gradients reach the client's host buffer (the server's
shared-memory segment, or the client's own memory for gRPC) by one of two
ways:

* **overlapped**: after :meth:`Staging.arm` (``worker.last_micro_batch()``)
  the next backward pass copies each bucket to the host as soon as every
  parameter in it has its final gradient — PyTorch's post-accumulate-grad
  hooks (torch >= 2.1) say when — on a side CUDA stream into page-locked
  host memory (the buffer registered with the CUDA driver), so the copies
  run while backward computes the earlier layers; the window's end waits
  only for what is still in flight;
* **at the window's end**: one copy of the whole buffer (no arm, torch
  1.13, or anything that touched the gradients after the armed pass).

On the CPU the same logic runs with synchronous copies, so everything but
the device transfer is tested without a GPU. Not thread-safe: the Worker's.
"""
import time

import torch

_OVERLAP = hasattr(torch.Tensor, "register_post_accumulate_grad_hook")


class Staging:

    def __init__(self, tensors, device, bucket_mb=25.0):
        """`tensors`: the job's (name, shape, offset, size), in order; `device`: the parameters'."""
        self.device = device
        self.cuda = device.type == "cuda"
        self.overlap = _OVERLAP
        n = sum(int(t.size) for t in tensors)
        self.flat = torch.zeros(n, dtype=torch.float32, device=device)
        self.tensors = tensors
        limit = max(1, int(bucket_mb * 2 ** 20) // 4)
        self.buckets, self.bucket_of = [], []  # (flat begin, flat end, tensor count); tensor -> bucket
        begin, count = 0, 0
        for t in tensors:
            if count and int(t.offset) + int(t.size) - begin > limit:
                self.buckets.append((begin, int(t.offset), count))
                begin, count = int(t.offset), 0
            self.bucket_of.append(len(self.buckets))
            count += 1
        self.buckets.append((begin, n, count))
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._pinned = None  # the host address registered with the CUDA driver
        # Per window (of the last finished one for the figures).
        self.last_wait_ms = 0.0
        self.last_overlapped = False
        self.windows = 0
        self.overlapped_windows = 0
        self.reset()

    # -- the window ------------------------------------------------------------
    def reset(self):
        """A new window (or a discarded one): zero gradients, nothing armed or copied."""
        self.flat.zero_()
        self.armed = False
        self.active = False
        self.copied = set()
        self.marks = None  # the backward counts when the armed pass ended
        self.early_copies = 0  # buckets copied before their pass ended
        self._host = None
        self._pending = None

    def grad_view(self, index):
        """Tensor `index`'s piece of the flat buffer: shares its storage, has its own version counter."""
        info = self.tensors[index]
        g = torch.empty(0, dtype=torch.float32, device=self.device)
        strides, step = [], 1
        for d in reversed(info.shape):
            strides.insert(0, step)
            step *= int(d)
        # (torch 1.13 has no untyped_storage(); its storage() is the same memory.)
        storage = self.flat.untyped_storage() if hasattr(self.flat, "untyped_storage") else self.flat.storage()
        g.set_(storage, int(info.offset), tuple(info.shape), tuple(strides))
        return g

    def arm(self):
        """The next backward pass is the window's last: copy each bucket as soon as it is final."""
        self.armed = True

    def begin_backward(self, host_array):
        """A backward pass starts; `host_array()` gives the window's host buffer (called only when armed)."""
        self.copied = set()
        self.marks = None
        if not self.armed or not self.overlap:
            self.active = False
            return
        self.armed = False
        self.active = True
        self.early_copies = 0
        self._host = self._host_tensor(host_array())
        self._pending = [count for _, _, count in self.buckets]

    def param_ready(self, index):
        """Post-accumulate-grad hook of parameter `index` (its .grad is final for this pass)."""
        if not self.active:
            return
        b = self.bucket_of[index]
        self._pending[b] -= 1
        if self._pending[b] == 0:
            self._copy(b)
            self.early_copies += 1

    def end_backward(self, accumulated):
        """The pass ended: the buckets not copied yet (parameters it did not reach) go now."""
        if not self.active:
            return
        self.active = False
        for b in range(len(self.buckets)):
            if b not in self.copied:
                self._copy(b)
        self.marks = list(accumulated)

    def finish(self, host_array, accumulated):
        """The window ends: its gradients are in `host_array` when this returns (waits for the copies)."""
        start = time.perf_counter()
        complete = self.marks is not None and self.marks == list(accumulated) and len(self.copied) == len(
            self.buckets)
        if complete:
            if self.cuda:
                self.stream.synchronize()
        else:
            # Nothing armed, no hooks, or the gradients changed after the
            # armed pass: one copy of everything.
            host = self._host_tensor(host_array)
            host.copy_(self.flat, non_blocking=self.cuda)
            if self.cuda:
                torch.cuda.current_stream(self.device).synchronize()
        self.last_wait_ms = (time.perf_counter() - start) * 1e3
        self.last_overlapped = complete
        self.windows += 1
        self.overlapped_windows += int(complete)

    # -- copies ---------------------------------------------------------------
    def _host_tensor(self, array):
        host = torch.from_numpy(array)
        if self.cuda and host.data_ptr() != self._pinned:
            # Page-locked: the device-to-host copies run asynchronously (a
            # registration that fails leaves them synchronous, the same
            # bytes). The buffer moves only when the client attaches shared
            # memory again (a server restart): one registration at a time.
            self.close()
            # (An enum of cudaError: int() as torch/cuda/_pin_memory_utils.py does.)
            if int(torch.cuda.cudart().cudaHostRegister(host.data_ptr(), host.numel() * 4, 0)) == 0:
                self._pinned = host.data_ptr()
        return host

    def _copy(self, b):
        begin, end, _ = self.buckets[b]
        if self.cuda:
            # After what the compute stream has queued (the gradients), on
            # the side stream: backward goes on meanwhile.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                self._host[begin:end].copy_(self.flat[begin:end], non_blocking=True)
        else:
            self._host[begin:end].copy_(self.flat[begin:end])
        self.copied.add(b)

    def close(self):
        """Unregisters the host buffer (before the client that owns it closes)."""
        if self._pinned is not None:
            torch.cuda.cudart().cudaHostUnregister(self._pinned)
        self._pinned = None
