#!/usr/bin/env python3
"""Idle RSS of a plinth-operator binary with one CsiDeployment deployed, against the
stand-in API server (plinth-apistub). Usage: operator-rss.py OPERATOR APISTUB [settle-s]

Run two builds alternately (before/after a change) to compare them in one sitting."""
import json, os, subprocess, sys, tempfile, time, urllib.request, yaml

op, stub = sys.argv[1], sys.argv[2]
settle = float(sys.argv[3]) if len(sys.argv) > 3 else 20
here = os.path.dirname(os.path.abspath(__file__))
crd_file = os.path.join(here, "..", "config", "crd", "bases", "plinth.dev_csideployments.yaml")
d = tempfile.mkdtemp()
s = subprocess.Popen([stub, "--kubeconfig", f"{d}/kc"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
url = s.stdout.readline().strip()

def req(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    r = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(r) as resp:
        return json.load(resp)

req("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", yaml.safe_load(open(crd_file)))
o = subprocess.Popen([op, "run", "--http-addr", "127.0.0.1:0"], env={**os.environ, "KUBECONFIG": f"{d}/kc", "RUST_LOG": "warn"},
                     stderr=open(f"{d}/op.log", "w"))
try:
    time.sleep(2)
    req("POST", "/apis/plinth.dev/v1alpha1/csideployments", {"apiVersion": "plinth.dev/v1alpha1", "kind": "CsiDeployment",
        "metadata": {"name": "local"}, "spec": {"namespace": "plinth-system"}})
    for _ in range(150):
        cr = req("GET", "/apis/plinth.dev/v1alpha1/csideployments/local")
        if cr.get("status", {}).get("observedGeneration") == 1:
            break
        time.sleep(0.2)
    else:
        sys.exit("not reconciled: " + open(f"{d}/op.log").read()[-500:])
    req("GET", "/apis/apps/v1/namespaces/plinth-system/statefulsets/plinth-local-controller")
    time.sleep(settle)
    st = {l.split(":")[0]: l.split(":")[1].strip() for l in open(f"/proc/{o.pid}/status") if l.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile"))}
    print(os.path.basename(os.path.dirname(os.path.dirname(op))), "binary", os.path.getsize(op), "bytes;", st)
finally:
    o.kill(); s.kill()
