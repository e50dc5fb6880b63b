import { InvalidInputError } from '../../common/ids';
import { proxiedLinks } from '../../deploy/local/faults';
import { parseDownMs, parseStackComponent } from '../../deploy/local/stack';

describe('local stack command inputs', () => {
  test('restart takes the services, worker (the control worker) and agent:<node>', () => {
    expect(parseStackComponent('temporal')).toBe('temporal');
    expect(parseStackComponent('minio')).toBe('minio');
    expect(parseStackComponent('toxiproxy')).toBe('toxiproxy');
    expect(parseStackComponent('worker')).toBe('control-worker');
    expect(parseStackComponent('agent:node-a')).toBe('agent:node-a');
  });

  test.each(['postgres', 'agent:', 'agent:../x', 'agent', ''])('restart refuses %p, naming the field', (name) => {
    expect(() => parseStackComponent(name)).toThrow(InvalidInputError);
    expect(() => parseStackComponent(name)).toThrow(/^component: /);
  });

  test('--down is a whole number of milliseconds', () => {
    expect(parseDownMs('0')).toBe(0);
    expect(parseDownMs('15000')).toBe(15000);
    for (const bad of ['-1', '1.5', 'abc', '', '1e3', '99999999999999999999'])
      expect(() => parseDownMs(bad)).toThrow(/^down: /);
  });

  test('--proxy-temporal needs --toxiproxy; --toxiproxy routes s3, with --proxy-temporal temporal too', () => {
    expect(proxiedLinks({})).toEqual([]);
    expect(proxiedLinks({ toxiproxy: true })).toEqual(['s3']);
    expect(proxiedLinks({ toxiproxy: true, proxyTemporal: true })).toEqual(['s3', 'temporal']);
    expect(() => proxiedLinks({ proxyTemporal: true })).toThrow(/^proxy-temporal: needs --toxiproxy/);
  });
});
