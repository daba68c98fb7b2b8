{{/*
Base name of every object. It is cut to 40 characters so that the longest derived name,
"<base>-leaf-<shard>-dedicated", stays within the 63-character limit of a DNS label.
*/}}
{{- define "fmlite.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fmlite.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the pods of this release. */}}
{{- define "fmlite.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fmlite.labels" -}}
{{ include "fmlite.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "fmlite.chart" . }}
{{- end -}}

{{- define "fmlite.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fmlite.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fmlite.controllerImage" -}}
{{- printf "%s:%s" .Values.image.controller.repository (default .Chart.AppVersion .Values.image.controller.tag) -}}
{{- end -}}

{{- define "fmlite.leafImage" -}}
{{- printf "%s:%s" .Values.image.leaf.repository (default .Chart.AppVersion .Values.image.leaf.tag) -}}
{{- end -}}

{{/* Names of the per-shard objects; the argument is (list $ shardIndex). */}}
{{- define "fmlite.l1Name" -}}
{{- printf "%s-l1-%d" (include "fmlite.fullname" (index . 0)) (int (index . 1)) -}}
{{- end -}}

{{- define "fmlite.leafServiceName" -}}
{{- printf "%s-leaf-%d" (include "fmlite.fullname" (index . 0)) (int (index . 1)) -}}
{{- end -}}

{{- define "fmlite.redisName" -}}
{{- printf "%s-redis" (include "fmlite.fullname" .) -}}
{{- end -}}

{{- define "fmlite.terminationGracePeriodSeconds" -}}
{{- add .Values.drain.preStopSleepSeconds .Values.drain.timeoutSeconds .Values.drain.exitMarginSeconds -}}
{{- end -}}

{{/*
Leaf pods per shard on each node pool, as JSON {"spot": n, "dedicated": m}:
spot = min(round(replicasPerShard x spotFraction), replicasPerShard - minDedicatedPerShard).
*/}}
{{- define "fmlite.leafPoolReplicas" -}}
{{- $replicas := int .Values.leaf.replicasPerShard -}}
{{- $spot := int (round (mulf $replicas .Values.leaf.nodePools.spotFraction) 0) -}}
{{- $maxSpot := max 0 (sub $replicas (int .Values.leaf.nodePools.minDedicatedPerShard)) -}}
{{- $spot = min $spot $maxSpot -}}
{{- dict "spot" $spot "dedicated" (sub $replicas $spot) | toJson -}}
{{- end -}}

{{/* Pod annotations shared by every fmlite server pod. */}}
{{- define "fmlite.scrapeAnnotations" -}}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/*
Probes, lifecycle and ports shared by the fmlite server containers. Called with the root
context, or with (list root framedPort) for a leaf, whose framed Thrift port is then declared
as the container port "thrift-framed".
*/}}
{{- define "fmlite.serverContainerCommon" -}}
{{- $root := . }}
{{- $framedPort := 0 }}
{{- if kindIs "slice" . }}
{{- $root = index . 0 }}
{{- $framedPort = int (index . 1) }}
{{- end }}
ports:
  - name: http
    containerPort: {{ $root.Values.port }}
    protocol: TCP
  {{- if gt $framedPort 0 }}
  - name: thrift-framed
    containerPort: {{ $framedPort }}
    protocol: TCP
  {{- end }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ $root.Values.probes.periodSeconds }}
  timeoutSeconds: {{ $root.Values.probes.timeoutSeconds }}
  failureThreshold: {{ $root.Values.probes.readinessFailureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ $root.Values.probes.periodSeconds }}
  timeoutSeconds: {{ $root.Values.probes.timeoutSeconds }}
  failureThreshold: {{ $root.Values.probes.livenessFailureThreshold }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ $root.Values.drain.preStopSleepSeconds }}
securityContext:
  {{- toYaml $root.Values.containerSecurityContext | nindent 2 }}
{{- end -}}

{{/* Pod-level settings shared by every pod of the chart. */}}
{{- define "fmlite.podCommon" -}}
serviceAccountName: {{ include "fmlite.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/*
Pod annotations: the scrape annotations merged with a tier's own maps. The argument is
(list $ tierAnnotations extraAnnotations); it renders nothing when the result is empty.
*/}}
{{- define "fmlite.podAnnotations" -}}
{{- $root := index . 0 -}}
{{- $annotations := merge (dict) (index . 1) (index . 2) (include "fmlite.scrapeAnnotations" $root | fromYaml) -}}
{{- with $annotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Checks of the values that values.schema.json cannot express. The traffic ConfigMap template
includes it, so a bad value fails every render and lint with a message that names the value.
*/}}
{{- define "fmlite.validate" -}}
{{- $variants := .Values.traffic.variants -}}
{{- $sum := 0.0 -}}
{{- $names := dict -}}
{{- range .Values.traffic.buckets -}}
{{- if not (hasKey $variants .variant) -}}
{{- fail (printf "traffic.buckets: bucket %q names variant %q, which is not in traffic.variants (%s)" .name .variant (keys $variants | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if hasKey $names .name -}}
{{- fail (printf "traffic.buckets: bucket name %q is used twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- $sum = addf $sum .fraction -}}
{{- end -}}
{{- $gap := subf $sum 1.0 -}}
{{- if or (gt $gap 0.000001) (lt $gap -0.000001) -}}
{{- fail (printf "traffic.buckets: fractions sum to %v, expected 1" $sum) -}}
{{- end -}}
{{- if ge (int .Values.l1.chunkTimeoutMs) (int .Values.l0.deadlineMs) -}}
{{- fail (printf "l1.chunkTimeoutMs (%v) must be below l0.deadlineMs (%v) so that a timed-out chunk can be retried within the deadline" .Values.l1.chunkTimeoutMs .Values.l0.deadlineMs) -}}
{{- end -}}
{{- if and (eq .Values.redis.mode "external") (not .Values.redis.external.url) (not .Values.redis.external.existingSecret.name) -}}
{{- fail "redis.mode is external: set redis.external.url (redis://HOST:6379/0) or redis.external.existingSecret.name" -}}
{{- end -}}
{{- if and (eq .Values.artifacts.source "sync") (not .Values.artifacts.sync.remote) -}}
{{- fail "artifacts.source is sync: set artifacts.sync.remote to the rclone path of the artifact root, e.g. blob:fmlite-artifacts" -}}
{{- end -}}
{{- end -}}
