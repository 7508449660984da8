// Validates the Prometheus Operator's objects (ServiceMonitor, PrometheusRule) against the
// operator's CRD schemas, as packaged in @kubernetes-models/prometheus-operator (package.json).
//
//     node validate_crds.mjs OBJECTS.json
//
// OBJECTS.json holds a JSON array of objects; those of monitoring.coreos.com are validated, the
// rest are left to validate_k8s.py. Prints one JSON line {"validated": [...], "errors": [...]}
// and exits 1 on an error, or on a monitoring.coreos.com kind this package has no model for.
import { readFileSync } from "node:fs";
import * as v1 from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const objects = JSON.parse(readFileSync(process.argv[2], "utf8"));
const report = { validated: [], errors: [] };
for (const obj of objects) {
  if (!String(obj.apiVersion ?? "").startsWith("monitoring.coreos.com/")) continue;
  const name = `${obj.kind}/${obj.metadata?.name}`;
  const Model = obj.apiVersion === "monitoring.coreos.com/v1" ? v1[obj.kind] : undefined;
  if (typeof Model !== "function") {
    report.errors.push(`${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
    continue;
  }
  try {
    new Model(obj).validate();
    report.validated.push(name);
  } catch (e) {
    report.errors.push(`${name}: ${e.message}`);
  }
}
console.log(JSON.stringify(report));
process.exit(report.errors.length ? 1 : 0);
