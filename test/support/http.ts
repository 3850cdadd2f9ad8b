// Local HTTP servers for tests: 127.0.0.1 only, a random free port, scripted answers.
// They run in a worker thread (http-worker.mjs), so they answer on time even while the
// test's main thread is busy in synchronous calls.
import { Worker } from 'node:worker_threads'

export interface Answer {
  status?: number
  /** `{origin}` in a value is replaced by the server's own http://127.0.0.1:PORT. */
  headers?: Record<string, string>
  /** A string is sent as text/plain, an object as JSON. Default: "ok". */
  body?: string | object
  /** Never answer: the client has to time out. */
  hang?: boolean
}

export interface Received {
  method: string
  path: string
  headers: Record<string, string | string[] | undefined>
  body: string
  /** Milliseconds since the server started. */
  at: number
}

export interface TestServer {
  /** http://127.0.0.1:PORT */
  origin: string
  port: number
  /** The requests so far, in order. */
  received(): Promise<Received[]>
  /** Their bodies, JSON-parsed. */
  json(): Promise<unknown[]>
  close(): Promise<void>
}

let worker: Worker | undefined
let nextId = 0
const pending = new Map<number, (result: unknown) => void>()

function call<T>(message: Record<string, unknown>): Promise<T> {
  if (!worker) {
    worker = new Worker(new URL('./http-worker.mjs', import.meta.url))
    worker.on('message', ({ id, result }: { id: number; result: unknown }) => {
      pending.get(id)?.(result)
      pending.delete(id)
    })
  }
  const id = nextId++
  return new Promise<T>((resolve) => {
    pending.set(id, resolve as (result: unknown) => void)
    worker!.postMessage({ ...message, id })
  })
}

/** A server whose n-th request gets answers[n]; the last answer repeats. */
export async function startServer(answers: Answer[] = []): Promise<TestServer> {
  const port = await call<number>({ op: 'start', answers })
  const received = () => call<Received[]>({ op: 'received', port })
  return {
    origin: `http://127.0.0.1:${port}`,
    port,
    received,
    json: async () => (await received()).map((r) => JSON.parse(r.body)),
    close: () => call<void>({ op: 'close', port }),
  }
}

/** A server of static files: each path (`/index.yaml`) answers with its bytes, any other with 404. */
export async function startFileServer(files: Record<string, Uint8Array>): Promise<TestServer> {
  const port = await call<number>({ op: 'start', answers: [], files })
  const received = () => call<Received[]>({ op: 'received', port })
  return {
    origin: `http://127.0.0.1:${port}`,
    port,
    received,
    json: async () => (await received()).map((r) => JSON.parse(r.body)),
    close: () => call<void>({ op: 'close', port }),
  }
}

/** A port nothing listens on. */
export function closedPort(): Promise<number> {
  return call<number>({ op: 'freePort' })
}

/** Stops the worker (after closing the servers). */
export async function stopServers(): Promise<void> {
  const w = worker
  worker = undefined
  await w?.terminate()
}
