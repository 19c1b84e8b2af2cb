/** Parses a binary COPY payload given in pieces (any split) with the rotation's parser. */
import { Readable } from 'node:stream';
import { CopyBinaryParser, CopyRow } from '../../src/core/rewrite/copy-binary';

export async function parseCopy(pieces: Buffer[]): Promise<CopyRow[]> {
  const parser = new CopyBinaryParser();
  const rows: CopyRow[] = [];
  const done = new Promise<void>((resolve, reject) => {
    parser.on('data', (r: CopyRow) => rows.push(r));
    parser.on('end', resolve);
    parser.on('error', reject);
  });
  Readable.from(pieces, { objectMode: false }).pipe(parser);
  await done;
  return rows;
}
