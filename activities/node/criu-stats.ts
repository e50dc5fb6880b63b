import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse, type Type } from 'protobufjs';

/**
 * What CRIU measured of a dump, from the `stats-dump` image it writes beside the others: an image header (two
 * magics), a 32-bit length, then a StatsEntry message. The schema is the part of CRIU's images/stats.proto we
 * read; protobuf skips the fields it does not name.
 */
const STATS = parse(`
  syntax = "proto2";
  message DumpStatsEntry {
    required uint32 freezing_time = 1;
    required uint32 frozen_time = 2;
    required uint32 memdump_time = 3;
    required uint32 memwrite_time = 4;
    required uint64 pages_scanned = 5;
    required uint64 pages_skipped_parent = 6;
    required uint64 pages_written = 7;
  }
  message StatsEntry { optional DumpStatsEntry dump = 1; }
`).root.lookupType('StatsEntry') as Type;

const IMG_SERVICE_MAGIC = 0x55105940;
const STATS_MAGIC = 0x57093306;
const HEADER = 12;

/** CRIU's figures for one dump: times in milliseconds, pages as counted by it. */
export interface DumpStats {
  /** From the freeze request until every task stopped. */
  freezingMs: number;
  /** How long the workload stood still: from stopped until resumed (--leave-running) or killed. */
  frozenMs: number;
  memdumpMs: number;
  memwriteMs: number;
  pagesScanned: number;
  pagesWritten: number;
}

interface RawDump {
  freezingTime: number;
  frozenTime: number;
  memdumpTime: number;
  memwriteTime: number;
  pagesScanned: number | { toNumber(): number };
  pagesWritten: number | { toNumber(): number };
}

const num = (v: number | { toNumber(): number }): number => (typeof v === 'number' ? v : v.toNumber());

/**
 * The stats of the dump in `imagesDir`, or null when CRIU left none or one we cannot read: the figures are
 * reported to the operator, never a reason to fail a checkpoint whose images are whole.
 */
export function readDumpStats(imagesDir: string): DumpStats | null {
  let b: Buffer;
  try {
    b = fs.readFileSync(path.join(imagesDir, 'stats-dump'));
  } catch {
    return null;
  }
  if (b.length < HEADER || b.readUInt32LE(0) !== IMG_SERVICE_MAGIC || b.readUInt32LE(4) !== STATS_MAGIC) return null;
  const len = b.readUInt32LE(8);
  if (HEADER + len > b.length) return null;
  let dump: RawDump | undefined;
  try {
    dump = (STATS.decode(b.subarray(HEADER, HEADER + len)) as unknown as { dump?: RawDump }).dump;
  } catch {
    return null;
  }
  if (!dump) return null;
  const ms = (us: number): number => Math.round(us / 100) / 10;
  return {
    freezingMs: ms(dump.freezingTime),
    frozenMs: ms(dump.frozenTime),
    memdumpMs: ms(dump.memdumpTime),
    memwriteMs: ms(dump.memwriteTime),
    pagesScanned: num(dump.pagesScanned),
    pagesWritten: num(dump.pagesWritten),
  };
}
