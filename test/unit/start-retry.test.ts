import { Writable } from 'node:stream';
import pino from 'pino';
import { START_RETRY, startRetryDelayMs, untilStarted } from '../../workers/start-retry';

/** A pino logger whose JSON lines land in `lines`. */
function capture(): { logger: pino.Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n').filter(Boolean))
        lines.push(JSON.parse(l) as Record<string, unknown>);
      done();
    },
  });
  return { logger: pino(sink), lines };
}

describe('untilStarted: a start-up step tried until Temporal answers', () => {
  test('waits double from 1 s to the 10 s cap, each spread over the upper half of its length', () => {
    const low = [0, 1, 2, 3, 4, 5, 6, 20].map((n) => startRetryDelayMs(n, START_RETRY, 0));
    const high = [0, 1, 2, 3, 4, 5, 6, 20].map((n) => startRetryDelayMs(n, START_RETRY, 0.999999));
    expect(low).toEqual([500, 1000, 2000, 4000, 5000, 5000, 5000, 5000]);
    expect(high).toEqual([1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000]);
  });

  test('a step that fails three times is tried a fourth time and its value returned; each failure is logged with its wait', async () => {
    const { logger, lines } = capture();
    const waits: number[] = [];
    let tries = 0;
    const value = await untilStarted(
      'first registration',
      async () => {
        if (++tries <= 3) throw new Error(`connect ECONNREFUSED 127.0.0.1:7233 (try ${tries})`);
        return 'registered';
      },
      logger,
      { ...START_RETRY, wait: async (ms) => void waits.push(ms), random: () => 0.5 },
    );
    expect(value).toBe('registered');
    expect(tries).toBe(4);
    expect(waits).toEqual([750, 1500, 3000]);
    const failed = lines.filter((l) => l.msg === 'first registration failed');
    expect(failed.map((l) => [l.failures, l.retryInMs, l.err])).toEqual([
      [1, 750, 'connect ECONNREFUSED 127.0.0.1:7233 (try 1)'],
      [2, 1500, 'connect ECONNREFUSED 127.0.0.1:7233 (try 2)'],
      [3, 3000, 'connect ECONNREFUSED 127.0.0.1:7233 (try 3)'],
    ]);
    expect(lines.at(-1)).toMatchObject({ step: 'first registration', failures: 3 });
  });

  test('a step that succeeds at once neither waits nor logs', async () => {
    const { logger, lines } = capture();
    const waits: number[] = [];
    await expect(
      untilStarted('worker connection to Temporal', async () => 7, logger, {
        ...START_RETRY,
        wait: async (ms) => void waits.push(ms),
      }),
    ).resolves.toBe(7);
    expect(waits).toEqual([]);
    expect(lines).toEqual([]);
  });
});
