import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LogStore, type LogEntry } from './logs.ts';

const line = (i: number, inst = 'inst-a'): LogEntry => ({ time: i, instance_id: inst, stream: 'stdout', text: `line ${i}` });

test('keeps the last 1000 lines per function, oldest first', () => {
  const logs = new LogStore();
  for (let i = 0; i < 2500; i++) logs.append('fn-1', line(i));
  const all = logs.tail('fn-1', 5000);
  assert.equal(all.length, 1000);
  assert.equal(all[0]?.text, 'line 1500');
  assert.equal(all[999]?.text, 'line 2499');
  assert.deepEqual(
    logs.tail('fn-1', 3).map((e) => e.text),
    ['line 2497', 'line 2498', 'line 2499'],
  );
  assert.deepEqual(logs.tail('fn-1', 0), []);
  assert.deepEqual(logs.tail('other', 10), []);
});

test('lines of several instances of one function share the buffer; functions are separate', () => {
  const logs = new LogStore(3);
  logs.append('fn-1', line(1, 'a'));
  logs.append('fn-2', line(2, 'x'));
  logs.append('fn-1', line(3, 'b'));
  assert.deepEqual(
    logs.tail('fn-1', 10).map((e) => `${e.instance_id}:${e.text}`),
    ['a:line 1', 'b:line 3'],
  );
  assert.equal(logs.tail('fn-2', 10).length, 1);
});

test('followers get new lines until they unsubscribe; a throwing follower does not break others', () => {
  const logs = new LogStore();
  const got: string[] = [];
  logs.follow('fn-1', () => {
    throw new Error('broken follower');
  });
  const stop = logs.follow('fn-1', (e) => got.push(e.text));
  logs.append('fn-1', line(1));
  logs.append('fn-2', line(2));
  stop();
  logs.append('fn-1', line(3));
  assert.deepEqual(got, ['line 1']);
});

test('drop forgets a function', () => {
  const logs = new LogStore();
  logs.append('fn-1', line(1));
  logs.drop('fn-1');
  assert.deepEqual(logs.tail('fn-1', 10), []);
});
