"""The one page of `medssl serve` (GET /): drop an image, see it, the heat map, the findings and the draft reports.

Self-contained (no script or style from elsewhere: hospital networks are often closed). It holds no data; with
authentication on (__AUTH__ is replaced by true) it asks for the token once, keeps it in sessionStorage and sends
it as a Bearer header with each call. With a PACS (__PACS__ replaced by true) a second way in: a Study Instance UID,
analysed by POST v1/studies/UID/analyze.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medssl: draft report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;font-size:13px;color:#c9cfdb}
main{max-width:1100px;margin:20px auto;padding:0 16px}
#drop{border:2px dashed #8a94a6;border-radius:10px;background:#fff;padding:28px;text-align:center;cursor:pointer}
#drop.over{border-color:#2f6fde;background:#eef4ff}
.banner{background:#fff4d6;border:1px solid #e5c65c;border-radius:8px;padding:10px 14px;margin:16px 0;font-weight:600}
.grid{display:grid;grid-template-columns:280px 280px 1fr;gap:16px;margin-top:16px}
.card{background:#fff;border-radius:10px;padding:14px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card h2{font-size:15px;margin:0 0 8px}.card img{width:256px;height:auto;border-radius:4px;background:#000}
table{border-collapse:collapse;width:100%;font-size:14px}td{padding:3px 6px;border-bottom:1px solid #eee}
.bar{height:8px;background:#2f6fde;border-radius:4px}.draft{white-space:pre-wrap;line-height:1.45}
.muted{color:#6b7384;font-size:13px}.err{color:#b3261e;font-weight:600}
ol{padding-left:18px;margin:4px 0}li{margin:2px 0}
</style></head><body>
<header><h1>medssl: findings and a draft report</h1>
<p>Self-supervised and image-text models on a chest radiograph. Every output is a DRAFT for a radiologist's review,
not a diagnosis.</p></header>
<main>
<div id="drop" tabindex="0"><strong>Drop a chest radiograph here</strong> (DICOM, PNG or JPEG), or click to choose a
file.<input id="file" type="file" accept=".dcm,.dicom,.png,.jpg,.jpeg,application/dicom,image/png,image/jpeg"
hidden></div>
<form id="pacs" hidden style="margin-top:12px" class="card">Or a study of the PACS by its Study Instance UID:
<input id="uid" size="56" placeholder="1.2.840.113619.2.55.3..." pattern="[0-9.]+" required>
<button type="submit">Analyse study</button></form>
<p id="status" class="muted"></p>
<div id="result" hidden>
<div class="banner" id="notice">DRAFT for a radiologist's review, not a diagnosis.</div>
<div class="grid">
<div class="card"><h2>Image</h2><img id="image" alt="the uploaded image"></div>
<div class="card"><h2>Heat map <span id="heatfor" class="muted"></span></h2><img id="heat" alt="Grad-CAM heat map">
<p class="muted">Grad-CAM of the classifier's top finding: where the network looked, not a segmentation.</p></div>
<div class="card"><h2>Findings</h2><table id="findings"></table></div>
</div>
<div class="grid" style="grid-template-columns:1fr 1fr">
<div class="card"><h2>Draft report (generated) <span id="genmethod" class="muted"></span></h2>
<div id="report" class="draft"></div></div>
<div class="card"><h2>Draft report (retrieved) <span class="muted">from training reports</span></h2>
<div id="retrieved" class="draft"></div><p class="muted">Sources:</p><ol id="sources" class="muted"></ol></div>
</div>
<div class="card" style="margin-top:16px"><h2>Most similar cases in the run's index</h2><table id="similar"></table>
</div>
<p class="muted" id="timing"></p>
</div>
</main>
<script>
const AUTH = __AUTH__, PACS = __PACS__;
function token(){
  if(!AUTH) return null;
  let t = sessionStorage.getItem("medssl_token");
  if(!t){ t = window.prompt("API token for this medssl service:") || ""; sessionStorage.setItem("medssl_token", t); }
  return t;
}
function el(tag, text){ const e = document.createElement(tag); if(text !== undefined) e.textContent = text; return e; }
function show(id, text){ document.getElementById(id).textContent = text || "(none)"; }
const drop = document.getElementById("drop"), input = document.getElementById("file");
drop.onclick = () => input.click();
drop.ondragover = e => { e.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = e => { e.preventDefault(); drop.classList.remove("over"); if(e.dataTransfer.files[0]) send(e.dataTransfer.files[0]); };
input.onchange = () => { if(input.files[0]) send(input.files[0]); };
const pacs = document.getElementById("pacs");
pacs.hidden = !PACS;
pacs.onsubmit = e => { e.preventDefault(); call("v1/studies/" + encodeURIComponent(document.getElementById("uid").value.trim()) + "/analyze", null, "Pulling the study from the PACS and analysing..."); };
function send(file){ const form = new FormData(); form.append("file", file, "upload"); call("v1/analyze", form, "Analysing..."); }
async function call(url, form, doing){
  const status = document.getElementById("status");
  status.className = "muted"; status.textContent = doing;
  const headers = {}; const t = token(); if(t) headers["Authorization"] = "Bearer " + t;
  let r;
  try { r = await fetch(url, {method: "POST", body: form, headers}); }
  catch(err){ status.className = "err"; status.textContent = "The service did not answer."; return; }
  const body = await r.json().catch(() => ({}));
  if(!r.ok){
    if(r.status === 401) sessionStorage.removeItem("medssl_token");
    status.className = "err"; status.textContent = "Error " + r.status + ": " + ((body.error||{}).message || "");
    return;
  }
  render(body); status.textContent = "";
}
function render(b){
  document.getElementById("result").hidden = false;
  document.getElementById("notice").textContent = "DRAFT: " + (b.notice || "for a radiologist's review.");
  document.getElementById("image").src = b.image.png;
  const heat = document.getElementById("heat");
  if(b.heatmap){ heat.src = b.heatmap.png; show("heatfor", "(" + b.heatmap.finding + ")"); } else { heat.removeAttribute("src"); show("heatfor", "(no classifier)"); }
  const ft = document.getElementById("findings"); ft.replaceChildren();
  for(const f of (b.findings || [])){
    const tr = el("tr"); tr.appendChild(el("td", f.finding));
    const td = el("td"); const bar = el("div"); bar.className = "bar"; bar.style.width = Math.round(100*f.probability) + "%";
    td.appendChild(bar); td.style.width = "45%"; tr.appendChild(td); tr.appendChild(el("td", f.probability.toFixed(2))); ft.appendChild(tr);
  }
  show("report", b.report && b.report.text); show("genmethod", b.report ? "(" + b.report.method + ")" : "");
  show("retrieved", b.retrieval_report && b.retrieval_report.text);
  const src = document.getElementById("sources"); src.replaceChildren();
  for(const s of ((b.retrieval_report || {}).sources || [])) src.appendChild(el("li", s.sentence + " (" + s.score.toFixed(2) + ")"));
  const sim = document.getElementById("similar"); sim.replaceChildren();
  for(const c of (b.similar_cases || [])){
    const tr = el("tr"); tr.appendChild(el("td", "#" + c.rank)); tr.appendChild(el("td", c.study));
    tr.appendChild(el("td", (c.labels || []).join(", ") || "no finding")); tr.appendChild(el("td", c.score.toFixed(3))); sim.appendChild(tr);
  }
  document.getElementById("timing").textContent = "Request " + b.request_id + ", " + (1000*b.seconds).toFixed(0) + " ms.";
  document.body.dataset.state = "done";
}
</script></body></html>
"""
