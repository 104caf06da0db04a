/**
 * A WebSocket client for tests: received messages are a queue to await, the close a promise.
 * Bun's own client over TCP (`ws://127.0.0.1:<port>/path`, any Host header you give it, as
 * forge's gateway wants for `<name>.localhost`) or over a Unix socket (Bun's `ws+unix:` URLs),
 * so the same test can talk to an instance's socket or to the gateway.
 */

export interface OpenWebSocketOptions {
  /** Connect over this Unix socket; the URL then gives only the path, query and Host. */
  unix?: string;
  /** Request headers; a Host given here is sent as is (Bun's client allows it). */
  headers?: Record<string, string>;
  protocols?: string | string[];
  /** How long the open may take, ms; default 10 s. */
  timeoutMs?: number;
}

export interface WebSocketClosed {
  code: number;
  reason: string;
  wasClean: boolean;
}

export type WebSocketMessage = string | ArrayBuffer;

const DEFAULT_TIMEOUT_MS = 10_000;

export class TestWebSocket implements AsyncDisposable {
  readonly socket: WebSocket;
  /** Resolves when the connection is closed, by either side. */
  readonly closed: Promise<WebSocketClosed>;
  #messages: WebSocketMessage[] = [];
  #waiters: { resolve: (message: WebSocketMessage) => void; reject: (err: Error) => void }[] = [];
  #closedWith: WebSocketClosed | undefined;

  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.binaryType = "arraybuffer";
    socket.addEventListener("message", (event) => {
      const data = event.data as WebSocketMessage;
      const waiter = this.#waiters.shift();
      if (waiter) waiter.resolve(data);
      else this.#messages.push(data);
    });
    this.closed = new Promise<WebSocketClosed>((resolve) => {
      socket.addEventListener("close", (event) => {
        const closed = { code: event.code, reason: event.reason, wasClean: event.wasClean };
        this.#closedWith = closed;
        for (const waiter of this.#waiters.splice(0)) waiter.reject(closedError(closed));
        resolve(closed);
      });
    });
  }

  /** Opens `url` (ws:// or http://; with `unix`, over that socket) and waits until it is open. */
  static open(url: string, options: OpenWebSocketOptions = {}): Promise<TestWebSocket> {
    const target = new URL(url);
    const headers = { ...options.headers };
    let address = url;
    if (options.unix !== undefined) {
      address = `ws+unix://${options.unix}:${target.pathname}${target.search}`;
      if (!Object.keys(headers).some((name) => name.toLowerCase() === "host")) headers.host = target.host;
    }
    // Bun's client takes headers in its options (a Bun extension of the WHATWG constructor).
    const socket = new WebSocket(address, { headers, ...(options.protocols !== undefined ? { protocols: options.protocols } : {}) });
    const client = new TestWebSocket(socket);
    return new Promise<TestWebSocket>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.close();
        reject(new Error(`WebSocket ${url}: not open after ${options.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`));
      }, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
      socket.addEventListener("open", () => {
        clearTimeout(timer);
        resolve(client);
      });
      socket.addEventListener("close", (event) => {
        clearTimeout(timer);
        reject(new Error(`WebSocket ${url}: closed before it opened (${event.code} ${event.reason})`));
      });
    });
  }

  /** The subprotocol the server chose. */
  get protocol(): string {
    return this.socket.protocol;
  }

  send(data: string | ArrayBuffer | ArrayBufferView): void {
    this.socket.send(data as string);
  }

  /** The next message (in order); rejects if the socket closes first or after `timeoutMs`. */
  next(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<WebSocketMessage> {
    const queued = this.#messages.shift();
    if (queued !== undefined) return Promise.resolve(queued);
    if (this.#closedWith) return Promise.reject(closedError(this.#closedWith));
    return new Promise<WebSocketMessage>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`no WebSocket message within ${timeoutMs} ms`));
      }, timeoutMs);
      const waiter = {
        resolve: (message: WebSocketMessage) => {
          clearTimeout(timer);
          resolve(message);
        },
        reject: (err: Error) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      this.#waiters.push(waiter);
    });
  }

  /** Sends `data` and waits for the next message: one request-reply round trip. */
  async roundTrip(data: string | ArrayBuffer | ArrayBufferView): Promise<WebSocketMessage> {
    const reply = this.next();
    this.send(data);
    return reply;
  }

  /** Closes from this side and waits for the close to complete. */
  close(code = 1000, reason = ""): Promise<WebSocketClosed> {
    if (this.socket.readyState < WebSocket.CLOSING) this.socket.close(code, reason);
    return this.closed;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.socket.readyState === WebSocket.CLOSED) return;
    // A server that never answers the close must not hang the test's cleanup.
    this.socket.close();
    await Promise.race([this.closed, new Promise((resolve) => setTimeout(resolve, 1_000).unref())]);
  }
}

function closedError(closed: WebSocketClosed): Error {
  return new Error(`the WebSocket closed (${closed.code} ${closed.reason})`);
}

/**
 * The headers of a WebSocket upgrade request, for a plain fetch() whose refusal a test
 * checks (Bun's WebSocket client reports a failed upgrade without its status or body).
 */
export function upgradeRequestHeaders(): Record<string, string> {
  return {
    connection: "Upgrade",
    upgrade: "websocket",
    "sec-websocket-version": "13",
    "sec-websocket-key": Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64"),
  };
}
