/**
 * Reads one column's values after a watermark in key-ordered pages of binary COPY (short
 * snapshots, so vacuum keeps up) and turns them into rewritten chunks. Pulled with
 * backpressure: while a chunk waits to be taken, the COPY stream is paused.
 */
import { ClientBase } from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { ChunkEncoder, EncodedChunk } from './chunk-encoder';
import { CopyBinaryParser, CopyRow } from './copy-binary';
import { PassDescription } from './pass';
import { readPageSql } from './plan';
import { pendingSql } from './transform';

/** The rows of a `COPY … TO STDOUT (FORMAT binary)`, parsed as they stream in. */
export function copyRowsOut(client: ClientBase, sql: string): AsyncIterable<CopyRow> {
  const src = client.query(copyTo(sql));
  const parser = new CopyBinaryParser();
  src.on('error', (err) => parser.destroy(err));
  src.pipe(parser);
  return parser as AsyncIterable<CopyRow>;
}

export async function* readChunks(client: ClientBase, pass: PassDescription, encoder = new ChunkEncoder(pass)): AsyncGenerator<EncodedChunk> {
  const pageRows = pass.limitRows ?? Math.max(pass.batchSize * 4, 1000);
  const pending = pass.pendingOnly ? pendingSql(pass.transform, pass.plan, 't') : null;
  try {
    for (;;) {
      const sql = readPageSql(pass.plan, encoder.watermark, pageRows, (s) => client.escapeLiteral(s), pending);
      let n = 0;
      for await (const fields of copyRowsOut(client, sql)) {
        n++;
        const chunk = encoder.add(fields);
        if (chunk) yield chunk;
      }
      if (n < pageRows || pass.limitRows !== undefined) break;
    }
    const last = encoder.take();
    if (last) yield last;
  } finally {
    encoder.wipe();
  }
}
