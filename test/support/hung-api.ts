// A Kubernetes API server that accepts connections and never answers (127.0.0.1 only): real
// kubectl and helm pointed at it wait as they would on a hung control plane. `version`: it
// answers GET /version (an API server whose storage hangs: the first probe passes, every
// request after it waits), else nothing at all.
import fs from 'node:fs'
import net from 'node:net'

export interface HungApi {
  /** http://127.0.0.1:PORT */
  url: string
  /** Writes a kubeconfig whose current context, `hung`, points at `server` (default: url). */
  kubeconfig(file: string, server?: string): string
  close(): Promise<void>
}

const VERSION = JSON.stringify({ major: '1', minor: '32', gitVersion: 'v1.32.0', platform: 'linux/amd64' })

export function hungApi({ version = false }: { version?: boolean } = {}): Promise<HungApi> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => undefined)
    let head = ''
    socket.on('data', (data) => {
      head += data.toString('latin1')
      if (!version || !head.includes('\r\n\r\n')) return
      if (/^GET \/version[ ?]/.test(head)) socket.write(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${VERSION.length}\r\n\r\n${VERSION}`)
      head = ''
    })
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      const url = `http://127.0.0.1:${port}`
      resolve({
        url,
        kubeconfig: (file, at = url) => {
          fs.writeFileSync(file, [
            'apiVersion: v1', 'kind: Config',
            `clusters: [{ name: hung, cluster: { server: '${at}', insecure-skip-tls-verify: true } }]`,
            'users: [{ name: deployer, user: { token: hung-api-token-0123456789 } }]',
            'contexts: [{ name: hung, context: { cluster: hung, user: deployer } }]',
            'current-context: hung', '',
          ].join('\n'))
          return file
        },
        close: () => new Promise((done) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => done())
        }),
      })
    })
  })
}
