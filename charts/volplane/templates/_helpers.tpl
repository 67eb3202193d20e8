{{/* Names, labels and the pieces every pod template shares. */}}

{{- define "volplane.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "volplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: volplane
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The selector of one component: (dict "ctx" $ "component" "controller"). */}}
{{- define "volplane.selector" -}}
app.kubernetes.io/name: volplane
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "volplane.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* A sidecar's image: (dict "ctx" $ "s" .Values.sidecars.provisioner). */}}
{{- define "volplane.sidecarImage" -}}
{{- printf "%s/%s:%s" .ctx.Values.sidecars.registry .s.image .s.tag -}}
{{- end -}}

{{- define "volplane.secretName" -}}
{{- if .Values.credentials.create -}}
{{- printf "%s-credentials" (include "volplane.fullname" .) -}}
{{- else -}}
{{- required "credentials.existingSecret is required when credentials.create is false" .Values.credentials.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "volplane.natsHost" -}}
{{- printf "%s-nats" (include "volplane.fullname" .) -}}
{{- end -}}

{{/*
The URL a NATS user dials: with one server its Service; with a cluster every member by its
stable name behind the headless Service, comma-separated (NATS_URL takes a list), so that a
client reconnects to another member when one dies and never depends on one name.
(dict "ctx" $ "user" "apigw" "password" "$(NATS_PASSWORD)")
*/}}
{{- define "volplane.natsUrl" -}}
{{- $ctx := .ctx -}}
{{- $scheme := ternary "tls" "nats" $ctx.Values.tls.enabled -}}
{{- $host := include "volplane.natsHost" $ctx -}}
{{- $n := int $ctx.Values.nats.replicas -}}
{{- if gt $n 1 -}}
{{- $urls := list -}}
{{- range $i := until $n -}}
{{- $urls = append $urls (printf "%s://%s:%s@%s-%d.%s-headless:4222" $scheme $.user $.password $host $i $host) -}}
{{- end -}}
{{- join "," $urls -}}
{{- else -}}
{{- printf "%s://%s:%s@%s:4222" $scheme .user .password $host -}}
{{- end -}}
{{- end -}}

{{/*
The URL a Redis user dials: the one server's Service, or with redis.sentinel.enabled every
Sentinel by its stable name (REDIS_URL redis+sentinel://…/<master>/0: the client asks them
for the master and follows a failover). (dict "ctx" $ "user" "apigw" "password" "$(REDIS_PASSWORD)")
*/}}
{{- define "volplane.redisUrl" -}}
{{- $ctx := .ctx -}}
{{- $host := include "volplane.redisHost" $ctx -}}
{{- $s := $ctx.Values.redis.sentinel -}}
{{- if $s.enabled -}}
{{- $hosts := list -}}
{{- range $i := until (int $s.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless:26379" $host $i $host) -}}
{{- end -}}
{{- printf "%s://%s:%s@%s/%s/0" (ternary "rediss+sentinel" "redis+sentinel" $ctx.Values.tls.enabled) .user .password (join "," $hosts) $s.masterName -}}
{{- else -}}
{{- printf "%s://%s:%s@%s:6379/0" (ternary "rediss" "redis" $ctx.Values.tls.enabled) .user .password $host -}}
{{- end -}}
{{- end -}}

{{/* The event stream's replicas: nats.streamReplicas, else 3 on a cluster (1 on one server). */}}
{{- define "volplane.streamReplicas" -}}
{{- if .Values.nats.streamReplicas -}}
{{- .Values.nats.streamReplicas -}}
{{- else -}}
{{- ternary 3 1 (ge (int .Values.nats.replicas) 3) -}}
{{- end -}}
{{- end -}}

{{- define "volplane.redisHost" -}}
{{- printf "%s-redis" (include "volplane.fullname" .) -}}
{{- end -}}

{{/* TLS (values: tls): the Secrets with the servers' and the clients' certificates. */}}
{{- define "volplane.tlsServerSecret" -}}
{{- if eq .Values.tls.source "existing" -}}
{{- required "tls.existingSecrets.server is required when tls.source is existing" .Values.tls.existingSecrets.server -}}
{{- else -}}
{{- printf "%s-tls-server" (include "volplane.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "volplane.tlsClientSecret" -}}
{{- if eq .Values.tls.source "existing" -}}
{{- required "tls.existingSecrets.client is required when tls.source is existing" .Values.tls.existingSecrets.client -}}
{{- else -}}
{{- printf "%s-tls-client" (include "volplane.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The names the servers' certificate must carry: the Services (short, namespaced, FQDN),
each NATS server behind its headless Service (the cluster's routes and the clients dial
those), each Redis server and Sentinel behind its own (with redis.sentinel.enabled), and
loopback for the probes inside the servers' own pods.
OpenSSL (redis-py's TLS, Python's ssl) matches no wildcard over a single label: the Redis
Sentinel pods' short names (<redis>-N.<redis>-headless, which the Sentinels announce and the
services dial) are listed one by one; "*.<redis>-headless" alone failed every service's
Sentinel connection ("Hostname mismatch") when the chart's Sentinel pods first ran.
*/}}
{{- define "volplane.tlsDnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list "localhost" -}}
{{- $redis := include "volplane.redisHost" . -}}
{{- $hosts := list (include "volplane.natsHost" .) $redis (printf "*.%s-headless" (include "volplane.natsHost" .)) (printf "*.%s-headless" $redis) -}}
{{- /* Each StatefulSet pod by name as well: OpenSSL matches no wildcard that leaves a
       single label ("*.volplane-nats-headless"), and clients dial the pods by name. */ -}}
{{- $nats := include "volplane.natsHost" . -}}
{{- range $i := until (int .Values.nats.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless" $nats $i $nats) -}}
{{- end -}}
{{- if .Values.redis.sentinel.enabled -}}
{{- range $i := until (int .Values.redis.sentinel.replicas) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless" $redis $i $redis) -}}
{{- end -}}
{{- end -}}
{{- range $host := $hosts -}}
{{- $names = concat $names (list $host (printf "%s.%s" $host $ns) (printf "%s.%s.svc" $host $ns) (printf "%s.%s.svc.cluster.local" $host $ns)) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* A volplane container's client certificate and CA, from the client Secret. */}}
{{- define "volplane.tlsMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/volplane/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "volplane.tlsVolume" -}}
{{- if .Values.tls.enabled }}
# The client certificate: readable by the pod's fsGroup (or root), nobody else.
- name: tls
  secret:
    secretName: {{ include "volplane.tlsClientSecret" . }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "volplane.otlpEndpoint" -}}
{{- if .Values.tracing.otlpEndpoint -}}
{{- .Values.tracing.otlpEndpoint -}}
{{- else if .Values.tracing.jaeger.enabled -}}
{{- printf "http://%s-jaeger:4317" (include "volplane.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The environment every volplane service shares: its NATS user (named after the service)
with the password from the credentials Secret, the probe user its liveness check asks
with, with "redis" its own Redis user (the same name: files/redis-acl.json, its own keys
only), tracing, logging, the run directory (an emptyDir: the root filesystem is
read-only). (dict "ctx" $ "user" "provisioner" "redis" true "metricsPort" 9091)
*/}}
{{- define "volplane.env" -}}
{{- $ctx := .ctx -}}
{{- $tls := $ctx.Values.tls.enabled -}}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "volplane.secretName" $ctx }}
      key: nats-{{ .user }}
- name: NATS_URL
  value: {{ include "volplane.natsUrl" (dict "ctx" $ctx "user" .user "password" "$(NATS_PASSWORD)") }}
- name: NATS_PROBE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "volplane.secretName" $ctx }}
      key: nats-probe
- name: NATS_PROBE_URL
  value: {{ include "volplane.natsUrl" (dict "ctx" $ctx "user" "probe" "password" "$(NATS_PROBE_PASSWORD)") }}
{{- if .redis }}
{{- $acl := $ctx.Files.Get "files/redis-acl.json" | fromJson }}
{{- if not (hasKey $acl.users .user) }}
{{- fail (printf "no Redis user %q in files/redis-acl.json (run deploy/kubernetes/generate.py)" .user) }}
{{- end }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "volplane.secretName" $ctx }}
      key: redis-{{ .user }}
- name: REDIS_URL
  value: {{ include "volplane.redisUrl" (dict "ctx" $ctx "user" .user "password" "$(REDIS_PASSWORD)") }}
{{- end }}
{{- if $tls }}
# The servers are checked against the release's CA; the client certificate is presented.
- name: VOLPLANE_TLS_CA
  value: /etc/volplane/tls/ca.crt
- name: VOLPLANE_TLS_CERT
  value: /etc/volplane/tls/tls.crt
- name: VOLPLANE_TLS_KEY
  value: /etc/volplane/tls/tls.key
{{- end }}
- name: VOLPLANE_RUN_DIR
  value: /run/volplane
- name: VOLPLANE_LOG_LEVEL
  value: {{ $ctx.Values.logLevel | quote }}
{{- if $ctx.Values.metrics.enabled }}
- name: VOLPLANE_METRICS_ADDR
  value: "0.0.0.0:{{ .metricsPort }}"
{{- end }}
{{- with include "volplane.otlpEndpoint" $ctx }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: volplane-{{ .service }}
{{- end -}}

{{/*
The liveness check of a service that answers on the bus: a health request to
vp.health.<service>[.<node>] as the probe user, which may publish only there.
(dict "service" "provisioner" "perNode" false)
*/}}
{{- define "volplane.busProbe" -}}
livenessProbe:
  exec:
    command:
      - python
      - -c
      - |
        import asyncio, os, sys, msgpack
        from volplane.clients import client_tls, connect_once
        subject = "vp.health.{{ .service }}"{{ if .perNode }} + "." + os.environ["VOLPLANE_NODE_ID"].replace(".", "~"){{ end }}
        env = os.environ.get
        tls = client_tls(env("VOLPLANE_TLS_CA"), env("VOLPLANE_TLS_CERT"), env("VOLPLANE_TLS_KEY")) if env("VOLPLANE_TLS_CA") else None
        async def check():
            nc = await connect_once(os.environ["NATS_PROBE_URL"], timeout=2, tls=tls)
            try:
                msg = await nc.request(subject, b"\x80", timeout=3)
            finally:
                await nc.close()
            return "ok" in msgpack.unpackb(msg.data)
        sys.exit(0 if asyncio.run(check()) else 1)
  initialDelaySeconds: 30
  periodSeconds: 20
  timeoutSeconds: 10
  failureThreshold: 3
{{- end -}}

{{/* A container that needs no privilege: not root, nothing to escalate to, no capability, a read-only root. */}}
{{- define "volplane.restricted" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/*
Root, but without a capability: for a container that must write a host directory owned
by root (the CSI socket directory, the pools, the kubelet's plugin registry) and nothing more.
*/}}
{{- define "volplane.rootNoCaps" -}}
securityContext:
  runAsUser: 0
  runAsNonRoot: false
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: [ALL]
{{- end -}}

{{/*
The init container of every volplane pod: the services exit when NATS or Redis is not
there yet, so wait for both rather than back off in CrashLoopBackOff.
*/}}
{{- define "volplane.waitForServers" -}}
- name: wait-for-servers
  image: {{ include "volplane.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - python
    - -c
    - |
      import socket, sys, time
      for host, port in (("{{ include "volplane.natsHost" . }}", 4222), ("{{ include "volplane.redisHost" . }}", 6379)):
          while True:
              try:
                  socket.create_connection((host, port), timeout=2).close()
                  break
              except OSError as exc:
                  print(f"waiting for {host}:{port}: {exc}", flush=True)
                  time.sleep(2)
  {{- include "volplane.restricted" . | nindent 2 }}
  resources:
    requests: {cpu: 10m, memory: 32Mi}
    limits: {memory: 128Mi}
{{- end -}}
