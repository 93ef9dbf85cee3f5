// Compiled (not run) by test/types.test.mjs with tsc --noEmit --strict:
// the hand-written declarations (src/index.d.ts) describe the documented API.
import { createClient, type Mutation, type SyncStatus } from '@rtsub/client';

interface Task { [k: string]: unknown; id: number; org_id: number; title: string; done: boolean }

const client = createClient({
  url: 'https://rt.example.com',
  format: 'msgpack',
  token: async () => 'jwt',
  write: async (m: Mutation) => { await fetch('/api/write', { method: 'POST', body: JSON.stringify(m) }); },
});

const tasks = client.subscribe<Task>('org_tasks', { org_id: 7 }, {
  key: ['id'],
  orderBy: ['-done', 'title'],
  version: 'updated_at',
  conflict: 'merge',
  onInsert: (row, meta) => console.log(row.title, meta.key, meta.source),
  onUpdate: (row, meta) => console.log(row.done, meta.old.title),
  onDelete: (row) => console.log(row.id),
  onLive: ({ at }) => console.log(at),
  onStatus: (s: SyncStatus) => console.log(s),
  onConflict: ({ server, local }) => (server ? { ...local } : null),
});

async function main(): Promise<void> {
  await tasks.ready;
  const rows: Task[] = tasks.rows();
  const first: Task | null = tasks.get(rows[0]?.id);
  const w = tasks.update(1, { done: true }, { priority: 'high' });
  const id: string = w.id;
  const outcome = await w;
  if (outcome.status === 'written') tasks.resolveConflict(id, null);
  const st: SyncStatus = tasks.rowStatus(first);
  console.log(st, client.info().isLeader, client.status);
  tasks.unsubscribe();
  client.close();
}
void main();
