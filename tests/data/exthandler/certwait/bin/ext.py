#!/usr/bin/env python3
"""Test handler (tests/integration/test_certificates_wait.py): like a real extension it decrypts its
protected settings with openssl and the tenant certificate the agent laid out (<thumbprint>.crt/.prv).

Each command appends one JSON line to ops.jsonl in the handler folder: the command, CLOCK_MONOTONIC at its
start, whether the .prv was on disk, and the SHA-256 of the decrypted settings (never the plaintext).
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import time

op = sys.argv[1]
start = time.monotonic()
base = os.environ.get("AZURE_GUEST_AGENT_EXTENSION_PATH") or os.getcwd()
seq = os.environ.get("ConfigSequenceNumber", "0")
record = {"op": op, "t": start, "version": os.environ.get("AZURE_GUEST_AGENT_EXTENSION_VERSION")}
try:
    with open(os.path.join(base, "config", f"{seq}.settings")) as f:
        hs = json.load(f)["runtimeSettings"][0]["handlerSettings"]
except (OSError, ValueError, KeyError, IndexError):
    hs = {}
thumb = hs.get("protectedSettingsCertThumbprint")
lib = (hs.get("publicSettings") or {}).get("libDir", "/var/lib/waagent")
if thumb and hs.get("protectedSettings"):
    prv, crt = os.path.join(lib, f"{thumb}.prv"), os.path.join(lib, f"{thumb}.crt")
    record["prv"] = os.path.exists(prv)
    result = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-recip", crt, "-inkey", prv],
                            input=base64.b64decode(hs["protectedSettings"]), capture_output=True)
    record["decrypted"] = result.returncode == 0
    if result.returncode == 0:
        record["sha256"] = hashlib.sha256(result.stdout.strip()).hexdigest()
with open(os.path.join(base, "ops.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
if op == "enable":
    os.makedirs(os.path.join(base, "status"), exist_ok=True)
    ok = record.get("decrypted", True)
    doc = [{"version": 1.0, "timestampUTC": "2025-01-01T00:00:00Z",
            "status": {"name": "CertWait", "operation": "Enable", "status": "success" if ok else "error",
                       "code": 0 if ok else 1,
                       "formattedMessage": {"lang": "en-US", "message": "decrypted" if ok else "no certificate"}}}]
    with open(os.path.join(base, "status", f"{seq}.status"), "w") as f:
        json.dump(doc, f)
sys.exit(0)
