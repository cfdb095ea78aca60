#!/usr/bin/env bash
# The container test tier (not part of tests/run.sh). On a Debian 12 machine,
# as root (or with sudo), it:
#   1. installs podman, buildah, runc and debootstrap (and what gradacc's host
#      build needs, via deploy/install-deps.sh) and sets podman's runtime to
#      runc and its default ulimits to nofile/nproc 1024 in
#      /etc/containers/containers.conf, leaving other settings alone;
#   2. makes a minbase Debian 12 root filesystem with debootstrap (cached in
#      /var/cache/gradacc/) and imports it as localhost/debian:bookworm when
#      that image is missing (no registry is needed);
#   3. builds deploy/Dockerfile as localhost/gradacc:latest (its build stage
#      makes the .deb packages with cpack, its runtime stage installs the
#      gradacc .deb with apt) and checks that the binaries come from it;
#   4. builds the gradacc binaries on the host and starts the server image on
#      a free loopback port (host network) with a named volume for
#      checkpoints, a 40-step default job, and checks that it runs as the
#      non-root user gradacc and that `podman healthcheck run` says healthy;
#   5. trains it with `mpirun -np 4 gradacc-worker` on the host;
#   6. stops the container (SIGTERM): exit code 0, "checkpoint of step 40";
#   7. starts a new container on the same volume and checks that it resumes
#      from that checkpoint at step 40;
#   8. takes the .deb packages out of the image's build stage and installs
#      them with apt on a clean localhost/debian:bookworm container: every
#      binary finds its libraries and answers --help; then gradacc-dev with
#      g++ and cmake, and tests/install/install_test.sh builds a project that
#      only does find_package(gradacc) and trains a job with it against the
#      packaged gradacc-server (python3-gradacc too, when it was built:
#      `import gradacc`);
# then removes its containers and volume (also on failure) and prints PASS or
# FAIL. Every wait is bounded. From a clean machine it took 3.5 minutes on 2
# cores (packages 10 s, debootstrap + import 1 min, image build 2-3 min, the
# container checks 10 s); later runs reuse the cached base image, podman's
# layer cache and the host build and take about 20 s plus what changed.
#
# The Debian mirror is read at run time from this machine's apt sources
# (override with GRADACC_DEBIAN_MIRROR=URL).
# Environment: GRADACC_BUILD_DIR (host build dir, default build),
# GRADACC_IMAGE (default localhost/gradacc:latest),
# GRADACC_CACHE_DIR (default /var/cache/gradacc).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ $(id -u) -ne 0 ]]; then
  exec sudo --preserve-env=GRADACC_BUILD_DIR,GRADACC_IMAGE,GRADACC_CACHE_DIR,GRADACC_DEBIAN_MIRROR \
    "$root/deploy/container-test.sh" "$@"
fi

build="${GRADACC_BUILD_DIR:-build}"
image="${GRADACC_IMAGE:-localhost/gradacc:latest}"
base_image="localhost/debian:bookworm"
cache="${GRADACC_CACHE_DIR:-/var/cache/gradacc}"
steps=40
tag="gradacc-ct-$$"
vol="$tag-checkpoints"
c1="$tag-server1"
c2="$tag-server2"
c3="$tag-debs"
work="$(mktemp -d /tmp/gradacc-container-test.XXXXXX)"
made_volume=0
phase_names=()
phase_secs=()
phase_start=0
current_phase=""

say() { echo "container-test: $*"; }
die() { echo "container-test: ERROR: $*" >&2; exit 1; }
phase() {
  end_phase
  current_phase="$1"
  phase_start=$(date +%s)
  echo
  say "=== $1 ==="
}
end_phase() {
  if [[ -n "$current_phase" ]]; then
    phase_names+=("$current_phase")
    phase_secs+=($(($(date +%s) - phase_start)))
    current_phase=""
  fi
}
python() { if [[ -x /usr/bin/python3 ]]; then /usr/bin/python3 "$@"; else python3 "$@"; fi; }

finish() {
  local rc=$?
  set +e
  end_phase
  if ((rc != 0)); then
    for c in "$c1" "$c2"; do
      if podman container exists "$c" 2>/dev/null; then
        echo "--- last lines of podman logs $c ---"
        timeout 30 podman logs "$c" 2>&1 | tail -n 30
      fi
    done
    [[ -s "$work/workers.log" ]] && { echo "--- last lines of the workers' log ---"; tail -n 20 "$work/workers.log"; }
  fi
  for c in "$c1" "$c2" "$c3"; do
    if command -v podman >/dev/null && podman container exists "$c" 2>/dev/null; then
      timeout 60 podman rm -f -t 5 "$c" >/dev/null 2>&1 || echo "container-test: could not remove container $c" >&2
    fi
  done
  if ((made_volume)); then
    timeout 60 podman volume rm -f "$vol" >/dev/null 2>&1 || echo "container-test: could not remove volume $vol" >&2
  fi
  rm -rf "$work"
  echo
  if ((${#phase_names[@]})); then
    say "phase timings:"
    for i in "${!phase_names[@]}"; do
      printf '  %-60s %4ds\n' "${phase_names[$i]}" "${phase_secs[$i]}"
    done
  fi
  if ((rc == 0)); then
    echo "container-test: PASS (image $image: build, health, 4-worker training, SIGTERM checkpoint, resume;" \
      ".deb packages on a clean Debian 12: --help, a find_package(gradacc) worker trained a job)"
  else
    echo "container-test: FAIL (exit code $rc; see the messages above)"
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
phase "1. packages and /etc/containers/containers.conf"
# Rootful podman with host networking needs neither uidmap nor slirp4netns nor
# fuse-overlayfs (rootless podman would).
packages=(podman buildah runc debootstrap debian-archive-keyring)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! { timeout 600 apt-get update -qq && timeout 1200 apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$work/apt.log" 2>&1; then
    tail -n 30 "$work/apt.log"
    die "apt-get failed"
  fi
else
  say "container packages present"
fi
# What the host build, the workers and the CLI need (idempotent).
timeout 1800 deploy/install-deps.sh

# runc (crun fails in this VM) and lower default ulimits. Only the two keys
# below are owned here; everything else in the file is kept as it is.
mkdir -p /etc/containers
python - /etc/containers/containers.conf <<'EOF'
import os, re, sys, tomllib

path = sys.argv[1]
want_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
header = "# gradacc: deploy/container-test.sh owns engine.runtime and containers.default_ulimits here.\n"
if not os.path.exists(path):
    with open(path, "w") as f:
        f.write(header + "[containers]\ndefault_ulimits = [\n  \"nofile=1024:1024\",\n  \"nproc=1024:1024\",\n]\n\n"
                "[engine]\nruntime = \"runc\"\n")
    print("container-test: wrote", path)
    sys.exit(0)

with open(path, "rb") as f:
    conf = tomllib.load(f)
old_ulimits = conf.get("containers", {}).get("default_ulimits", [])
new_ulimits = [u for u in old_ulimits if u.split("=", 1)[0].strip() not in ("nofile", "nproc")] + want_ulimits
if old_ulimits == new_ulimits and conf.get("engine", {}).get("runtime") == "runc":
    print("container-test:", path, "already has runtime = runc and nofile/nproc 1024")
    sys.exit(0)

def fmt(value):
    if isinstance(value, list):
        return "[" + ", ".join('"%s"' % v for v in value) + "]"
    return '"%s"' % value

settings = {"containers": ("default_ulimits", new_ulimits), "engine": ("runtime", "runc")}
lines = open(path).read().splitlines(keepends=True)
out, section, done, skip_depth = [], None, set(), 0
section_re = re.compile(r"^\s*\[([A-Za-z0-9_.\-]+)\]\s*(#.*)?$")
for line in lines:
    if skip_depth > 0:               # continuation of a multi-line value being replaced
        skip_depth += line.count("[") - line.count("]")
        continue
    m = section_re.match(line)
    if m:
        if section in settings and section not in done:
            key, value = settings[section]
            out.append("%s = %s\n" % (key, fmt(value)))
            done.add(section)
        section = m.group(1)
        out.append(line)
        continue
    if section in settings:
        key, value = settings[section]
        if re.match(r"^\s*%s\s*=" % re.escape(key), line):
            if section not in done:
                out.append("%s = %s\n" % (key, fmt(value)))
                done.add(section)
            rhs = line.split("=", 1)[1].split("#", 1)[0]
            skip_depth = rhs.count("[") - rhs.count("]")
            continue
    out.append(line)
if section in settings and section not in done:
    key, value = settings[section]
    if out and not out[-1].endswith("\n"):
        out.append("\n")
    out.append("%s = %s\n" % (key, fmt(value)))
    done.add(section)
for section, (key, value) in settings.items():
    if section not in done:
        out.append("\n[%s]\n%s = %s\n" % (section, key, fmt(value)))

text = "".join(out)
check = tomllib.loads(text)
assert check["containers"]["default_ulimits"] == new_ulimits and check["engine"]["runtime"] == "runc"
backup = path + ".before-gradacc"
if not os.path.exists(backup):
    os.rename(path, backup)
    print("container-test: kept the previous", path, "as", backup)
with open(path + ".tmp", "w") as f:
    f.write(text)
os.replace(path + ".tmp", path)
print("container-test: set engine.runtime = runc and containers.default_ulimits in", path)
EOF
podman --version
[[ "$(podman info --format '{{.Host.OCIRuntime.Name}}')" == "runc" ]] || die "podman does not use runc"

# ---------------------------------------------------------------------------
phase "2. base image $base_image"
debian_mirror() { deploy/debian-mirror.sh; }
if podman image exists "$base_image"; then
  say "$base_image present"
else
  tarball="$cache/debian-bookworm-minbase.tar"
  mkdir -p "$cache"
  if [[ -s "$tarball" ]]; then
    say "importing the cached root filesystem $tarball"
  else
    mirror="$(debian_mirror)"
    say "debootstrap --variant=minbase bookworm from the apt sources' mirror (takes a few minutes)"
    rootfs="$cache/rootfs.tmp"
    rm -rf "$rootfs" "$tarball.tmp"
    if ! timeout 1800 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
      tail -n 30 "$work/debootstrap.log" "$rootfs/debootstrap/debootstrap.log" 2>/dev/null || true
      rm -rf "$rootfs"
      die "debootstrap failed"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    say "cached $tarball ($(du -h "$tarball" | cut -f1))"
  fi
  timeout 600 podman import --change 'CMD ["/bin/bash"]' "$tarball" "$base_image" >"$work/import.log" 2>&1 \
    || { cat "$work/import.log"; die "podman import failed"; }
  say "imported $base_image"
fi

# ---------------------------------------------------------------------------
phase "3. image $image (podman build)"
# --format docker: the OCI image format has no HEALTHCHECK.
rc=0
timeout 3600 podman build --network host --format docker -f deploy/Dockerfile -t "$image" . \
  > >(tee "$work/build.log" | grep --line-buffered -E '(^|] )(STEP [0-9]|COMMIT|Successfully)') 2>&1 || rc=$?
sleep 1  # let the filter above print its last lines
((rc == 0)) || { tail -n 40 "$work/build.log"; die "podman build failed (exit code $rc)"; }
[[ "$(podman image inspect -f '{{.Config.User}}' "$image")" == "gradacc" ]] || die "the image does not run as user gradacc"
podman image inspect -f '{{json .Config.Healthcheck}}' "$image" | grep -q 'gradacc' \
  || die "the image has no HEALTHCHECK (built in OCI format?)"
say "image $image runs as user gradacc and has a HEALTHCHECK"
owner="$(timeout 60 podman run --rm --entrypoint dpkg-query "$image" -S /usr/bin/gradacc-server)" \
  || die "/usr/bin/gradacc-server in $image belongs to no Debian package"
[[ "$owner" == "gradacc: /usr/bin/gradacc-server" ]] || die "dpkg-query -S /usr/bin/gradacc-server: $owner"
say "the image's gradacc-server comes from the gradacc .deb ($(timeout 60 podman run --rm --entrypoint \
  dpkg-query "$image" -W -f '${Package} ${Version}' gradacc))"

# ---------------------------------------------------------------------------
phase "4. host build ($build) and server container"
# Do not run a second ninja in a build folder another build is using.
for ((i = 0; i < 180; i++)); do
  busy=0
  for pid in $(pgrep -x ninja || true); do
    [[ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" == "$(realpath -m "$build")" ]] && busy=1
  done
  ((busy)) || break
  ((i == 0)) && say "another ninja is building in $build; waiting (up to 15 min)"
  sleep 5
done
((busy == 0)) || die "another build kept $build busy for 15 minutes"
timeout 300 cmake -S . -B "$build" -G Ninja >"$work/cmake.log" 2>&1 || { tail -n 30 "$work/cmake.log"; die "cmake failed"; }
timeout 3600 cmake --build "$build" -j2 --target gradacc gradacc-worker gradacc-server
cli="$build/worker/gradacc"
worker="$build/worker/gradacc-worker"

free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
# The image's HEALTHCHECK probes port 7070; these containers listen on a free
# port, so the same probe is given for that port. Podman runs periodic
# healthchecks from systemd timers, and this VM has no systemd, so the
# interval is disabled and `podman healthcheck run` runs the probe instead.
start_server() {  # name port
  timeout 120 podman run -d --name "$1" --network host --log-driver k8s-file \
    -v "$vol:/var/lib/gradacc/checkpoints" \
    --health-cmd "[\"gradacc\", \"health\", \"--server=127.0.0.1:$2\", \"--timeout_s=3\"]" \
    --health-interval=disable \
    "$image" --listen="127.0.0.1:$2" --checkpoint_dir=/var/lib/gradacc/checkpoints --total_steps="$steps" \
    >/dev/null
}
wait_healthy() {  # name port
  local deadline=$(($(date +%s) + 90))
  until "$cli" health --server="127.0.0.1:$2" --timeout_s=2 >/dev/null 2>&1; do
    [[ "$(podman inspect -f '{{.State.Running}}' "$1")" == "true" ]] || die "container $1 exited before serving"
    (($(date +%s) < deadline)) || die "container $1 not serving on 127.0.0.1:$2 after 90 s"
    sleep 1
  done
  say "container $1 serves on 127.0.0.1:$2"
}
check_healthcheck() {  # name
  local out rc=0
  out="$(timeout 60 podman healthcheck run "$1" 2>&1)" || rc=$?
  if ((rc == 0)); then
    say "podman healthcheck run $1: ${out:-healthy}"
  elif grep -qiE 'systemd|dbus|not supported' <<<"$out"; then
    say "SKIP: podman healthcheck cannot run in this VM: $out"
  else
    die "podman healthcheck run $1 failed (exit $rc): $out"
  fi
}
stop_server() {  # name
  timeout 90 podman stop -t 60 "$1" >/dev/null || die "podman stop $1 failed"
  local code
  code="$(podman inspect -f '{{.State.ExitCode}}' "$1")"
  [[ "$code" == "0" ]] || die "container $1 exited with code $code after SIGTERM (want 0)"
  say "container $1 stopped with exit code 0"
}
status_step() {  # port
  timeout 30 "$cli" status --json --server="127.0.0.1:$1" >"$work/status.json"
  python -c 'import json, sys; print(int(json.load(open(sys.argv[1])).get("step", 0)))' "$work/status.json"
}

timeout 60 podman volume create "$vol" >/dev/null
made_volume=1
port1="$(free_port)"
start_server "$c1" "$port1"
wait_healthy "$c1" "$port1"
pid1="$(podman inspect -f '{{.State.Pid}}' "$c1")"
uid1="$(ps -o uid= -p "$pid1" | tr -d ' ')"
user1="$(timeout 30 podman exec "$c1" id -un)"
[[ "$user1" == "gradacc" && "$uid1" != "0" ]] || die "the server runs as $user1 (uid $uid1), not as gradacc"
say "gradacc-server runs as user $user1 (uid $uid1 on the host)"
check_healthcheck "$c1"

# ---------------------------------------------------------------------------
phase "5. training: mpirun -np 4 gradacc-worker (host) -> container"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rc=0
timeout --kill-after=10 600 mpirun -np 4 --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS=1 \
  "$worker" --server="127.0.0.1:$port1" --train_limit=6000 >"$work/workers.log" 2>&1 || rc=$?
grep -E '^(training job|step |final)' "$work/workers.log" | tail -n 6 || true
((rc == 0)) || die "mpirun exited with code $rc"
step="$(status_step "$port1")"
[[ "$step" == "$steps" ]] || die "the server is at step $step after training (want $steps)"
say "workers exited 0; the server is at step $step"

# ---------------------------------------------------------------------------
phase "6. podman stop (SIGTERM) -> checkpoint"
stop_server "$c1"
timeout 30 podman logs "$c1" >"$work/server1.log" 2>&1
grep -q "checkpoint of step $steps" "$work/server1.log" \
  || { tail -n 20 "$work/server1.log"; die "no 'checkpoint of step $steps' in the logs of $c1"; }
say "$(grep "checkpoint of step $steps" "$work/server1.log")"

# ---------------------------------------------------------------------------
phase "7. new container on the same volume resumes"
port2="$(free_port)"
start_server "$c2" "$port2"
wait_healthy "$c2" "$port2"
timeout 30 podman logs "$c2" >"$work/server2.log" 2>&1
grep -q "resuming job 'default' from checkpoint" "$work/server2.log" \
  || { tail -n 20 "$work/server2.log"; die "container $c2 did not resume from the checkpoint"; }
say "$(grep "resuming job 'default' from checkpoint" "$work/server2.log")"
step="$(status_step "$port2")"
[[ "$step" == "$steps" ]] || die "the resumed server reports step $step (want $steps)"
say "gradacc status --json: step $step"
check_healthcheck "$c2"
stop_server "$c2"

# ---------------------------------------------------------------------------
phase "8. the .deb packages on a clean Debian 12 container"
# The build stage is in podman's cache from phase 3: this build only tags it.
timeout 3600 podman build --network host --format docker -f deploy/Dockerfile --target build -t "$tag-build" . \
  >"$work/build-stage.log" 2>&1 || { tail -n 20 "$work/build-stage.log"; die "podman build --target build failed"; }
mkdir -p "$work/debs"
timeout 120 podman run --rm --network none -v "$work/debs:/out" "$tag-build" sh -c 'cp /src/build/*.deb /out/' \
  || die "could not copy the .deb packages out of the build stage"
timeout 60 podman rmi "$tag-build" >/dev/null 2>&1 || true
say "packages: $(cd "$work/debs" && echo *.deb)"
rc=0
timeout 1800 podman run --name "$c3" --rm --network host -v "$work/debs:/debs:ro" \
  -v "$root/tests/install:/install-test:ro" "$base_image" bash -euo pipefail -c '
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -qq --no-install-recommends "$@" >/tmp/apt.log 2>&1 || { tail -n 30 /tmp/apt.log; exit 1; }; }
    apt-get update -qq
    apt_install /debs/gradacc_*.deb
    dpkg-query -W -f "gradacc \${Version}, Depends: \${Depends}\n" gradacc
    for b in gradacc-server gradacc gradacc-worker; do
      if ldd /usr/bin/$b | grep "not found"; then echo "/usr/bin/$b misses a library"; exit 1; fi
      /usr/bin/$b --help >/tmp/help.txt || { echo "$b --help failed"; exit 1; }
      echo "$b --help: $(head -n 1 /tmp/help.txt)"
    done
    apt_install /debs/gradacc-dev_*.deb g++ cmake make
    /install-test/install_test.sh --prefix /usr
    if compgen -G "/debs/python3-gradacc_*.deb" >/dev/null; then
      apt_install /debs/python3-gradacc_*.deb
      python3 -c "import gradacc; print(\"import gradacc:\", gradacc.__file__)"
    fi
  ' 2>&1 | tee "$work/debs.log" || rc=$?
((rc == 0)) || die "the .deb packages failed on a clean Debian 12 container (exit code $rc)"
grep -q "install-test: PASS" "$work/debs.log" || die "the find_package(gradacc) worker did not pass in the container"
say "the packages install on a clean Debian 12, their binaries run, and gradacc-dev builds a worker that trains"
end_phase
