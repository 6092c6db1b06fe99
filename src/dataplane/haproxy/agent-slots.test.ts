import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planSlots, slotAddress, type SlotChange, type SlotView } from './agent-slots.ts';

const free: SlotView = { id: undefined, addr: undefined, releasing: false };
const held = (id: string, addr: string): SlotView => ({ id, addr, releasing: false });
const releasing = (id: string): SlotView => ({ id, addr: '10.0.0.9:1', releasing: true });
const want = (...xs: [string, string, number][]): Map<string, { ip: string; port: number }> => new Map(xs.map(([id, ip, port]) => [id, { ip, port }]));

const cases: { name: string; slots: SlotView[]; wanted: ReturnType<typeof want>; out: SlotChange[] }[] = [
  { name: 'nothing to do', slots: [free, free], wanted: want(), out: [] },
  { name: 'a new instance takes the lowest free slot', slots: [held('a', '10.0.0.1:80'), free, free], wanted: want(['a', '10.0.0.1', 80], ['b', '10.0.0.2', 80]), out: [{ op: 'assign', slot: 1, id: 'b', ip: '10.0.0.2', port: 80 }] },
  { name: 'an instance gone is released', slots: [held('a', '10.0.0.1:80'), held('b', '10.0.0.2:80')], wanted: want(['b', '10.0.0.2', 80]), out: [{ op: 'release', slot: 0, id: 'a' }] },
  {
    name: 'releases come first; a released slot is not reused in the same pass (its connections must end first)',
    slots: [held('a', '10.0.0.1:80'), free],
    wanted: want(['b', '10.0.0.2', 80], ['c', '10.0.0.3', 80]),
    out: [
      { op: 'release', slot: 0, id: 'a' },
      { op: 'assign', slot: 1, id: 'b', ip: '10.0.0.2', port: 80 },
      { op: 'full', id: 'c' },
    ],
  },
  { name: 'a slot still releasing is neither free nor released again', slots: [releasing('a'), free], wanted: want(['b', '10.0.0.2', 80]), out: [{ op: 'assign', slot: 1, id: 'b', ip: '10.0.0.2', port: 80 }] },
  {
    name: 'an instance whose address changed moves to a fresh slot',
    slots: [held('a', '10.0.0.1:80'), free],
    wanted: want(['a', '10.0.0.1', 81]),
    out: [
      { op: 'release', slot: 0, id: 'a' },
      { op: 'assign', slot: 1, id: 'a', ip: '10.0.0.1', port: 81 },
    ],
  },
  { name: 'no free slot: the instance stays on the Node path', slots: [held('a', '10.0.0.1:80')], wanted: want(['a', '10.0.0.1', 80], ['b', '10.0.0.2', 80]), out: [{ op: 'full', id: 'b' }] },
];

for (const c of cases) {
  test(`agent hop slots: ${c.name}`, () => assert.deepEqual(planSlots(c.slots, c.wanted), c.out));
}

test('agent hop slots: only TCP endpoints at an IP address are carried by the proxy', () => {
  assert.deepEqual(slotAddress({ kind: 'tcp', host: '10.213.0.6', port: 8080 }), { ip: '10.213.0.6', port: 8080 });
  assert.deepEqual(slotAddress({ kind: 'tcp', host: '::1', port: 8080 }), { ip: '::1', port: 8080 });
  assert.equal(slotAddress({ kind: 'tcp', host: 'localhost', port: 8080 }), undefined);
  assert.equal(slotAddress({ kind: 'unix', path: '/run/x.sock', preamble: true }), undefined);
});
