import { createHash } from 'node:crypto';
import { httpCall } from '#common/httpclient.ts';
import type { Agent } from './agent.ts';
import { statusOf } from './api.ts';
import { peerBaseUrl } from './adapters/peer.ts';

/** One role change this agent made, for the status page (newest last, at most `MAX_TRANSITIONS`). */
export interface TransitionEntry {
  at: string;
  node: string;
  from: string;
  to: string;
  reason: string;
  generation: number;
}

export const MAX_TRANSITIONS = 20;

/** This agent's role changes; before its first, the last one hostmeta.json remembers. */
function transitionsOf(agent: Agent): TransitionEntry[] {
  if (agent.transitions.length > 0) return agent.transitions;
  const t = agent.meta?.lastTransition;
  return t ? [{ ...t, node: agent.ctx.self.name, generation: agent.meta.generation }] : [];
}

/**
 * The whole pair as this node sees it, for the status page (`GET /v1/cluster`): its own status,
 * its peer's (asked now with the peer credential), the witness's record, and the role changes
 * this agent saw. A peer or witness that does not answer is reported with why.
 */
export async function clusterView(agent: Agent): Promise<Record<string, unknown>> {
  const { ctx } = agent;
  const timeoutMs = Math.max(1000, 2 * ctx.spec.failover.checkTimeout);
  const peer = httpCall(`${peerBaseUrl(ctx)}/v1/status`, { headers: { authorization: `Bearer ${ctx.secrets.agentToken}` }, timeoutMs, ...(ctx.tls ? { tls: ctx.tls } : {}) })
    .then((r) => (r.status === 200 ? { reachable: true, status: JSON.parse(r.text) as unknown } : { reachable: false, error: `HTTP ${r.status}` }))
    .catch((err: Error) => ({ reachable: false, error: err.message }));
  const w = agent.controller.ports.witness;
  const witness = w
    ? w.call({ op: 'read' }).then(
        (a) => ({ kind: 'lease', reachable: true, holder: a.holder, generation: a.generation, promotable: a.promotable, remainingMs: a.remainingMs }),
        (err: Error) => ({ kind: 'lease', reachable: false, error: err.message }),
      )
    : Promise.resolve({ kind: 'none', reachable: false });
  const [p, wv] = await Promise.all([peer, witness]);
  // The peer's last role change beside ours: the page shows the pair's recent history.
  const transitions = [...transitionsOf(agent)];
  const last = p.reachable ? (p as { status: { lastTransition?: TransitionEntry; generation?: number } }).status.lastTransition : undefined;
  if (last && !transitions.some((t) => t.node === ctx.peer.name && t.at === last.at)) {
    transitions.push({ at: last.at, from: last.from, to: last.to, reason: last.reason, node: ctx.peer.name, generation: (p as { status: { generation?: number } }).status.generation ?? 0 });
    transitions.sort((a, b) => a.at.localeCompare(b.at));
  }
  return { at: new Date().toISOString(), cluster: ctx.spec.name, selfIp: ctx.self.ip, self: statusOf(agent), peer: { name: ctx.peer.name, ip: ctx.peer.ip, ...p }, witness: wv, transitions };
}

/**
 * The status page (`GET /ui`): one HTML document with its style and script inline, no external
 * asset. It reads `/v1/cluster` every 2 s with the credentials the browser already sent for the
 * page. Values go in with textContent only, never as HTML.
 */
export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>geminik8s</title>
<style>
  :root { color-scheme: light; font-family: system-ui, sans-serif; background: #f4f5f7; color: #1d2330; }
  body { margin: 1.5rem; }
  header { display: flex; align-items: baseline; gap: 1rem; }
  h1 { font-size: 1.3rem; margin: 0; }
  #health { font-weight: 600; padding: .15rem .6rem; border-radius: .8rem; background: #ccc; }
  #health.healthy { background: #c8f0d2; } #health.degraded { background: #ffe7a8; } #health.down { background: #ffc4c4; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(20rem, 1fr)); gap: 1rem; margin: 1rem 0; }
  section { background: #fff; border-radius: .5rem; padding: .8rem 1rem; box-shadow: 0 1px 2px #0002; }
  h2 { font-size: 1.05rem; margin: 0 0 .5rem; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem .8rem; margin: 0; }
  dt { color: #5a6372; } dd { margin: 0; font-variant-numeric: tabular-nums; }
  .role-leader { color: #0b6b2b; } .role-follower { color: #1f4fa3; } .role-fenced, .unreachable { color: #a31f1f; }
  table { border-collapse: collapse; width: 100%; font-size: .9rem; }
  td, th { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #e4e6ea; }
  #updated { color: #5a6372; font-size: .85rem; }
</style>
</head>
<body>
<header><h1>geminik8s <span id="cluster"></span></h1><span id="health">loading</span><span id="updated"></span></header>
<div class="grid" id="nodes"></div>
<div class="grid"><section id="witness"><h2>Witness</h2><dl></dl></section></div>
<section><h2>Recent transitions</h2><table><thead><tr><th>time</th><th>node</th><th>from</th><th>to</th><th>generation</th><th>reason</th></tr></thead><tbody id="transitions"></tbody></table></section>
<script>
"use strict";
const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = String(text); if (cls) e.className = cls; return e; };
const fmt = (v) => (v === null || v === undefined || v === "" ? "-" : String(v));
function pairs(dl, rows) { dl.replaceChildren(); for (const [k, v, cls] of rows) { dl.append(el("dt", k)); dl.append(el("dd", fmt(v), cls)); } }
function nodeCard(name, ip, s, error) {
  const sec = el("section"); sec.dataset.node = name;
  const h = el("h2", name + " (" + ip + ")"); sec.append(h);
  const dl = el("dl"); sec.append(dl);
  if (!s) { pairs(dl, [["state", "unreachable: " + (error || "no answer"), "unreachable"]]); return sec; }
  const pg = s.postgres || {};
  const boot = s.boot || {};
  const slots = boot.slots ? "A " + fmt(boot.slots.A) + ", B " + fmt(boot.slots.B) : "-";
  const t = s.lastTransition;
  pairs(dl, [
    ["role", s.role, "role-" + s.role], ["generation", s.generation],
    ["PostgreSQL", pg.role + (pg.readOnly === true ? ", read-only" : pg.role === "primary" ? ", read-write" : "")],
    ["timeline / LSN", fmt(pg.timeline) + " / " + fmt(pg.lsn)],
    ["replication", pg.standby ? pg.standby.state + ", " + pg.standby.syncState + (pg.lagBytes !== null && pg.lagBytes !== undefined ? ", lag " + pg.lagBytes + " B" : "") : (pg.receiverStreaming ? "streaming from the peer" : "-")],
    ["VIP", s.vip && s.vip.heldHere ? "held here (" + s.vip.address + ")" : "not here"],
    ["slots", slots + (boot.booted ? "; booted " + boot.booted : "") + (boot.state ? " (" + boot.state + ")" : "")],
    ["version", s.version],
    ["last transition", t ? t.from + " → " + t.to + ": " + t.reason : "-"],
  ]);
  return sec;
}
function health(self, peer) {
  const nodes = [self, peer].filter(Boolean);
  const writers = nodes.filter((n) => n.role === "leader" && n.postgres && n.postgres.role === "primary" && n.postgres.readOnly === false);
  if (writers.length !== 1) return "down";
  const w = writers[0];
  return nodes.length === 2 && w.postgres.standby && w.postgres.standby.syncState === "sync" ? "healthy" : "degraded";
}
async function refresh() {
  try {
    // From the origin: a page opened with credentials in its address cannot fetch a URL relative to itself.
    const r = await fetch(location.origin + "/v1/cluster", { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const c = await r.json();
    document.getElementById("cluster").textContent = c.cluster;
    const peer = c.peer.reachable ? c.peer.status : undefined;
    const h = health(c.self, peer);
    const hb = document.getElementById("health"); hb.textContent = h.toUpperCase(); hb.className = h;
    const cards = [nodeCard(c.self.node, c.selfIp, c.self), nodeCard(c.peer.name, c.peer.ip, peer, c.peer.error)];
    cards.sort((a, b) => a.dataset.node.localeCompare(b.dataset.node));
    document.getElementById("nodes").replaceChildren(...cards);
    const w = c.witness;
    pairs(document.querySelector("#witness dl"), w.kind === "none" ? [["witness", "none: failover is manual"]] : w.reachable
      ? [["lease holder", w.holder], ["generation", w.generation], ["promotable", w.promotable === null ? "nobody" : w.promotable], ["lease left", Math.round(w.remainingMs / 100) / 10 + " s"]]
      : [["witness", "unreachable: " + w.error, "unreachable"]]);
    const rows = c.transitions.slice().reverse().map((t) => { const tr = el("tr"); for (const v of [t.at, t.node, t.from, t.to, t.generation, t.reason]) tr.append(el("td", v)); return tr; });
    document.getElementById("transitions").replaceChildren(...rows);
    document.getElementById("updated").textContent = "updated " + new Date(c.at).toLocaleTimeString();
  } catch (e) {
    const hb = document.getElementById("health"); hb.textContent = "NO ANSWER"; hb.className = "down";
    document.getElementById("updated").textContent = String(e.message || e);
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
`;

/** The page's Content-Security-Policy: nothing from elsewhere; only its own inline script (by hash) and style. */
export function statusPageCsp(): string {
  const script = /<script>([\s\S]*?)<\/script>/.exec(STATUS_PAGE_HTML)![1]!;
  const hash = createHash('sha256').update(script).digest('base64');
  return `default-src 'none'; script-src 'sha256-${hash}'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`;
}
