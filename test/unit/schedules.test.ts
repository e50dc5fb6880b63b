import { cronProblem } from '../../common/cron';
import { InvalidInputError } from '../../common/ids';
import { parsePreemptionSchedule, type PreemptionScheduleInfo } from '../../clients/schedules';
import { scheduleText, schedulesTable } from '../../clients/schedule-format';

describe('cronProblem', () => {
  test.each(['* * * * *', '*/5 0-6 1,15 jan-mar mon-fri', '0 3 * * 7', '@hourly', '@Daily', '30 2 * 12 sun'])(
    "accepts '%s'",
    (expr) => expect(cronProblem(expr)).toBeNull(),
  );
  test.each([
    ['', /is empty/],
    ['* * * *', /must have 5 fields.*got 4/],
    ['60 * * * *', /minute field '60': 60 is outside 0-59/],
    ['* 24 * * *', /hour field/],
    ['* * 0 * *', /day of month field '0'/],
    ['* * * foo *', /month field 'foo': 'foo' is not a number or a name/],
    ['*/0 * * * *', /step '0'/],
    ['5-1 * * * *', /runs backwards/],
    ['1,,2 * * * *', /empty list item/],
    ['@every', /is not one of/],
  ])("refuses '%s'", (expr, why) => expect(cronProblem(expr)).toMatch(why));
});

describe('parsePreemptionSchedule', () => {
  const fieldOf = (f: () => unknown): string | null => {
    try {
      f();
      return null;
    } catch (e) {
      return e instanceof InvalidInputError ? e.field : `not an InvalidInputError: ${String(e)}`;
    }
  };

  test('defaults: overlap SKIP, max 1, any priority, any zone', () => {
    expect(parsePreemptionSchedule({ name: 'nightly', cron: ' 0 2 * * * ' })).toEqual({
      name: 'nightly',
      cron: '0 2 * * *',
      overlap: 'SKIP',
      sweep: { schedule: 'nightly', max: 1 },
    });
  });

  test('every flag carried into the sweep', () => {
    expect(
      parsePreemptionSchedule({
        name: 'n',
        cron: '@hourly',
        belowPriority: '5',
        max: '3',
        zone: 'eu-1',
        overlap: 'buffer_one',
      }),
    ).toEqual({
      name: 'n',
      cron: '@hourly',
      overlap: 'BUFFER_ONE',
      sweep: { schedule: 'n', max: 3, belowPriority: 5, zone: 'eu-1' },
    });
  });

  test.each([
    [{ name: 'bad/name', cron: '* * * * *' }, 'name'],
    [{ name: 'n', cron: '* * *' }, '--cron'],
    [{ name: 'n', cron: '* * * * *', belowPriority: '11' }, '--below-priority'],
    [{ name: 'n', cron: '* * * * *', belowPriority: '-1' }, '--below-priority'],
    [{ name: 'n', cron: '* * * * *', belowPriority: '2.5' }, '--below-priority'],
    [{ name: 'n', cron: '* * * * *', max: '0' }, '--max'],
    [{ name: 'n', cron: '* * * * *', max: 'many' }, '--max'],
    [{ name: 'n', cron: '* * * * *', zone: '../z' }, '--zone'],
    [{ name: 'n', cron: '* * * * *', overlap: 'sometimes' }, '--overlap'],
  ])('refuses %j naming %s', (req, field) => expect(fieldOf(() => parsePreemptionSchedule(req))).toBe(field));
});

describe('schedule text output', () => {
  const info: PreemptionScheduleInfo = {
    name: 'nightly',
    scheduleId: 'preempt/nightly',
    cron: '0 2 * * *',
    sweep: { schedule: 'nightly', belowPriority: 5, max: 1 },
    overlap: 'SKIP',
    paused: true,
    note: 'maintenance\x1b[31m\nwindow',
    nextRunAt: ['2026-11-28T02:00:00.000Z'],
    recent: [],
  };
  test('describe: one line each, only what came from outside escaped (found as literal \\n between lines)', () => {
    expect(scheduleText(info).split('\n')).toEqual([
      'nightly: Paused (maintenance\\x1b[31m\\nwindow)',
      '  cron 0 2 * * *; sweep below priority 5, max 1; overlap SKIP',
      '  next run 2026-11-28T02:00:00.000Z',
    ]);
  });
  test('list: a header and a row per schedule', () => {
    expect(schedulesTable([info, { ...info, name: 'weekly', paused: false }]).split('\n')).toEqual([
      'NAME     CRON       SWEEP                    STATE   NEXT RUN',
      'nightly  0 2 * * *  below priority 5, max 1  Paused  2026-11-28T02:00:00.000Z',
      'weekly   0 2 * * *  below priority 5, max 1  Active  2026-11-28T02:00:00.000Z',
    ]);
  });
});
