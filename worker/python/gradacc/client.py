"""A gradacc worker in Python: the C++ client library, with NumPy views.

    import gradacc

    client = gradacc.connect("127.0.0.1:7070", worker=rank)   # join + pull
    while not client.done:
        for x, y in my_micro_batches:
            g = client.grads()          # {name: float32 view of .grad}
            ... add d(sum of the sample losses)/d(params) into g[name] ...
            client.add_micro_batch(len(x), loss_sum)
        client.step()   # push, wait for the window to close, pull, zero grad

Workers push the gradient of the *summed* loss over their samples; the
server divides by the window's sample count (the job's reduction).

Views, and when they stop being valid. ``grad()``/``grads()`` and
``param()``/``params()`` return NumPy arrays over the client's own memory,
without a copy (on the server's host they are views of the shared-memory
segments the server reads and writes). They belong to the window in which
they were taken and are valid until the next :meth:`Client.step`:

* after ``step()`` every gradient view handed out before is made read-only,
  so writing a gradient into a stale view raises ``ValueError`` instead of
  being lost; take the views again (``client.grads()``) in each window;
* parameter views are always read-only (on shared memory they are the
  server's segment) and, once stale, may hold another version's values;
* memory a stale view points at stays allocated as long as the view lives
  (never a crash), and is freed after it is gone;
* slices or ``torch.from_numpy`` tensors you derive from a view are not
  made read-only by ``step()``: derive them again each window.

A Client is for one thread at a time (another thread calling in while
``step()`` runs gets an error); ``step()`` and the other calls that wait on
the server release the GIL.
"""
import collections
import json
import os
import weakref

from . import _core
from .errors import UsageError

__all__ = ["Client", "StepResult", "TensorInfo", "connect", "env_rank", "env_world_size"]

TensorInfo = collections.namedtuple("TensorInfo", "name shape offset size")
TensorInfo.__doc__ = "A tensor of the job: its name, shape, offset in the flat vector and element count."

StepResult = collections.namedtuple(
    "StepResult",
    "window version duplicate stale reconnects push_attempts loss lr job_done replanned skipped loss_scale")
StepResult.__doc__ = """What ``step()`` did: the window closed, the version now held, whether the
server already had this contribution (duplicate) or closed the window
without it (stale), reconnections and push attempts, the server's mean
loss of the window, its learning rate, and whether the job is done;
``replanned``: a job with a data plan changed the window's plan under this
worker (a server restart): its gradients were dropped, the version stays,
compute the window again. A job
with loss scaling (``loss_scaling`` in the job): whether the window was
skipped (its unscaled gradient was not finite: no optimizer step) and the
scale of the window now open (0 in other jobs)."""

_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def env_rank(default=0):
    """This process's MPI rank from the launcher's environment (mpirun), or `default`."""
    for name in _RANK_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return default


def env_world_size(default=1):
    """The number of MPI ranks from the launcher's environment (mpirun), or `default`."""
    for name in _SIZE_VARIABLES:
        if name in os.environ:
            return int(os.environ[name])
    return default


def connect(server, worker=None, *, job_id="", hostname="", tls_ca="", tls_cert="", tls_key="", token="",
            token_file="", connect_timeout_s=30.0, rpc_timeout_s=60.0, window_timeout_s=1800.0,
            shared_memory=True, wire_format="f32", chunk_elements=0, hierarchical=False):
    """Joins the job on `server` and pulls its current parameters.

    Args:
      server: ``HOST:PORT``; for a sharded job every shard's, comma-separated,
        in shard order.
      worker: this worker's rank, ``0 <= worker < window.num_workers``;
        default: the MPI rank from mpirun's environment, else 0.
      job_id: the job to join (default: whatever job the server runs).
      tls_ca, tls_cert, tls_key: PEM files; `tls_ca` turns TLS on, the
        certificate and key make it mutual.
      token, token_file: the bearer token (default ``$GRADACC_TOKEN``).
      connect_timeout_s: how long to keep trying to reach the server;
        an unreachable server raises :class:`gradacc.Error` (UNAVAILABLE)
        after it.
      rpc_timeout_s, window_timeout_s: the deadline of one call, and how
        long ``step()`` waits for the window to close.
      shared_memory: on the server's host, move gradients and parameters
        through shared memory (falls back to gRPC by itself).
      wire_format: ``"f32"``, ``"bf16"`` or ``"f16"`` gradients on gRPC.
      hierarchical: the MPI ranks of a host add their gradients at the
        host's lowest rank, which alone talks to the server (collective:
        every rank of ``mpirun`` must call it; initialises MPI).

    Raises:
      gradacc.Error: the server refused (e.g. ``ERROR_REASON_UNKNOWN_WORKER``
        for a rank beyond the job's workers) or could not be reached.
    """
    if worker is None:
        worker = env_rank()
    if hierarchical:
        from . import mpi
        mpi.init()  # and MPI_Finalize at exit, after the group is abandoned
    session = _core.Session.connect(
        server=server, worker=int(worker), job_id=job_id, hostname=hostname, tls_ca=tls_ca, tls_cert=tls_cert,
        tls_key=tls_key, token=token, token_file=token_file, connect_timeout_s=float(connect_timeout_s),
        rpc_timeout_s=float(rpc_timeout_s), window_timeout_s=float(window_timeout_s),
        shared_memory=bool(shared_memory), wire_format=wire_format, chunk_elements=int(chunk_elements),
        hierarchical=bool(hierarchical))
    return Client(session)


class Client:
    """One worker's connection to a gradacc job (see the module docstring).

    Made by :func:`connect`. Thread-compatible; owns its C++ client, whose
    memory lives as long as this object or any view of it.
    """

    def __init__(self, session):
        self._session = session
        self._job = None
        self._tensors = [TensorInfo(n, tuple(s), o, z) for n, s, o, z in session.tensors]
        self._index = {t.name: i for i, t in enumerate(self._tensors)}
        self._epoch = None
        self._flat = {}       # "grad" / "params" -> the flat view of the current epoch
        self._views = {}      # ("grad" | "params", index) -> shaped view of the current epoch
        self._handed_out = []  # weak references to the gradient views of the current epoch

    # -- the job ---------------------------------------------------------
    @property
    def job(self):
        """The job spec (``gradacc.v1.JobSpec`` in protobuf's JSON mapping, as a dict)."""
        if self._job is None:
            self._job = json.loads(self._session.job_json)
        return self._job

    @property
    def tensors(self):
        """The job's tensors in order: a list of :data:`TensorInfo`."""
        return list(self._tensors)

    @property
    def num_elements(self):
        """Elements of the flat parameter (and gradient) vector."""
        return self._session.num_elements

    @property
    def worker(self):
        """This worker's rank."""
        return self._session.worker

    @property
    def hierarchical(self):
        return self._session.hierarchical

    @property
    def leader(self):
        """False on a hierarchical worker that reaches the server through its host's leader."""
        return self._session.leader

    # -- where the client stands ------------------------------------------
    @property
    def version(self):
        """The version of the parameters held = the window now open."""
        return self._session.state()["version"]

    @property
    def done(self):
        """True once the job has run its total_steps."""
        return self._session.state()["done"]

    @property
    def loss_scale(self):
        """A job with loss scaling: the scale of the open window (push the gradients of the loss times it); else 0."""
        return self._session.state()["loss_scale"]

    @property
    def transport(self):
        """"shared memory ...", "gRPC (...)" or "hierarchical: ..."."""
        return self._session.state()["transport"]

    @property
    def pending_samples(self):
        """Samples recorded with add_micro_batch in the open window."""
        return self._session.state()["pending_samples"]

    # -- views ------------------------------------------------------------
    def _refresh(self):
        epoch = self._session.state()["epoch"]
        if epoch != self._epoch:
            self._expire()
            self._epoch = epoch

    def _expire(self):
        for ref in self._handed_out:
            view = ref()
            if view is not None:
                view.setflags(write=False)
        self._handed_out = []
        self._flat = {}
        self._views = {}

    def _flat_view(self, kind):
        if kind not in self._flat:
            array, _ = self._session.grad_flat() if kind == "grad" else self._session.params_flat()
            self._flat[kind] = array
            if kind == "grad":
                self._handed_out.append(weakref.ref(array))
        return self._flat[kind]

    def _tensor_index(self, tensor):
        if isinstance(tensor, str):
            if tensor not in self._index:
                raise UsageError(f"the job has no tensor named {tensor!r}; it has {list(self._index)}",
                                 reason="ERROR_REASON_TENSOR_NAME", metadata={"tensor": tensor})
            return self._index[tensor]
        index = int(tensor)
        if not 0 <= index < len(self._tensors):
            raise UsageError(f"tensor index {index} outside the job's {len(self._tensors)} tensors",
                             reason="ERROR_REASON_TENSOR_INDEX")
        return index

    def _view(self, kind, tensor):
        self._refresh()
        flat = self._flat_view(kind)
        if tensor is None:
            return flat
        index = self._tensor_index(tensor)
        key = (kind, index)
        if key not in self._views:
            t = self._tensors[index]
            view = flat[t.offset:t.offset + t.size].reshape(t.shape)
            self._views[key] = view
            if kind == "grad":
                self._handed_out.append(weakref.ref(view))
        return self._views[key]

    def grad(self, tensor=None):
        """The gradient buffer of the open window (writeable, float32, no copy).

        Args:
          tensor: None for the flat vector, or a tensor's name or index for
            a view in its shape.
        """
        return self._view("grad", tensor)

    def grads(self):
        """{name: gradient view} for every tensor, in job order."""
        return {t.name: self._view("grad", i) for i, t in enumerate(self._tensors)}

    def param(self, tensor=None):
        """The parameters of the open window (read-only, float32, no copy)."""
        return self._view("params", tensor)

    def params(self):
        """{name: parameter view} for every tensor, in job order."""
        return {t.name: self._view("params", i) for i, t in enumerate(self._tensors)}

    # -- the window ---------------------------------------------------------
    def add_micro_batch(self, samples, loss_sum=0.0):
        """Records one micro-batch whose gradients were added into grad().

        Args:
          samples: its sample count (the server's mean divides by the
            window's total).
          loss_sum: the sum of its per-sample losses (for the server's loss).
        """
        if samples < 0:
            raise UsageError(f"samples must be >= 0, not {samples}", reason="ERROR_REASON_SAMPLES")
        self._session.add_micro_batch(int(samples), float(loss_sum))

    def set_untouched(self, tensors):
        """The tensors (names or indices) this worker's gradients of the open window do not touch.

        As ``torch.optim`` skips a parameter whose ``.grad`` is None, the
        server steps a tensor only when some contribution of the window
        touched it: a tensor no worker touched keeps its value and its
        optimizer state (no weight decay, no momentum, its own step count
        unchanged). Their gradients must be zero. Reset by :meth:`step`
        and :meth:`discard`; by default every tensor counts as touched.
        """
        self._session.set_untouched(sorted({self._tensor_index(t) for t in tensors}))

    def discard(self):
        """Drops the open window's gradients and micro-batches; nothing is pushed.

        grad() is zeroed (the views stay valid), the sample and micro-batch
        counts go back to 0, and the version and the window's contribution
        key stay: compute the window again and call :meth:`step`. The way
        out after a refused push (e.g. ``ERROR_REASON_NOT_FINITE``). Exactly
        once holds: if the server already accepted this worker's
        contribution to the window (a step() that failed after its push was
        acknowledged), that one stays counted and the next push of the
        window is acknowledged as its duplicate.
        """
        self._session.discard()

    def step(self):
        """Ends the window: push, wait for it to close, pull, zero the gradients.

        Returns a :data:`StepResult`. Views taken before are stale afterwards
        (see the module docstring). Without a micro-batch since the window
        opened it raises :class:`gradacc.Error` with
        ``ERROR_REASON_NOTHING_TO_PUSH`` at once (so ending a window twice is
        an error); a refused push (e.g. ``ERROR_REASON_NOT_FINITE``) leaves
        the window and the views as they were.
        """
        try:
            result = self._session.step()
        finally:
            self._refresh()
        return StepResult(**result)

    # -- the server -----------------------------------------------------------
    def status(self):
        """The server's status (``gradacc.v1.Status`` as a dict, protobuf's JSON mapping)."""
        return json.loads(self._session.status_json())

    def status_text(self):
        """The server's status as the ``gradacc status`` table."""
        return self._session.status_text()

    def report_test_accuracy(self, accuracy, step=None):
        """Reports a test-set accuracy in [0, 1] (shows in ``gradacc status``)."""
        self._session.report_test_accuracy(float(accuracy), int(self.version if step is None else step))

    def leave(self):
        """Tells the server this worker is done."""
        self._session.leave()

    def close(self):
        """No more calls (views stay readable while they live).

        The C++ client (its connections and memory) is freed now, or once
        the last view of its memory is gone."""
        self._expire()
        session, self._session = self._session, _ClosedSession()
        session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _ClosedSession:
    """What a closed Client holds instead of its session: every use is an error."""

    def __getattr__(self, name):
        raise UsageError(f"{name}: this gradacc Client is closed")
