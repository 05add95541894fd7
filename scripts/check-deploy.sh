#!/usr/bin/env bash
# `make check-deploy`: the Kubernetes and observability artefacts, checked offline.
#   helm lint --strict and helm template for the defaults (with the public URL they require)
#   and every ci/*.yaml value set; the bare defaults must be refused with a clear message;
#   every rendered manifest against the Kubernetes schemas (kubernetes-validate);
#   a deliberately broken value set must be rejected by values.schema.json, and SASL without a
#   mechanism refused at render;
#   the alert rules with promtool (check + unit tests); skaffold.yaml against skaffold's schema.
# The behavioural checks (hardening, secrets, topics, metrics on running services) are pytest
# tests in tests/deploy/.
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_ROOT="$PWD"
KUBE_VERSION="${HERALD_KUBE_VERSION:-1.33.0}"
CHART=deploy/helm/herald
OUT=.cache/deploy/rendered
start=$SECONDS

bash deploy/tools/helm.sh install
bash deploy/local/prometheus.sh install
HELM="$(bash deploy/tools/helm.sh path)"
PROMTOOL="$(bash deploy/local/prometheus.sh path)"
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== helm lint --strict and helm template (Kubernetes $KUBE_VERSION)"
# The defaults leave global.publicBaseUrl empty, which the senders cannot run without.
sets=("")
for f in "$CHART"/ci/*.yaml; do sets+=("$f"); done
for values in "${sets[@]}"; do
  name=$(basename "${values:-defaults.yaml}" .yaml)
  args=(--kube-version "$KUBE_VERSION")
  if [[ -n "$values" ]]; then args+=(-f "$values"); else args+=(-f tests/deploy/values/public-url.yaml); fi
  "$HELM" lint --strict --quiet "$CHART" "${args[@]}" >/dev/null
  "$HELM" template herald "$CHART" "${args[@]}" > "$OUT/$name.yaml"
  echo "   $name: $(grep -c '^kind:' "$OUT/$name.yaml") resources"
done

echo "== the defaults without a public URL are refused, naming the value to set"
if "$HELM" template herald "$CHART" --kube-version "$KUBE_VERSION" > /dev/null 2> "$OUT/no-url.err"; then
  echo "the defaults rendered without global.publicBaseUrl" >&2; exit 1
fi
grep -q "global.publicBaseUrl" "$OUT/no-url.err" || { cat "$OUT/no-url.err" >&2; exit 1; }

echo "== Kubernetes schemas (kubernetes-validate --strict)"
# CRDs (ServiceMonitor, PrometheusRule, KafkaTopic) have no bundled schema: that warning is
# expected here and tests/deploy/test_chart.py checks their structure instead.
report=$(uv run --frozen kubernetes-validate -k "$KUBE_VERSION" --strict --quiet "$OUT"/*.yaml 2>&1) || {
  echo "$report" >&2; exit 1; }
unexpected=$(echo "$report" | grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\|KafkaTopic\) " || true)
[[ -z "$unexpected" ]] || { echo "$unexpected" >&2; exit 1; }

echo "== values.schema.json rejects a broken value (replicas as a string)"
if "$HELM" template herald "$CHART" --kube-version "$KUBE_VERSION" \
    -f tests/deploy/broken-values/replicas-string.yaml > /dev/null 2> "$OUT/broken.err"; then
  echo "a string for replicas was accepted" >&2; exit 1
fi
grep -q "replicas" "$OUT/broken.err" || { cat "$OUT/broken.err" >&2; exit 1; }

echo "== SASL without a mechanism is refused at render, naming the value to set"
if "$HELM" template herald "$CHART" --kube-version "$KUBE_VERSION" \
    -f tests/deploy/broken-values/sasl-without-mechanism.yaml > /dev/null 2> "$OUT/sasl.err"; then
  echo "SASL_SSL without kafka.sasl.mechanism was accepted" >&2; exit 1
fi
grep -q "kafka.sasl.mechanism" "$OUT/sasl.err" || { cat "$OUT/sasl.err" >&2; exit 1; }

echo "== promtool"
"$PROMTOOL" check rules "$CHART/files/alerts.yaml"
"$PROMTOOL" test rules deploy/observability/alerts.test.yaml

echo "== skaffold.yaml against skaffold's v4beta13 schema"
uv run --frozen python - <<'PY'
import json, sys
import jsonschema, yaml
schema = json.load(open("deploy/skaffold/skaffold-v4beta13.json"))
config = yaml.safe_load(open("skaffold.yaml"))
errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(config))
for e in errors:
    print(f"skaffold.yaml: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
echo "== check-deploy passed in $((SECONDS - start)) s"
