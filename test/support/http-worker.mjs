// The servers of test/support/http.ts, in a worker thread: the test process blocks its
// main thread in synchronous git calls (makeRepo), and a server there would stall with it.
import http from 'node:http'
import { parentPort } from 'node:worker_threads'

const servers = new Map() // port -> { server, requests, hanging }

/** A server answering from `answers` in order, or, with `files` (path → bytes), each path with its file (404 otherwise). */
function start(answers, files) {
  const started = Date.now()
  const state = { requests: [], hanging: new Set() }
  const server = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (d) => (body += d))
    req.on('end', () => {
      state.requests.push({ method: req.method, path: req.url, headers: req.headers, body, at: Date.now() - started })
      if (files) {
        const file = files[new URL(req.url, 'http://x').pathname]
        res.writeHead(file ? 200 : 404, { 'content-type': 'application/octet-stream' })
        res.end(file ?? 'not found')
        return
      }
      const answer = answers[Math.min(state.requests.length - 1, answers.length - 1)] ?? {}
      if (answer.hang) {
        state.hanging.add(res)
        return
      }
      const json = typeof answer.body === 'object'
      const text = answer.body === undefined ? 'ok' : json ? JSON.stringify(answer.body) : answer.body
      // `{origin}` in a header stands for this server (absolute Link URLs for pagination).
      const origin = `http://127.0.0.1:${server.address().port}`
      const headers = Object.fromEntries(Object.entries(answer.headers ?? {}).map(([k, v]) => [k, v.replaceAll('{origin}', origin)]))
      res.writeHead(answer.status ?? 200, { 'content-type': json ? 'application/json' : 'text/plain', ...headers })
      res.end(text)
    })
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const { port } = server.address()
    servers.set(port, { server, ...state })
    resolve(port)
  }))
}

function close(port) {
  const s = servers.get(port)
  if (!s) return Promise.resolve(null)
  servers.delete(port)
  for (const res of s.hanging) res.destroy()
  s.server.closeAllConnections?.()
  return new Promise((resolve) => s.server.close(() => resolve(null)))
}

/** A port nothing listens on: bound, then released. */
function freePort() {
  const server = http.createServer()
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => {
    const { port } = server.address()
    server.close(() => resolve(port))
  }))
}

parentPort.on('message', async ({ id, op, answers, files, port }) => {
  const result =
    op === 'start' ? await start(answers, files)
    : op === 'received' ? servers.get(port)?.requests ?? []
    : op === 'close' ? await close(port)
    : op === 'freePort' ? await freePort()
    : null
  parentPort.postMessage({ id, result })
})
