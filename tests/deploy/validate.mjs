// Offline validation of gradacc's deployment files, without a cluster or an
// engine: Kubernetes objects against the Kubernetes OpenAPI schemas
// (kubernetes-models), the MPIJob's pod templates likewise plus the Open MPI
// settings containers need, the image definition with dockerfile-utils plus
// gradacc's own rules, and the compose file's structure.
//   node validate.mjs DEPLOY_DIR
import { readFileSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";
import { validate as validateDockerfile, ValidationSeverity } from "dockerfile-utils";
import { ConfigMap } from "kubernetes-models/v1/ConfigMap";
import { Service } from "kubernetes-models/v1/Service";
import { PodTemplateSpec } from "kubernetes-models/v1/PodTemplateSpec";
import { StatefulSet } from "kubernetes-models/apps/v1/StatefulSet";

const dir = process.argv[2];
const failures = [];
const fail = (where, what) => failures.push(`${where}: ${what}`);
const check = (where, cond, what) => { if (!cond) fail(where, what); };

function schema(where, Model, obj) {
  try { new Model(obj).validate(); } catch (e) { fail(where, `schema: ${e.message}`); }
}

const docs = {};
for (const file of ["k8s/server.yaml", "k8s/workers-mpijob.yaml"]) {
  for (const doc of YAML.parseAllDocuments(readFileSync(join(dir, file), "utf8"))) {
    if (doc.errors.length) { fail(file, doc.errors.map(String).join("; ")); continue; }
    const obj = doc.toJS();
    const where = `${file} ${obj.kind}/${obj.metadata?.name}`;
    docs[obj.kind] = obj;
    switch (obj.kind) {
      case "ConfigMap": schema(where, ConfigMap, obj); break;
      case "Service": schema(where, Service, obj); break;
      case "StatefulSet": schema(where, StatefulSet, obj); break;
      case "MPIJob": {
        check(where, obj.apiVersion === "kubeflow.org/v2beta1", "apiVersion must be kubeflow.org/v2beta1");
        const specs = obj.spec?.mpiReplicaSpecs ?? {};
        check(where, specs.Launcher && specs.Worker, "needs Launcher and Worker replica specs");
        for (const role of ["Launcher", "Worker"]) {
          const t = specs[role]?.template;
          if (!t) continue;
          schema(`${where} ${role}`, PodTemplateSpec, t);
          for (const c of t.spec.containers) {
            const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value]));
            check(`${where} ${role}/${c.name}`, env.OMPI_MCA_btl_vader_single_copy_mechanism === "none",
                  "containers need OMPI_MCA_btl_vader_single_copy_mechanism=none");
          }
        }
        const worker = specs.Worker?.template?.spec;
        const shm = worker?.volumes?.find((v) => v.emptyDir?.medium === "Memory");
        check(where, shm && worker.containers.some((c) => c.volumeMounts?.some((m) => m.name === shm.name &&
              m.mountPath === "/dev/shm")), "workers need a memory-backed /dev/shm");
        const args = specs.Launcher?.template?.spec?.containers?.[0]?.args ?? [];
        check(where, args.includes("gradacc-worker"), "the launcher must run gradacc-worker");
        break;
      }
      default: fail(where, "unexpected kind");
    }
  }
}

// Cross-object checks a schema cannot make.
const sts = docs.StatefulSet, svc = docs.Service, cm = docs.ConfigMap;
if (sts) {
  const c = sts.spec.template.spec.containers[0];
  check("StatefulSet", c.livenessProbe?.grpc?.port === 7070 && c.readinessProbe?.grpc?.port === 7070,
        "liveness and readiness must be native gRPC probes on 7070");
  check("StatefulSet", c.resources?.requests?.cpu && c.resources?.requests?.memory, "resource requests missing");
  check("StatefulSet", sts.spec.volumeClaimTemplates?.some((v) => c.volumeMounts.some((m) => m.name === v.metadata.name)),
        "checkpoints must live on a persistent volume claim");
  check("StatefulSet", sts.spec.template.spec.volumes?.some((v) => v.configMap?.name === cm?.metadata?.name),
        "the job spec must come from the ConfigMap");
  check("StatefulSet", sts.spec.template.spec.securityContext?.runAsNonRoot === true, "must run as non-root");
  const sel = sts.spec.selector.matchLabels;
  check("Service", svc && Object.entries(svc.spec.selector).every(([k, v]) => sel[k] === v), "selector must match the StatefulSet");
}

// The image definition.
const dockerfile = readFileSync(join(dir, "Dockerfile"), "utf8");
for (const d of validateDockerfile(dockerfile)) {
  const where = `Dockerfile line ${d.range.start.line + 1}`;
  if (d.severity === ValidationSeverity.ERROR) fail(where, d.message);
  else console.log(`${where}: warning: ${d.message}`);
}
const lines = dockerfile.split("\n");
const instr = (name) => lines.filter((l) => l.trimStart().toUpperCase().startsWith(name + " "));
check("Dockerfile", instr("FROM").length >= 2, "must be multi-stage (a build stage and a runtime stage)");
check("Dockerfile", instr("COPY").some((l) => l.includes("--from=build") && /gradacc_\S*\.deb/.test(l)),
      "the runtime stage takes the gradacc .deb from the build stage");
check("Dockerfile", /apt-get install[^\n]*(\\\n[^\n]*)*\/tmp\/gradacc_\S*\.deb/.test(dockerfile),
      "the runtime stage installs the gradacc .deb with apt-get (its dependencies come from Debian)");
check("Dockerfile", instr("USER").some((l) => !/\broot\b|\b0\b/.test(l)), "must run as a non-root user");
check("Dockerfile", instr("VOLUME").some((l) => l.includes("checkpoints")), "the checkpoint folder must be a volume");
check("Dockerfile", instr("HEALTHCHECK").length === 1 && dockerfile.includes('"gradacc", "health"'),
      "the health check must use gradacc health");
check("Dockerfile", instr("ENTRYPOINT").some((l) => l.includes('["gradacc-server"]')),
      "the server must be PID 1 (exec-form ENTRYPOINT) to receive SIGTERM");

// The compose file.
const compose = YAML.parse(readFileSync(join(dir, "compose.yaml"), "utf8"));
check("compose.yaml", compose.services?.server && compose.services?.worker, "needs a server and a worker service");
check("compose.yaml", JSON.stringify(compose.services?.server?.healthcheck?.test ?? []).includes("health"),
      "the server's health check must use gradacc health");
check("compose.yaml", (compose.services?.worker?.entrypoint ?? []).includes("mpirun"), "the worker must launch mpirun");

// The job spec travels to the test runner for gradacc's own parser.
if (cm) console.log(`JOB-SPEC-BEGIN\n${cm.data["job.textproto"]}JOB-SPEC-END`);
if (failures.length) {
  for (const f of failures) console.error(`INVALID ${f}`);
  process.exit(1);
}
console.log("deploy: manifests, MPIJob, Dockerfile and compose file are valid");
