#!/bin/sh
# A Helm post-renderer that adds scopegate to another chart's workload at every install and upgrade:
#   helm install ledger vendor/ledger-mcp --post-renderer ./post-renderer.sh
# Helm writes that chart's rendered manifests to stdin and applies what this prints. scopegate-patch.yaml (beside
# this script) comes from `helm template gate helm/scopegate -f gate.yaml --set attach.patch=true --show-only
# templates/attach-patch.yaml`.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/all.yaml"
cp "$here/scopegate-patch.yaml" "$work/scopegate-patch.yaml"
printf 'resources: [all.yaml]\npatches: [{path: scopegate-patch.yaml}]\n' > "$work/kustomization.yaml"
kubectl kustomize "$work"
