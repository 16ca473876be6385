// BullMQ side of `python -m bench jobs` (queue "bench", no-op jobs, BullMQ's defaults).
//
//   node bench.js enqueue   --redis URL --api add|addBulk --seconds T [--batch B]
//   node bench.js fill      --redis URL --count N --seconds T [--batch B]
//   node bench.js worker    --redis URL          (prints READY, runs until SIGTERM)
//   node bench.js roundtrip --redis URL --jobs N (add, then QueueEvents 'completed')
//
// One JSON line on stdout: count, seconds, this process's CPU seconds (ms per job for roundtrip).
"use strict";
const { Queue, Worker, QueueEvents } = require("bullmq");

const WARMUP = 20;
const QUEUE = "bench";

function options(argv) {
  const o = { api: "add", seconds: 3, batch: 100, count: 10000, jobs: 200 };
  for (let i = 0; i < argv.length; i += 2) o[argv[i].replace(/^--/, "")] = argv[i + 1];
  for (const k of ["seconds", "batch", "count", "jobs"]) o[k] = Number(o[k]);
  const url = new URL(o.redis);
  o.connection = { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null };
  return o;
}

function cpuSeconds(since) {
  const u = process.cpuUsage(since);
  return (u.user + u.system) / 1e6;
}

async function timedAdds(o, limit) {
  const queue = new Queue(QUEUE, { connection: o.connection });
  const bulk = Array.from({ length: o.batch }, () => ({ name: "noop", data: {} }));
  const send =
    o.api === "addBulk"
      ? async (n) => {
          await queue.addBulk(n === o.batch ? bulk : bulk.slice(0, n));
          return n;
        }
      : async () => {
          await queue.add("noop", {});
          return 1;
        };
  await queue.add("warmup", {}); // connection and scripts (not counted; it stays queued)
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const end = t0 + o.seconds * 1000;
  let count = 0;
  while (count < limit && performance.now() < end) count += await send(Math.min(o.batch, limit - count));
  const seconds = (performance.now() - t0) / 1000;
  const cpu = cpuSeconds(cpu0);
  await queue.close();
  return { api: o.api, count, seconds, cpu_s: cpu };
}

async function roundtrip(o) {
  const queue = new Queue(QUEUE, { connection: o.connection });
  const events = new QueueEvents(QUEUE, { connection: o.connection });
  await events.waitUntilReady();
  const ms = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < o.jobs + WARMUP; i++) {
    const start = performance.now();
    const job = await queue.add("noop", {});
    await job.waitUntilFinished(events, 10000);
    if (i >= WARMUP) ms.push(performance.now() - start);
  }
  const out = { count: ms.length, seconds: (performance.now() - t0) / 1000, cpu_s: cpuSeconds(cpu0), ms };
  await events.close();
  await queue.close();
  return out;
}

async function worker(o) {
  const w = new Worker(QUEUE, async () => null, {
    connection: o.connection,
    concurrency: Number(o.concurrency || 1), // BullMQ's default: 1
  });
  await w.waitUntilReady();
  process.stdout.write("READY\n");
  const stop = async () => {
    await w.close();
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

async function main() {
  const [mode, ...rest] = process.argv.slice(2);
  const o = options(rest);
  let out;
  if (mode === "worker") return worker(o);
  if (mode === "enqueue") out = await timedAdds(o, Infinity);
  else if (mode === "fill") out = await timedAdds({ ...o, api: "addBulk" }, o.count);
  else if (mode === "roundtrip") out = await roundtrip(o);
  else throw new Error(`unknown mode ${mode}`);
  process.stdout.write(JSON.stringify({ system: "bullmq", mode, ...out }) + "\n");
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
