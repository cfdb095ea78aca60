#!/usr/bin/python3
"""Asks a gradacc server how training is going, from Python's grpcio.

The .proto files are the whole contract: generate stubs once, then call.

    /usr/bin/python3 tests/python/status_client.py 127.0.0.1:7070 /tmp/gradacc_stubs

Needs Debian's python3-grpcio and protobuf-compiler-grpc (for
grpc_python_plugin); run with /usr/bin/python3, which sees Debian's packages.
"""
import os
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
proto_dir = os.path.join(here, "..", "..", "proto")
address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070"
stubs = sys.argv[2] if len(sys.argv) > 2 else "/tmp/gradacc_stubs"

if not os.path.exists(os.path.join(stubs, "gradacc", "v1", "control_pb2_grpc.py")):
    os.makedirs(stubs, exist_ok=True)
    subprocess.run(["protoc", "-I", proto_dir, "--python_out", stubs, "--grpc_out", stubs,
                    "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
                    "gradacc/v1/job.proto", "gradacc/v1/control.proto"], check=True)
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from gradacc.v1 import control_pb2, control_pb2_grpc  # noqa: E402

with grpc.insecure_channel(address) as channel:
    status = control_pb2_grpc.ControlPlaneStub(channel).GetStatus(
        control_pb2.GetStatusRequest(), timeout=10)
    print(f"job {status.job_id}: {control_pb2.JobState.Name(status.state)}, "
          f"step {status.step}/{status.total_steps}, last loss {status.last_loss:.4f}")
    print(f"workers expected: {status.window.contributions_expected}, "
          f"missing: {list(status.window.missing_workers)}")
