// The dashboard's page: one self-contained HTML document.
#ifndef GRADACC_WORKER_DASHBOARD_PAGE_H_
#define GRADACC_WORKER_DASHBOARD_PAGE_H_

namespace gradacc {

inline constexpr char kDashboardPage[] = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gradacc dashboard</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px;display:flex;gap:24px;align-items:baseline}
header h1{font-size:18px;margin:0} header .meta{opacity:.8;font-size:14px}
main{display:grid;grid-template-columns:1fr 1fr;gap:16px;padding:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
section h2{font-size:14px;margin:0 0 8px;text-transform:uppercase;letter-spacing:.04em;color:#5a6170}
.wide{grid-column:1 / span 2}
.bar{background:#e3e6ec;border-radius:4px;height:18px;overflow:hidden;position:relative}
.bar>div{background:#3b7ddd;height:100%}
.bar>span{position:absolute;left:8px;top:0;font-size:12px;line-height:18px}
table{border-collapse:collapse;width:100%;font-size:13px} th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eceef2}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.state-lost{color:#c0392b;font-weight:600} .state-left{color:#7f8c8d} .state-pushed{color:#1e8449} .state-computing{color:#2c3e50}
.kv{display:grid;grid-template-columns:auto 1fr;gap:2px 12px;font-size:14px}
svg{width:100%;height:220px;background:#fbfbfd;border:1px solid #eceef2;border-radius:4px}
.missing{color:#c0392b} #conn.down{color:#f5b041}
</style></head><body>
<header><h1>gradacc</h1><span class="meta" id="job">connecting…</span><span class="meta" id="conn"></span></header>
<main>
<section class="wide"><h2>Window</h2>
 <div class="bar"><div id="progress" style="width:0%"></div><span id="progress-text"></span></div>
 <p id="window" style="margin:8px 0 0;font-size:14px"></p></section>
<section><h2>Loss</h2><svg id="loss-chart" viewBox="0 0 600 220" preserveAspectRatio="none"></svg>
 <p style="font-size:13px;margin:6px 0 0">last loss <b id="last-loss">–</b></p></section>
<section><h2>Test accuracy</h2><svg id="acc-chart" viewBox="0 0 600 220" preserveAspectRatio="none"></svg>
 <p style="font-size:13px;margin:6px 0 0">last accuracy <b id="last-acc">–</b></p></section>
<section><h2>Workers</h2><table><thead><tr><th>worker</th><th>state</th><th>host</th><th>last seen</th>
 <th class="num">contributions</th><th class="num">lag</th><th class="num">dups</th></tr></thead><tbody id="workers"></tbody></table></section>
<section><h2>Last step</h2><div class="kv" id="timing"></div><h2 style="margin-top:12px">Throughput</h2><div class="kv" id="rate"></div></section>
</main>
<script>
const fmt=(v,d=4)=>v===undefined||v===null?'–':Number(v).toFixed(d);
const ms=s=>s===undefined?'–':(s<1e-3?(s*1e6).toFixed(0)+' µs':s<1?(s*1e3).toFixed(1)+' ms':s.toFixed(2)+' s');
const states={WORKER_STATE_NEVER_JOINED:'never joined',WORKER_STATE_JOINED:'computing',WORKER_STATE_PUSHED:'pushed',WORKER_STATE_LEFT:'left',WORKER_STATE_LOST:'lost'};
function curve(svg,points,id,color){
  svg.innerHTML='';
  if(points.length===0)return;
  const xs=points.map(p=>p[0]),ys=points.map(p=>p[1]);
  const x0=Math.min(...xs),x1=Math.max(...xs),y0=Math.min(...ys),y1=Math.max(...ys);
  const X=x=>10+580*(x1===x0?0.5:(x-x0)/(x1-x0)),Y=y=>210-190*(y1===y0?0.5:(y-y0)/(y1-y0));
  const d=points.map((p,i)=>(i?'L':'M')+X(p[0]).toFixed(1)+' '+Y(p[1]).toFixed(1)).join(' ');
  svg.innerHTML=`<path id="${id}" data-points="${points.length}" data-first="${ys[0]}" data-last="${ys[ys.length-1]}" d="${d}" fill="none" stroke="${color}" stroke-width="2" vector-effect="non-scaling-stroke"/>`+
    `<text x="12" y="16" font-size="12" fill="#5a6170">${fmt(y1)}</text><text x="12" y="214" font-size="12" fill="#5a6170">${fmt(y0)}</text>`+
    `<text x="560" y="214" font-size="12" fill="#5a6170" text-anchor="end">step ${x1}</text>`;
}
async function tick(){
  let st,steps;
  try{st=await (await fetch('/api/status')).json();steps=await (await fetch('/api/steps')).json();}catch(e){return;}
  const c=document.getElementById('conn');c.textContent=st.connected?'live':'server not reachable: showing the last known state';c.className=st.connected?'':'down';
  const records=(steps.steps||[]);
  curve(document.getElementById('loss-chart'),records.map(r=>[Number(r.step),Number(r.loss||0)]),'loss-curve','#3b7ddd');
  if(records.length)document.getElementById('last-loss').textContent=fmt(records[records.length-1].loss);
  const s=st.status;if(!s)return;
  document.getElementById('job').textContent=`job ${s.jobId} · ${String(s.state||'').replace('JOB_STATE_','').toLowerCase()} · step ${s.step||0} / ${s.totalSteps||0}`;
  const acc=(s.accuracyHistory||[]).map(p=>[Number(p.step),Number(p.testAccuracy||0)]);
  curve(document.getElementById('acc-chart'),acc,'accuracy-curve','#1e8449');
  if(acc.length)document.getElementById('last-acc').textContent=(100*acc[acc.length-1][1]).toFixed(2)+'%';
  const w=s.window||{},got=w.contributionsReceived||0,exp=w.contributionsExpected||0;
  const pct=s.totalSteps?100*Number(s.step||0)/Number(s.totalSteps):0;
  document.getElementById('progress').style.width=pct.toFixed(1)+'%';
  document.getElementById('progress-text').textContent=`step ${s.step||0} of ${s.totalSteps||0} (${pct.toFixed(1)}%)`;
  const missing=(w.missingWorkers||[]);
  document.getElementById('window').innerHTML=`window ${w.window||0}: ${got}/${exp} contributions, ${w.samplesReceived||0} samples`+
    (missing.length&&s.state!=='JOB_STATE_DONE'?` · <span class="missing" id="missing">waiting for worker ${missing.join(', ')}</span>`:'');
  const now=Number(s.serverTimeUnixMicros||0);
  document.getElementById('workers').innerHTML=(s.workers||[]).map(x=>{
    const seen=Number(x.lastSeenUnixMicros||0),label=states[x.state]||x.state;
    const lag=Math.max(0,Number(s.step||0)-Number(x.lastWindow||0)-1);
    return `<tr data-worker="${x.worker||0}"><td>${x.worker||0}</td><td class="state-${label.replace(' ','-')}">${label}</td><td>${x.hostname||'–'}</td>`+
      `<td>${seen?((now-seen)/1e6).toFixed(1)+' s ago':'–'}</td><td class="num contributions">${x.contributions||0}</td><td class="num">${lag}</td><td class="num">${x.duplicates||0}</td></tr>`;}).join('');
  const t=s.lastStep||{};
  document.getElementById('timing').innerHTML=`<span>wait</span><b>${ms(t.waitSeconds||0)}</b><span>reduce</span><b>${ms(t.reduceSeconds||0)}</b>`+
    `<span>apply</span><b>${ms(t.applySeconds||0)}</b><span>broadcast</span><b>${ms(t.broadcastSeconds||0)}</b>`;
  document.getElementById('rate').innerHTML=`<span>samples/s</span><b>${fmt(s.samplesPerSecond||0,1)}</b><span>steps/s</span><b>${fmt(s.stepsPerSecond||0,2)}</b>`+
    `<span>learning rate</span><b>${Number(s.learningRate||0).toPrecision(4)}</b><span>pushes</span><b>${s.contributionsAccepted||0} accepted, ${s.contributionsDuplicate||0} duplicate, ${s.contributionsStale||0} stale, ${s.contributionsRejected||0} rejected</b>`;
}
tick();setInterval(tick,500);
</script></body></html>
)html";

}  // namespace gradacc

#endif  // GRADACC_WORKER_DASHBOARD_PAGE_H_
