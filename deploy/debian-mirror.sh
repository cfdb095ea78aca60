#!/usr/bin/env bash
# Prints the http(s) Debian mirror of this machine's apt sources (the one
# that serves bookworm), for debootstrap: deploy/container-test.sh (Debian
# 12) and tests/torch2/run.sh (Debian 13 from the same mirror).
# GRADACC_DEBIAN_MIRROR=URL overrides it. Exits 1, saying so, when there is
# none.
set -euo pipefail
if [[ -n "${GRADACC_DEBIAN_MIRROR:-}" ]]; then echo "$GRADACC_DEBIAN_MIRROR"; exit 0; fi
py=python3
if [[ -x /usr/bin/python3 ]]; then py=/usr/bin/python3; fi
# deb822 sources first (URIs: + Suites: in one stanza), then one-line ones.
exec "$py" - <<'EOF'
import glob, sys

def stanzas(text):
    cur = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if cur:
                yield cur
            cur = {}
            continue
        if line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and cur:
            continue
        if ":" in line:
            key, value = line.split(":", 1)
            cur[key.strip().lower()] = value.strip()

for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for s in stanzas(open(path).read()):
        if s.get("enabled", "yes").lower() == "no" or "deb" not in s.get("types", "").split():
            continue
        if "bookworm" in s.get("suites", "").split():
            for uri in s.get("uris", "").split():
                if uri.startswith(("http://", "https://")):
                    print(uri); sys.exit(0)
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2 and words[1] == "bookworm" and words[0].startswith(("http://", "https://")):
            print(words[0]); sys.exit(0)
sys.exit("no http(s) Debian bookworm source in /etc/apt; set GRADACC_DEBIAN_MIRROR")
EOF
