#!/usr/bin/env python3
"""Checks one rendering of charts/shoal (the output of `helm template`) against its values.

    check_chart.py --bin target/debug --namespace NS RENDERED.yaml [-f VALUES.yaml]

Run by scripts/check-chart.sh. Every check that fails is printed; the exit code is 1 if any did.
The configs in the ConfigMaps go through the binaries' own `--check-config`, with the
environment and files the pods give them: SHOAL_AGENT_ADVERTISE_IP for the agent, and stand-in
files for the origins' upstream passwords (mounted from Secrets in the pod).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "charts", "shoal")
NODE_IP = "192.0.2.10"  # What status.hostIP gives a pod in the check.

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
    return ok


def merge(base, over):
    """Helm's merge of a values file over the defaults: maps merge, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    check(len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0] if found else None


def container(pod, name, init=False):
    key = "initContainers" if init else "containers"
    found = [c for c in pod["spec"].get(key, []) if c["name"] == name]
    return found[0] if found else None


def run_check_config(binary, path, env=None):
    res = subprocess.run([binary, "--config", path, "--check-config"], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    check(res.returncode == 0, f"{os.path.basename(binary)} --check-config {os.path.basename(path)}: "
                               f"exit {res.returncode}: {res.stderr.strip()}")


def check_pod(pod, what, port, values_metrics):
    """Probes on /health and /ready, and scrape annotations when they are on."""
    c = pod["spec"]["containers"][0]
    check(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health", f"{what}: liveness on /health")
    check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/ready", f"{what}: readiness on /ready")
    ann = pod["metadata"].get("annotations", {})
    if values_metrics["podAnnotations"]:
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port)
              and ann.get("prometheus.io/path") == "/metrics", f"{what}: scrape annotations {ann}")
    else:
        check("prometheus.io/scrape" not in ann, f"{what}: scrape annotations although turned off")
    check("checksum/config" in ann, f"{what}: no config checksum annotation")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("http") == port, f"{what}: http port {ports}")
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("-f", dest="values")
    args = ap.parse_args()

    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    if args.values:
        with open(args.values) as f:
            values = merge(values, yaml.safe_load(f) or {})
    with open(args.rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]

    kinds = sorted(d["kind"] for d in docs)
    o, a, t = values["origin"], values["agent"], values["tracker"]
    n = o["replicas"]
    want = sorted(["ConfigMap"] * 3 + ["Service"] * (3 + n) + ["Deployment", "StatefulSet", "DaemonSet"]
                  + (["ServiceMonitor"] if values["metrics"]["serviceMonitor"]["enabled"] else []))
    check(kinds == want, f"kinds {kinds}, expected {want}")
    for d in docs:
        check(d["metadata"].get("namespace") == args.namespace, f"{d['kind']} {d['metadata']['name']}: namespace")

    deploy, sts, ds = one(docs, "Deployment"), one(docs, "StatefulSet"), one(docs, "DaemonSet")
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    if not (deploy and sts and ds) or failures:
        return

    # Tracker.
    tracker_pod = deploy["spec"]["template"]
    tc = check_pod(tracker_pod, "tracker", t["port"], values["metrics"])
    tracker_cm = cms[tracker_pod["spec"]["volumes"][0]["configMap"]["name"]]
    tracker_cfg = yaml.safe_load(tracker_cm["data"]["tracker.yaml"])
    check(deploy["spec"]["replicas"] == 1, "tracker: one replica")
    check(tc["command"][:1] == ["shoal-tracker"], f"tracker: command {tc['command']}")
    check(tracker_pod["spec"]["terminationGracePeriodSeconds"] > t["shutdownGraceSeconds"],
          "tracker: termination grace above shutdown_grace")

    # Origins: one config per pod, all with the same origins list, which names the pods.
    sts_name = sts["metadata"]["name"]
    op = sts["spec"]["template"]
    oc = check_pod(op, "origin", o["httpPort"], values["metrics"])
    check(sts["spec"]["replicas"] == n, f"origin: replicas {sts['spec']['replicas']}")
    origin_cm = cms[op["spec"]["volumes"][0]["configMap"]["name"]]
    pod_names = [f"{sts_name}-{i}" for i in range(n)]
    check(sorted(origin_cm["data"]) == sorted(f"{p}.yaml" for p in pod_names),
          f"origin: config keys {sorted(origin_cm['data'])} for pods {pod_names}")
    check(oc["command"] == ["shoal-origin", "--config", "/etc/shoal/$(POD_NAME).yaml"],
          f"origin: command {oc['command']}")
    check(any(e["name"] == "POD_NAME" and e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
              for e in oc["env"]), "origin: POD_NAME from metadata.name")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    check(services.get(sts["spec"]["serviceName"], {}).get("spec", {}).get("clusterIP") == "None",
          "origin: the StatefulSet's Service is headless")
    origins = tracker_cfg["origins"]
    check([x["id"] for x in origins] == pod_names, f"origins ids {[x['id'] for x in origins]}")
    for i, x in enumerate(origins):
        host = f"{pod_names[i]}.{args.namespace}.svc"
        check(x["peer"] == f"{host}:{o['peerPort']}" and x["http"] == f"http://{host}:{o['httpPort']}",
              f"origin {i}: addresses {x}")
        svc = services.get(pod_names[i])
        check(svc is not None and svc["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") == pod_names[i]
              and svc["spec"].get("clusterIP") != "None", f"origin {i}: its own ClusterIP Service")
    origin_cfgs = {k: yaml.safe_load(v) for k, v in origin_cm["data"].items()}
    for k, cfg in origin_cfgs.items():
        check(cfg["origins"] == origins, f"{k}: origins differ from the tracker's")
        check(f"{cfg['id']}.yaml" == k, f"{k}: id {cfg['id']}")
        check(cfg["origin_replicas"] == tracker_cfg["origin_replicas"] == o["ringReplicas"], f"{k}: origin_replicas")
        check(cfg["backend"]["type"] == o["backend"]["type"], f"{k}: backend type")
    vols = {v["name"]: v for v in op["spec"]["volumes"]}
    claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
    if o["persistence"]["enabled"]:
        check(claims == ["data"] and "data" not in vols, f"origin: a PVC template for the store, {claims}")
    else:
        check(not claims and "emptyDir" in vols.get("data", {}), "origin: an emptyDir store without persistence")
    if o["backend"]["type"] == "s3" and o["backend"]["s3"]["credentials"]["existingSecret"]:
        env = {e["name"]: e for e in oc["env"]}
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(ref.get("name") == o["backend"]["s3"]["credentials"]["existingSecret"], f"origin: {var} from the Secret")

    # Agents.
    ap_ = ds["spec"]["template"]
    ac = check_pod(ap_, "agent", a["port"], values["metrics"])
    agent_cm = cms[[v for v in ap_["spec"]["volumes"] if v["name"] == "config"][0]["configMap"]["name"]]
    agent_cfg = yaml.safe_load(agent_cm["data"]["agent.yaml"])
    check(agent_cfg["origins"] == origins, "agent: origins differ from the tracker's")
    check(agent_cfg["origin_replicas"] == o["ringReplicas"], "agent: origin_replicas")
    ports = {p["name"]: p for p in ac["ports"]}
    check(ports.get("peer", {}).get("containerPort") == a["peerPort"], f"agent: peer port {ports}")
    check(agent_cfg["listen"].endswith(f":{a['port']}") and agent_cfg["peer_listen"].endswith(f":{a['peerPort']}"),
          "agent: config ports match the container ports")
    spec = ap_["spec"]
    if a["hostNetwork"]:
        check(spec.get("hostNetwork") is True and spec.get("dnsPolicy") == "ClusterFirstWithHostNet",
              "agent: host network with cluster DNS")
        check(all("hostPort" not in p for p in ac["ports"]), "agent: no hostPort on the host network")
    else:
        check(not spec.get("hostNetwork"), "agent: pod network")
        check(all(p.get("hostPort") == p["containerPort"] for p in ac["ports"]), f"agent: hostPorts {ac['ports']}")
    env = {e["name"]: e for e in ac["env"]}
    check(env.get("SHOAL_AGENT_ADVERTISE_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "status.hostIP", "agent: advertises status.hostIP")
    check("advertise_addr" not in agent_cfg["swarm"], "agent: advertise_addr comes from the environment")
    for cfg in [agent_cfg] + list(origin_cfgs.values()):
        check(cfg["swarm"]["trackers"] == [f"http://{deploy['metadata']['name']}.{args.namespace}.svc:{t['port']}"],
              f"trackers {cfg['swarm']['trackers']}")
    store = [v for v in spec["volumes"] if v["name"] == "store"][0]
    if a["store"]["type"] == "hostPath":
        check(store.get("hostPath", {}).get("path") == a["store"]["hostPath"], f"agent: store {store}")
        check(container(ap_, "prepare-store", init=True) is not None, "agent: prepare-store init container")
    else:
        check("emptyDir" in store, f"agent: store {store}")
    check(ds["spec"]["updateStrategy"] == a["updateStrategy"], "agent: updateStrategy")
    for key in ["priorityClassName", "nodeSelector", "tolerations"]:
        if a[key]:
            check(spec.get(key) == a[key], f"agent: {key}")
    check(ac.get("resources") == a["resources"], "agent: resources")
    check(ap_["spec"]["terminationGracePeriodSeconds"] > a["shutdownGraceSeconds"], "agent: termination grace")

    with tempfile.TemporaryDirectory() as tmp:
        # Every config through its binary's --check-config.
        path = os.path.join(tmp, "tracker.yaml")
        with open(path, "w") as f:
            f.write(tracker_cm["data"]["tracker.yaml"])
        run_check_config(os.path.join(args.bin, "shoal-tracker"), path)
        path = os.path.join(tmp, "agent.yaml")
        with open(path, "w") as f:
            f.write(agent_cm["data"]["agent.yaml"])
        run_check_config(os.path.join(args.bin, "shoal-agent"), path, {"SHOAL_AGENT_ADVERTISE_IP": NODE_IP})
        # Without the address the DaemonSet gives it, the agent must refuse to start.
        res = subprocess.run([os.path.join(args.bin, "shoal-agent"), "--config", path, "--check-config"],
                             capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "SHOAL_AGENT_ADVERTISE_IP"})
        check(res.returncode == 64, f"agent: check without an advertised IP exits {res.returncode}, not 64")
        secrets = os.path.join(tmp, "secrets")
        for k, text in origin_cm["data"].items():
            for pw in re.findall(r"password_file: (\S+)", text):
                local = os.path.join(secrets, pw.lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "w") as f:
                    f.write("stand-in\n")
                text = text.replace(pw, local)
            path = os.path.join(tmp, k)
            with open(path, "w") as f:
                f.write(text)
            run_check_config(os.path.join(args.bin, "shoal-origin"), path)

        # The containerd init container, run as the pod runs it, against a temporary directory.
        init = container(ap_, "configure-containerd", init=True)
        if check((init is not None) == a["containerdMirror"]["enabled"], "agent: configure-containerd init container"):
            if init is not None:
                hosts = os.path.join(tmp, "certs.d")
                os.makedirs(os.path.join(tmp, "containerd"))
                cmd = [arg.replace("/host/hosts-dir", hosts).replace("/host/containerd-config", os.path.join(tmp, "containerd"))
                       .replace("$(HOST_IP)", NODE_IP) for arg in init["command"]]
                cmd[0] = os.path.join(args.bin, cmd[0])
                mounts = {m["mountPath"]: m["name"] for m in init["volumeMounts"]}
                vols = {v["name"]: v for v in spec["volumes"]}
                check(vols[mounts["/host/hosts-dir"]]["hostPath"]["path"] == a["containerdMirror"]["hostsDir"],
                      "agent: hosts dir mount")
                res = subprocess.run(cmd, capture_output=True, text=True)
                if check(res.returncode == 0, f"configure containerd: exit {res.returncode}: {res.stderr.strip()}"):
                    agent_addr = f"127.0.0.1:{a['port']}" if a["hostNetwork"] else f"{NODE_IP}:{a['port']}"
                    for reg in ["_default"] + a["containerdMirror"]["registries"]:
                        p = os.path.join(hosts, reg, "hosts.toml")
                        check(os.path.exists(p) and f"http://{agent_addr}" in open(p).read(),
                              f"configure containerd: {reg}/hosts.toml names the agent {agent_addr}")


if __name__ == "__main__":
    main()
    for f in failures:
        print(f"check_chart.py: {f}", file=sys.stderr)
    sys.exit(1 if failures else 0)
