#!/usr/bin/python3
"""A complete gradacc worker in Python, from the .proto files alone.

Joins, pulls the parameters, pushes one contribution per window (the
gradient of 0.5 * ||p||^2 per sample, as chunks of raw little-endian f32),
waits for the window to close by pulling the next version, and acts on
refusals by their machine-readable reason (gradacc/v1/error.proto).

    /usr/bin/python3 push_pull_example.py HOST:PORT STUBS_DIR [WORKER]

Needs Debian's python3-grpcio and protobuf-compiler-grpc; run with
/usr/bin/python3. Stubs are generated into STUBS_DIR on first use.
"""
import os
import struct
import subprocess
import sys
import time

proto_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")
address, stubs = sys.argv[1], sys.argv[2]
worker = int(sys.argv[3]) if len(sys.argv) > 3 else 0
if not os.path.exists(os.path.join(stubs, "gradacc", "v1", "data_pb2_grpc.py")):
    os.makedirs(stubs, exist_ok=True)
    subprocess.run(["protoc", "-I", proto_dir, "--python_out", stubs, "--grpc_out", stubs,
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                    "gradacc/v1/job.proto", "gradacc/v1/data.proto", "gradacc/v1/error.proto",
                    "google/rpc/status.proto", "google/rpc/error_details.proto"], check=True)
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from gradacc.v1 import data_pb2, data_pb2_grpc  # noqa: E402

CHUNK = 64 * 1024  # elements per chunk (keep messages well under 4 MiB)


def action_of(err):
    """The ClientAction name a refusal carries, e.g. 'CLIENT_ACTION_PULL'."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info) and info.domain == "gradacc.v1":
                    return info.metadata["action"]
    return "CLIENT_ACTION_RETRY"  # no detail: a transport failure


def pull(stub, min_version):
    """(version, job_done, flat parameters) once version >= min_version."""
    header, params = None, {}
    for msg in stub.Pull(data_pb2.PullRequest(worker=worker, min_version=min_version), timeout=600):
        if msg.HasField("header"):
            header = msg.header
        else:
            c = msg.chunk
            params[(c.tensor, c.offset)] = struct.unpack("<%df" % (len(c.data) // 4), c.data)
    flat = [v for key in sorted(params) for v in params[key]]
    return header.version, header.job_done, flat


def push(stub, window, samples, loss_sum, grad, tensors):
    def messages():
        yield data_pb2.PushRequest(header=data_pb2.PushHeader(
            worker=worker, window=window, contribution_key=window, micro_batches=1,
            samples=samples, loss_sum=loss_sum, num_elements=len(grad)))
        base = 0
        for index, size in enumerate(tensors):
            for offset in range(0, size, CHUNK):
                values = grad[base + offset:base + min(size, offset + CHUNK)]
                yield data_pb2.PushRequest(chunk=data_pb2.GradientChunk(
                    tensor=index, offset=offset, data=struct.pack("<%df" % len(values), *values)))
            base += size
    return stub.Push(messages(), timeout=60)


with grpc.insecure_channel(address) as channel:
    stub = data_pb2_grpc.DataPlaneStub(channel)
    joined = stub.Join(data_pb2.JoinRequest(worker=worker, hostname="python-example"), timeout=30)
    tensors = []
    for t in joined.job.model.tensors:
        size = 1
        for d in t.shape:
            size *= d
        tensors.append(size)
    version, done, params = pull(stub, joined.window)
    while not done:
        samples = 4
        # The loss of each sample is 0.5 * ||p||^2: push the SUM over the
        # samples (the server divides by the window's sample count).
        loss_sum = samples * 0.5 * sum(p * p for p in params)
        grad = [samples * p for p in params]
        try:
            push(stub, version, samples, loss_sum, grad, tensors)
        except grpc.RpcError as err:
            action = action_of(err)
            if action == "CLIENT_ACTION_RETRY":
                time.sleep(0.2)
                continue
            if action == "CLIENT_ACTION_REJOIN":
                stub.Join(data_pb2.JoinRequest(worker=worker), timeout=30)
                continue
            if action not in ("CLIENT_ACTION_ACKNOWLEDGED", "CLIENT_ACTION_PULL"):
                sys.exit("push refused: %s (%s)" % (err.details(), action))
        # The window closes when every worker has pushed: version + 1 is the
        # reset ("zero your gradients, the next window is open").
        version, done, params = pull(stub, version + 1)
        print("version %d, first parameter %.6f" % (version, params[0]), flush=True)
    stub.Leave(data_pb2.LeaveRequest(worker=worker), timeout=30)
    print("done at version %d" % version)
