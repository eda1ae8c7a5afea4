"""The panel's single page: plain HTML, CSS and JS, no assets from outside (it runs offline)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tinyvla_grpo operator panel</title>
<style>
 body{font-family:system-ui,sans-serif;margin:16px;background:#f4f4f4;color:#222}
 h1{font-size:20px;margin:0 0 8px} .row{display:flex;gap:16px;flex-wrap:wrap}
 .card{background:#fff;border-radius:8px;padding:12px;box-shadow:0 1px 3px #0002}
 #thumb{width:192px;height:192px;image-rendering:pixelated;background:#ddd}
 button.big{font-size:24px;padding:18px 28px;border:0;border-radius:8px;color:#fff;margin:4px}
 #success{background:#2e7d32} #failure{background:#c62828} #discard{background:#616161}
 #ready{background:#1565c0} button:disabled{opacity:.4}
 #msg{min-height:1.4em;font-weight:600} td{padding:2px 8px} .warn{color:#c62828}
 #chart{display:block;width:360px;height:180px;margin:6px 0}
 #intervene{background:#ef6c00;touch-action:none;user-select:none}
 #intervene.held{background:#b71c1c} .operator{color:#ef6c00;font-weight:700}
</style></head><body>
<h1>tinyvla_grpo operator panel</h1>
<p class="warn">This panel is not an emergency stop: keep the hardware e-stop within reach.</p>
<p class="warn" id="guard"></p>
<div class="row">
 <div class="card"><img id="thumb" alt="camera"><div id="where"></div></div>
 <div class="card">
  <div><b>State:</b> <span id="state">-</span> &nbsp; <b>Episode:</b> <span id="episode">-</span>
   &nbsp; <b>Chunks:</b> <span id="chunks">0</span></div>
  <div><b>Adapter:</b> <span id="version">-</span> &nbsp; <b>Marks:</b> <span id="marks">0</span>
   &nbsp; <b>In control:</b> <span id="control">-</span></div>
  <button class="big" id="success" title="S">Success (S)</button>
  <button class="big" id="failure" title="F">Failure (F)</button>
  <button class="big" id="discard" title="D">Discard (D)</button>
  <button class="big" id="ready" title="R">Scene ready (R)</button>
  <button class="big" id="intervene" title="hold Space">Hold to intervene (Space)</button>
  <div id="msg"></div>
  <div><button id="pause">Pause learning</button>
   roll back to version <input id="rbv" type="number" min="0" style="width:5em">
   <button id="rollback">Roll back</button></div>
 </div>
 <div class="card"><div><b>Success rate per adapter version</b></div>
  <div>green: success rate; orange: share of steps the operator corrected</div>
  <svg id="chart" viewBox="0 0 360 180" data-points="0" data-corrected="0"></svg>
  <table id="rates"></table></div>
 <div class="card"><b>Learner</b><table id="learner"></table></div>
</div>
<script>
// The server put this session's CSRF token here; a page of another origin cannot read it.
const H = {"X-CSRF-Token": "@@CSRF@@", "Content-Type": "application/json"};
// ?token= was moved into an HttpOnly cookie by the server: drop it from the address bar.
if (new URLSearchParams(location.search).has("token")) { history.replaceState(null, "", "/"); }
let snap = null, paused = false;
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: H, body: JSON.stringify(body || {})});
  const j = await r.json(); document.getElementById("msg").textContent = j.message || "";
  return j;
}
async function mark(outcome) {
  if (!snap || !snap.episode_id) { return; }
  for (const id of ["success", "failure", "discard"]) {
    document.getElementById(id).disabled = true;
  }
  await post("/api/mark", {outcome: outcome, episode_id: snap.episode_id});
}
document.getElementById("success").onclick = () => mark("success");
document.getElementById("failure").onclick = () => mark("failure");
document.getElementById("discard").onclick = () => mark("discard");
document.getElementById("ready").onclick = () => post("/api/ready");
document.getElementById("pause").onclick = async () => {
  await post("/api/pause", {paused: !paused});
};
document.getElementById("rollback").onclick = () =>
  post("/api/rollback", {version: parseInt(document.getElementById("rbv").value || "0")});
// Hold to intervene: the operator drives the arm (teleop device) while the button or Space is
// held down; letting go, leaving the page or losing focus hands control back to the policy.
let holding = false;
const iv = document.getElementById("intervene");
async function intervene(on) {
  if (on === holding) return;
  holding = on; iv.classList.toggle("held", on);
  const j = await post("/api/intervene", {on: on});
  if (on && !j.accepted) { holding = false; iv.classList.remove("held"); }
}
iv.addEventListener("pointerdown", (e) => { iv.setPointerCapture(e.pointerId); intervene(true); });
for (const ev of ["pointerup", "pointercancel", "lostpointercapture"]) {
  iv.addEventListener(ev, () => intervene(false));
}
window.addEventListener("blur", () => intervene(false));
document.addEventListener("visibilitychange", () => { if (document.hidden) intervene(false); });
document.addEventListener("keyup", (e) => { if (e.code === "Space") intervene(false); });
document.addEventListener("keydown", (e) => {
  if (e.code === "Space") { e.preventDefault(); if (!e.repeat) intervene(true); return; }
  const k = e.key.toLowerCase();
  if (k === "s") mark("success"); else if (k === "f") mark("failure");
  else if (k === "d") mark("discard"); else if (k === "r") post("/api/ready");
});
function chart(rows) {
  const svg = document.getElementById("chart"), W = 360, Hh = 180, P = 24;
  let s = `<line x1="${P}" y1="${Hh-P}" x2="${W-4}" y2="${Hh-P}" stroke="#888"/>`;
  const n = Math.max(rows.length, 2), pts = [], cor = [];
  rows.forEach((r, i) => {
    if (r.corrected_share !== null && r.corrected_share !== undefined) {
      const x = P + i * (W - P - 8) / (n - 1), y = Hh - P - r.corrected_share * (Hh - 2 * P);
      cor.push(`${x},${y}`);
      s += `<rect x="${x-3}" y="${y-3}" width="6" height="6" fill="#ef6c00"><title>v${r.version}` +
           `: ${(r.corrected_share * 100).toFixed(1)}% of steps corrected</title></rect>`;
    }
    const v = r.explore_success === null ? r.eval_success : r.explore_success;
    if (v === null) return;
    const x = P + i * (W - P - 8) / (n - 1), y = Hh - P - v * (Hh - 2 * P);
    pts.push(`${x},${y}`);
    s += `<circle cx="${x}" cy="${y}" r="4" fill="#2e7d32"><title>v${r.version}: ` +
         `${(v * 100).toFixed(0)}%</title></circle>`;
    s += `<text x="${x-8}" y="${Hh-6}" font-size="10">v${r.version}</text>`;
  });
  if (pts.length > 1) s += `<polyline points="${pts.join(" ")}" fill="none" stroke="#2e7d32"/>`;
  if (cor.length > 1) s += `<polyline points="${cor.join(" ")}" fill="none" stroke="#ef6c00"/>`;
  svg.innerHTML = s; svg.dataset.points = String(pts.length);
  svg.dataset.corrected = String(cor.length);
}
async function refresh() {
  try {
    const r = await fetch("/api/state"); snap = await r.json();
  } catch (e) { document.getElementById("msg").textContent = "no connection"; return; }
  paused = snap.paused;
  const running = snap.state === "RUNNING";
  document.getElementById("pause").textContent = paused ? "Resume learning" : "Pause learning";
  document.getElementById("state").textContent = snap.state;
  document.getElementById("episode").textContent = snap.episode_id || "-";
  document.getElementById("chunks").textContent = snap.chunks;
  document.getElementById("version").textContent = snap.adapter + " v" + snap.version;
  document.getElementById("marks").textContent = snap.marks_accepted;
  const ctl = document.getElementById("control");
  ctl.textContent = snap.control; ctl.className = snap.control === "operator" ? "operator" : "";
  iv.disabled = !running && !holding;
  document.getElementById("where").textContent =
    `${snap.task} | group ${snap.group_id || "-"} (${snap.group_index}/${snap.group_size})`;
  for (const id of ["success", "failure", "discard"]) {
    const b = document.getElementById(id);
    b.disabled = !running || snap.episode_marked || snap.chunks === 0;
  }
  document.getElementById("ready").disabled = !snap.waiting_for_operator_reset;
  const fmt = (x) => x === null ? "-" : (x * 100).toFixed(0) + "%";
  document.getElementById("rates").innerHTML =
    "<tr><td>version</td><td>explore</td><td>eval</td><td>corrected</td></tr>" +
    snap.versions.map(v =>
    `<tr><td>v${v.version}</td><td>${fmt(v.explore_success)} (${v.explore_episodes})</td>` +
    `<td>${fmt(v.eval_success)} (${v.eval_episodes})</td>` +
    `<td>${v.corrected_share == null ? "-" : (v.corrected_share * 100).toFixed(1) + "%"}</td>` +
    `</tr>`).join("");
  chart(snap.versions);
  const rb = (snap.guard || []).filter(e => e.rollback_to !== null).pop();
  document.getElementById("guard").textContent = rb ?
    `Regression guard rolled back v${rb.version} to v${rb.rollback_to}: ${rb.reason}` : "";
  document.getElementById("learner").innerHTML = Object.entries(snap.learner).map(
    ([k, v]) => `<tr><td>${k}</td><td>${typeof v === "number" ? v.toFixed(4) : v}</td></tr>`
  ).join("");
  document.getElementById("thumb").src = "/api/thumbnail.jpg?t=" + Date.now();
}
setInterval(refresh, 500); refresh();
</script></body></html>
"""
