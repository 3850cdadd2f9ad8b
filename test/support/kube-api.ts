/**
 * A small simulated Kubernetes API server for end-to-end tests that drive the REAL helm 3.17
 * and kubectl 1.32, and helm 4.1 and kubectl 1.35, binaries. This is its entry point; the parts
 * live in kube-api/:
 *
 * - objects.ts: the stored objects' types (`Kinds`: the kind of each resource), ApiError.
 * - resources.ts: the table of served resources; discovery (/version, /api, /apis, ...,
 *   legacy non-aggregated form) and OpenAPI v3 (a root plus one tiny document per
 *   group-version saying "PATCH supports ?fieldValidation", so helm leaves validation to us).
 * - store.ts: objects, the global resourceVersion, watch events, defaulting (Deployment
 *   replicas/strategy, Service clusterIP, ...), create/update/apply/delete with garbage
 *   collection, and `dryRun` (`?dryRun=All`: validated and answered, nothing stored).
 * - apply.ts: managedFields (per field manager, on every write) and server-side apply
 *   (`application/apply-patch+yaml`: creates or merges, conflicts refused unless `force=true`,
 *   fields no manager applies any more removed).
 * - controllers.ts: the toy deployment controller (ReplicaSets, Pods, Events); pods become
 *   ready after `readyDelayMs`, or never for deployments `neverReady` matches.
 * - server.ts: HTTP routing (one table of verbs), watches and watch-lists (`sendInitialEvents`,
 *   ended by the `k8s.io/initial-events-end` bookmark), the request log, `startKubeApi`.
 * - patch.ts (strategic merge as helm/kubectl send it, JSON merge, JSON patch), selectors.ts,
 *   protobuf.ts (helm's release Secrets), helm.ts (release encoding), tables.ts (kubectl get).
 *
 * Serves (plain HTTP on 127.0.0.1, random port; the kubeconfig carries a token, but client-go
 * sends no credentials over plain http, so only a wrong token is refused): namespaces,
 * secrets, configmaps, services, serviceaccounts, pods, events (core/v1), deployments and
 * replicasets (apps/v1), with get, list (label and field selectors), create, update, patch,
 * server-side apply, delete (cascading to owned objects unless Orphan), watch (replayed from a
 * resourceVersion, or a watch-list) and `meta.k8s.io/v1` Tables. What real helm and kubectl
 * request, and why each piece exists: test/support/kube-api/README.md.
 *
 * Debugging: KUBE_API_DEBUG=1 logs every request (and JSON bodies) to stderr.
 *
 * Does NOT: admission/validation (unknown fields are kept), protobuf for anything but Secret
 * (so typed writers like `kubectl create deployment` get 415), aggregated discovery,
 * subresources (status, scale, logs, exec), pagination (`limit` is ignored), bookmarks other
 * than the watch-list's, server-side apply's multi-key lists (a list is keyed by one field, as
 * patch.ts merges it), finalizers or graceful deletion (deletes are immediate), other kinds (CRDs,
 * Ingress, RBAC, StatefulSet...), surge in rollouts (a new pod template replaces all old
 * pods at once, so a failed rollout leaves no ready pod).
 */
export { startKubeApi, WRITE_METHODS, type KubeApi, type KubeApiOptions, type RequestRecord } from './kube-api/server.ts'
export type { NeverReady } from './kube-api/controllers.ts'
export type { HelmRelease, SeedReleaseOptions } from './kube-api/helm.ts'
export type * from './kube-api/objects.ts'
