"""Train any ``torch.nn.Module`` through gradacc (PyTorch 1.13 and 2.x; CPU, CUDA parameters staged).

Your loop keeps its shape; the server runs your ``torch.optim`` optimizer::

    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    worker = gradacc.torch.connect(model, optimizer, server="127.0.0.1:7070")
    while not worker.done:
        for x, y in micro_batches_of_this_window:       # any sizes, any number
            loss = F.cross_entropy(model(x), y)         # the mean over x
            loss.backward()
        worker.step()     # instead of optimizer.step(); optimizer.zero_grad()

What :class:`Worker` does for you:

* **The gradient buffer.** Each trainable parameter's ``.grad`` is a view
  of the window's gradient buffer (on the server's host: the shared-memory
  segment the server reads); ``backward()`` adds into it.
* **Exact averaging.** The window's gradient is the mean over every sample
  of the window, across micro-batches and ranks of any sizes (the short
  last window of an epoch included): each micro-batch's gradient is scaled
  by its sample count (``loss_reduction="mean"``, the default, for a loss
  that averages over the micro-batch; ``"sum"`` for a summed loss), and the
  server divides the window's sum by its sample count. A micro-batch's
  sample count is the leading dimension of the first tensor given to the
  model's forward (``samples_of`` overrides that), counted for each forward
  whose output a ``backward()`` reaches.
* **Zeroing is gradacc's.** The buffer is zeroed when the window ends, so a
  forgotten ``zero_grad()`` cannot leak gradients into the next window. A
  ``zero_grad()`` (or ``set_to_none``, or anything else that replaces or
  modifies ``.grad``, e.g. ``clip_grad_norm_``) between ``backward()`` and
  the end of the window raises :class:`gradacc.UsageError` (the optimizer's
  and the model's ``zero_grad`` at once; any other way when the next
  ``backward()`` reaches the parameter or at ``step()``) before anything
  is pushed. ``zero_grad()`` at a window's start is allowed (a no-op).
* **Parameters without gradients.** As ``torch.optim`` skips a parameter
  whose ``.grad`` is None, a parameter that no ``backward()`` of this rank
  reached in the window is reported untouched, and the server steps a
  tensor only when some rank touched it (no weight decay, momentum or Adam
  state change, no advance of its own step count otherwise).
* **Parameters.** :meth:`Worker.step` ends the window (push, wait, pull)
  and copies the new parameters into each ``param.data``; the local
  optimizer's ``step()`` raises (the server steps). ``scheduler.step()`` is
  harmless: the server's schedule is the one that counts.
* **Buffers** (BatchNorm running statistics, anything in
  ``named_buffers()``): at the end of every window every rank takes rank
  0's values (DDP's ``broadcast_buffers``, once per window rather than per
  forward), over MPI (``comm``); so evaluation on any rank sees rank 0's
  statistics. Needs ``mpirun`` when the model has buffers and more than one
  rank (``broadcast_buffers=False`` keeps each rank's own).
* **Mixed precision.** ``torch.autocast`` computes in bf16/fp16 while the
  parameters (and so the gradients gradacc sums) stay float32. fp16 with a
  ``GradScaler``: the job carries ``loss_scaling`` (``write_job(...,
  scaler=scaler)``) and the **server** applies GradScaler's rules to the
  window: it unscales the reduced gradient, skips the window everywhere
  when that is not finite (no step, no optimizer state change; the result
  says ``skipped``) and evolves the scale (backoff, growth interval) — the
  same scale on every rank. The loop keeps ``scaler.scale(loss).backward()``
  and ends the window with ``worker.step()`` instead of
  ``scaler.step(optimizer); scaler.update()``; ``connect(..., scaler=scaler)``
  keeps the scaler's scale equal to the server's after every window (or
  use ``worker.scale(loss)``, no GradScaler needed).
* **The loss** the server shows is the sum over micro-batches of
  ``loss.item()`` times the sample count (``"mean"``), read from the tensor
  ``loss.backward()`` was called on (calls through
  ``torch.autograd.backward`` count as 0).

:func:`job_spec` and :func:`write_job` turn a model, its optimizer
(``SGD``, ``Adam``, ``AdamW``) and scheduler (``StepLR``,
``CosineAnnealingLR``, ``LinearLR`` warm-up, ``SequentialLR`` of a warm-up
and one of those) into the job ``gradacc-server --job=...`` serves, with the
model's initial parameters in a safetensors file beside it. What the server
cannot compute exactly as ``torch.optim`` does is refused, never
approximated. They live in :mod:`gradacc.torch_job` (re-exported here).
"""
import functools
import math
import os
import threading

import numpy as np
import torch

from .client import connect as _connect_client
from .client import env_rank, env_world_size
from .errors import Error, UsageError
from .torch_job import job_spec, loss_scaling_spec, optimizer_spec, schedule_spec, write_job
from .torch_job import trainable as _trainable
from .torch_probe import (_Forward, _default_samples_of, _install_backward_probe, _output_tensors,
                          _remove_backward_probe, _tls, _workers, _workers_lock)
from .torch_staging import Staging

__all__ = ["Worker", "connect", "job_spec", "loss_scaling_spec", "optimizer_spec", "schedule_spec", "write_job"]


class Worker:
    """A model trained through gradacc: its gradients, parameters and windows.

    Made by :func:`connect`. Thread-compatible (the thread that runs the
    forward and backward passes calls :meth:`step`). Holds the gradacc
    client; installs hooks on the model (removed by :meth:`close`) and
    replaces the ``zero_grad`` and ``step`` of the model and optimizer
    objects it was given.
    """

    def __init__(self, model, optimizer, client, *, world_size, loss_reduction, samples_of, comm,
                 broadcast_buffers, staging=False, scaler=None, bucket_mb=25.0):
        self.model = model
        self.optimizer = optimizer
        self.client = client
        self.world_size = world_size
        self._mean = loss_reduction == "mean"
        self._samples_of = samples_of or _default_samples_of
        self._comm = comm
        self._broadcast_buffers = broadcast_buffers
        self._scaler = scaler
        self._loss_scale = 0.0
        self._params = _trainable(model)
        # Staging (gradacc/torch_staging.py): each .grad is a piece of a flat
        # buffer of our own on the parameters' device, copied into the
        # window's buffer by buckets (overlapped with the last backward
        # pass after last_micro_batch()) or at the window's end; always for
        # CUDA parameters, on request on the CPU. Else each .grad is a view
        # of the window's buffer (no copy).
        self._staging = bool(staging)
        self._bucket_mb = float(bucket_mb)
        self._stage = None  # the Staging, once the device is known
        self._device = None
        self._hooks = []
        self._patched = []
        self._probe_held = False
        self._closed = False
        # The open window.
        self._micro_batches = 0
        self._samples = 0
        self._loss_sum = 0.0
        self._bad_loss = None
        self._grads = []       # the .grad tensor of each parameter (views of the buffer)
        self._grad_ptr = []
        self._grad_version = []  # ._version when installed
        self._accumulated = []   # backward passes that added into it since
        # The backward pass in progress.
        self._backward_id = 0
        self._in_backward = False
        self._bw_thread = None
        self._bw_samples = 0

    # -- setup -----------------------------------------------------------------
    def _attach(self):
        self._check_job()
        self._install_parameters()
        self._install_grads()
        _install_backward_probe()
        self._probe_held = True
        with _workers_lock:
            _workers.add(self)
        self._hooks.append(self.model.register_forward_hook(self._on_forward))
        for index, (_, p) in enumerate(self._params):
            self._hooks.append(p.register_hook(functools.partial(self._on_param_grad, index)))
            if self._stage is not None and self._stage.overlap:
                self._hooks.append(p.register_post_accumulate_grad_hook(
                    functools.partial(self._on_param_accumulated, index)))
        self._patch(self.model, "zero_grad", self._guarded_zero_grad("the model"))
        if self.optimizer is not None:
            self._patch(self.optimizer, "zero_grad", self._guarded_zero_grad("the optimizer"))
            self._patch(self.optimizer, "step", self._refused_optimizer_step)
        self._sync_buffers()
        self._sync_scaler()

    def _patch(self, obj, name, replacement):
        had = name in vars(obj)
        self._patched.append((obj, name, had, vars(obj).get(name)))
        setattr(obj, name, replacement)

    def _check_job(self):
        job = self.client.job
        tensors = [(t.name, tuple(t.shape)) for t in self.client.tensors]
        mine = [(n, tuple(int(d) for d in p.shape)) for n, p in self._params]
        if tensors != mine:
            lines = []
            for i in range(max(len(tensors), len(mine))):
                a = tensors[i] if i < len(tensors) else None
                b = mine[i] if i < len(mine) else None
                if a != b:
                    lines.append(f"  #{i}: job {a[0] + str(list(a[1])) if a else '-'}, "
                                 f"model {b[0] + str(list(b[1])) if b else '-'}")
            raise UsageError("the model's trainable parameters differ from the job's tensors (names, order, "
                             "shapes):\n" + "\n".join(lines[:10]), reason="ERROR_REASON_MANIFEST")
        devices = sorted({str(p.device) for _, p in self._params})
        for name, p in self._params:
            if p.dtype != torch.float32:
                raise UsageError(f"parameter {name} is {p.dtype}; gradacc.torch trains float32 parameters (keep "
                                 "them float32 and compute in lower precision with torch.autocast)")
            if p.device.type not in ("cpu", "cuda"):
                raise UsageError(f"parameter {name} is on {p.device}; gradacc.torch trains parameters on the CPU "
                                 "or on one CUDA device")
        if len(devices) > 1:
            where = {d: [n for n, p in self._params if str(p.device) == d][:3] for d in devices}
            raise UsageError(f"the model's trainable parameters are on {len(devices)} devices ({where}); "
                             "gradacc.torch serves a model on one device per rank")
        self._device = self._params[0][1].device
        if self._device.type == "cuda":
            self._staging = True
        window = job.get("window", {})
        expected = int(window.get("max_workers") or window.get("num_workers") or 0)
        if not int(window.get("max_workers") or 0) and expected != self.world_size:
            raise UsageError(f"the job has {expected} workers but this run has {self.world_size} ranks "
                             "(mpirun -np, or world_size=)", reason="ERROR_REASON_UNKNOWN_WORKER")
        reduction = job.get("reduction", "REDUCTION_MEAN_OVER_SAMPLES")
        if reduction != "REDUCTION_MEAN_OVER_SAMPLES":
            raise UsageError(f"the job's reduction is {reduction}; gradacc.torch makes the window's gradient the "
                             "mean over its samples, which needs REDUCTION_MEAN_OVER_SAMPLES")
        if self.optimizer is not None:
            self._check_optimizer(job.get("optimizer", {}))
        self._check_scaler(job.get("loss_scaling"))

    def _check_scaler(self, served):
        """A GradScaler given to connect() must describe the job's loss scaling (the server applies it)."""
        if self._scaler is None:
            return
        if served is None:
            raise UsageError("a GradScaler was given but the job has no loss_scaling: the server would not unscale "
                             "the gradients (write the job with write_job(..., scaler=scaler))",
                             reason="ERROR_REASON_UNSUPPORTED")
        if not self._scaler.is_enabled():
            raise UsageError("this GradScaler is disabled (torch.cuda.amp.GradScaler without CUDA disables itself): "
                             "use torch.amp.GradScaler('cpu') (PyTorch >= 2.3), or no scaler and "
                             "worker.scale(loss)")
        mine = loss_scaling_spec(self._scaler)
        different = [k for k in ("growth_factor", "backoff_factor", "growth_interval")
                     if not math.isclose(float(served.get(k, 0)), float(mine[k]), rel_tol=1e-12)]
        if different:
            raise UsageError(f"the job's loss_scaling is {served} but this GradScaler has {mine} (differs in "
                             f"{different}): the server applies the job's rules", reason="ERROR_REASON_UNSUPPORTED")

    def _sync_scaler(self):
        """The GradScaler's scale becomes the open window's (the server's)."""
        if self._scaler is None:
            return
        scale = float(self.client.loss_scale)
        if getattr(self._scaler, "_scale", None) is None:
            self._scaler._init_scale = scale  # its lazy initialisation (first scale()) takes it
        else:
            self._scaler.update(scale)

    def _check_optimizer(self, served):
        mine = optimizer_spec(self.optimizer)
        kind = served.get("kind", "KIND_SGD")
        if kind == "KIND_UNSPECIFIED":
            kind = "KIND_SGD"
        different = kind != mine["kind"] or not math.isclose(float(served.get("lr", 0)), mine["lr"], rel_tol=1e-9)
        section = "sgd" if mine["kind"] == "KIND_SGD" else "adam"
        defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
        for key, value in mine[section].items():
            theirs = served.get(section, {}).get(key, False if isinstance(value, bool) else 0.0)
            if not isinstance(value, bool) and float(theirs) == 0 and key in defaults:
                theirs = defaults[key]
            if isinstance(value, bool):
                different |= bool(theirs) != value
            else:
                different |= not math.isclose(float(theirs), value, rel_tol=1e-9, abs_tol=0.0)
        if different:
            raise UsageError(f"the server's job runs {served} but this optimizer is {mine}: the server applies the "
                             "job's optimizer, so the local one must describe it (or pass optimizer=None)",
                             reason="ERROR_REASON_UNSUPPORTED")

    # -- parameters and gradients ----------------------------------------------
    def _install_parameters(self):
        with torch.no_grad():
            if self._device.type != "cpu":
                # One host-to-device copy of the whole vector, then
                # device-to-device pieces: no synchronisation per parameter.
                flat = torch.from_numpy(np.array(self.client.param(), copy=True)).to(self._device,
                                                                                   non_blocking=True)
                for info, (_, p) in zip(self.client.tensors, self._params):
                    p.data.copy_(flat[info.offset:info.offset + info.size].view(p.shape))
                return
            for index, (_, p) in enumerate(self._params):
                source = self.client.param(index)
                if p.data.is_contiguous():
                    np.copyto(p.data.numpy(), source)
                else:
                    p.data.copy_(torch.from_numpy(source.copy()))

    def _install_grads(self):
        self._grads, self._grad_ptr, self._grad_version, self._accumulated = [], [], [], []
        if self._staging:
            if self._stage is None:
                self._stage = Staging(self.client.tensors, self._device, self._bucket_mb)
            self._stage.reset()
        for index, (_, p) in enumerate(self._params):
            g = self._stage.grad_view(index) if self._staging else torch.from_numpy(self.client.grad(index))
            p.grad = g
            self._grads.append(g)
            self._grad_ptr.append(g.data_ptr())
            self._grad_version.append(g._version)
            self._accumulated.append(0)
        self._micro_batches = 0
        self._samples = 0
        self._loss_sum = 0.0
        self._bad_loss = None  # (micro-batch, value) of the window's first non-finite loss
        self._loss_scale = float(self.client.loss_scale)  # the open window's (0: no loss scaling)

    def _grad_problem(self, index):
        """What happened to parameter `index`'s .grad since the window opened, or None."""
        name, p = self._params[index]
        g = p.grad
        if g is None:
            return (f"{name}.grad was set to None (zero_grad(set_to_none=True)?) between backward() and the end of "
                    "the window")
        if g is not self._grads[index] or g.data_ptr() != self._grad_ptr[index]:
            return f"{name}.grad was replaced by another tensor between backward() and the end of the window"
        if g._version != self._grad_version[index] + self._accumulated[index]:
            return (f"{name}.grad was modified in place (zero_grad()? clip_grad_norm_? grad.mul_()?) between "
                    "backward() and the end of the window")
        return None

    def _usage(self, problem):
        return UsageError(problem + ": gradacc owns the window's gradients — it zeroes them when the window ends "
                          "(worker.step()) and the server applies clipping; remove the call. Nothing was pushed.")

    # -- hooks -----------------------------------------------------------------------
    def _on_forward(self, module, inputs, output):
        if not torch.is_grad_enabled():
            return
        outputs = _output_tensors(output, [])
        if not outputs:
            return
        record = _Forward(int(self._samples_of(inputs)))
        for t in outputs:
            t.register_hook(functools.partial(self._on_output_grad, record))

    def _begin_backward(self):
        self._backward_id += 1
        self._in_backward = True
        self._bw_thread = threading.get_ident()
        self._bw_samples = 0
        if self._stage is not None:
            self._stage.begin_backward(self.client.grad)
        torch.autograd.Variable._execution_engine.queue_callback(self._on_backward_end)

    def _on_output_grad(self, record, grad):
        if not self._in_backward:
            self._begin_backward()
        if record.counted_in != self._backward_id:
            record.counted_in = self._backward_id
            self._bw_samples += record.samples
        return None

    def _on_param_grad(self, index, grad):
        if not self._in_backward:
            self._begin_backward()
        problem = self._grad_problem(index)
        if problem is not None:
            self._in_backward = False
            raise self._usage(problem)
        if self._bw_samples == 0 and self._mean:
            self._in_backward = False
            raise UsageError(
                f"a backward() reached {self._params[index][0]} without passing through a forward of the model "
                "(no sample count for it): compute every term of the micro-batch's loss from the model's output, "
                "or use loss_reduction='sum'")
        self._accumulated[index] += 1
        # The buffer holds the gradient of the summed loss: a micro-batch's
        # mean loss counts its sample count times.
        return grad * self._bw_samples if self._mean else None

    def _on_param_accumulated(self, index, param):
        self._stage.param_ready(index)

    def _on_backward_end(self):
        self._in_backward = False
        if self._stage is not None:
            self._stage.end_backward(self._accumulated)
        root = getattr(_tls, "root", None)
        loss = 0.0
        if root is not None and root.numel() == 1:
            loss = float(root.detach())
            if self._loss_scale:
                loss /= self._loss_scale  # backward() ran on the scaled loss
        samples = self._bw_samples
        # With loss scaling an overflow is the server's to judge (it skips
        # the window); elsewhere a non-finite loss is refused here.
        if not math.isfinite(loss) and self._bad_loss is None and not self._loss_scale:
            self._bad_loss = (self._micro_batches, loss)
        self._micro_batches += 1
        self._samples += samples
        self._loss_sum += loss * samples if self._mean else loss
        self.client.add_micro_batch(samples, loss * samples if self._mean else loss)

    def _guarded_zero_grad(self, owner):
        def zero_grad(set_to_none=False):
            if self._micro_batches or self._in_backward:
                raise self._usage(f"zero_grad(set_to_none={set_to_none}) on {owner} after {self._micro_batches} "
                                  "backward() pass(es) of this window")
            # At a window's start the gradients are zero already (and must
            # stay the window's buffer): nothing to do.
        return zero_grad

    def _refused_optimizer_step(self, *args, **kwargs):
        raise UsageError("the gradacc server applies the optimizer step: end the window with worker.step() "
                         "instead of optimizer.step() (with a GradScaler: instead of scaler.step(optimizer); "
                         "scaler.update() — the server unscales, skips and updates the scale)")

    # -- buffers -----------------------------------------------------------------------
    def _sync_buffers(self):
        """Every rank takes rank 0's buffers (see the module docstring)."""
        if not self._broadcast_buffers or self.world_size <= 1:
            return
        buffers = [b for _, b in self.model.named_buffers()]
        if not buffers:
            return
        if self._comm is None:
            from . import mpi
            if not os.environ.get("OMPI_COMM_WORLD_SIZE") and not mpi.initialized():
                raise UsageError("the model has buffers (e.g. BatchNorm statistics) and this run has "
                                 f"{self.world_size} ranks: launch it with mpirun so that rank 0's buffers can be "
                                 "broadcast, or pass broadcast_buffers=False (or comm=)")
            self._comm = mpi.World()
        with torch.no_grad():
            for b in buffers:
                if b.device.type == "cpu" and b.is_contiguous():
                    self._comm.broadcast(b.numpy(), 0)
                else:
                    c = b.detach().to("cpu", copy=True).contiguous()
                    self._comm.broadcast(c.numpy(), 0)
                    b.copy_(c)

    # -- the window ----------------------------------------------------------------------
    @property
    def done(self):
        """True once the job has run all its windows."""
        return self.client.done

    @property
    def version(self):
        """Parameter version = the open window."""
        return self.client.version

    @property
    def loss_scale(self):
        """A job with loss scaling: the open window's scale (the server's; 0 without loss scaling)."""
        return self._loss_scale

    def scale(self, loss):
        """``loss`` times the open window's loss scale (``GradScaler.scale`` without a GradScaler).

        ``worker.scale(loss).backward()``; in a job without loss scaling
        ``loss`` itself."""
        return loss * self._loss_scale if self._loss_scale else loss

    @property
    def micro_batches(self):
        """backward() passes recorded in the open window."""
        return self._micro_batches

    @property
    def samples(self):
        """Samples recorded in the open window."""
        return self._samples

    def last_micro_batch(self):
        """Says that the next ``backward()`` is the window's last (staged gradients: CUDA parameters).

        During that pass each bucket of gradients is copied to the host as
        soon as it is final, overlapped with the rest of backward (as DDP
        overlaps its all-reduce), so ``step()`` waits only for the copies
        still in flight (``copy_wait_ms``). Needs PyTorch >= 2.1
        (post-accumulate-grad hooks); otherwise, or without this call, or
        when anything touches the gradients after that pass, ``step()``
        copies the whole buffer — the same bytes either way. A no-op for
        ``.grad`` views of the window's buffer (the CPU default).
        """
        if self._stage is not None:
            self._stage.arm()

    @property
    def copy_wait_ms(self):
        """Staged gradients: how long the last ``step()`` waited for the device-to-host copy (ms; 0 for views)."""
        return self._stage.last_wait_ms if self._stage is not None else 0.0

    @property
    def copy_overlapped(self):
        """Staged gradients: whether the last window's copy ran during its last backward pass."""
        return self._stage is not None and self._stage.last_overlapped

    def discard(self):
        """Drops this rank's gradients of the open window, so that it can be computed again.

        Every ``.grad`` becomes the window buffer's zeroed view again (also
        one that was set to None, replaced or modified in place), the
        window's micro-batches and samples are forgotten, nothing is pushed
        and the version stays. The documented way out after a refusal: a
        ``NOT_FINITE`` gradient or loss, a caught ``.grad`` change, a batch
        you want to skip. Exactly once holds (see
        :meth:`gradacc.Client.discard`). Raises :class:`gradacc.UsageError`
        inside a backward pass.
        """
        if self._closed:
            raise UsageError("this gradacc.torch worker is closed")
        if self._in_backward:
            raise UsageError("discard() inside a backward pass")
        self.client.discard()
        self._install_grads()

    def step(self, allow_empty=False):
        """Ends the window: checks the gradients, pushes, waits, installs the new parameters.

        Args:
          allow_empty: this rank has no sample in this window (e.g. the short
            last window of an epoch): push an empty contribution. Without it,
            a window with no backward() raises :class:`gradacc.Error`
            (``ERROR_REASON_NOTHING_TO_PUSH``): ending a window twice is an
            error.

        Returns the :class:`gradacc.StepResult`. Raises
        :class:`gradacc.UsageError` (nothing pushed) when a ``.grad`` was
        zeroed, replaced or modified since backward(), and
        :class:`gradacc.Error` when the server refuses (e.g.
        ``ERROR_REASON_NOT_FINITE`` for a NaN gradient: the window stays
        open and unchanged on the server).
        """
        if self._closed:
            raise UsageError("this gradacc.torch worker is closed")
        if self._in_backward:
            raise UsageError("step() inside a backward pass")
        for index in range(len(self._params)):
            problem = self._grad_problem(index)
            if problem is not None:
                raise self._usage(problem)
        if self._bad_loss is not None:
            k, value = self._bad_loss
            raise Error(f"the loss of micro-batch {k} of window {self.version} is {value}, not finite (so are, most "
                        "likely, the gradients it added): nothing was pushed; worker.discard() drops the window's "
                        "gradients so that it can be computed again", code="INVALID_ARGUMENT", grpc_code=3,
                        reason="ERROR_REASON_NOT_FINITE", action="CLIENT_ACTION_FIX_REQUEST",
                        metadata={"tensor": "loss", "micro_batch": str(k), "window": str(self.version)})
        if self._micro_batches == 0 and allow_empty:
            self.client.add_micro_batch(0, 0.0)
        if self._staging:
            # The window's gradients into its buffer (device to host for
            # CUDA; what the last pass copied already is only waited for),
            # then the push reads them from there.
            self._stage.finish(self.client.grad(), self._accumulated)
        # torch.optim skips a parameter whose .grad is None: what no
        # backward() of this rank reached is untouched (the server steps a
        # tensor when any rank touched it).
        self.client.set_untouched([i for i, n in enumerate(self._accumulated) if n == 0])
        result = self.client.step()
        self._install_parameters()
        self._install_grads()
        self._sync_buffers()
        self._sync_scaler()
        return result

    # -- the rest -------------------------------------------------------------------------
    def status(self):
        """The server's status as a dict (see gradacc.Client.status)."""
        return self.client.status()

    def status_text(self):
        return self.client.status_text()

    def report_test_accuracy(self, accuracy, step=None):
        self.client.report_test_accuracy(accuracy, step)

    def close(self, leave=True):
        """Removes the hooks and patches, leaves the job (when `leave`) and closes the client."""
        if self._closed:
            return
        self._detach()
        try:
            if leave and self.client.leader:
                self.client.leave()
        finally:
            self.client.close()

    def _detach(self):
        """Removes the hooks and patches; each .grad that is a view of the buffer becomes a copy.

        Without views left, closing the client frees it (its channels) at once."""
        self._closed = True
        if self._stage is not None:
            self._stage.close()  # unregisters the client's buffer before the client goes
        if self._probe_held:
            self._probe_held = False
            _remove_backward_probe()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for obj, name, had, old in reversed(self._patched):
            if had:
                setattr(obj, name, old)
            else:
                delattr(obj, name)
        self._patched = []
        for index, (_, p) in enumerate(self._params):
            if index < len(self._grads) and p.grad is self._grads[index]:
                p.grad = p.grad.clone()
        self._grads, self._grad_ptr, self._grad_version, self._accumulated = [], [], [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def connect(model, optimizer=None, *, server, rank=None, world_size=None, loss_reduction="mean", samples_of=None,
            broadcast_buffers=True, comm=None, staging=False, scaler=None, bucket_mb=25.0, **client_options):
    """Trains `model` through the gradacc server at `server`: returns its :class:`Worker`.

    Joins the job, checks that the model's trainable parameters are the
    job's tensors (names from ``named_parameters()``, order, shapes) and that
    `optimizer` (when given) describes the job's optimizer, installs the
    job's current parameters into the model and the window's gradient
    buffer as each parameter's ``.grad``.

    Args:
      model: a ``torch.nn.Module`` with float32 parameters, all on the CPU
        or all on one CUDA device.
      optimizer: the ``torch.optim`` optimizer the job was made from (its
        ``step`` and ``zero_grad`` are taken over), or None.
      server: ``HOST:PORT`` of the gradacc server.
      rank, world_size: default: mpirun's environment
        (``OMPI_COMM_WORLD_RANK`` / ``_SIZE``), else 0 and 1. world_size must
        equal the job's workers.
      loss_reduction: ``"mean"`` when each micro-batch's loss averages over
        its samples (``F.cross_entropy`` and friends by default), ``"sum"``
        when it sums them.
      samples_of: ``callable(inputs) -> int``, the sample count of a forward
        given its positional inputs (default: the first tensor's leading
        dimension).
      broadcast_buffers, comm: see the module docstring (comm: an object
        with ``broadcast(ndarray, root)``; default MPI_COMM_WORLD).
      staging: each ``.grad`` a tensor of gradacc.torch's own, copied into
        the window's buffer when the window ends, instead of a view of that
        buffer (the same bits; what CUDA parameters always get). Default
        False on the CPU.
      bucket_mb: staged gradients (CUDA): the size of the buckets copied to
        the host during the last backward pass (see
        :meth:`Worker.last_micro_batch`).
      scaler: the ``GradScaler`` of an fp16 loop in a job with
        ``loss_scaling`` (its rules must be the job's): after every window
        its scale is set to the server's, so ``scaler.scale(loss)`` scales
        by what the server unscales by. Without one, ``worker.scale(loss)``.
      client_options: passed to :func:`gradacc.connect` (TLS, tokens,
        timeouts, ``shared_memory``, ``hierarchical``, ...).

    Raises:
      gradacc.Error: the server refused or cannot be reached.
      gradacc.UsageError: the model or optimizer does not match the job
        (nothing is pushed).
    """
    if loss_reduction not in ("mean", "sum"):
        raise UsageError(f"loss_reduction must be 'mean' or 'sum', not {loss_reduction!r}")
    rank = env_rank() if rank is None else int(rank)
    world_size = env_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < max(world_size, 1):
        raise UsageError(f"rank {rank} outside world_size {world_size}", reason="ERROR_REASON_UNKNOWN_WORKER")
    client = _connect_client(server, rank, **client_options)
    worker = Worker(model, optimizer, client, world_size=world_size, loss_reduction=loss_reduction,
                    samples_of=samples_of, comm=comm, broadcast_buffers=broadcast_buffers, staging=staging,
                    scaler=scaler, bucket_mb=bucket_mb)
    try:
        worker._attach()
    except BaseException:
        worker._detach()
        client.close()
        raise
    return worker

