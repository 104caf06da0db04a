/**
 * Asking the other nodes (DESIGN §9: logs, records and `forge info` answer for the whole
 * cluster, whichever node is asked). A node answers a peer's question from its own state
 * only (`?local=1`), so a question never travels further than one hop; a peer that does
 * not answer in time is named in the answer, never waited on past `timeoutMs`.
 */
import type { NodeRecord } from "../store/index.ts";

export interface PeerAnswer<T> {
  node: string;
  value?: T;
  /** Why this node gave no answer. */
  error?: string;
}

export interface PeerClient {
  /** GETs `path` (with ?local=1 added) from each node; answers in the order of `nodes`. */
  ask<T>(nodes: NodeRecord[], path: string): Promise<PeerAnswer<T>[]>;
  /**
   * Follows an NDJSON stream (`path` with ?local=1) from each node, calling `onLine` with
   * each parsed line, until `signal` aborts. Resolves once every stream is open (or failed).
   */
  follow(nodes: NodeRecord[], path: string, onLine: (line: unknown) => void, signal: AbortSignal): Promise<PeerAnswer<true>[]>;
}

export interface PeerClientOptions {
  /** The cluster's API key (every node has the same one). */
  apiKey: () => string;
  /** A peer's answer is awaited this long, ms. Default 2000. */
  timeoutMs?: number;
}

export function peerClient(options: PeerClientOptions): PeerClient {
  const timeoutMs = options.timeoutMs ?? 2000;
  const request = (node: NodeRecord, path: string, signal: AbortSignal): Promise<Response> =>
    fetch(localUrl(node, path), { headers: { authorization: `Bearer ${options.apiKey()}` }, signal });

  return {
    ask<T>(nodes: NodeRecord[], path: string): Promise<PeerAnswer<T>[]> {
      return Promise.all(
        nodes.map(async (node): Promise<PeerAnswer<T>> => {
          try {
            const res = await request(node, path, AbortSignal.timeout(timeoutMs));
            if (!res.ok) return { node: node.id, error: `${res.status} ${(await res.text()).slice(0, 300)}` };
            return { node: node.id, value: (await res.json()) as T };
          } catch (err) {
            return { node: node.id, error: err instanceof Error ? err.message : String(err) };
          }
        }),
      );
    },

    follow(nodes, path, onLine, signal) {
      return Promise.all(
        nodes.map(async (node): Promise<PeerAnswer<true>> => {
          const opened = new AbortController();
          const timer = setTimeout(() => opened.abort(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
          const both = AbortSignal.any([signal, opened.signal]);
          try {
            const res = await request(node, path, both);
            clearTimeout(timer);
            if (!res.ok || !res.body) return { node: node.id, error: `${res.status} ${(await res.text()).slice(0, 300)}` };
            void pumpLines(res.body, onLine).catch(() => {}); // ends when signal aborts or the peer goes
            return { node: node.id, value: true };
          } catch (err) {
            clearTimeout(timer);
            return { node: node.id, error: err instanceof Error ? err.message : String(err) };
          }
        }),
      );
    },
  };
}

// --- internal ---

function localUrl(node: NodeRecord, path: string): string {
  const u = new URL(path, node.url);
  u.searchParams.set("local", "1");
  return u.toString();
}

async function pumpLines(body: ReadableStream<Uint8Array>, onLine: (line: unknown) => void): Promise<void> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of body) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const text = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!text) continue; // a heartbeat
      try {
        onLine(JSON.parse(text));
      } catch {
        // a peer's malformed line is dropped, not the stream
      }
    }
  }
}
