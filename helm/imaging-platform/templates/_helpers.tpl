{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "imaging-platform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name used as the prefix of every resource (room left for suffixes). */}}
{{- define "imaging-platform.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "imaging-platform.name" .) | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Chart name and version for the helm.sh/chart label. */}}
{{- define "imaging-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's objects: <fullname>-<component>. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.componentName" -}}
{{- printf "%s-%s" (include "imaging-platform.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the release's pods of every component. */}}
{{- define "imaging-platform.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "imaging-platform.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.selectorLabels" -}}
{{ include "imaging-platform.releaseSelectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Full app.kubernetes.io label set of an object. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.labels" -}}
{{ include "imaging-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imaging-platform
helm.sh/chart: {{ include "imaging-platform.chart" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The release's ServiceAccount name. */}}
{{- define "imaging-platform.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imaging-platform.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The model-rollout job's ServiceAccount name. */}}
{{- define "imaging-platform.rolloutServiceAccountName" -}}
{{- default (include "imaging-platform.componentName" (dict "root" . "component" "model-rollout")) .Values.rollout.serviceAccount.name }}
{{- end }}

{{/* The model-rollout Job's name: <fullname>-<action>-<model>-v<version>, lower case, every run
of characters other than [a-z0-9-] turned into "-" (model names may hold "_" and "."), and
the part before "-v<version>" cut so that the whole stays within the 63 characters of the
job-name label: the version always survives. */}}
{{- define "imaging-platform.rolloutJobName" -}}
{{- $job := .Values.rollout.job }}
{{- $suffix := printf "-v%d" (int64 $job.version) }}
{{- $base := regexReplaceAll "[^a-z0-9-]+" (printf "%s-%s-%s" (include "imaging-platform.fullname" .) $job.action $job.model | lower) "-" }}
{{- printf "%s%s" (regexReplaceAll "-+$" ($base | trunc (int (sub 63 (len $suffix)))) "") $suffix }}
{{- end }}

{{/* activeDeadlineSeconds of the model-rollout Job: rollout.job.activeDeadlineSeconds, or (0)
2 x timeoutSeconds (a load and its rollback) per Triton pod the release may run + 300 s for
scheduling and the image pull. */}}
{{- define "imaging-platform.rolloutJobDeadline" -}}
{{- $job := .Values.rollout.job }}
{{- if $job.activeDeadlineSeconds }}
{{- int64 $job.activeDeadlineSeconds }}
{{- else }}
{{- add 300 (mul 2 (int64 $job.timeoutSeconds) (int64 (include "imaging-platform.tritonMaxReplicas" .))) }}
{{- end }}
{{- end }}

{{/* The name the model-rollout Job checks Triton's certificate against (it dials each pod by
IP): the DNS name of Triton's headless peers Service, one of imaging-platform.tlsDnsNames. */}}
{{- define "imaging-platform.tritonTlsServerName" -}}
{{- printf "%s.%s.svc.%s" (include "imaging-platform.peersName" (dict "root" . "component" "triton")) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* image reference from (dict "image" .Values.x.image "default" "tag" "value" "x.image"): digest
wins over tag; "default" is the tag when image.tag is empty, and with neither rendering fails
naming "value" (the schema refuses it first, this is the template's own guard). */}}
{{- define "imaging-platform.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- $tag := toString (default .default .image.tag) }}
{{- if not $tag }}
{{- fail (printf "%s: set tag or digest (no default tag)" (default "image" .value)) }}
{{- end }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* In-cluster DNS name of one component's Service. Takes (dict "root" $ "component" "x"). */}}
{{/* Headless Service of one component, for client-side gRPC balancing. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.peersName" -}}
{{- printf "%s-peers" (include "imaging-platform.componentName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* gRPC target of a component's pods: dns:/// on the headless Service, so the client sees every pod. */}}
{{- define "imaging-platform.peersTarget" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "imaging-platform.peersName" .) .root.Release.Namespace .root.Values.clusterDomain (int .port) }}
{{- end }}

{{- define "imaging-platform.serviceHost" -}}
{{- printf "%s.%s.svc.%s" (include "imaging-platform.componentName" .) .root.Release.Namespace .root.Values.clusterDomain }}
{{- end }}

{{/* grpc.health.v1 service name of the services' startup and liveness probes: every service
process sets it SERVING at start and never ties it to a dependency (LIVENESS_SERVICE in
services/common/server.py). Readiness probes ask the overall status "" instead. */}}
{{- define "imaging-platform.livenessService" -}}
liveness
{{- end }}

{{/* The four platform services, in start order. */}}
{{- define "imaging-platform.services" -}}
decoder preprocessor postprocessor gateway
{{- end }}

{{/* Services that run as extra containers of the gateway's pod (dataPlane.colocated): they have
no Deployment, HPA, PDB, Service, peers Service or NetworkPolicy of their own. Empty otherwise. */}}
{{- define "imaging-platform.sidecars" -}}
{{- if .Values.dataPlane.colocated }}decoder preprocessor{{ end }}
{{- end }}

{{/* Services that run as their own Deployment, in start order: what the per-service templates
(Deployment, HPA, PDB, Services, NetworkPolicies, monitors) range over. */}}
{{- define "imaging-platform.deployments" -}}
{{- $sidecars := splitList " " (include "imaging-platform.sidecars" .) }}
{{- $out := list }}
{{- range $svc := splitList " " (include "imaging-platform.services" .) }}
{{- if not (has $svc $sidecars) }}{{ $out = append $out $svc }}{{ end }}
{{- end }}
{{- join " " $out }}
{{- end }}

{{/* The Deployments the gateway calls (each has a peers Service and accepts only the gateway). */}}
{{- define "imaging-platform.innerDeployments" -}}
{{- without (splitList " " (include "imaging-platform.deployments" .)) "gateway" | join " " }}
{{- end }}

{{/* Containers of one service's pod: the service, plus the sidecars in the gateway's pod.
Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.podServices" -}}
{{- .component }}
{{- if eq .component "gateway" }}{{ with include "imaging-platform.sidecars" .root }} {{ . }}{{ end }}{{ end }}
{{- end }}

{{/* Services that share the pixel exchange (the containers of the colocated pod); empty when
dataPlane.colocated is false (pixels then travel inline over gRPC). */}}
{{- define "imaging-platform.exchangeServices" -}}
{{- if .Values.dataPlane.colocated }}gateway {{ include "imaging-platform.sidecars" . }}{{ end }}
{{- end }}

{{/* Whether a service runs as a sidecar ("true" or ""). Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.isSidecar" -}}
{{- if has .component (splitList " " (include "imaging-platform.sidecars" .root)) }}true{{ end }}
{{- end }}

{{/* gRPC port of a service's container: a localhost port of its own for a sidecar, ports.grpc
otherwise. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.grpcPort" -}}
{{- if include "imaging-platform.isSidecar" . }}
{{- (index .root.Values.dataPlane.ports .component).grpc }}
{{- else }}
{{- .root.Values.ports.grpc }}
{{- end }}
{{- end }}

{{/* Metrics port of a service's container (see grpcPort). Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.metricsPort" -}}
{{- if include "imaging-platform.isSidecar" . }}
{{- (index .root.Values.dataPlane.ports .component).metrics }}
{{- else }}
{{- .root.Values.ports.metrics }}
{{- end }}
{{- end }}

{{/* Plaintext grpc.health.v1 port of a service's container (IMAGING_HEALTH_PORT), used only with
tls.enabled: the API port then speaks TLS only, and kubelet gRPC probes cannot. A port of its own
for a sidecar, ports.health otherwise. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.healthPort" -}}
{{- if include "imaging-platform.isSidecar" . }}
{{- (index .root.Values.dataPlane.ports .component).health }}
{{- else }}
{{- .root.Values.ports.health }}
{{- end }}
{{- end }}

{{/* Port the kubelet's gRPC probes of a service's container use: the health port with
tls.enabled, the (plaintext) API port otherwise. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.probePort" -}}
{{- if .root.Values.tls.enabled }}
{{- include "imaging-platform.healthPort" . }}
{{- else }}
{{- include "imaging-platform.grpcPort" . }}
{{- end }}
{{- end }}

{{/* Every port a service's container listens on, space-separated: gRPC, metrics and, with
tls.enabled, health. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.containerPorts" -}}
{{- $ports := list (include "imaging-platform.grpcPort" .) (include "imaging-platform.metricsPort" .) }}
{{- if .root.Values.tls.enabled }}{{ $ports = append $ports (include "imaging-platform.healthPort" .) }}{{ end }}
{{- join " " $ports }}
{{- end }}

{{/* Fixed mount points of the gateway's Secrets (the Secret is mounted as a directory, never
with subPath, so that the kubelet's updates reach the files). */}}
{{- define "imaging-platform.apiKeysDir" -}}/etc/imaging/api-keys{{- end }}
{{- define "imaging-platform.auditKeyDir" -}}/etc/imaging/audit-key{{- end }}
{{- define "imaging-platform.clientPolicyDir" -}}/etc/imaging/client-policy{{- end }}
{{- define "imaging-platform.oidcJwksDir" -}}/etc/imaging/oidc-jwks{{- end }}

{{/* The client policy's ConfigMap: an existing one, the chart's own (inline), or none (empty). */}}
{{- define "imaging-platform.clientPolicyConfigMap" -}}
{{- $policy := .Values.gateway.auth.policy }}
{{- if $policy.existingConfigMap }}{{ $policy.existingConfigMap }}
{{- else if $policy.inline }}{{ include "imaging-platform.componentName" (dict "root" . "component" "client-policy") }}
{{- end }}
{{- end }}

{{/* Environment variables the chart sets itself; a service's `env` must not repeat them (a
duplicate would silently hide one of the two values). */}}
{{- define "imaging-platform.reservedEnv" -}}
IMAGING_HOST IMAGING_PORT IMAGING_METRICS_PORT IMAGING_HEALTH_PORT IMAGING_REFLECTION IMAGING_LOG_LEVEL IMAGING_WORKERS IMAGING_MAX_QUEUED_RPCS IMAGING_GRACE_SECONDS IMAGING_MAX_MESSAGE_BYTES IMAGING_PIPELINES_DIR IMAGING_PIXEL_EXCHANGE_DIR IMAGING_DECODER_ADDRESS IMAGING_PREPROCESSOR_ADDRESS IMAGING_POSTPROCESSOR_ADDRESS IMAGING_TRITON_ADDRESS IMAGING_TLS_CERT IMAGING_TLS_KEY IMAGING_TLS_CA IMAGING_PEER_TLS_CERT IMAGING_PEER_TLS_KEY IMAGING_PEER_TLS_CA IMAGING_ALLOWED_PEERS IMAGING_API_KEYS_FILE IMAGING_AUDIT_LOG IMAGING_AUDIT_KEY_FILE IMAGING_AUDIT_CHAIN IMAGING_MAX_CONCURRENT_STUDIES IMAGING_MAX_QUEUED_STUDIES IMAGING_MAX_STUDIES_PER_CLIENT IMAGING_STREAM_IDLE_SECONDS IMAGING_STREAM_RECEIVE_SECONDS IMAGING_CLIENT_POLICY_FILE IMAGING_OIDC_ISSUER IMAGING_OIDC_AUDIENCE IMAGING_OIDC_JWKS_FILE IMAGING_MAX_STUDY_DECODED_BYTES IMAGING_PEER_UNREACHABLE_SECONDS IMAGING_PEER_PROBE_INTERVAL_SECONDS
{{- end }}

{{/* DNS names the one TLS certificate must carry (besides IP 127.0.0.1): the names the gateway
dials (headless peer Services, Triton's included; localhost for the colocated sidecars) and the
gateway's Service, by which clients reach it. */}}
{{- define "imaging-platform.tlsDnsNames" -}}
{{- $root := . }}
{{- $names := list "localhost" }}
{{- $gateway := include "imaging-platform.componentName" (dict "root" . "component" "gateway") }}
{{- $names = append $names $gateway }}
{{- $names = append $names (printf "%s.%s" $gateway .Release.Namespace) }}
{{- $names = append $names (printf "%s.%s.svc" $gateway .Release.Namespace) }}
{{- $names = append $names (include "imaging-platform.serviceHost" (dict "root" . "component" "gateway")) }}
{{- range $peer := append (splitList " " (include "imaging-platform.innerDeployments" .)) "triton" }}
{{- $names = append $names (printf "%s.%s.svc.%s" (include "imaging-platform.peersName" (dict "root" $root "component" $peer)) $root.Release.Namespace $root.Values.clusterDomain) }}
{{- end }}
{{- join " " $names }}
{{- end }}

{{/* Suffix of a container's port names, unique in the pod and within the 15 characters a port
name may have: "" for the pod's own service, "-dec" / "-pre" for the sidecars.
Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.portSuffix" -}}
{{- if include "imaging-platform.isSidecar" . }}-{{ trunc 3 .component }}{{ end }}
{{- end }}

{{/* Metrics port names of a service's pod, one per container ("metrics", "metrics-dec", ...).
Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.metricsPortNames" -}}
{{- $root := .root }}
{{- $names := list }}
{{- range $member := splitList " " (include "imaging-platform.podServices" .) }}
{{- $names = append $names (printf "metrics%s" (include "imaging-platform.portSuffix" (dict "root" $root "component" $member))) }}
{{- end }}
{{- join " " $names }}
{{- end }}

{{/* Address the gateway dials for a peer service: 127.0.0.1:<port> for a sidecar in its own
pod, dns:/// on the peer's headless Service otherwise. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.serviceAddress" -}}
{{- if include "imaging-platform.isSidecar" . }}
{{- printf "127.0.0.1:%s" (include "imaging-platform.grpcPort" .) }}
{{- else }}
{{- include "imaging-platform.peersTarget" (dict "root" .root "component" .component "port" .root.Values.ports.grpc) }}
{{- end }}
{{- end }}

{{/* Seconds a container's preStop hook sleeps. A sidecar keeps serving while the gateway next
to it drains (config.graceSeconds) before it starts its own drain: all containers of a pod get
SIGTERM at once, and a draining gRPC server refuses new calls. Takes (dict "root" $ "component" "x"). */}}
{{- define "imaging-platform.preStopSeconds" -}}
{{- $v := .root.Values }}
{{- if include "imaging-platform.isSidecar" . }}
{{- add (int $v.preStopSleepSeconds) (int (ceil $v.config.graceSeconds)) }}
{{- else }}
{{- $v.preStopSleepSeconds }}
{{- end }}
{{- end }}

{{/* Services that read pipeline specs (PipelineServiceSettings). */}}
{{- define "imaging-platform.pipelineServices" -}}
gateway preprocessor postprocessor
{{- end }}

{{/* Name of the ConfigMap holding the pipelines. */}}
{{- define "imaging-platform.pipelinesConfigMap" -}}
{{- default (include "imaging-platform.componentName" (dict "root" . "component" "pipelines")) .Values.pipelines.existingConfigMap }}
{{- end }}

{{/* Names exposed by the prometheus-adapter rules shipped in files/adapter-rules.yaml. */}}
{{- define "imaging-platform.adapterMetricNames" -}}
{{- $names := list }}
{{- range (.Files.Get "files/adapter-rules.yaml" | fromYaml).rules }}
{{- $names = append $names .name.as }}
{{- end }}
{{- range .Values.prometheusAdapter.rules.extraRules }}
{{- if and .name .name.as }}{{ $names = append $names .name.as }}{{ end }}
{{- end }}
{{- join " " $names }}
{{- end }}

{{/* Adapter rule of a metric name, as a dict. Takes (dict "root" $ "metric" "x"). */}}
{{- define "imaging-platform.adapterRule" -}}
{{- $found := dict }}
{{- range (.root.Files.Get "files/adapter-rules.yaml" | fromYaml).rules }}
{{- if eq .name.as $.metric }}{{ $found = . }}{{ end }}
{{- end }}
{{- toYaml $found }}
{{- end }}

{{/* PromQL label matchers of this release's Triton pods. */}}
{{- define "imaging-platform.tritonPodMatchers" -}}
{{- printf "namespace=%q,pod=~%q" .Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]+" (include "imaging-platform.componentName" (dict "root" . "component" "triton"))) }}
{{- end }}

{{/* The KEDA trigger query: the override, or the adapter rule of keda.metricName scoped to this release. */}}
{{- define "imaging-platform.kedaQuery" -}}
{{- $keda := .Values.triton.autoscaling.keda }}
{{- if $keda.query }}
{{- tpl $keda.query . }}
{{- else }}
{{- $rule := include "imaging-platform.adapterRule" (dict "root" . "metric" $keda.metricName) | fromYaml }}
{{- if not $rule.metricsQuery }}
{{- fail (printf "triton.autoscaling.keda.metricName %q is not exposed by files/adapter-rules.yaml" $keda.metricName) }}
{{- end }}
{{- $rule.metricsQuery | replace "<<.LabelMatchers>>" (include "imaging-platform.tritonPodMatchers" .) | replace "<<.GroupBy>>" "namespace" | replace "\n" " " | trim }}
{{- end }}
{{- end }}

{{/* Triton's start-up budget in seconds: how long its startupProbe lets a pod load its models. */}}
{{- define "imaging-platform.tritonStartupBudget" -}}
{{- $p := .Values.triton.startupProbe }}
{{- add (int (default 0 $p.initialDelaySeconds)) (mul (int $p.periodSeconds) (int $p.failureThreshold)) }}
{{- end }}

{{/* Triton's progressDeadlineSeconds: triton.progressDeadlineSeconds, or (0) the start-up budget
plus 300 s for scheduling and the image pull. */}}
{{- define "imaging-platform.tritonProgressDeadline" -}}
{{- if .Values.triton.progressDeadlineSeconds }}
{{- int .Values.triton.progressDeadlineSeconds }}
{{- else }}
{{- add (int (include "imaging-platform.tritonStartupBudget" .)) 300 }}
{{- end }}
{{- end }}

{{/* The most Triton replicas the release may ask for: autoscaling.maxReplicas when the HPA or
KEDA manages Triton, triton.replicas otherwise. */}}
{{- define "imaging-platform.tritonMaxReplicas" -}}
{{- $t := .Values.triton }}
{{- if or $t.autoscaling.hpa.enabled $t.autoscaling.keda.enabled }}
{{- int $t.autoscaling.maxReplicas }}
{{- else }}
{{- int $t.replicas }}
{{- end }}
{{- end }}

{{/* Labels of a ServiceMonitor, PodMonitor or PrometheusRule beyond the standard ones:
monitoring.labels (by default release: kube-prometheus-stack, what a default kube-prometheus-stack
selects on) with the kind's own extra labels over them. Takes (dict "root" $ "extra" map). */}}
{{- define "imaging-platform.monitorLabels" -}}
{{- with merge (deepCopy (default dict .extra)) (deepCopy (default dict .root.Values.monitoring.labels)) }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Pod template spec fragments shared by the four services: securityContext, scheduling. */}}
{{- define "imaging-platform.topologySpread" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- range .constraints }}
- {{ toYaml . | nindent 2 | trim }}
  labelSelector:
    matchLabels:
      {{- include "imaging-platform.selectorLabels" (dict "root" $root "component" $component) | nindent 6 }}
{{- end }}
{{- end }}

{{/* Checks that JSON Schema cannot express; called from every template run. */}}
{{- define "imaging-platform.validate" -}}
{{- $grace := add (int .Values.preStopSleepSeconds) (int .Values.config.graceSeconds) }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $grace) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + config.graceSeconds (%d)" (int .Values.terminationGracePeriodSeconds) (int $grace)) }}
{{- end }}
{{- $tgrace := add (int .Values.triton.preStopSleepSeconds) (int .Values.triton.exitTimeoutSeconds) }}
{{- if lt (int .Values.triton.terminationGracePeriodSeconds) (int $tgrace) }}
{{- fail (printf "triton.terminationGracePeriodSeconds (%d) must be at least triton.preStopSleepSeconds + triton.exitTimeoutSeconds (%d)" (int .Values.triton.terminationGracePeriodSeconds) (int $tgrace)) }}
{{- end }}
{{- $as := .Values.triton.autoscaling }}
{{- if and $as.hpa.enabled $as.keda.enabled }}
{{- fail "triton.autoscaling.hpa.enabled and triton.autoscaling.keda.enabled are mutually exclusive: KEDA creates its own HPA" }}
{{- end }}
{{- if gt (int $as.minReplicas) (int $as.maxReplicas) }}
{{- fail "triton.autoscaling.minReplicas must not exceed triton.autoscaling.maxReplicas" }}
{{- end }}
{{- $keda := $as.keda }}
{{- if and $keda.enabled (not $keda.query) }}
{{- if and (has $keda.metricName (list "triton_inflight_requests" "triton_pending_requests")) (ne $keda.metricType "AverageValue") }}
{{- fail (printf "triton.autoscaling.keda.metricName %s is a total over the release's Triton pods: use triton.autoscaling.keda.metricType AverageValue (KEDA divides it over the replicas); with Value every added pod would raise the replica count again" $keda.metricName) }}
{{- end }}
{{- if and (eq $keda.metricName "triton_queue_time_per_request_us") (ne $keda.metricType "Value") }}
{{- fail "triton.autoscaling.keda.metricName triton_queue_time_per_request_us is a per-request average, not a total: use triton.autoscaling.keda.metricType Value" }}
{{- end }}
{{- end }}
{{- $budget := int (include "imaging-platform.tritonStartupBudget" .) }}
{{- with .Values.triton.progressDeadlineSeconds }}
{{- if lt (int .) $budget }}
{{- fail (printf "triton.progressDeadlineSeconds (%d) must be at least Triton's start-up budget (%d s: triton.startupProbe initialDelaySeconds + periodSeconds x failureThreshold), or a pod still loading its models fails the rollout; 0 derives it" (int .) $budget) }}
{{- end }}
{{- end }}
{{- $tg := .Values.triton.grpc }}
{{- $gwEnv := .Values.gateway.env }}
{{- $callTimeout := float64 (default "60" (index $gwEnv "IMAGING_CALL_TIMEOUT_SECONDS")) }}
{{- if and $tg.maxConnectionAgeSeconds (lt (float64 $tg.maxConnectionAgeGraceSeconds) $callTimeout) }}
{{- fail (printf "triton.grpc.maxConnectionAgeGraceSeconds (%v) must be at least the gateway's per-call timeout (gateway.env IMAGING_CALL_TIMEOUT_SECONDS, %v s): calls still running on a connection past its age are cut when the grace ends" $tg.maxConnectionAgeGraceSeconds $callTimeout) }}
{{- end }}
{{- $keepalive := float64 (default "10" (index $gwEnv "IMAGING_KEEPALIVE_SECONDS")) }}
{{- if ge (float64 $tg.minPingIntervalSeconds) $keepalive }}
{{- fail (printf "triton.grpc.minPingIntervalSeconds (%v) must be below the gateway's keepalive interval (gateway.env IMAGING_KEEPALIVE_SECONDS, %v s): Triton answers pings that come more often than it allows with GOAWAY too_many_pings" $tg.minPingIntervalSeconds $keepalive) }}
{{- end }}
{{- $repo := .Values.triton.modelRepository }}
{{- if eq $repo.source "pvc" }}
{{- $modes := list $repo.pvc.accessMode }}
{{- /* On a live cluster the claim's own access modes win (lookup is empty offline). */}}
{{- $claim := lookup "v1" "PersistentVolumeClaim" .Release.Namespace $repo.pvc.claimName }}
{{- if and $claim $claim.spec $claim.spec.accessModes }}{{ $modes = $claim.spec.accessModes }}{{ end }}
{{- $most := int (include "imaging-platform.tritonMaxReplicas" .) }}
{{- if and (gt $most 1) (not (or (has "ReadOnlyMany" $modes) (has "ReadWriteMany" $modes))) }}
{{- fail (printf "triton.modelRepository.pvc: claim %s is %s, which attaches to one node (ReadWriteOncePod: one pod), but Triton may run %d replicas (triton.replicas, or triton.autoscaling.maxReplicas with the HPA or KEDA), and the others would hang in ContainerCreating: use a ReadOnlyMany or ReadWriteMany claim (and set triton.modelRepository.pvc.accessMode to match), or ship the models as an image (triton.modelRepository.source image) or from an object store (objectStore)" $repo.pvc.claimName (join "," $modes) $most) }}
{{- end }}
{{- end }}
{{- if and $as.hpa.enabled .Values.prometheusAdapter.rules.enabled }}
{{- $names := splitList " " (include "imaging-platform.adapterMetricNames" .) }}
{{- if not (has $as.hpa.metricName $names) }}
{{- fail (printf "triton.autoscaling.hpa.metricName %q is not exposed by the prometheus-adapter rules (%s)" $as.hpa.metricName (join ", " $names)) }}
{{- end }}
{{- end }}
{{- range $svc := splitList " " (include "imaging-platform.deployments" .) }}
{{- $a := (index $.Values $svc).autoscaling }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "%s.autoscaling.minReplicas must not exceed %s.autoscaling.maxReplicas" $svc $svc) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.secretName is required when tls.enabled is true" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.gateway.secretName) }}
{{- fail "tls.gateway.secretName is required when tls.enabled is true: the gateway's public certificate and the CA of its clients, apart from the services' CA (tls.secretName), so that no client certificate opens an inner service or Triton" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.triton.adminKey.secretName) }}
{{- fail "triton.adminKey.secretName is required when tls.enabled is true: Triton then restricts model control (model-repository), shared-memory, statistics, trace and logging to callers sending the header admin-key, whose value comes from that Secret (key triton.adminKey.key)" }}
{{- end }}
{{- $audit := .Values.gateway.audit }}
{{- if $audit.enabled }}
{{- if not $audit.keySecret }}
{{- fail "gateway.audit.keySecret is required when gateway.audit.enabled is true: name an existing Secret whose key audit-key holds the audit trail's HMAC key (at least 32 bytes)" }}
{{- end }}
{{- if $audit.volume.source }}
{{- if not (hasPrefix (printf "%s/" (trimSuffix "/" $audit.volume.mountPath)) $audit.path) }}
{{- fail (printf "gateway.audit.path (%s) must lie under gateway.audit.volume.mountPath (%s), where gateway.audit.volume.source is mounted" $audit.path $audit.volume.mountPath) }}
{{- end }}
{{- else if not (has $audit.path (list "/dev/stdout" "/dev/stderr")) }}
{{- fail (printf "gateway.audit.path (%s) must be /dev/stdout or /dev/stderr unless gateway.audit.volume.source mounts a volume for it (the root filesystem is read-only)" $audit.path) }}
{{- end }}
{{- end }}
{{- $oidc := .Values.gateway.auth.oidc }}
{{- if and $oidc.issuer (not (and $oidc.audience $oidc.jwksConfigMap)) }}
{{- fail "gateway.auth.oidc.issuer needs gateway.auth.oidc.audience and gateway.auth.oidc.jwksConfigMap: name the audience JWTs must carry and an existing ConfigMap whose key jwks.json holds the issuer's JWKS" }}
{{- end }}
{{- $reserved := splitList " " (include "imaging-platform.reservedEnv" .) }}
{{- range $svc := splitList " " (include "imaging-platform.services" .) }}
{{- range $name, $_ := (index $.Values $svc).env }}
{{- if has $name $reserved }}
{{- fail (printf "%s.env must not set %s: the chart sets it from its own values (see values.yaml)" $svc $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- if not .Values.dataPlane.colocated }}
{{- $ports := splitList " " (include "imaging-platform.containerPorts" (dict "root" . "component" "gateway")) }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "ports.grpc, ports.metrics and (with tls.enabled) ports.health must be distinct: every service container listens on all of them (got %s)" (join ", " $ports)) }}
{{- end }}
{{- end }}
{{- if .Values.dataPlane.colocated }}
{{- $ports := list }}
{{- range $svc := splitList " " (include "imaging-platform.podServices" (dict "root" . "component" "gateway")) }}
{{- $ports = concat $ports (splitList " " (include "imaging-platform.containerPorts" (dict "root" $ "component" $svc))) }}
{{- end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "dataPlane.colocated: the gateway, decoder and preprocessor share one pod, so ports.grpc, ports.metrics, ports.health (with tls.enabled) and dataPlane.ports.* must be distinct (got %s)" (join ", " $ports)) }}
{{- end }}
{{- $sidecarGrace := add (int .Values.preStopSleepSeconds) (mul 2 (int (ceil .Values.config.graceSeconds))) }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $sidecarGrace) }}
{{- fail (printf "dataPlane.colocated: terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + 2 x config.graceSeconds (%d): the sidecars wait for the gateway to drain before draining themselves" (int .Values.terminationGracePeriodSeconds) (int $sidecarGrace)) }}
{{- end }}
{{- if has .Values.dataPlane.exchange.mountPath (list "/tmp" .Values.pipelines.mountPath .Values.tls.mountPath) }}
{{- fail (printf "dataPlane.exchange.mountPath (%s) must differ from /tmp, pipelines.mountPath and tls.mountPath" .Values.dataPlane.exchange.mountPath) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.enabled (has .Values.tls.mountPath (list "/tmp" "/dev/shm" .Values.triton.modelRepository.mountPath)) }}
{{- fail (printf "tls.mountPath (%s) must differ from /tmp, /dev/shm and triton.modelRepository.mountPath: the Secret is mounted into Triton too" .Values.tls.mountPath) }}
{{- end }}
{{- $mounts := list "/tmp" .Values.pipelines.mountPath }}
{{- if .Values.dataPlane.colocated }}{{ $mounts = append $mounts .Values.dataPlane.exchange.mountPath }}{{ end }}
{{- if .Values.tls.enabled }}{{ $mounts = concat $mounts (list .Values.tls.mountPath .Values.tls.gateway.mountPath) }}{{ end }}
{{- if .Values.gateway.auth.apiKeysSecret }}{{ $mounts = append $mounts (include "imaging-platform.apiKeysDir" .) }}{{ end }}
{{- if $audit.enabled }}
{{- $mounts = append $mounts (include "imaging-platform.auditKeyDir" .) }}
{{- if $audit.volume.source }}{{ $mounts = append $mounts $audit.volume.mountPath }}{{ end }}
{{- end }}
{{- if include "imaging-platform.clientPolicyConfigMap" . }}{{ $mounts = append $mounts (include "imaging-platform.clientPolicyDir" .) }}{{ end }}
{{- if $oidc.issuer }}{{ $mounts = append $mounts (include "imaging-platform.oidcJwksDir" .) }}{{ end }}
{{- if ne (len $mounts) (len (uniq $mounts)) }}
{{- fail (printf "the gateway container's mount paths must be distinct (got %s): check pipelines.mountPath, tls.mountPath, dataPlane.exchange.mountPath and gateway.audit.volume.mountPath" (join ", " $mounts)) }}
{{- end }}
{{- end }}

{{/* Ingress rule letting Prometheus scrape metrics ports. Takes (dict "np" .Values.networkPolicy "ports" (list N...)). */}}
{{- define "imaging-platform.metricsIngress" -}}
- from:
    - namespaceSelector:
        {{- toYaml .np.metrics.namespaceSelector | nindent 8 }}
      {{- with .np.metrics.podSelector }}
      podSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
  ports:
    {{- range .ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}

{{/* Egress rules of networkPolicy.egress.extra that name one of `members` (the containers of
one pod: a colocated sidecar's rules apply to the gateway's pod). Takes (dict "root" $ "members"
(list ...)); renders NetworkPolicyEgressRule list items, or nothing. */}}
{{- define "imaging-platform.extraEgress" -}}
{{- range $rule := .root.Values.networkPolicy.egress.extra }}
{{- $applies := false }}
{{- range $c := $rule.components }}{{ if has $c $.members }}{{ $applies = true }}{{ end }}{{ end }}
{{- if $applies }}
- to:
    {{- range $rule.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    {{- range $rule.ports }}
    - protocol: TCP
      port: {{ . }}
    {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* One backend an entry may point at, as YAML: the Service, its port and port name, and the
gRPC services the entry exposes (health and reflection stay inside the cluster). Today only the
gateway. Takes (dict "root" $ "backend" "gateway" "value" "entry.x.backend"). */}}
{{- define "imaging-platform.entryBackend" -}}
{{- if eq .backend "gateway" }}
component: gateway
service: {{ include "imaging-platform.componentName" (dict "root" .root "component" "gateway") }}
host: {{ include "imaging-platform.serviceHost" (dict "root" .root "component" "gateway") }}
port: {{ .root.Values.ports.grpc }}
portName: grpc
grpcServices: [imaging.v1.Gateway]
{{- else }}
{{- fail (printf "%s: unknown backend %q (known: gateway)" .value .backend) }}
{{- end }}
{{- end }}

{{/* A cert-manager issuerRef: the value's, or the chart's own CA Issuer of a trust domain.
Takes (dict "root" $ "domain" "internal|gateway"). */}}
{{- define "imaging-platform.issuerRef" -}}
{{- $ref := (index .root.Values.certManager .domain).issuerRef }}
{{- if $ref }}
{{- toYaml $ref }}
{{- else -}}
name: {{ include "imaging-platform.componentName" (dict "root" .root "component" (printf "%s-ca" .domain)) }}
kind: Issuer
group: cert-manager.io
{{- end }}
{{- end }}

{{/* duration, renewBefore and the private key of the chart's leaf certificates. */}}
{{- define "imaging-platform.leafLifetime" -}}
duration: {{ .Values.certManager.duration }}
{{- with .Values.certManager.renewBefore }}
renewBefore: {{ . }}
{{- end }}
privateKey:
  algorithm: ECDSA
  size: 256
  rotationPolicy: Always
{{- end }}

{{/* DNS names of the gateway's public certificate: its Service's names (in-cluster callers and
the Gateway's BackendTLSPolicy hostname) and certManager.gateway.dnsNames (passthrough entries). */}}
{{- define "imaging-platform.gatewayDnsNames" -}}
{{- $gateway := include "imaging-platform.componentName" (dict "root" . "component" "gateway") }}
{{- $names := list $gateway (printf "%s.%s" $gateway .Release.Namespace) (printf "%s.%s.svc" $gateway .Release.Namespace) (include "imaging-platform.serviceHost" (dict "root" . "component" "gateway")) }}
{{- with .Values.entry.gatewayAPI.backendTLS.hostname }}{{ $names = append $names . }}{{ end }}
{{- join " " (uniq (concat $names .Values.certManager.gateway.dnsNames)) }}
{{- end }}

{{/* An entry that ends the callers' TLS (a route, an Ingress that is not passthrough) hands the
gateway its own client certificate for every caller: with mutual TLS on, the callers must then
authenticate with API keys or OIDC, or every caller on the other side would be the entry.
Takes (dict "root" $ "value" "entry.x"). */}}
{{- define "imaging-platform.requireCallerAuth" -}}
{{- $auth := .root.Values.gateway.auth }}
{{- if and .root.Values.tls.enabled (not $auth.apiKeysSecret) (not $auth.oidc.issuer) }}
{{- fail (printf "%s ends the callers' TLS and re-encrypts with the entry's own client certificate, so without gateway.auth.apiKeysSecret or gateway.auth.oidc.issuer every caller would be the entry: set one of them (or use a passthrough entry, where callers present their own certificates)" .value) }}
{{- end }}
{{- end }}
