// The operations dashboard: polls /internal/dashboard.json every 5 s and fills the page.
// Plain DOM, no framework, no inline code (the Content-Security-Policy allows none). Every value
// from the server goes in as text (textContent, attributes), never as HTML.
"use strict";

(function () {
  const POLL_MS = 5000;  // one document costs Redis about 30 commands (README, Dashboard)
  const SVG = "http://www.w3.org/2000/svg";
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const byId = (id) => document.getElementById(id);
  let timer = null;

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attributes, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    for (const child of children) node.append(child);
    return node;
  }

  function setText(id, text) {
    byId(id).textContent = text;
  }

  // -- formats ----------------------------------------------------------------------------

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
  }

  function duration(seconds) {
    const s = Math.abs(seconds);
    if (s < 1) return s.toFixed(2) + " s";
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return Math.round(s / 86400) + " d";
  }

  // A moment relative to the document's own time (the server's clock, not this browser's).
  function relative(iso, now) {
    if (!iso) return "–";
    const seconds = (Date.parse(iso) - now) / 1000;
    return seconds >= 0 ? "in " + duration(seconds) : duration(seconds) + " ago";
  }

  // A readiness detail as words: "latency_ms", 1.5 -> "latency 1.5 ms".
  function detail(key, value) {
    const unit = key.match(/_(ms|s)$/);
    const name = (unit ? key.slice(0, -unit[0].length) : key).replace(/_/g, " ");
    const shown = Array.isArray(value) ? value.join(", ") : typeof value === "number" ? Number(value.toFixed(2)) : value;
    return `${name} ${shown}${unit ? " " + unit[1] : ""}`;
  }

  function clock(iso) {
    return iso ? iso.slice(11, 19) + " UTC" : "–";
  }

  function count(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
  }

  // -- building blocks --------------------------------------------------------------------

  // A table row whose cells carry their column's name, so that a narrow screen can show them stacked.
  function row(tbody, cells) {
    const headings = tbody.closest("table").querySelectorAll("thead th");
    const tr = el("tr");
    cells.forEach((content, index) => {
      const label = headings[index] ? headings[index].textContent : "";
      tr.append(el("td", { "data-label": label }, content));
    });
    return tr;
  }

  function fill(tbody, rows, emptyText) {
    const columns = tbody.closest("table").querySelectorAll("thead th").length;
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "empty" }, emptyText))]));
  }

  function button(label, action, url, confirmText) {
    return el("button", { type: "button", "data-action": action, "data-url": url, "data-confirm": confirmText || null }, label);
  }

  // Stacked bars, one a minute, oldest on the left: series is [[name, values], ...] bottom first.
  function barChart(container, series, firstMinuteAt) {
    const minutes = series[0][1].length;
    const totals = Array.from({ length: minutes }, (_, i) => series.reduce((sum, [, values]) => sum + values[i], 0));
    const peak = Math.max(1, ...totals);
    const width = 600;
    const height = 100;
    const step = width / minutes;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
    chart.append(svg("title", {}, `${series.map(([name]) => name).join(", ")} per minute; peak ${peak}`));
    const start = Date.parse(firstMinuteAt);
    for (let i = 0; i < minutes; i += 1) {
      let y = height;
      const at = new Date(start + i * 60000).toISOString().slice(11, 16);
      const parts = [];
      for (const [name, values] of series) {
        if (!values[i]) continue;
        const h = (values[i] / peak) * (height - 4);
        y -= h;
        chart.append(svg("rect", { x: (i * step + 1).toFixed(1), y: y.toFixed(1), width: (step - 2).toFixed(1), height: h.toFixed(1), class: name }));
        parts.push(`${values[i]} ${name}`);
      }
      if (parts.length) {
        chart.append(svg("rect", { x: (i * step).toFixed(1), y: 0, width: step.toFixed(1), height, class: "hover" }, svg("title", {}, `${at} UTC: ${parts.join(", ")}`)));
      }
    }
    chart.append(svg("line", { x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5, class: "axis" }));
    const total = totals.reduce((a, b) => a + b, 0);
    const caption = el("p", { class: "axis" }, el("span", {}, "60 min ago"), el("span", {}, `peak ${count(peak === 1 && total === 0 ? 0 : peak)}/min · ${count(total)} in the hour`), el("span", {}, "now"));
    container.replaceChildren(chart, caption);
  }

  // -- sections ---------------------------------------------------------------------------

  function renderReady(ready) {
    const verdict = byId("verdict");
    if (!ready) {
      verdict.textContent = "readiness unknown";
      verdict.className = "pill warn";
      byId("components").replaceChildren();
      return;
    }
    verdict.textContent = ready.ready ? "ready" : "not ready";
    verdict.className = "pill " + (ready.ready ? "ok" : "fail");
    const items = Object.entries(ready.components).map(([name, passed]) => {
      const details = Object.entries(ready.details[name] || {}).map(([key, value]) => detail(key, value));
      return el("li", { class: passed ? "ok" : "fail" }, el("strong", {}, name), " ", passed ? "passes" : "fails", details.length ? el("span", { class: "quiet" }, " · " + details.join(" · ")) : null);
    });
    byId("components").replaceChildren(...items);
  }

  function renderQueue(queue, throughput) {
    setText("queued", count(queue && queue.queued));
    setText("deferred", count(queue && queue.deferred));
    setText("in-progress", count(queue && queue.in_progress));
    if (!throughput) return;
    const sum = (values) => values.reduce((a, b) => a + b, 0);
    setText("complete-hour", count(sum(throughput.complete)));
    setText("failed-hour", count(sum(throughput.failed)));
    barChart(byId("throughput-chart"), [["complete", throughput.complete], ["failed", throughput.failed], ["retried", throughput.retried]], throughput.first_minute_at);
  }

  function renderWorkers(workers) {
    const tbody = byId("worker-rows");
    if (!workers) return;
    fill(tbody, workers.map((w) => row(tbody, [w.id, w.host, duration(w.beat_age_s) + " ago", count(w.running), count(w.complete), count(w.failed)])), "No live worker.");
  }

  function runBadge(run) {
    const mark = { complete: "✓", failed: "✗", aborted: "⊘", missed: "–" }[run.outcome] || "?";
    const tip = `${run.trigger} run of ${clock(run.slot)}: ${run.outcome} after ${duration(run.duration_s)} on ${run.worker}` + (run.error ? ` (${run.error.type}: ${run.error.message})` : "");
    return el("span", { class: "run " + run.outcome, title: tip }, `${mark} ${clock(run.finished_at).slice(0, 5)} ${duration(run.duration_s)}${run.trigger === "manual" ? " (manual)" : ""}`);
  }

  function renderCron(cron, now) {
    const tbody = byId("cron-rows");
    if (!cron) return;
    const rows = cron.jobs.map((job) => {
      const state = job.running ? "running" : job.paused ? "paused" : job.known ? "scheduled" : "not yet scheduled";
      const base = "/internal/cron/" + encodeURIComponent(job.name);
      const actions = el("span", { class: "actions" }, button("Run now", "run", base + "/run"), job.paused ? button("Resume", "resume", base + "/resume") : button("Pause", "pause", base + "/pause"));
      const runs = el("span", { class: "runs" }, ...job.runs.map(runBadge));
      return row(tbody, [el("strong", {}, job.name), job.schedule, job.paused ? "paused" : relative(job.next_run_at, now), el("span", { class: "state " + state.replace(/ /g, "-") }, state), job.runs.length ? runs : el("span", { class: "quiet" }, "no runs yet"), actions]);
    });
    fill(tbody, rows, cron.enabled ? "No cron job in the schedule." : "Cron is off (ENABLE_CRON=false).");
  }

  function renderFailures(failures, now) {
    const tbody = byId("failure-rows");
    if (!failures) return;
    const rows = failures.map((f) => {
      const base = "/internal/dashboard/failures/" + encodeURIComponent(f.job_id);
      const action = f.will_retry ? button("Abort", "abort", base + "/abort", `Abort job ${f.job_id}? Its next try will not run.`) : button("Retry", "retry", base + "/retry");
      return row(tbody, [el("span", { title: f.job_id }, f.task), f.tenant, el("span", { class: "error", title: f.error.message }, el("strong", {}, f.error.type), ": ", f.error.message), `${f.tries} of ${f.max_tries}${f.will_retry ? ", retrying" : ""}`, relative(f.failed_at, now), action]);
    });
    fill(tbody, rows, "No failed job recently.");
  }

  function shareBar(share) {
    if (share === null || share === undefined) return el("span", { class: "quiet" }, "–");
    const bar = svg("svg", { viewBox: "0 0 100 8", preserveAspectRatio: "none", class: "share", "aria-hidden": "true" }, svg("rect", { x: 0, y: 0, width: 100, height: 8, class: "track" }), svg("rect", { x: 0, y: 0, width: (share * 100).toFixed(1), height: 8, class: share < 0.1 ? "low" : "fill" }));
    return el("span", {}, bar, " ", Math.round(share * 100) + "%");
  }

  function renderLimits(limits, firstMinuteAt) {
    const tbody = byId("tenant-rows");
    if (!limits) return;
    barChart(byId("refused-chart"), [["refused", limits.refused_per_minute]], firstMinuteAt);
    const rows = limits.tenants.map((t) => row(tbody, [t.tenant === "@anonymous" ? el("em", {}, "callers without a key") : t.tenant, shareBar(t.lowest_remaining), count(t.refused)]));
    fill(tbody, rows, limits.enabled ? "No tenant has spent from a bucket in the last two minutes." : "Rate limiting is off (RATE_LIMIT_ENABLED=false).");
  }

  function renderRedis(redis) {
    if (!redis) return;
    const limit = redis.maxmemory_bytes;
    const used = redis.used_memory_bytes;
    setText("memory", limit ? `${bytes(used)} of ${bytes(limit)} (${((used / limit) * 100).toFixed(1)}%)` : `${bytes(used)} (no maxmemory)`);
    setText("policy", redis.eviction_policy || "–");
    setText("clients", count(redis.connected_clients));
    setText("ops", count(redis.ops_per_s));
    const share = limit ? Math.min(used / limit, 1) : 0;
    byId("memory-bar").replaceChildren(svg("svg", { viewBox: "0 0 100 6", preserveAspectRatio: "none", "aria-hidden": "true" }, svg("rect", { x: 0, y: 0, width: 100, height: 6, class: "track" }), svg("rect", { x: 0, y: 0, width: (share * 100).toFixed(1), height: 6, class: share > 0.8 ? "low" : "fill" })));
  }

  function render(doc) {
    const now = Date.parse(doc.generated_at);
    renderReady(doc.ready);
    renderQueue(doc.queue, doc.throughput);
    renderWorkers(doc.workers);
    renderCron(doc.cron, now);
    renderFailures(doc.failures, now);
    renderLimits(doc.limits, doc.throughput ? doc.throughput.first_minute_at : doc.generated_at);
    renderRedis(doc.redis);
    const missing = doc.unavailable.length ? ` · not readable now: ${doc.unavailable.join(", ")}` : "";
    setText("updated", `updated ${clock(doc.generated_at)}${missing}`);
    document.body.dataset.loaded = "true";
  }

  function notice(text, problem) {
    const node = byId("notice");
    node.textContent = text;
    node.className = problem ? "problem" : "done";
    node.hidden = false;
  }

  // -- talking to the service -------------------------------------------------------------

  async function refresh() {
    clearTimeout(timer);
    try {
      const response = await fetch("/internal/dashboard.json", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.assign("/dashboard/login");
        return;
      }
      if (!response.ok) throw new Error(`the service answered ${response.status}`);
      render(await response.json());
    } catch (error) {
      setText("updated", `cannot refresh: ${error.message}`);
    } finally {
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  async function post(url) {
    const response = await fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrfToken } });
    const body = await response.json().catch(() => ({}));
    return { ok: response.ok, body, status: response.status };
  }

  document.addEventListener("click", async (event) => {
    const target = event.target.closest("button[data-action]");
    if (!target) return;
    if (target.dataset.confirm && !window.confirm(target.dataset.confirm)) return;
    target.disabled = true;
    try {
      const { ok, body, status } = await post(target.dataset.url);
      const name = target.textContent.toLowerCase();
      notice(ok ? `${target.textContent}: done${body.job_id ? ` (job ${body.job_id})` : ""}.` : `${name} refused (${status}): ${body.detail || "no reason given"}`, !ok);
    } catch (error) {
      notice(`${target.textContent} failed: ${error.message}`, true);
    } finally {
      target.disabled = false;
      refresh();
    }
  });

  byId("logout").addEventListener("click", async () => {
    await post("/dashboard/logout").catch(() => null);
    window.location.assign("/dashboard/login");
  });

  refresh();
})();
