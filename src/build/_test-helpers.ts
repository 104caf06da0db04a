/** Test helpers for src/build: temporary folders and hand-made (hostile) archives. */
import { mkdtemp, realpath, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tar from "tar-stream";
import type { Header } from "tar-stream";

export interface TempDir extends AsyncDisposable {
  path: string;
}

/** A fresh folder, removed on dispose (`await using tmp = await tempDir()`). */
export async function tempDir(): Promise<TempDir> {
  // realpath: on macOS tmpdir() is behind a link, and tests compare paths
  const path = await realpath(await mkdtemp(join(tmpdir(), "forge-build-")));
  return { path, [Symbol.asyncDispose]: () => rm(path, { recursive: true, force: true }) };
}

export interface RawEntry {
  header: Partial<Header> & { name: string };
  data?: Uint8Array | string;
}

/** A tar (not gzipped) written exactly as told, with no checks: for crafting attacks. */
export async function rawTar(entries: RawEntry[]): Promise<Uint8Array<ArrayBuffer>> {
  const pack = tar.pack();
  const chunks: Uint8Array[] = [];
  const collected = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Uint8Array); // a pack emits buffers
  })();
  for (const { header, data } of entries) {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error | null) => (err ? reject(err) : resolve());
      if (data === undefined) pack.entry(header, done);
      else pack.entry(header, data, done);
    });
  }
  pack.finalize();
  await collected;
  return new Uint8Array(Buffer.concat(chunks)); // a copy typed as ArrayBuffer-backed, which Bun.gzipSync asks for
}

export async function rawTarGz(entries: RawEntry[]): Promise<Uint8Array<ArrayBuffer>> {
  return Bun.gzipSync(await rawTar(entries));
}

/** Names (folders end in `/`) and contents of a tar.gz, in archive order. */
export async function listArchive(gz: Uint8Array): Promise<{ name: string; type: string; mode: number; text: string }[]> {
  const extract = tar.extract();
  const out: { name: string; type: string; mode: number; text: string }[] = [];
  const reading = (async () => {
    for await (const entry of extract) {
      const parts: Uint8Array[] = [];
      for await (const chunk of entry) parts.push(chunk as Uint8Array); // entry streams carry buffers
      const { name, type, mode } = entry.header;
      out.push({ name: type === "directory" ? `${name.replace(/\/+$/, "")}/` : name, type, mode, text: Buffer.concat(parts).toString() });
    }
  })();
  extract.end(Bun.gunzipSync(new Uint8Array(gz)));
  await reading;
  return out;
}
