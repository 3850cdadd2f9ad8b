// Chart templates for the end-to-end fixtures, built by code: one builder for the Deployments
// every fixture chart renders (labels, selector and pod template the way the jupyterhub chart
// has them), so the suites differ only in what they vary.

export interface DeploymentsOptions {
  /** Deployment name → its image, as a Go template expression (`.Values.hub.image`). */
  images: Record<string, string>
  /** Environment of every container: name → Go template expression (inside the range: `$.Values...`). */
  env?: Record<string, string>
  /** A containerPort named http in every container. */
  port?: number
  /** Template variables set before the range: name (without `$`) → expression. */
  vars?: Record<string, string>
}

/** A template rendering one Deployment (1 replica) per entry of `images`. */
export function deploymentsTemplate(o: DeploymentsOptions): string {
  const vars = Object.entries(o.vars ?? {}).map(([name, expr]) => `{{- $${name} := ${expr} }}\n`).join('')
  const dict = Object.entries(o.images).map(([name, expr]) => `${JSON.stringify(name)} ${expr}`).join(' ')
  const labels = '{app: jupyterhub, component: {{ $name }}, release: {{ $.Release.Name }}}'
  const ports = o.port ? `\n          ports:\n            - {containerPort: ${o.port}, name: http}` : ''
  const env = Object.entries(o.env ?? {}).map(([name, expr]) => `\n            - {name: ${name}, value: {{ ${expr} | quote }}}`).join('')
  return `${vars}{{- range $name, $image := dict ${dict} }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels: ${labels}
spec:
  replicas: 1
  selector:
    matchLabels: ${labels}
  template:
    metadata:
      labels: ${labels}
    spec:
      containers:
        - name: {{ $name }}
          image: {{ $image | quote }}${ports}${env ? `\n          env:${env}` : ''}
{{- end }}
`
}
