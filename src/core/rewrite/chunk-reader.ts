/**
 * Reads one column's values after a watermark in key-ordered pages of binary COPY (short
 * snapshots, so vacuum keeps up) and turns them into re-encrypted chunks. Pulled with
 * backpressure: while a chunk waits to be taken, the COPY stream is paused.
 */
import { Client } from 'pg';
import { to as copyTo } from 'pg-copy-streams';
import { CopyBinaryParser, CopyRow } from './copy-binary';
import { readPageSql } from './plan';
import { ChunkEncoder, EncodedChunk, ReaderJob } from './chunk-encoder';

export async function* readChunks(client: Client, job: ReaderJob): AsyncGenerator<EncodedChunk> {
  const pageRows = Math.max(job.batchSize * 4, 1000);
  const encoder = new ChunkEncoder(job);
  try {
    for (;;) {
      const sql = readPageSql(job.plan, job.toVersion, encoder.watermark, pageRows, (s) => client.escapeLiteral(s), job.filter);
      const src = client.query(copyTo(sql));
      const parser = new CopyBinaryParser();
      src.on('error', (err) => parser.destroy(err));
      src.pipe(parser);
      let n = 0;
      for await (const fields of parser as AsyncIterable<CopyRow>) {
        n++;
        const chunk = encoder.add(fields);
        if (chunk) yield chunk;
      }
      if (n < pageRows) break;
    }
    const last = encoder.take();
    if (last) yield last;
  } finally {
    encoder.wipe();
  }
}
