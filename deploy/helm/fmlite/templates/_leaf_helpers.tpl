{{/*
Required node affinity of a leaf node pool; the argument is (list $ pool). Spot pods require the
spot node labels. Dedicated pods require the dedicated node labels and exclude nodes that carry
the spot labels, because not every provider taints its spot nodes.
*/}}
{{- define "fmlite.leafNodeAffinity" -}}
{{- $root := index . 0 -}}
{{- $pool := index . 1 -}}
{{- $pools := $root.Values.leaf.nodePools -}}
{{- $expressions := list -}}
{{- range $key, $value := (get $pools $pool).nodeSelector -}}
{{- $expressions = append $expressions (dict "key" $key "operator" "In" "values" (list (toString $value))) -}}
{{- end -}}
{{- if eq $pool "dedicated" -}}
{{- range $key, $value := $pools.spot.nodeSelector -}}
{{- $expressions = append $expressions (dict "key" $key "operator" "NotIn" "values" (list (toString $value))) -}}
{{- end -}}
{{- end -}}
{{- if $expressions }}
requiredDuringSchedulingIgnoredDuringExecution:
  nodeSelectorTerms:
    - matchExpressions:
        {{- toYaml $expressions | nindent 8 }}
{{- end }}
{{- end -}}

{{/* Environment variable FMLITE_REDIS_URL of the leaf container, for --redis-url. */}}
{{- define "fmlite.redisUrlEnv" -}}
- name: FMLITE_REDIS_URL
{{- if eq .Values.redis.mode "bundled" }}
  value: redis://{{ include "fmlite.redisName" . }}:6379/0
{{- else if .Values.redis.external.existingSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.external.existingSecret.name }}
      key: {{ .Values.redis.external.existingSecret.key }}
{{- else }}
  value: {{ .Values.redis.external.url | quote }}
{{- end }}
{{- end -}}

{{/*
TensorFlow Serving as a native sidecar. It loads the newest version under
/var/lib/fmlite/models/fmlite and the leaf calls it over gRPC on localhost.
*/}}
{{- define "fmlite.tfServingContainer" -}}
{{- $tfs := .Values.leaf.tfServing -}}
- name: tfserving
  image: {{ printf "%s:%s" $tfs.image.repository $tfs.image.tag }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  restartPolicy: Always
  command:
    - /usr/bin/tensorflow_model_server
  args:
    - --port={{ $tfs.grpcPort }}
    - --rest_api_port={{ $tfs.restPort }}
    - --model_name=fmlite
    - --model_base_path=/var/lib/fmlite/models/fmlite
    - --file_system_poll_wait_seconds={{ $tfs.modelPollSeconds }}
  ports:
    - name: tfs-grpc
      containerPort: {{ $tfs.grpcPort }}
      protocol: TCP
    - name: tfs-rest
      containerPort: {{ $tfs.restPort }}
      protocol: TCP
  # The leaf container starts only after this probe succeeds. NOTE: the model status call may
  # succeed while a version is still loading, so the leaf's own /readyz gates its traffic.
  startupProbe:
    httpGet:
      path: /v1/models/fmlite
      port: tfs-rest
    periodSeconds: {{ .Values.leaf.startupProbe.periodSeconds }}
    failureThreshold: {{ .Values.leaf.startupProbe.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /v1/models/fmlite
      port: tfs-rest
    periodSeconds: {{ .Values.probes.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
  livenessProbe:
    tcpSocket:
      port: tfs-grpc
    periodSeconds: {{ .Values.probes.periodSeconds }}
    timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
    failureThreshold: {{ .Values.probes.livenessFailureThreshold }}
  resources:
    {{- toYaml $tfs.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: artifacts
      mountPath: /var/lib/fmlite
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/*
Object-store sync: a one-off copy that must finish before the leaf starts, then a sidecar that
copies new versions every intervalSeconds into the same emptyDir.
*/}}
{{- define "fmlite.artifactSyncContainers" -}}
{{- $sync := .Values.artifacts.sync -}}
{{- range $mode := list "once" "loop" }}
- name: {{ ternary "artifacts-init" "artifacts-sync" (eq $mode "once") }}
  image: {{ printf "%s:%s" $sync.image.repository $sync.image.tag }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  {{- if eq $mode "loop" }}
  restartPolicy: Always
  {{- end }}
  command:
    - /bin/sh
    - /opt/fmlite/sync-artifacts.sh
    - {{ $mode }}
  env:
    - name: FMLITE_ARTIFACT_REMOTE
      value: {{ $sync.remote | quote }}
    - name: FMLITE_ARTIFACT_ROOT
      value: /var/lib/fmlite
    - name: FMLITE_KEEP_VERSIONS
      value: {{ $sync.keepVersions | quote }}
    - name: FMLITE_SYNC_INTERVAL_S
      value: {{ $sync.intervalSeconds | quote }}
    # rclone writes its cache and looks for a config file under HOME.
    - name: HOME
      value: /tmp
  {{- with $sync.envFromSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  resources:
    {{- toYaml $sync.resources | nindent 4 }}
  securityContext:
    {{- toYaml $.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: artifacts
      mountPath: /var/lib/fmlite
    - name: sync-script
      mountPath: /opt/fmlite
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}
