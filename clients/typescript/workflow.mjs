// What a TypeScript agent platform does with agency-data over HTTP, typed by the client generated
// from openapi.json (`npm run generate`; `npm run check` type-checks this file against it, so a
// changed API breaks the check before it breaks a platform).
//
// Env: AGENCY_DATA_URL (base URL), AGENCY_DATA_KEY (a read-write key),
// AGENCY_DATA_ADMIN_KEY (an admin key of the same tenant: creating a collection needs one).
// Prints one JSON object: the ids it made, for the caller to check.

import { randomUUID } from "node:crypto";

import createClient from "openapi-fetch";

/** @typedef {import("./schema.js").paths} Paths */
/** @typedef {import("./schema.js").components["schemas"]} Schemas */

const baseUrl = required("AGENCY_DATA_URL");

/** @type {import("openapi-fetch").Client<Paths>} */
const api = createClient({
  baseUrl,
  headers: { Authorization: `Bearer ${required("AGENCY_DATA_KEY")}` },
});
/** @type {import("openapi-fetch").Client<Paths>} */
const admin = createClient({
  baseUrl,
  headers: { Authorization: `Bearer ${required("AGENCY_DATA_ADMIN_KEY")}` },
});

const DIM = 8;
const collection = `ts_notes_${process.pid}`;

/** @param {string} name */
function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

/**
 * The body of a success, or an Error carrying the problem the service answered.
 * @template T
 * @param {string} what
 * @param {{ data?: T, error?: Schemas["Problem"] | unknown, response: Response }} answer
 * @returns {T}
 */
function ok(what, answer) {
  if (answer.data === undefined) {
    throw new Error(`${what}: HTTP ${answer.response.status} ${JSON.stringify(answer.error)}`);
  }
  return answer.data;
}

/**
 * A vector as little-endian float32, base64: what an embedding model's output is sent as.
 * @param {number[]} values
 */
function float32Base64(values) {
  return Buffer.from(new Float32Array(values).buffer).toString("base64");
}

/** @param {number} seed @returns {number[]} */
function vector(seed) {
  return Array.from({ length: DIM }, (_, i) => Math.sin(seed * 7.1 + i * 1.3));
}

async function main() {
  /** @type {Schemas["Agent"]} */
  const agent = ok(
    "register agent",
    await api.POST("/v1/agents", {
      body: { name: "ts-worker", type: "summarizer", capabilities: { languages: ["en"] } },
    }),
  );
  const again = ok(
    "get agent",
    await api.GET("/v1/agents/{agent_id}", { params: { path: { agent_id: agent.id } } }),
  );
  if (again.name !== "ts-worker") throw new Error(`agent read back as ${again.name}`);

  /** @type {Schemas["CollectionShape"]} */
  const info = ok(
    "create collection",
    await admin.POST("/v1/collections", {
      body: { name: collection, dimension: DIM, metric: "cosine", storage: "vector", index: "hnsw" },
    }),
  );
  if (info.dimension !== DIM) throw new Error(`collection has dimension ${info.dimension}`);

  const documents = ["alpha", "beta", "gamma"];
  /** @type {Schemas["NewEmbedding"][]} */
  const items = documents.map((doc, i) => ({
    entity_type: "document",
    entity_id: doc,
    vector: float32Base64(vector(i)),
    metadata: { lang: "en", rank: i },
    content: `the ${doc} document`,
  }));
  const stored = ok(
    "store embeddings",
    await api.POST("/v1/collections/{name}/embeddings", {
      params: { path: { name: collection } },
      body: { items, encoding: "float32" },
    }),
  );
  if (stored.ids.length !== documents.length) throw new Error(`stored ${stored.ids.length}`);

  const hits = ok(
    "search",
    await api.POST("/v1/collections/{name}/search", {
      params: { path: { name: collection } },
      body: { vector: vector(1), limit: 10, filter: { lang: "en" } },
    }),
  );
  const best = hits.items[0];
  if (best === undefined || best.entity_id !== "beta") {
    throw new Error(`search put ${best?.entity_id} first, not beta`);
  }

  /** @type {Schemas["Task"]} */
  const task = ok(
    "create task",
    await api.POST("/v1/tasks", {
      body: { type: "summarize", data: { document: best.entity_id }, priority: 5 },
    }),
  );
  const claimed = ok(
    "claim",
    await api.POST("/v1/tasks/claim", {
      body: { agent_id: agent.id, types: ["summarize"], n: 1, wait: 2, lease_seconds: 30 },
    }),
  );
  const mine = claimed.items[0];
  if (mine === undefined || mine.id !== task.id || !mine.lease_token) {
    throw new Error(`claimed ${JSON.stringify(claimed.items)}, not task ${task.id}`);
  }
  const lease = ok(
    "heartbeat",
    await api.POST("/v1/tasks/{task_id}/heartbeat", {
      params: { path: { task_id: mine.id } },
      body: { lease_token: mine.lease_token, lease_seconds: 60 },
    }),
  );
  const done = ok(
    "complete",
    await api.POST("/v1/tasks/{task_id}/complete", {
      params: { path: { task_id: mine.id } },
      body: { lease_token: mine.lease_token, result: { summary: `${best.content}, summarized` } },
    }),
  );
  if (done.status !== "completed") throw new Error(`task is ${done.status} after complete`);

  // A resend (the platform's retry after a lost answer) is answered with the same completion.
  const resent = ok(
    "complete again",
    await api.POST("/v1/tasks/{task_id}/complete", {
      params: { path: { task_id: mine.id } },
      body: { lease_token: mine.lease_token, result: { summary: "a different result" } },
    }),
  );
  if (JSON.stringify(resent.result) !== JSON.stringify(done.result)) {
    throw new Error(`a resent completion changed the result to ${JSON.stringify(resent.result)}`);
  }
  // A token that never held the lease is refused with a problem, and changes nothing.
  const stranger = await api.POST("/v1/tasks/{task_id}/fail", {
    params: { path: { task_id: mine.id } },
    body: { lease_token: randomUUID(), error: "not mine to fail" },
  });
  if (stranger.data !== undefined) throw new Error("a stranger's token failed the task");

  process.stdout.write(
    `${JSON.stringify({
      agent_id: agent.id,
      collection,
      embedding_ids: stored.ids,
      best: best.entity_id,
      task_id: done.id,
      lease_expires_at: lease.lease_expires_at,
      refused_status: stranger.response.status,
      refused_code: stranger.error?.code,
    })}\n`,
  );
}

main().catch((error) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
