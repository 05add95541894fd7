{{/* Named templates for one service. Context: dict "root" (top scope) "name" "svc" (merged values). */}}

{{- define "herald.envPrefix" -}}
HERALD_{{ .name | upper | replace "-" "_" }}_
{{- end -}}

{{/* The account a service's pods run as: serviceAccount.name, else the one the chart creates
     (<fullname>-<service>) or, with create=false, the namespace's "default" (which always
     exists: a pod naming an account that does not exist is never created). */}}
{{- define "herald.serviceAccountName" -}}
{{- if .svc.serviceAccount.create -}}
{{- .svc.serviceAccount.name | default (include "herald.svcname" .) -}}
{{- else -}}
{{- .svc.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "herald.serviceaccount" }}
{{- if .svc.serviceAccount.create }}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "herald.serviceAccountName" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
automountServiceAccountToken: {{ .svc.serviceAccount.automountToken }}
{{- end }}
{{- end }}

{{/* The external URL of a service: its env's PUBLIC_BASE_URL, else <publicBaseUrl>/<service>
     (the external proxy routes that prefix to the service and strips it); "" without either.
     Context: dict "root" "name". */}}
{{- define "herald.publicUrl" -}}
{{- $cfg := index .root.Values.services .name | default dict -}}
{{- $svc := include "herald.merged" (dict "root" .root "cfg" $cfg) | fromYaml -}}
{{- $env := $svc.env | default dict -}}
{{- $base := .root.Values.global.publicBaseUrl -}}
{{- if $env.PUBLIC_BASE_URL -}}
{{- trimSuffix "/" (toString $env.PUBLIC_BASE_URL) -}}
{{- else if $base -}}
{{- printf "%s/%s" (trimSuffix "/" $base) .name -}}
{{- end -}}
{{- end -}}

{{/* Settings (without the HERALD_<SERVICE>_ prefix) the chart derives from global values, as
     YAML. The dispatcher's customer links point at ingest's status page (/s/) and the
     preference centre (/p/) under those services' public URLs: its own defaults are loopback
     addresses no customer can open. */}}
{{- define "herald.derivedEnv" -}}
{{- $out := dict -}}
{{- with include "herald.publicUrl" (dict "root" .root "name" .name) }}
{{- $_ := set $out "PUBLIC_BASE_URL" . -}}
{{- end }}
{{- if eq .name "dispatcher" }}
{{- with include "herald.publicUrl" (dict "root" .root "name" "ingest") }}
{{- $_ := set $out "STATUS_URL" (printf "%s/s/{token}" .) -}}
{{- end }}
{{- with include "herald.publicUrl" (dict "root" .root "name" "preferences") }}
{{- $_ := set $out "PREFERENCES_URL" (printf "%s/p/{token}" .) -}}
{{- end }}
{{- end }}
{{- toYaml $out -}}
{{- end -}}

{{/* Refuse to render a sender that would start without a public address: the senders give it
     to the provider for callbacks (SMS, voice: Twilio calls <url>/webhooks/twilio/...) or put
     it in every email (RFC 8058 one-click unsubscribe, https only), and without one their URL
     is http://0.0.0.0:<port>, which Twilio cannot reach and the email-sender refuses to start
     with (a crash loop). Context: dict "root" "name" "svc". */}}
{{- define "herald.checkPublicUrl" -}}
{{- $env := .svc.env | default dict -}}
{{- $url := include "herald.publicUrl" (dict "root" .root "name" .name) -}}
{{- if has .name (list "sms-sender" "voice-sender") -}}
{{- if not $url -}}
{{- fail (printf "services.%s needs a public URL for Twilio's callbacks: set global.publicBaseUrl (e.g. https://herald.example.com) or services.%s.env.PUBLIC_BASE_URL, or disable the service" .name .name) -}}
{{- end -}}
{{- else if eq .name "email-sender" -}}
{{- $unsub := toString ($env.UNSUBSCRIBE_BASE_URL | default $url) -}}
{{- $allowHttp := has (lower (toString ($env.UNSUBSCRIBE_ALLOW_HTTP | default ""))) (list "true" "1" "yes" "on" "t" "y") -}}
{{- if not $unsub -}}
{{- fail "services.email-sender needs a public https:// URL for one-click unsubscribe links (RFC 8058): set global.publicBaseUrl (e.g. https://herald.example.com) or services.email-sender.env.UNSUBSCRIBE_BASE_URL, or disable the service" -}}
{{- else if and (not (hasPrefix "https://" $unsub)) (not $allowHttp) -}}
{{- fail (printf "services.email-sender's one-click unsubscribe URL %s is not https:// as RFC 8058 requires, and the service refuses to start with it: use an https:// global.publicBaseUrl (or env.UNSUBSCRIBE_BASE_URL), or set services.email-sender.env.UNSUBSCRIBE_ALLOW_HTTP: \"true\" for development only" $unsub) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Refuse to render an email-sender that would send the relay credentials without TLS: with
     SMTP_SECURITY none, AUTH carries the password in clear text, and the service refuses to
     start with it (a crash loop). Context: dict "root" "name" "svc". */}}
{{- define "herald.checkSmtpTls" -}}
{{- if eq .name "email-sender" -}}
{{- $env := .svc.env | default dict -}}
{{- $secretEnv := .svc.secretEnv | default dict -}}
{{- $security := lower (toString ($env.SMTP_SECURITY | default "starttls")) -}}
{{- if and (eq $security "none") (or (hasKey $secretEnv "SMTP_USERNAME") (hasKey $secretEnv "SMTP_PASSWORD")) -}}
{{- fail "services.email-sender sends its SMTP credentials only over TLS: with env.SMTP_SECURITY none the relay password would cross the network in clear text, and the service refuses to start. Use SMTP_SECURITY starttls or tls, or (a local sink without credentials) remove SMTP_USERNAME and SMTP_PASSWORD from services.email-sender.secretEnv (set them to null)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* An env value as the text a setting parses. Helm reads every number of a values file as a
     float64, which prints as 2.592e+06 from a million on, and the services' integer settings
     refuse that (the pod crash-loops): a whole number is printed as an integer, any other
     value as it is (a fraction keeps its decimals). */}}
{{- define "herald.envValue" -}}
{{- if and (kindIs "float64" .) (eq . (float64 (int64 .))) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Refuse to render Kafka settings no client can connect with: SASL_PLAINTEXT and SASL_SSL
     authenticate, and without a mechanism, a user name and a password Secret every Kafka
     service fails to build its client (or is refused by the brokers) and crash-loops; a
     mechanism without a SASL protocol would be ignored, and the services would connect
     unauthenticated. Context: dict "root" "name" "svc". */}}
{{- define "herald.checkKafka" -}}
{{- if .svc.kafka -}}
{{- $kafka := .root.Values.kafka -}}
{{- $sasl := $kafka.sasl | default dict -}}
{{- $protocol := toString $kafka.securityProtocol -}}
{{- if hasPrefix "SASL_" $protocol -}}
{{- if not $sasl.mechanism -}}
{{- fail (printf "kafka.securityProtocol %s authenticates with SASL but kafka.sasl.mechanism is empty, and every Kafka service would crash-loop: set kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512), kafka.sasl.username and kafka.sasl.passwordSecret.name (e.g. the Strimzi KafkaUser's Secret), or use securityProtocol SSL or PLAINTEXT" $protocol) -}}
{{- else if or (not $sasl.username) (not ($sasl.passwordSecret | default dict).name) -}}
{{- fail (printf "kafka.securityProtocol %s with kafka.sasl.mechanism %s needs kafka.sasl.username and kafka.sasl.passwordSecret.name (the Secret holding the user's password, e.g. the Strimzi KafkaUser's), or every Kafka service would crash-loop" $protocol $sasl.mechanism) -}}
{{- end -}}
{{- else if $sasl.mechanism -}}
{{- fail (printf "kafka.sasl.mechanism %s is set but kafka.securityProtocol %s does not use SASL, so the services would connect without authenticating: use securityProtocol SASL_SSL (or SASL_PLAINTEXT), or empty kafka.sasl.mechanism" $sasl.mechanism $protocol) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "herald.configmap" }}
{{- $p := include "herald.envPrefix" . }}
{{- $root := .root }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "herald.svcname" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
data:
  {{ $p }}HOST: "0.0.0.0"
  {{ $p }}PORT: {{ .svc.port | quote }}
  {{ $p }}LOG_LEVEL: {{ $root.Values.global.logLevel | quote }}
  {{- /* Settings the chart derives (public URLs); the service's own env wins over them. */}}
  {{- $env := .svc.env | default dict }}
  {{- range $k, $v := include "herald.derivedEnv" . | fromYaml }}
  {{- if not (hasKey $env $k) }}
  {{ $p }}{{ $k }}: {{ $v | quote }}
  {{- end }}
  {{- end }}
  {{- if .svc.kafka }}
  {{ $p }}KAFKA_BOOTSTRAP: {{ $root.Values.kafka.bootstrapServers | quote }}
  {{ $p }}KAFKA_SECURITY_PROTOCOL: {{ $root.Values.kafka.securityProtocol | quote }}
  {{ $p }}TOPIC_NAMESPACE: {{ $root.Values.global.topicNamespace | quote }}
  {{- with $root.Values.kafka.sasl.mechanism }}
  {{ $p }}KAFKA_SASL_MECHANISM: {{ . | quote }}
  {{ $p }}KAFKA_SASL_USERNAME: {{ $root.Values.kafka.sasl.username | quote }}
  {{- end }}
  {{- if $root.Values.kafka.tls.caSecret.name }}
  {{ $p }}KAFKA_SSL_CAFILE: "/etc/herald/kafka-ca/ca.crt"
  {{- end }}
  {{- end }}
  {{- if and .svc.smtpCaSecret .svc.smtpCaSecret.name }}
  {{ $p }}SMTP_CA_FILE: "/etc/herald/smtp-ca/ca.crt"
  {{- end }}
  {{- if .svc.mongo }}
  {{ $p }}MONGO_DB: {{ .svc.mongoDb | default (printf "herald_%s" (.name | replace "-" "_")) | quote }}
  {{- end }}
  {{- range $k, $v := .svc.env }}
  {{ $p }}{{ $k }}: {{ include "herald.envValue" $v | quote }}
  {{- end }}
{{- end }}

{{/* A secretKeyRef: ref.secret names an entry of .Values.secrets (whose ref.key field holds the key)
     or, failing that, a Secret by name with ref.key as its key. */}}
{{- define "herald.secretRef" -}}
{{- $entry := index .root.Values.secrets .ref.secret | default dict -}}
{{- $name := $entry.name | default .ref.secret -}}
{{- $key := .ref.key -}}
{{- if $entry.name }}{{ $key = index $entry .ref.key | default .ref.key }}{{ end -}}
secretKeyRef:
  name: {{ $name }}
  key: {{ $key }}
{{- end -}}

{{- define "herald.deployment" }}
{{- $p := include "herald.envPrefix" . }}
{{- $root := .root }}
{{- $svc := .svc }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "herald.svcname" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
spec:
  {{- if not $svc.hpa.enabled }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "herald.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata:
      labels:
        {{- include "herald.labels" . | nindent 8 }}
        {{- with $svc.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        # Roll the pods when their settings change.
        checksum/config: {{ include "herald.configmap" . | sha256sum }}
        {{- with $svc.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "herald.serviceAccountName" . }}
      automountServiceAccountToken: {{ $svc.serviceAccount.automountToken }}
      terminationGracePeriodSeconds: {{ $svc.terminationGracePeriodSeconds }}
      securityContext:
        {{- toYaml $svc.podSecurityContext | nindent 8 }}
      {{- with $svc.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "herald.image" . | quote }}
          imagePullPolicy: {{ $svc.image.pullPolicy }}
          ports:
            - name: http
              containerPort: {{ $svc.port }}
              protocol: TCP
            {{- range $svc.extraPorts }}
            - name: {{ .name }}
              containerPort: {{ .port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "herald.svcname" . }}
          env:
            {{- if $svc.mongo }}
            - name: {{ $p }}MONGO_URI
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.mongo.uriSecret.name }}
                  key: {{ $root.Values.mongo.uriSecret.key }}
            {{- end }}
            - name: {{ $p }}API_KEYS
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.secrets.apiKeys.name }}
                  key: {{ $root.Values.secrets.apiKeys.key }}
            - name: {{ $p }}LINK_SECRET
              valueFrom:
                secretKeyRef:
                  name: {{ $root.Values.secrets.linkSecret.name }}
                  key: {{ $root.Values.secrets.linkSecret.key }}
            {{- if and $svc.kafka $root.Values.kafka.sasl.mechanism }}
            - name: {{ $p }}KAFKA_SASL_PASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ required "kafka.sasl.passwordSecret.name is required with SASL" $root.Values.kafka.sasl.passwordSecret.name }}
                  key: {{ $root.Values.kafka.sasl.passwordSecret.key }}
            {{- end }}
            {{- range $k, $ref := $svc.secretEnv }}
            - name: {{ $p }}{{ $k }}
              valueFrom:
                {{- include "herald.secretRef" (dict "root" $root "ref" $ref) | nindent 16 }}
            {{- end }}
          {{- with $svc.probes }}
          startupProbe:
            httpGet: {path: {{ .startup.path }}, port: http}
            periodSeconds: {{ .startup.periodSeconds }}
            timeoutSeconds: {{ .startup.timeoutSeconds }}
            failureThreshold: {{ .startup.failureThreshold }}
          livenessProbe:
            httpGet: {path: {{ .liveness.path }}, port: http}
            initialDelaySeconds: {{ .liveness.initialDelaySeconds }}
            periodSeconds: {{ .liveness.periodSeconds }}
            timeoutSeconds: {{ .liveness.timeoutSeconds }}
            failureThreshold: {{ .liveness.failureThreshold }}
          readinessProbe:
            httpGet: {path: {{ .readiness.path }}, port: http}
            initialDelaySeconds: {{ .readiness.initialDelaySeconds }}
            periodSeconds: {{ .readiness.periodSeconds }}
            timeoutSeconds: {{ .readiness.timeoutSeconds }}
            failureThreshold: {{ .readiness.failureThreshold }}
          {{- end }}
          securityContext:
            {{- toYaml $svc.securityContext | nindent 12 }}
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
          volumeMounts:
            # The root filesystem is read-only; Python and libraries may still want a scratch dir.
            - name: tmp
              mountPath: /tmp
            {{- if and $svc.kafka $root.Values.kafka.tls.caSecret.name }}
            - name: kafka-ca
              mountPath: /etc/herald/kafka-ca
              readOnly: true
            {{- end }}
            {{- if and $svc.smtpCaSecret $svc.smtpCaSecret.name }}
            - name: smtp-ca
              mountPath: /etc/herald/smtp-ca
              readOnly: true
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- if and $svc.kafka $root.Values.kafka.tls.caSecret.name }}
        - name: kafka-ca
          secret:
            secretName: {{ $root.Values.kafka.tls.caSecret.name }}
            items:
              - key: {{ $root.Values.kafka.tls.caSecret.key }}
                path: ca.crt
        {{- end }}
        {{- if and $svc.smtpCaSecret $svc.smtpCaSecret.name }}
        - name: smtp-ca
          secret:
            secretName: {{ $svc.smtpCaSecret.name }}
            items:
              - key: {{ $svc.smtpCaSecret.key | default "ca.crt" }}
                path: ca.crt
        {{- end }}
      {{- with $svc.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $svc.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{- define "herald.service" }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "herald.svcname" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
spec:
  type: {{ .svc.service.type }}
  selector:
    {{- include "herald.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .svc.service.port }}
      targetPort: http
      protocol: TCP
    {{- range .svc.extraPorts }}
    - name: {{ .name }}
      port: {{ .port }}
      targetPort: {{ .name }}
      protocol: TCP
    {{- end }}
{{- end }}

{{- define "herald.pdb" }}
{{- if .svc.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "herald.svcname" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .svc.pdb.maxUnavailable }}
  unhealthyPodEvictionPolicy: {{ .svc.pdb.unhealthyPodEvictionPolicy | default "AlwaysAllow" }}
  selector:
    matchLabels:
      {{- include "herald.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{- define "herald.hpa" }}
{{- if .svc.hpa.enabled }}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "herald.svcname" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "herald.svcname" . }}
  minReplicas: {{ .svc.hpa.minReplicas }}
  maxReplicas: {{ .svc.hpa.maxReplicas }}
  metrics:
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ .svc.hpa.targetCPUUtilizationPercentage }}
    {{- if and .svc.hpa.lag.enabled .svc.kafka }}
    # Consumer lag from Prometheus through an external-metrics adapter. More replicas than the
    # topic's partitions sit idle, so keep maxReplicas <= partitions.
    - type: External
      external:
        metric:
          name: herald_consumer_lag_messages
          selector:
            matchLabels:
              group: {{ .svc.hpa.lag.group | default .name | quote }}
        target:
          type: AverageValue
          averageValue: {{ .svc.hpa.lag.averageValue | quote }}
    {{- end }}
{{- end }}
{{- end }}

{{- define "herald.servicemonitor" }}
{{- if .svc.serviceMonitor.enabled }}
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "herald.svcname" . }}
  labels:
    {{- include "herald.labels" . | nindent 4 }}
    {{- with .svc.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "herald.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: http
      path: /metrics
      interval: {{ .svc.serviceMonitor.interval }}
      scrapeTimeout: {{ .svc.serviceMonitor.scrapeTimeout }}
{{- end }}
{{- end }}
