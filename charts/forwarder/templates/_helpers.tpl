{{/*
forwarder.name: the chart name (or nameOverride), used in the app.kubernetes.io/name label.
*/}}
{{- define "forwarder.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
forwarder.fullname: the prefix of every resource name: fullnameOverride, or the release name
when it already contains the chart name, or "<release>-<chart>". Cut to 40 characters so that
"<fullname>-<component>-<suffix>" stays within Kubernetes' 63-character names.
*/}}
{{- define "forwarder.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
forwarder.componentName: "<fullname>-<component>", the name of a component's resources.
Call with (dict "root" $ "component" "worker").
*/}}
{{- define "forwarder.componentName" -}}
{{- printf "%s-%s" (include "forwarder.fullname" .root) .component }}
{{- end }}

{{/*
forwarder.clusterScopedName: the name of a component's cluster-scoped object,
"<fullname>-<component>-<release namespace>[-<suffix>]", so two releases never collide. A name
over Kubernetes' 63 characters is cut to 54 and ends in a hash of the whole name, so it stays
distinct: cut short at 63, a long namespace took the "-crds" suffix off and gave two of the
operator's ClusterRoles one name. Call with (dict "root" $ "component" "operator" "suffix" "crds");
the suffix is optional.
*/}}
{{- define "forwarder.clusterScopedName" -}}
{{- $name := printf "%s-%s" (include "forwarder.componentName" .) .root.Release.Namespace }}
{{- with .suffix }}{{ $name = printf "%s-%s" $name . }}{{ end }}
{{- if gt (len $name) 63 }}
{{- printf "%s-%s" ($name | trunc 54 | trimSuffix "-") ($name | sha256sum | trunc 8) }}
{{- else }}
{{- $name }}
{{- end }}
{{- end }}

{{/*
forwarder.chart: "<chart>-<version>", for the helm.sh/chart label.
*/}}
{{- define "forwarder.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
forwarder.selectorLabels: the labels that select this release's pods. With a component, they
select that component's pods only. Call with (dict "root" $ "component" "worker"); the
component may be empty for "every pod of the release" (the NetworkPolicy uses that).
*/}}
{{- define "forwarder.selectorLabels" -}}
app.kubernetes.io/name: {{ include "forwarder.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/*
forwarder.labels: the standard labels of every resource (selector labels, chart, version,
managed-by, part-of) plus commonLabels. Call with (dict "root" $ "component" "worker").
*/}}
{{- define "forwarder.labels" -}}
helm.sh/chart: {{ include "forwarder.chart" .root }}
{{ include "forwarder.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: forwarder
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
forwarder.serviceAccountName: the ServiceAccount of a component ("<fullname>-<component>").
Call with (dict "root" $ "component" "worker").
*/}}
{{- define "forwarder.serviceAccountName" -}}
{{- include "forwarder.componentName" . }}
{{- end }}

{{/*
forwarder.image: the Forwarder image reference: repository@digest when a digest is given,
otherwise repository:tag with the tag defaulting to the chart's appVersion.
*/}}
{{- define "forwarder.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
forwarder.redisHost: the host name of the bundled Redis Service.
*/}}
{{- define "forwarder.redisHost" -}}
{{- printf "%s.%s.svc" (include "forwarder.componentName" (dict "root" . "component" "redis")) .Release.Namespace }}
{{- end }}

{{/*
forwarder.redisUrl: the Redis URL every component uses, without the password (that comes
from a Secret). Fails when the bundled Redis is off and no external URL is given.
*/}}
{{- define "forwarder.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "forwarder.redisHost" .) }}
{{- else }}
{{- .Values.redis.external.url }}
{{- end }}
{{- end }}

{{/*
forwarder.redisSecretName: the Secret holding the Redis password (the bundled Redis's
existingSecret or generated Secret, or the external Redis's existingSecret; empty when an
external Redis has no password).
*/}}
{{- define "forwarder.redisSecretName" -}}
{{- if .Values.redis.enabled }}
{{- default (include "forwarder.componentName" (dict "root" . "component" "redis")) .Values.redis.auth.existingSecret }}
{{- else }}
{{- .Values.redis.external.existingSecret }}
{{- end }}
{{- end }}

{{/*
forwarder.redisSecretKey: the key of the Redis password in forwarder.redisSecretName.
*/}}
{{- define "forwarder.redisSecretKey" -}}
{{- if .Values.redis.enabled }}
{{- .Values.redis.auth.existingSecretPasswordKey }}
{{- else }}
{{- .Values.redis.external.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
forwarder.apiSecretName: the Secret holding the api's bearer tokens (existing or generated).
*/}}
{{- define "forwarder.apiSecretName" -}}
{{- default (include "forwarder.componentName" (dict "root" . "component" "api")) .Values.api.auth.existingSecret }}
{{- end }}

{{/*
forwarder.flowerSecretName: the Secret holding Flower's basic-auth credentials.
*/}}
{{- define "forwarder.flowerSecretName" -}}
{{- default (include "forwarder.componentName" (dict "root" . "component" "flower")) .Values.flower.auth.existingSecret }}
{{- end }}

{{/*
forwarder.flowerUrl: the in-cluster base URL of Flower (with its URL prefix), for the api.
*/}}
{{- define "forwarder.flowerUrl" -}}
{{- $base := printf "http://%s.%s.svc:%v" (include "forwarder.componentName" (dict "root" . "component" "flower")) .Release.Namespace .Values.flower.service.port }}
{{- if .Values.flower.urlPrefix }}
{{- printf "%s/%s" $base .Values.flower.urlPrefix }}
{{- else }}
{{- $base }}
{{- end }}
{{- end }}

{{/*
forwarder.generatedSecretValue: the value of "key" in the generated Secret "name": the value
already in the cluster (looked up, so upgrades keep passwords and tokens stable), or a new
random one on first install. Offline renders (helm template) always get a new random value.
Call with (dict "root" $ "name" "<secret>" "key" "<key>" "length" 32).
*/}}
{{- define "forwarder.generatedSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing (hasKey ($existing.data | default dict) .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/*
forwarder.generatedSecretAnnotations: annotations of every generated Secret. "keep" stops
Helm deleting it on uninstall (a reinstall then finds the same credentials), and the
forwarder.dev/generated marker lets the install-manifest renderer leave generated values out.
*/}}
{{- define "forwarder.generatedSecretAnnotations" -}}
helm.sh/resource-policy: keep
forwarder.dev/generated: "true"
{{- end }}

{{/*
forwarder.checkovSkips: checkov's annotations (`checkov.io/skipN: CHECK=reason`) for the checks
a workload fails on purpose, given a list of check ids. Each reason is written once, here;
docs/testing.md lists every suppression. A reason must hold no "=" (checkov splits on it).
*/}}
{{- define "forwarder.checkovSkips" -}}
{{- $reasons := dict
  "CKV_K8S_35" "Celery, Flower and Valkey take their credentials from env vars; each comes from a Secret by secretKeyRef, never a literal"
  "CKV_K8S_38" "it reads and writes ScheduledTasks through the API server with its own ServiceAccount token (RBAC in rbac.yaml)"
}}
{{- range $index, $check := . }}
{{- if $index }}{{ "\n" }}{{ end -}}
checkov.io/skip{{ add1 $index }}: {{ printf "%s=%s" $check (required (printf "no reason for %s" $check) (get $reasons $check)) | quote }}
{{- end }}
{{- end }}

{{/*
forwarder.podSecurityContext: the pod-level securityContext of every Forwarder pod: non-root,
RuntimeDefault seccomp, and the image's user and group.
*/}}
{{- define "forwarder.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
forwarder.containerSecurityContext: the securityContext of every container: read-only root
filesystem, no privilege escalation, every capability dropped, RuntimeDefault seccomp.
*/}}
{{- define "forwarder.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
forwarder.redisEnv: the env entries that give a component its Redis password, from the
Redis Secret (nothing when an external Redis has no password).
*/}}
{{- define "forwarder.redisEnv" -}}
{{- $secret := include "forwarder.redisSecretName" . }}
{{- if $secret -}}
- name: FORWARDER_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ include "forwarder.redisSecretKey" . }}
{{- end }}
{{- $sentinel := .Values.redis.external.sentinel }}
{{- if and (not .Values.redis.enabled) $sentinel.existingSecret }}
- name: FORWARDER_REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $sentinel.existingSecret }}
      key: {{ $sentinel.existingSecretPasswordKey }}
{{- end }}
{{- end }}

{{/*
forwarder.commonEnv: the env of every Forwarder container: the shared ConfigMap, the Redis
password, the pod's name and namespace, and config.extraEnv.
*/}}
{{- define "forwarder.commonEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- with include "forwarder.redisEnv" . }}
{{ . }}
{{- end }}
{{- with .Values.config.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
forwarder.envFrom: the shared ConfigMap of FORWARDER_* settings, for every Forwarder container.
*/}}
{{- define "forwarder.envFrom" -}}
- configMapRef:
    name: {{ include "forwarder.fullname" . }}
{{- end }}

{{/*
forwarder.checksums: pod annotations that roll the pods when the shared configuration or a
given credential changes. Generated credentials are not hashed: they stay the same across
upgrades (see forwarder.generatedSecretValue), and hashing them would make every offline
render differ.
*/}}
{{- define "forwarder.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ list .Values.redis.auth .Values.redis.external .Values.api.auth .Values.flower.auth | toJson | sha256sum }}
{{- end }}

{{/*
forwarder.tmpVolume: the emptyDir mounted on /tmp, the only writable path of a container.
*/}}
{{- define "forwarder.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end }}

{{/*
forwarder.tmpMount: the volumeMount of forwarder.tmpVolume.
*/}}
{{- define "forwarder.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
forwarder.redisTlsVolume: the Secret of redis.external.tls (CA, and the client certificate
when asked), when one is named.
*/}}
{{- define "forwarder.redisTlsVolume" -}}
{{- with .Values.redis.external.tls.existingSecret }}
- name: redis-tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- end }}

{{/*
forwarder.redisTlsMount: the volumeMount of forwarder.redisTlsVolume, read-only at
/etc/forwarder/redis-tls (the files FORWARDER_REDIS_TLS_*_FILE name).
*/}}
{{- define "forwarder.redisTlsMount" -}}
{{- if .Values.redis.external.tls.existingSecret }}
- name: redis-tls
  mountPath: /etc/forwarder/redis-tls
  readOnly: true
{{- end }}
{{- end }}

{{/*
forwarder.podScheduling: nodeSelector, tolerations and affinity of a component's pods.
Call with the component's values (for example .Values.worker).
*/}}
{{- define "forwarder.podScheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
forwarder.imagePullSecrets: the imagePullSecrets of every pod, when given.
*/}}
{{- define "forwarder.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
forwarder.validate: fails the render with a clear message on combinations the schema cannot
express.
*/}}
{{- define "forwarder.validate" -}}
{{- if and .Values.worker.autoscaling.enabled .Values.worker.keda.enabled }}
{{- fail "worker.autoscaling and worker.keda cannot both be enabled: KEDA creates its own HorizontalPodAutoscaler" }}
{{- end }}
{{- $external := .Values.redis.external }}
{{- if and (not .Values.redis.enabled) (not $external.url) (not $external.sentinel.hosts) }}
{{- fail "redis.external.url (or redis.external.sentinel.hosts) is required when redis.enabled is false" }}
{{- end }}
{{- if and .Values.redis.enabled (or $external.url $external.sentinel.hosts) }}
{{- fail "redis.external is set but redis.enabled is true: set redis.enabled=false to use the external Redis" }}
{{- end }}
{{- if and $external.url $external.sentinel.hosts }}
{{- fail "set redis.external.url or redis.external.sentinel.hosts, not both: with sentinels the url is not used" }}
{{- end }}
{{- if and $external.tls.clientCertificate (not $external.tls.existingSecret) }}
{{- fail "redis.external.tls.clientCertificate needs redis.external.tls.existingSecret (holding tls.crt and tls.key)" }}
{{- end }}
{{- if and (not .Values.api.enabled) (or .Values.metrics.serviceMonitor.enabled .Values.metrics.prometheusRule.enabled) }}
{{- fail "metrics.serviceMonitor and metrics.prometheusRule need api.enabled: the api serves the metrics" }}
{{- end }}
{{- if lt (int .Values.config.taskTimeLimit) (int .Values.config.taskSoftTimeLimit) }}
{{- fail "config.taskSoftTimeLimit must not exceed config.taskTimeLimit" }}
{{- end }}
{{- if and .Values.worker.autoscaling.enabled (gt (int .Values.worker.autoscaling.minReplicas) (int .Values.worker.autoscaling.maxReplicas)) }}
{{- fail "worker.autoscaling.minReplicas must not exceed worker.autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.worker.keda.enabled (gt (int .Values.worker.keda.minReplicas) (int .Values.worker.keda.maxReplicas)) }}
{{- fail "worker.keda.minReplicas must not exceed worker.keda.maxReplicas" }}
{{- end }}
{{- end }}

{{/*
forwarder.redisPingProbe: an exec probe command that pings Redis with the component's own
settings (URL, password, TLS), so it fails exactly when the component cannot reach Redis.
*/}}
{{- define "forwarder.redisPingProbe" -}}
- python
- -c
- "from forwarder_worker import Core, get_settings; Core.from_settings(get_settings()).client.ping()"
{{- end }}

{{/*
forwarder.workerPingProbe: an exec probe command that pings this pod's own worker node
(worker@<pod name>) through the broker. A shell expands POD_NAME: probes get no $(VAR)
expansion from Kubernetes.
*/}}
{{- define "forwarder.workerPingProbe" -}}
- sh
- -c
- exec celery -A forwarder_worker.app inspect ping --timeout=10 --destination="worker@${POD_NAME}"
{{- end }}

{{/*
forwarder.metricsSelector: the PromQL label matchers that select this release's api series in
the alert rules: metrics.prometheusRule.selector, or the job the ServiceMonitor gives them (the
api Service's name).
*/}}
{{- define "forwarder.metricsSelector" -}}
{{- default (printf "job=%q" (include "forwarder.componentName" (dict "root" . "component" "api"))) .Values.metrics.prometheusRule.selector }}
{{- end }}

{{/*
forwarder.alertLabels: the labels of an alert: its severity plus metrics.prometheusRule.alertLabels.
Call with (dict "root" $ "severity" "warning").
*/}}
{{- define "forwarder.alertLabels" -}}
severity: {{ .severity }}
{{- with .root.Values.metrics.prometheusRule.alertLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
forwarder.runbookUrl: an alert's runbook_url annotation, "<runbookUrl>#<alert in lower case>"
(nothing when metrics.prometheusRule.runbookUrl is empty). Call with (dict "root" $ "alert" "NoWorkers").
*/}}
{{- define "forwarder.runbookUrl" -}}
{{- with .root.Values.metrics.prometheusRule.runbookUrl }}
runbook_url: {{ printf "%s#%s" . (lower $.alert) | quote }}
{{- end }}
{{- end }}
