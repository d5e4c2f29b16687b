#!/usr/bin/env python3
"""Checks one rendering of charts/shoal (the output of `helm template`) against its values.

    check_chart.py --bin target/debug --namespace NS RENDERED.yaml [-f VALUES.yaml]

Run by scripts/check-chart.sh. Every check that fails is printed; the exit code is 1 if any did.
The configs in the ConfigMaps go through the binaries' own `--check-config`, with the
environment and files the pods give them: SHOAL_AGENT_ADVERTISE_IP for the agent, stand-in
files for what the pods mount from Secrets (the auth tokens, the origins' upstream passwords),
and with TLS a CA and a node certificate made with openssl where the certificate Secret is
mounted.
"""

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile

import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "charts", "shoal")
NODE_IP = "192.0.2.10"  # What status.hostIP gives a pod in the check (IPv4 clusters).
NODE_IP6 = "2001:db8::10"  # The same on IPv6 clusters (listenAddress "::").

failures = []


def stand_in_cert(tmp):
    """A self-signed PEM certificate and key (openssl), for configs that name TLS files."""
    cert, key = os.path.join(tmp, "stand-in.crt"), os.path.join(tmp, "stand-in.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=check-chart", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return open(cert).read(), open(key).read()


def node_tls(tmp):
    """A CA and a node certificate it signed (URI SAN, server and client auth), as the files
    cert-manager's Secret holds: ca.crt, tls.crt, tls.key."""
    d = os.path.join(tmp, "tls")
    os.makedirs(d)
    run = lambda *a: subprocess.run(list(a), check=True, capture_output=True, cwd=d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("openssl", "req", "-x509", *ec, "-days", "1", "-subj", "/CN=check-chart CA", "-keyout", "ca.key", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("openssl", "req", *ec, "-subj", "/CN=node", "-keyout", "tls.key", "-out", "tls.csr")
    with open(os.path.join(d, "ext"), "w") as f:
        f.write("subjectAltName=URI:spiffe://shoal/check/node\nextendedKeyUsage=serverAuth,clientAuth\n")
    run("openssl", "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-extfile", "ext", "-out", "tls.crt")
    return d


def check_tls(values, fullname, docs, what, pod, cfg, component):
    """The component's config, mount and volume agree with tls.*: the three files where the
    certificate Secret is mounted, or none of it."""
    tls = values["tls"]
    c = pod["spec"]["containers"][0]
    mount = [m for m in c.get("volumeMounts", []) if m["name"] == "tls"]
    vol = [v for v in pod["spec"]["volumes"] if v["name"] == "tls"]
    if not tls["enabled"]:
        check("tls" not in cfg and not mount and not vol, f"{what}: TLS although tls.enabled is false")
        return
    want = {"ca_file": "/var/run/shoal/tls/ca.crt", "cert_file": "/var/run/shoal/tls/tls.crt",
            "key_file": "/var/run/shoal/tls/tls.key", "http_client_auth": tls["httpClientAuth"],
            "reload_interval": tls["reloadInterval"]}
    check(cfg.get("tls") == want, f"{what}: tls section {cfg.get('tls')}")
    check(len(mount) == 1 and mount[0]["mountPath"] == "/var/run/shoal/tls" and "subPath" not in mount[0],
          f"{what}: the certificate mounted at /var/run/shoal/tls without subPath (rotations show): {mount}")
    secret = tls["secrets"][component] if tls["source"] == "secret" else f"{fullname}-{component}-tls"
    check(len(vol) == 1 and vol[0]["secret"]["secretName"] == secret
          and sorted(i["key"] for i in vol[0]["secret"]["items"]) == ["ca.crt", "tls.crt", "tls.key"],
          f"{what}: the volume of Secret {secret}: {vol}")
    if tls["source"] == "certManager":
        certs = [d for d in docs if d["kind"] == "Certificate" and d["spec"]["secretName"] == secret]
        if check(len(certs) == 1, f"{what}: a Certificate for {secret}"):
            spec = certs[0]["spec"]
            issuer = tls["certManager"]["issuerRef"]["name"] or f"{fullname}-ca"
            check(spec["issuerRef"]["name"] == issuer, f"{what}: issued by {spec['issuerRef']}, expected {issuer}")
            check(spec["uris"] == [f"spiffe://shoal/{docs[0]['metadata']['namespace']}/{component}"], f"{what}: URI SAN {spec['uris']}")
            check({"server auth", "client auth"} <= set(spec["usages"]), f"{what}: usages {spec['usages']}")


def node_ip_for(values):
    return NODE_IP6 if values["listenAddress"].strip("[]") == "::" else NODE_IP


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


def quantity_bytes(q):
    """A Kubernetes quantity of bytes (50Gi, 1.5Ti, 500G, an integer) as an integer."""
    if isinstance(q, (int, float)):
        return int(q)
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)", str(q))
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
    return int(float(m.group(1)) * units[m.group(2)]) if "." in m.group(1) else int(m.group(1)) * units[m.group(2)]


def check_store(what, cfg, swarm_values, size):
    """The rendered `swarm.store`: the volume's size as the budget unless the values give one,
    and every other key the values give."""
    given = (swarm_values or {}).get("store") or {}
    store = cfg["swarm"].get("store") or {}
    want = given.get("max_size", quantity_bytes(size) if size not in ("", None) else None)
    check(store.get("max_size") == want, f"{what}: swarm.store.max_size {store.get('max_size')!r}, expected {want!r}")
    for k, v in given.items():
        check(store.get(k) == v, f"{what}: swarm.store.{k} {store.get(k)!r}, expected {v!r}")


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


def check_pod(pod, what, port, values_metrics, comp_values, sa_name, port_name="http"):
    """Probes on /health and /ready on the port serving /metrics, scrape annotations when they
    are on, the ServiceAccount, and the escape hatches (env, extra volumes and mounts, pod
    labels and annotations) as the values give them."""
    c = pod["spec"]["containers"][0]
    for probe, path in [("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")]:
        get = c.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") == port_name, f"{what}: {probe} on {path} at {port_name}: {get}")
    check(pod["spec"].get("serviceAccountName") == sa_name,
          f"{what}: serviceAccountName {pod['spec'].get('serviceAccountName')}, expected {sa_name}")
    check(pod["spec"].get("automountServiceAccountToken") is False, f"{what}: no API token mounted")
    env = [e["name"] for e in c.get("env", [])]
    for e in comp_values.get("env", []):
        check(e["name"] in env, f"{what}: env {e['name']}")
    vols = [v["name"] for v in pod["spec"]["volumes"]]
    for v in comp_values.get("extraVolumes", []):
        check(v["name"] in vols, f"{what}: extra volume {v['name']}")
    mounts = [(m["name"], m["mountPath"]) for m in c.get("volumeMounts", [])]
    for m in comp_values.get("extraVolumeMounts", []):
        check((m["name"], m["mountPath"]) in mounts, f"{what}: extra mount {m}")
    for k, v in comp_values.get("podLabels", {}).items():
        check(pod["metadata"]["labels"].get(k) == v, f"{what}: pod label {k}")
    for k, v in comp_values.get("podAnnotations", {}).items():
        check(pod["metadata"]["annotations"].get(k) == v, f"{what}: pod annotation {k}")
    ann = pod["metadata"].get("annotations", {})
    if values_metrics["podAnnotations"]:
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port)
              and ann.get("prometheus.io/path") == "/metrics", f"{what}: scrape annotations {ann}")
    else:
        check("prometheus.io/scrape" not in ann, f"{what}: scrape annotations although turned off")
    check("checksum/config" in ann, f"{what}: no config checksum annotation")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get(port_name) == port, f"{what}: {port_name} port {ports}")
    return c


def tls_kinds(tls):
    """cert-manager's objects: a Certificate per component, and without an issuerRef the CA's
    self-signed Issuer, CA Certificate and CA Issuer."""
    if not tls["enabled"] or tls["source"] != "certManager":
        return []
    own_ca = not tls["certManager"]["issuerRef"]["name"]
    return ["Certificate"] * (3 + own_ca) + ["Issuer"] * (2 * own_ca)


def sa_name(values, fullname, comp):
    sa = values[comp]["serviceAccount"]
    return (sa["name"] or f"{fullname}-{comp}") if sa["create"] else sa["name"]


def listen_host(values):
    return "[::]" if values["listenAddress"].strip("[]") == "::" else "0.0.0.0"


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
    n_sa = sum(1 for comp in ["tracker", "origin", "agent"] if values[comp]["serviceAccount"]["create"])
    np = values["networkPolicy"]
    want = sorted(["ConfigMap"] * 3 + ["Service"] * (3 + n) + ["Deployment", "StatefulSet", "DaemonSet"]
                  + ["ServiceAccount"] * n_sa
                  + (["PodDisruptionBudget"] if o["podDisruptionBudget"]["enabled"] else [])
                  + (["NetworkPolicy"] * (2 if a["hostNetwork"] else 3) if np["enabled"] else [])
                  + (["ServiceMonitor"] if values["metrics"]["serviceMonitor"]["enabled"] else [])
                  + (["Secret"] if values["auth"]["enabled"] and not values["auth"]["existingSecret"] else [])
                  + tls_kinds(values["tls"]))
    check(kinds == want, f"kinds {kinds}, expected {want}")
    for d in docs:
        check(d["metadata"].get("namespace") == args.namespace, f"{d['kind']} {d['metadata']['name']}: namespace")

    deploy, sts, ds = one(docs, "Deployment"), one(docs, "StatefulSet"), one(docs, "DaemonSet")
    cms = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    if not (deploy and sts and ds) or failures:
        return

    fullname = deploy["metadata"]["name"][: -len("-tracker")]
    sas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceAccount"}
    for comp in ["tracker", "origin", "agent"]:
        sa = values[comp]["serviceAccount"]
        if sa["create"]:
            made = sas.get(sa_name(values, fullname, comp))
            if check(made is not None, f"{comp}: ServiceAccount {sa_name(values, fullname, comp)}"):
                check((made["metadata"].get("annotations") or {}) == sa["annotations"], f"{comp}: ServiceAccount annotations")
                check(made.get("automountServiceAccountToken") is False, f"{comp}: ServiceAccount mounts no token")

    # Tracker.
    tracker_pod = deploy["spec"]["template"]
    tc = check_pod(tracker_pod, "tracker", t["port"], values["metrics"], t, sa_name(values, fullname, "tracker"))
    tracker_cm = cms[tracker_pod["spec"]["volumes"][0]["configMap"]["name"]]
    tracker_cfg = yaml.safe_load(tracker_cm["data"]["tracker.yaml"])
    check(deploy["spec"]["replicas"] == 1, "tracker: one replica")
    check(tc["command"][:1] == ["shoal-tracker"], f"tracker: command {tc['command']}")
    check(tracker_pod["spec"]["terminationGracePeriodSeconds"] > t["shutdownGraceSeconds"],
          "tracker: termination grace above shutdown_grace")

    # Origins: one config per pod, all with the same origins list, which names the pods.
    sts_name = sts["metadata"]["name"]
    op = sts["spec"]["template"]
    oc = check_pod(op, "origin", o["httpPort"], values["metrics"], o, sa_name(values, fullname, "origin"))
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
        scheme = "https" if values["tls"]["enabled"] else "http"
        check(x["peer"] == f"{host}:{o['peerPort']}" and x["http"] == f"{scheme}://{host}:{o['httpPort']}",
              f"origin {i}: addresses {x}")
        svc = services.get(pod_names[i])
        check(svc is not None and svc["spec"]["selector"].get("statefulset.kubernetes.io/pod-name") == pod_names[i]
              and svc["spec"].get("clusterIP") != "None", f"origin {i}: its own ClusterIP Service")
    origin_cfgs = {k: yaml.safe_load(v) for k, v in origin_cm["data"].items()}
    host = listen_host(values)
    check(yaml.safe_load(tracker_cm["data"]["tracker.yaml"])["listen"] == f"{host}:{t['port']}", "tracker: listen address")
    for k, cfg in origin_cfgs.items():
        check(cfg["listen"] == f"{host}:{o['httpPort']}" and cfg["peer_listen"] == f"{host}:{o['peerPort']}",
              f"{k}: listen addresses {cfg['listen']} {cfg['peer_listen']}")
        # Byte sizes given as integers stay integers (not Helm's float, 1.34217728e+08).
        for key, val in [("max_upload", o["maxUpload"])] + (
                [("multipart_threshold", o["backend"]["s3"]["multipartThreshold"])] if o["backend"]["type"] == "s3" else []):
            got = cfg[key] if key == "max_upload" else cfg["backend"][key]
            check(got == val, f"{k}: {key} {got!r}, expected {val!r}")
    spread = op["spec"].get("topologySpreadConstraints", [])
    keys = [c["topologyKey"] for c in spread]
    if o["topologySpread"]["enabled"]:
        check(keys[:2] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
              and all(c["whenUnsatisfiable"] == o["topologySpread"]["whenUnsatisfiable"] for c in spread[:2])
              and all(c["labelSelector"]["matchLabels"].get("app.kubernetes.io/component") == "origin" for c in spread[:2]),
              f"origin: spread across zones and nodes {spread}")
    check(keys[len(keys) - len(o["topologySpreadConstraints"]):] == [c["topologyKey"] for c in o["topologySpreadConstraints"]],
          f"origin: extra topology spread constraints {keys}")
    if o["podDisruptionBudget"]["enabled"]:
        pdb = one(docs, "PodDisruptionBudget")
        check(pdb and pdb["spec"]["maxUnavailable"] == o["podDisruptionBudget"]["maxUnavailable"]
              and pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"], "origin: PodDisruptionBudget")
    secrets = ([o["backend"]["s3"]["credentials"]["existingSecret"]]
               if o["backend"]["type"] == "s3" and o["backend"]["s3"]["credentials"]["existingSecret"] else [])
    if o["pullThrough"]["enabled"]:
        secrets += [u["passwordSecret"]["name"] for u in o["pullThrough"]["upstreams"] if u.get("passwordSecret")]
    check(("checksum/secrets" in op["metadata"]["annotations"]) == bool(secrets),
          f"origin: a checksum of the Secrets {secrets} rolls the pods")
    for k, cfg in origin_cfgs.items():
        check(cfg["origins"] == origins, f"{k}: origins differ from the tracker's")
        check(f"{cfg['id']}.yaml" == k, f"{k}: id {cfg['id']}")
        check(cfg["origin_replicas"] == tracker_cfg["origin_replicas"] == o["ringReplicas"], f"{k}: origin_replicas")
        check(cfg["backend"]["type"] == o["backend"]["type"], f"{k}: backend type")
        own_volume = o["backend"]["type"] == "s3" or o["backend"]["fs"]["volume"]
        check_store(k, cfg, o["swarm"], o["persistence"]["size"] if own_volume else "")
    vols = {v["name"]: v for v in op["spec"]["volumes"]}
    claims = [c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])]
    if o["persistence"]["enabled"]:
        check(claims == ["data"] and "data" not in vols, f"origin: a PVC template for the store, {claims}")
        size = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        check(size == o["persistence"]["size"], f"origin: store volume {size}")
    else:
        check(not claims and vols.get("data", {}).get("emptyDir", {}).get("sizeLimit") == o["persistence"]["size"],
              "origin: an emptyDir store without persistence, sized by persistence.size")
    if o["backend"]["type"] == "s3" and o["backend"]["s3"]["credentials"]["existingSecret"]:
        env = {e["name"]: e for e in oc["env"]}
        for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
            ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
            check(ref.get("name") == o["backend"]["s3"]["credentials"]["existingSecret"], f"origin: {var} from the Secret")

    # Agents.
    ap_ = ds["spec"]["template"]
    ac = check_pod(ap_, "agent", a["metricsPort"], values["metrics"], a, sa_name(values, fullname, "agent"), "metrics")
    agent_cm = cms[[v for v in ap_["spec"]["volumes"] if v["name"] == "config"][0]["configMap"]["name"]]
    agent_cfg = yaml.safe_load(agent_cm["data"]["agent.yaml"])
    check(agent_cfg["origins"] == origins, "agent: origins differ from the tracker's")
    check(agent_cfg["origin_replicas"] == o["ringReplicas"], "agent: origin_replicas")
    ports = {p["name"]: p for p in ac["ports"]}
    check(ports.get("peer", {}).get("containerPort") == a["peerPort"], f"agent: peer port {ports}")
    check(agent_cfg["listen"].endswith(f":{a['port']}") and agent_cfg["peer_listen"].endswith(f":{a['peerPort']}"),
          "agent: config ports match the container ports")
    # The registry API on the node's loopback with the host network (unless apiAddress says
    # otherwise); health and metrics on their own port, reachable from the network.
    api_host = a["apiAddress"] or ("127.0.0.1" if a["hostNetwork"] else host.strip("[]"))
    api_host = f"[{api_host}]" if ":" in api_host else api_host
    check(agent_cfg["listen"] == f"{api_host}:{a['port']}", f"agent: API listens on {agent_cfg['listen']}, expected {api_host}")
    check(agent_cfg["metrics_listen"] == f"{host}:{a['metricsPort']}" and agent_cfg["peer_listen"] == f"{host}:{a['peerPort']}",
          f"agent: metrics and peer listeners {agent_cfg['metrics_listen']} {agent_cfg['peer_listen']}")
    svc_ports = {p["name"] for p in services[ds["metadata"]["name"]]["spec"]["ports"]}
    check(svc_ports == {"metrics", "peer"}, f"agent: the Service lists metrics and peer, not the API: {svc_ports}")
    for init in ap_["spec"].get("initContainers", []):
        check(init.get("resources") == a["initResources"], f"agent: init container {init['name']} resources")
    spec = ap_["spec"]
    if a["hostNetwork"]:
        check(spec.get("hostNetwork") is True and spec.get("dnsPolicy") == "ClusterFirstWithHostNet",
              "agent: host network with cluster DNS")
        check(all("hostPort" not in p for p in ac["ports"]), "agent: no hostPort on the host network")
    else:
        check(not spec.get("hostNetwork"), "agent: pod network")
        # The runtime and peers come through the node's IP; Prometheus scrapes the pod's own.
        check(all((p.get("hostPort") == p["containerPort"]) == (p["name"] != "metrics") for p in ac["ports"]),
              f"agent: hostPorts {ac['ports']}")
    env = {e["name"]: e for e in ac["env"]}
    check(env.get("SHOAL_AGENT_ADVERTISE_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
          == "status.hostIP", "agent: advertises status.hostIP")
    check("advertise_addr" not in agent_cfg["swarm"], "agent: advertise_addr comes from the environment")
    zone_label = values["topology"]["zoneLabel"]
    zone_ref = env.get("SHOAL_AGENT_ZONE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(zone_ref == (f"metadata.labels['{zone_label}']" if zone_label else None),
          f"agent: zone from the pod label {zone_label!r}: {zone_ref!r}")
    check("zone" not in agent_cfg["swarm"], "agent: the zone comes from the environment")
    check_store("agent", agent_cfg, a["swarm"], a["store"]["size"])
    for cfg in [agent_cfg] + list(origin_cfgs.values()):
        scheme = "https" if values["tls"]["enabled"] else "http"
        check(cfg["swarm"]["trackers"] == [f"{scheme}://{deploy['metadata']['name']}.{args.namespace}.svc:{t['port']}"],
              f"trackers {cfg['swarm']['trackers']}")
    store = [v for v in spec["volumes"] if v["name"] == "store"][0]
    if a["store"]["type"] == "hostPath":
        check(store.get("hostPath", {}).get("path") == a["store"]["hostPath"], f"agent: store {store}")
        check(container(ap_, "prepare-store", init=True) is not None, "agent: prepare-store init container")
    else:
        check(store.get("emptyDir", {}).get("sizeLimit") == (a["store"]["size"] or None), f"agent: store {store}")
    check(ds["spec"]["updateStrategy"] == a["updateStrategy"], "agent: updateStrategy")
    for key in ["priorityClassName", "nodeSelector", "tolerations"]:
        if a[key]:
            check(spec.get(key) == a[key], f"agent: {key}")
        else:
            check(key not in spec, f"agent: no {key}")
    check(ac.get("resources") == a["resources"], "agent: resources")
    check(ap_["spec"]["terminationGracePeriodSeconds"] > a["shutdownGraceSeconds"], "agent: termination grace")

    # NetworkPolicies: who may reach which port.
    if np["enabled"]:
        pols = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
        nodes = [{"ipBlock": {"cidr": c}} for c in np["nodeCIDRs"]]
        release = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": sts["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
                                                   "app.kubernetes.io/instance": sts["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"]}}}

        def allowed(pol, port):
            return [peer for rule in pol["spec"]["ingress"] if any(p["port"] == port for p in rule["ports"])
                    for peer in rule["from"]]
        op_ = pols.get(sts_name)
        if check(op_ is not None, "networkPolicy: origins"):
            check(allowed(op_, o["peerPort"]) == [release] + nodes, f"networkPolicy: origin peer port from {allowed(op_, o['peerPort'])}")
            for peer in np["metricsFrom"]:
                check(peer in allowed(op_, o["httpPort"]), "networkPolicy: origin metrics from metricsFrom")
        tp = pols.get(deploy["metadata"]["name"])
        check(tp is not None and allowed(tp, t["port"])[:1 + len(nodes)] == [release] + nodes, "networkPolicy: tracker")
        agent_pol = pols.get(ds["metadata"]["name"])
        if a["hostNetwork"]:
            check(agent_pol is None, "networkPolicy: none for host-network agents (not enforced there)")
        elif check(agent_pol is not None, "networkPolicy: agents"):
            check(allowed(agent_pol, a["port"]) == nodes, f"networkPolicy: agent API only from the nodes {allowed(agent_pol, a['port'])}")
            check(allowed(agent_pol, a["peerPort"]) == [release] + nodes, "networkPolicy: agent peer port")
            check(allowed(agent_pol, a["metricsPort"]) == np["metricsFrom"], "networkPolicy: agent metrics")

    # Who may write: the tokens Secret mounted in every pod and named by every config; the
    # tracker's trusted networks and the agent's API networks as the values give them.
    auth = values["auth"]
    secret_name = auth["existingSecret"] or f"{fullname}-auth"
    token_file = "/var/run/shoal/auth/tokens"
    for what, pod, cfgs in [("tracker", tracker_pod, [tracker_cfg]), ("agent", ap_, [agent_cfg]),
                            ("origin", op, list(origin_cfgs.values()))]:
        vol = {v["name"]: v for v in pod["spec"]["volumes"]}.get("auth")
        mount = [m_ for m_ in pod["spec"]["containers"][0].get("volumeMounts", []) if m_["name"] == "auth"]
        if auth["enabled"]:
            check(vol is not None and vol["secret"]["secretName"] == secret_name
                  and vol["secret"]["items"] == [{"key": auth["key"], "path": "tokens"}],
                  f"{what}: the tokens Secret {secret_name} as a volume: {vol}")
            check([m_["mountPath"] for m_ in mount] == ["/var/run/shoal/auth"], f"{what}: tokens mounted {mount}")
            for cfg in cfgs:
                check(cfg.get("auth") == {"tokens_file": token_file}, f"{what}: auth {cfg.get('auth')}")
        else:
            check(vol is None and not mount, f"{what}: no tokens volume without auth")
            for cfg in cfgs:
                check("auth" not in cfg, f"{what}: no auth section without auth")
    for k, cfg in origin_cfgs.items():
        want = token_file if auth["enabled"] else None
        check(cfg["swarm"].get("tracker_token_file") == want, f"{k}: tracker_token_file {cfg['swarm'].get('tracker_token_file')}")
    secrets_made = [d for d in docs if d["kind"] == "Secret"]
    if auth["enabled"] and not auth["existingSecret"]:
        sec = secrets_made[0] if secrets_made else {}
        token = base64.b64decode(sec.get("data", {}).get(auth["key"], "")).decode().strip()
        check(sec.get("metadata", {}).get("name") == secret_name and len(token) >= 32,
              f"auth: a Secret {secret_name} with a random token under {auth['key']}")
    check(tracker_cfg["trusted_networks"] == t["trustedNetworks"], f"tracker: trusted_networks {tracker_cfg['trusted_networks']}")
    check(agent_cfg["api_networks"] == ["127.0.0.0/8", "::1"] + a["apiNetworks"],
          f"agent: api_networks {agent_cfg['api_networks']}")
    # TLS: each component's config, mount, volume and Certificate; probes over HTTPS.
    scheme = "https" if values["tls"]["enabled"] else "http"
    check(tracker_cfg.get("tls") is None or all(u.startswith("https://") for u in [x["http"] for x in tracker_cfg["origins"]]),
          "tracker: origins' URLs are https with TLS")
    check_tls(values, fullname, docs, "tracker", tracker_pod, tracker_cfg, "tracker")
    for k, cfg in origin_cfgs.items():
        check_tls(values, fullname, docs, f"origin {k}", op, cfg, "origin")
        check(cfg["swarm"]["trackers"][0].startswith(f"{scheme}://"), f"origin {k}: tracker URL {cfg['swarm']['trackers']}")
    agent_cfg = yaml.safe_load(agent_cm["data"]["agent.yaml"])
    check_tls(values, fullname, docs, "agent", ap_, agent_cfg, "agent")
    check(agent_cfg["swarm"]["trackers"][0].startswith(f"{scheme}://"), f"agent: tracker URL {agent_cfg['swarm']['trackers']}")
    for what, pod in [("tracker", tracker_pod), ("origin", op)]:
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
            get = pod["spec"]["containers"][0][probe]["httpGet"]
            check(get.get("scheme", "HTTP") == scheme.upper(), f"{what}: {probe} scheme {get}")

    with tempfile.TemporaryDirectory() as tmp:
        secrets = os.path.join(tmp, "secrets")
        stand_in_token = "stand-in-token\n"

        def localize(text, pod):
            """The config with every file it names (mounted from the pod's volumes) replaced by a
            local stand-in; each file must be in one of the container's mounts."""
            c_ = pod["spec"]["containers"][0]
            mounts_ = {m_["mountPath"]: m_["name"] for m_ in c_.get("volumeMounts", [])}
            vols_ = {v["name"]: v for v in pod["spec"]["volumes"]}
            # Each file once: two keys may name the same one.
            found = {file: field for field, file in re.findall(r"(tokens_file|tracker_token_file): (\S+)", text)}
            for file, field in found.items():
                vol_ = vols_.get(mounts_.get(os.path.dirname(file)), {})
                items_ = (vol_.get("secret") or {}).get("items", [])
                check(os.path.basename(file) in [i["path"] for i in items_], f"{field} {file} is not mounted: {vol_}")
                local_ = os.path.join(secrets, file.lstrip("/"))
                os.makedirs(os.path.dirname(local_), exist_ok=True)
                with open(local_, "w") as f_:
                    f_.write(stand_in_token)
                text = text.replace(file, local_)
            return text

        # Every config through its binary's --check-config.
        # Every config through its binary's --check-config, with a real CA and certificate
        # where the Secret is mounted.
        tls_dir = node_tls(tmp) + "/"
        mounted = lambda text: text.replace("/var/run/shoal/tls/", tls_dir)
        path = os.path.join(tmp, "tracker.yaml")
        with open(path, "w") as f:
            f.write(localize(mounted(tracker_cm["data"]["tracker.yaml"]), tracker_pod))
        run_check_config(os.path.join(args.bin, "shoal-tracker"), path)
        path = os.path.join(tmp, "agent.yaml")
        with open(path, "w") as f:
            f.write(localize(mounted(agent_cm["data"]["agent.yaml"]), ap_))
        run_check_config(os.path.join(args.bin, "shoal-agent"), path, {"SHOAL_AGENT_ADVERTISE_IP": node_ip_for(values)})
        # As the downward API gives it: the node's zone, or empty on a pod without the label.
        for zone in ["europe-west4-a", ""]:
            run_check_config(os.path.join(args.bin, "shoal-agent"), path,
                             {"SHOAL_AGENT_ADVERTISE_IP": node_ip_for(values), "SHOAL_AGENT_ZONE": zone})
        # Without the address the DaemonSet gives it, the agent must refuse to start.
        res = subprocess.run([os.path.join(args.bin, "shoal-agent"), "--config", path, "--check-config"],
                             capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "SHOAL_AGENT_ADVERTISE_IP"})
        check(res.returncode == 64, f"agent: check without an advertised IP exits {res.returncode}, not 64")
        # The files an origin's config names are mounted from Secrets and ConfigMaps: each one
        # must be in a mount of the origin container, and the check gets a stand-in of the right
        # kind (a password, a PEM certificate and key, a Docker config JSON).
        mounts = {m_["mountPath"]: m_["name"] for m_ in oc["volumeMounts"]}
        ovols = {v["name"]: v for v in op["spec"]["volumes"]}
        cert, key = stand_in_cert(tmp)
        stand_ins = {"password_file": "stand-in\n", "ca_file": cert, "client_cert_file": cert,
                     "client_key_file": key, "docker_config_file": '{"auths": {}}\n'}
        for k, text in origin_cm["data"].items():
            text = mounted(text)
            for field, file in re.findall(r"(password_file|ca_file|client_cert_file|client_key_file|docker_config_file): (\S+)", text):
                if file.startswith(tls_dir):
                    continue
                vol = ovols.get(mounts.get(os.path.dirname(file)), {})
                items = (vol.get("secret") or vol.get("configMap") or {}).get("items", [])
                check(os.path.basename(file) in [i["path"] for i in items], f"{k}: {field} {file} is not mounted: {vol}")
                local = os.path.join(secrets, file.lstrip("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "w") as f:
                    f.write(stand_ins[field])
                text = text.replace(file, local)
            path = os.path.join(tmp, k)
            with open(path, "w") as f:
                f.write(localize(text, op))
            run_check_config(os.path.join(args.bin, "shoal-origin"), path)

        # The runtime's init container, run as the pod runs it, against temporary directories:
        # beside a hosts.toml of the node's own that must be merged into, not replaced; then
        # `--uninstall`, which must leave exactly the node's own file.
        m = a["mirror"]
        init = container(ap_, "configure-runtime", init=True)
        if check((init is not None) == m["enabled"], "agent: configure-runtime init container") and init is not None:
            node_ip = node_ip_for(values)
            host_dir = os.path.join(tmp, "host")
            cmd = [arg.replace("/host/", host_dir + "/").replace("$(HOST_IP)", node_ip) for arg in init["command"]]
            cmd[0] = os.path.join(args.bin, cmd[0])
            mounts = {mnt["mountPath"]: mnt["name"] for mnt in init["volumeMounts"]}
            vols = {v["name"]: v for v in spec["volumes"]}
            api = f"[{node_ip}]" if ":" in node_ip else node_ip
            agent_addr = f"127.0.0.1:{a['port']}" if a["hostNetwork"] else f"{api}:{a['port']}"
            if m["runtime"] == "containerd":
                check(init["command"][2] == "containerd", f"agent: configure containerd {init['command']}")
                check(vols[mounts["/host/hosts-dir"]]["hostPath"]["path"] == m["containerd"]["hostsDir"], "agent: hosts dir mount")
                hosts = os.path.join(host_dir, "hosts-dir")
                os.makedirs(os.path.join(host_dir, "containerd-config"))
                mine = os.path.join(hosts, m["registries"][0], "hosts.toml")
                own = 'server = "https://own.example"\n\n[host."https://cache.example"]\n  capabilities = ["pull"]\n'
                os.makedirs(os.path.dirname(mine))
                with open(mine, "w") as f:
                    f.write(own)
                res = subprocess.run(cmd, capture_output=True, text=True)
                if check(res.returncode == 0, f"configure containerd: exit {res.returncode}: {res.stderr.strip()}"):
                    check("config_path" in res.stdout, f"configure containerd: no config_path hint in {res.stdout!r}")
                    for reg in ["_default"] + m["registries"]:
                        p = os.path.join(hosts, reg, "hosts.toml")
                        text = open(p).read() if os.path.exists(p) else ""
                        check(f'[host."http://{agent_addr}"]' in text and "dial_timeout" in text,
                              f"configure containerd: {reg}/hosts.toml names the agent {agent_addr} with a dial_timeout")
                    text = open(mine).read()
                    check('server = "https://own.example"' in text and 'https://cache.example' in text
                          and text.index(agent_addr) < text.index("https://cache.example"),
                          f"configure containerd: the node's own hosts.toml merged, agent first:\n{text}")
                    res = subprocess.run(cmd + ["--uninstall"], capture_output=True, text=True)
                    left = sorted(os.path.relpath(os.path.join(d, f), hosts) for d, _, fs in os.walk(hosts) for f in fs)
                    check(res.returncode == 0 and left == [os.path.relpath(mine, hosts)] and open(mine).read() == own,
                          f"configure containerd --uninstall: exit {res.returncode} {res.stderr.strip()}, left {left}")
            else:
                check(init["command"][2] == "podman", f"agent: CRI-O's registries.conf from `configure podman` {init['command']}")
                check(vols[mounts["/host/registries-dir"]]["hostPath"]["path"] == os.path.dirname(m["crio"]["dropIn"]),
                      "agent: registries.conf.d mount")
                res = subprocess.run(cmd, capture_output=True, text=True)
                drop_in = os.path.join(host_dir, "registries-dir", os.path.basename(m["crio"]["dropIn"]))
                if check(res.returncode == 0, f"configure podman: exit {res.returncode}: {res.stderr.strip()}"):
                    text = open(drop_in).read()
                    for reg in m["registries"]:
                        check(f'prefix = "{reg}"' in text, f"registries.conf: {reg}")
                    check(f'location = "{agent_addr}"' in text, f"registries.conf: the agent {agent_addr} as mirror")
                    res = subprocess.run(cmd + ["--uninstall"], capture_output=True, text=True)
                    check(res.returncode == 0 and not os.path.exists(drop_in), f"configure podman --uninstall: {res.stderr}")

if __name__ == "__main__":
    main()
    for f in failures:
        print(f"check_chart.py: {f}", file=sys.stderr)
    sys.exit(1 if failures else 0)
