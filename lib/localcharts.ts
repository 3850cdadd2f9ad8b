/**
 * A wrapper chart's local dependencies (`repository: file://<dir>`): one chart of the
 * repository that several hubs share, as mybinder.org-deploy's `mybinder/` or hubploy's `hub/`
 * (docs/migrating.md). helm packages such a dependency as its directory is, so the
 * dependencies it declares itself are left out unless they were fetched into its charts/
 * first, and silently: the render succeeds without them (measured with Helm 3.17 and 4.1).
 * So a deploy and a validation fetch theirs first, and --changed counts their files as the
 * chart's own.
 */
import fs from 'node:fs'
import process from 'node:process'
import path from 'node:path'
import type YAMLModule from 'yaml'
import type { ChartFiles } from './plan.ts'
import { notAFile } from './secrets.ts'

/** The dependencies a chart directory declares (Chart.yaml; requirements.yaml for a Helm 2 chart); unreadable, none (helm reports it). */
function declared(dir: string, YAML: typeof YAMLModule): unknown[] {
  return ['Chart.yaml', 'requirements.yaml'].flatMap((file) => {
    try {
      // Only regular files: a FIFO would wait for a writer for ever (the plan notes it).
      const deps = fs.existsSync(path.join(dir, file)) && !notAFile(path.join(dir, file)) ? YAML.parse(fs.readFileSync(path.join(dir, file), 'utf8'))?.dependencies : undefined
      return Array.isArray(deps) ? deps : []
    } catch {
      return []
    }
  })
}

/** A directory as a path from the repository root (where deploy.ts runs), or undefined outside it. */
function inRepository(dir: string): string | undefined {
  const rel = path.relative(process.cwd(), dir)
  return rel === '' || rel.startsWith('..') || path.isAbsolute(rel) ? undefined : rel.split(path.sep).join('/')
}

/**
 * The chart's `file://` dependencies inside the repository, theirs too, each once, a
 * dependency before the charts that need it. One outside the repository is not listed: the
 * deploy refuses it (lib/plan.ts, checkCommitted).
 */
export function localDependencies(chartDir: string, YAML: typeof YAMLModule): string[] {
  const found: string[] = []
  const seen = new Set([inRepository(path.resolve(chartDir))])
  const visit = (dir: string) => {
    for (const dependency of declared(dir, YAML)) {
      const repository = (dependency as { repository?: unknown } | null)?.repository
      if (typeof repository !== 'string' || !repository.startsWith('file://')) continue
      const target = inRepository(path.resolve(dir, repository.slice('file://'.length)))
      if (target === undefined || seen.has(target) || !fs.existsSync(path.join(target, 'Chart.yaml'))) continue
      seen.add(target)
      visit(target)
      found.push(target)
    }
  }
  visit(chartDir)
  return found
}

/** The local dependencies that declare dependencies of their own: `helm dep up <dir>` for each, in order, before the chart's own. */
export function fetchedFirst(chartDir: string, YAML: typeof YAMLModule): string[] {
  return localDependencies(chartDir, YAML).filter((dir) => declared(dir, YAML).length > 0)
}

/** What --changed watches for a chart: its own paths, and a wrapper chart's local dependencies (a dir ends in `/`). */
export function watchedWithLocal(files: ChartFiles, YAML: typeof YAMLModule): string[] {
  const local = files.source.layout === 'wrapper-chart' ? localDependencies(files.chartDir, YAML) : []
  return [...files.watched, ...local.map((dir) => `${dir}/`)]
}
