"""Exceptions raised by the gradacc package.

Every failure that comes from the server or the C++ client library is a
:class:`Error` carrying what a program needs to act on it without parsing
the message (proto/gradacc/v1/error.proto, common/errors.h):

* ``code``: the gRPC status code name, e.g. ``"INVALID_ARGUMENT"``
  (``grpc_code`` is its number),
* ``reason``: the ``gradacc.v1.ErrorReason`` name, e.g.
  ``"ERROR_REASON_NOT_FINITE"`` (``"ERROR_REASON_UNSPECIFIED"`` for a
  failure that is not a gradacc refusal, such as an unreachable server),
* ``action``: the ``gradacc.v1.ClientAction`` name, e.g.
  ``"CLIENT_ACTION_FIX_REQUEST"``,
* ``metadata``: the refusal's facts (``"window"``, ``"open_window"``,
  ``"tensor"``, ...).

:class:`UsageError` is a mistake the Python layer catches before anything
reaches the server (a ``zero_grad()`` inside a window, a model that does not
match the job, ...): reason ``ERROR_REASON_MISUSE`` unless a more precise
one applies (``ERROR_REASON_UNSUPPORTED`` for what gradacc cannot compute,
``ERROR_REASON_MANIFEST`` for a model that is not the job's, ...).
"""

__all__ = ["Error", "UsageError"]


class Error(RuntimeError):
    """A gradacc failure with its machine-readable reason."""

    def __init__(self, message, code="UNKNOWN", grpc_code=2, reason="ERROR_REASON_UNSPECIFIED",
                 action="CLIENT_ACTION_UNSPECIFIED", metadata=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.grpc_code = grpc_code
        self.reason = reason
        self.action = action
        self.metadata = dict(metadata or {})

    def __str__(self):
        return f"{self.code} [{self.reason}, {self.action}]: {self.message}"

    def __reduce__(self):
        return (type(self), (self.message, self.code, self.grpc_code, self.reason, self.action, self.metadata))


class UsageError(Error):
    """Bad use caught locally; nothing was sent to the server."""

    def __init__(self, message, reason="ERROR_REASON_MISUSE", metadata=None):
        super().__init__(message, code="FAILED_PRECONDITION", grpc_code=9, reason=reason,
                         action="CLIENT_ACTION_FIX_REQUEST", metadata=metadata)
