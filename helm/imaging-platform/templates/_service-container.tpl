{{/*
One platform service's container, as an item of a pod's `containers` list. The gateway's pod
holds the gateway and, with dataPlane.colocated, the decoder and the preprocessor (sidecars):
each keeps its own resources, env, probes and mounts, listens on ports of its own (the pod shares
one network namespace) and mounts the pixel exchange. Takes (dict "root" $ "component" "x").

Every service listens on 0.0.0.0, sidecars included: the kubelet sends gRPC probes to the pod IP
(a probe has no host field) and Prometheus scrapes the pod IP, and the services bind their
metrics endpoint to IMAGING_HOST too. No NetworkPolicy rule admits the sidecars' gRPC ports, so
in practice only the gateway next to them (over 127.0.0.1) calls them.

With tls.enabled the API port serves mutual TLS only, which kubelet gRPC probes cannot speak:
each container then also listens on a plaintext health port of its own (IMAGING_HEALTH_PORT,
grpc.health.v1 and nothing else) and its probes go there. No Service exposes the health ports
and no NetworkPolicy rule opens them (the kubelet's probes are not subject to policies).

The gateway alone gets the API keys, the client policy, OIDC, the audit trail, the admission
and study limits and the dependency-readiness settings.
*/}}
{{- define "imaging-platform.serviceContainer" -}}
{{- $root := .root }}
{{- $svc := .component }}
{{- $v := index $root.Values $svc }}
{{- $grpc := include "imaging-platform.grpcPort" . }}
{{- $metrics := include "imaging-platform.metricsPort" . }}
{{- $suffix := include "imaging-platform.portSuffix" . }}
{{- $tls := $root.Values.tls.enabled }}
{{- $health := include "imaging-platform.healthPort" . }}
{{- $probePort := include "imaging-platform.probePort" . }}
{{- $gw := $root.Values.gateway }}
{{- $readsPipelines := has $svc (splitList " " (include "imaging-platform.pipelineServices" $root)) }}
{{- $exchange := has $svc (splitList " " (include "imaging-platform.exchangeServices" $root)) -}}
- name: {{ $svc }}
  image: {{ include "imaging-platform.imageRef" (dict "image" $root.Values.image "default" $root.Chart.AppVersion) | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["python", "-m", "services.{{ $svc }}.server"]
  ports:
    - name: grpc{{ $suffix }}
      containerPort: {{ $grpc }}
      protocol: TCP
    - name: metrics{{ $suffix }}
      containerPort: {{ $metrics }}
      protocol: TCP
    {{- if $tls }}
    - name: health{{ $suffix }}
      containerPort: {{ $health }}
      protocol: TCP
    {{- end }}
  env:
    - name: IMAGING_HOST
      value: "0.0.0.0"
    - name: IMAGING_PORT
      value: {{ $grpc | quote }}
    - name: IMAGING_METRICS_PORT
      value: {{ $metrics | quote }}
    {{- if $tls }}
    # Plaintext grpc.health.v1 only, for the kubelet's probes (the API port speaks TLS only).
    - name: IMAGING_HEALTH_PORT
      value: {{ $health | quote }}
    {{- end }}
    - name: IMAGING_REFLECTION
      value: {{ $root.Values.config.reflection | quote }}
    - name: IMAGING_LOG_LEVEL
      value: {{ $root.Values.config.logLevel | quote }}
    - name: IMAGING_WORKERS
      value: {{ $root.Values.config.workers | quote }}
    - name: IMAGING_MAX_QUEUED_RPCS
      value: {{ $root.Values.config.maxQueuedRpcs | quote }}
    - name: IMAGING_GRACE_SECONDS
      value: {{ $root.Values.config.graceSeconds | quote }}
    - name: IMAGING_MAX_MESSAGE_BYTES
      value: {{ $root.Values.config.maxMessageBytes | int64 | quote }}
    - name: PYTHONUNBUFFERED
      value: "1"
    - name: PYTHONDONTWRITEBYTECODE
      value: "1"
    {{- if $readsPipelines }}
    - name: IMAGING_PIPELINES_DIR
      value: {{ $root.Values.pipelines.mountPath | quote }}
    {{- end }}
    {{- if $exchange }}
    - name: IMAGING_PIXEL_EXCHANGE_DIR
      value: {{ $root.Values.dataPlane.exchange.mountPath | quote }}
    {{- end }}
    {{- if eq $svc "gateway" }}
    {{- range $peer := list "decoder" "preprocessor" "postprocessor" }}
    - name: IMAGING_{{ upper $peer }}_ADDRESS
      value: {{ include "imaging-platform.serviceAddress" (dict "root" $root "component" $peer) | quote }}
    {{- end }}
    {{- end }}
    {{- if or (eq $svc "gateway") (has $svc $root.Values.networkPolicy.tritonAllowFrom) }}
    - name: IMAGING_TRITON_ADDRESS
      value: {{ include "imaging-platform.peersTarget" (dict "root" $root "component" "triton" "port" $root.Values.triton.ports.grpc) | quote }}
    {{- end }}
    {{- if $tls }}
    {{- $t := $root.Values.tls }}
    {{- $own := ternary $t.gateway.mountPath $t.mountPath (eq $svc "gateway") }}
    # Mutual TLS: the API port serves TLS only and requires client certificates signed by the
    # CA: the clients' CA on the gateway, the services' CA on the others.
    - name: IMAGING_TLS_CERT
      value: {{ printf "%s/%s" $own $t.certKey | quote }}
    - name: IMAGING_TLS_KEY
      value: {{ printf "%s/%s" $own $t.keyKey | quote }}
    - name: IMAGING_TLS_CA
      value: {{ printf "%s/%s" $own $t.caKey | quote }}
    {{- if eq $svc "gateway" }}
    # The services' certificate and CA: what the gateway dials its peers and Triton with.
    - name: IMAGING_PEER_TLS_CERT
      value: {{ printf "%s/%s" $t.mountPath $t.certKey | quote }}
    - name: IMAGING_PEER_TLS_KEY
      value: {{ printf "%s/%s" $t.mountPath $t.keyKey | quote }}
    - name: IMAGING_PEER_TLS_CA
      value: {{ printf "%s/%s" $t.mountPath $t.caKey | quote }}
    {{- else if $t.allowedPeers }}
    # Callers this service answers (certificate CN or DNS SAN).
    - name: IMAGING_ALLOWED_PEERS
      value: {{ join "," $t.allowedPeers | quote }}
    {{- end }}
    {{- end }}
    {{- if eq $svc "gateway" }}
    - name: IMAGING_MAX_CONCURRENT_STUDIES
      value: {{ $gw.admission.maxConcurrentStudies | quote }}
    - name: IMAGING_MAX_QUEUED_STUDIES
      value: {{ $gw.admission.maxQueuedStudies | quote }}
    - name: IMAGING_MAX_STUDIES_PER_CLIENT
      value: {{ $gw.admission.maxStudiesPerClient | quote }}
    - name: IMAGING_STREAM_IDLE_SECONDS
      value: {{ $gw.admission.streamIdleSeconds | quote }}
    - name: IMAGING_STREAM_RECEIVE_SECONDS
      value: {{ $gw.admission.streamReceiveSeconds | quote }}
    {{- if $gw.auth.apiKeysSecret }}
    # Every call but health needs "authorization: Bearer <key>"; re-read when the Secret changes.
    - name: IMAGING_API_KEYS_FILE
      value: {{ printf "%s/api-keys" (include "imaging-platform.apiKeysDir" $root) | quote }}
    {{- end }}
    {{- if include "imaging-platform.clientPolicyConfigMap" $root }}
    # Per-client pipelines, highest priority and rate limit.
    - name: IMAGING_CLIENT_POLICY_FILE
      value: {{ printf "%s/client-policy.yaml" (include "imaging-platform.clientPolicyDir" $root) | quote }}
    {{- end }}
    {{- if $gw.auth.oidc.issuer }}
    - name: IMAGING_OIDC_ISSUER
      value: {{ $gw.auth.oidc.issuer | quote }}
    - name: IMAGING_OIDC_AUDIENCE
      value: {{ $gw.auth.oidc.audience | quote }}
    - name: IMAGING_OIDC_JWKS_FILE
      value: {{ printf "%s/jwks.json" (include "imaging-platform.oidcJwksDir" $root) | quote }}
    {{- end }}
    - name: IMAGING_MAX_STUDY_DECODED_BYTES
      value: {{ $gw.limits.maxStudyDecodedBytes | int64 | quote }}
    {{- if $gw.routing.bodyPartAliases }}
    # Site BodyPartExamined values -> the defined terms the pipelines route on (JSON object).
    - name: IMAGING_BODY_PART_ALIASES
      value: {{ toJson $gw.routing.bodyPartAliases | quote }}
    {{- end }}
    # Readiness follows Triton and the peers: NOT_SERVING until all answered once, and after
    # one failed its probes for this long.
    - name: IMAGING_PEER_UNREACHABLE_SECONDS
      value: {{ $gw.readiness.peerUnreachableSeconds | quote }}
    - name: IMAGING_PEER_PROBE_INTERVAL_SECONDS
      value: {{ $gw.readiness.probeIntervalSeconds | quote }}
    {{- if $gw.audit.enabled }}
    - name: IMAGING_AUDIT_LOG
      value: {{ $gw.audit.path | quote }}
    - name: IMAGING_AUDIT_KEY_FILE
      value: {{ printf "%s/audit-key" (include "imaging-platform.auditKeyDir" $root) | quote }}
    # One HMAC chain per writer: the pod's name.
    - name: IMAGING_AUDIT_CHAIN
      valueFrom:
        fieldRef:
          apiVersion: v1
          fieldPath: metadata.name
    {{- end }}
    {{- end }}
    {{- range $name, $value := $v.env }}
    - name: {{ $name }}
      value: {{ $value | quote }}
    {{- end }}
  # Startup and liveness ask the health service "liveness": SERVING from the process's start,
  # never tied to a dependency. Readiness asks the overall status, which follows them (the
  # gateway's: Triton and its peers), so an outage drains pods but never restarts them.
  startupProbe:
    grpc:
      port: {{ $probePort }}
      service: {{ include "imaging-platform.livenessService" $root }}
    {{- toYaml $root.Values.probes.startup | nindent 4 }}
  readinessProbe:
    grpc:
      port: {{ $probePort }}
    {{- toYaml $root.Values.probes.readiness | nindent 4 }}
  livenessProbe:
    grpc:
      port: {{ $probePort }}
      service: {{ include "imaging-platform.livenessService" $root }}
    {{- toYaml $root.Values.probes.liveness | nindent 4 }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ include "imaging-platform.preStopSeconds" . }}"]
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- if $readsPipelines }}
    - name: pipelines
      mountPath: {{ $root.Values.pipelines.mountPath }}
      readOnly: true
    {{- end }}
    {{- if $exchange }}
    - name: pixel-exchange
      mountPath: {{ $root.Values.dataPlane.exchange.mountPath }}
    {{- end }}
    {{- if $tls }}
    - name: tls
      mountPath: {{ $root.Values.tls.mountPath }}
      readOnly: true
    {{- if eq $svc "gateway" }}
    - name: tls-gateway
      mountPath: {{ $root.Values.tls.gateway.mountPath }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if eq $svc "gateway" }}
    {{- if $gw.auth.apiKeysSecret }}
    - name: api-keys
      mountPath: {{ include "imaging-platform.apiKeysDir" $root }}
      readOnly: true
    {{- end }}
    {{- if include "imaging-platform.clientPolicyConfigMap" $root }}
    - name: client-policy
      mountPath: {{ include "imaging-platform.clientPolicyDir" $root }}
      readOnly: true
    {{- end }}
    {{- if $gw.auth.oidc.issuer }}
    - name: oidc-jwks
      mountPath: {{ include "imaging-platform.oidcJwksDir" $root }}
      readOnly: true
    {{- end }}
    {{- if $gw.audit.enabled }}
    - name: audit-key
      mountPath: {{ include "imaging-platform.auditKeyDir" $root }}
      readOnly: true
    {{- if $gw.audit.volume.source }}
    - name: audit
      mountPath: {{ $gw.audit.volume.mountPath }}
    {{- end }}
    {{- end }}
    {{- end }}
{{- end }}
