// Dr.Tech web UI. Plain JavaScript, no dependencies, no CDN. Talks to the JSON API with the
// session cookie; the X-Requested-With header is the gateway's CSRF guard for cookie requests.
"use strict";

const EXAM_NAMES = {
  chest_xray: "Chest X-ray",
  skin_lesion: "Skin lesion",
  bone_xray: "Bone X-ray",
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `Request failed (${status})`);
    this.status = status;
    this.errors = (body && body.errors) || {};
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ "X-Requested-With": "fetch", Accept: "application/json" }, options.headers || {});
  let body = options.body;
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method: options.method || "GET", headers, body, credentials: "same-origin" });
  if (response.status === 204) return null;
  let payload = null;
  try {
    payload = await response.json();
  } catch (_) {
    payload = null;
  }
  if (!response.ok) throw new ApiError(response.status, payload);
  return payload;
}

function $(selector, root = document) {
  return root.querySelector(selector);
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(message, kind = "error") {
  const box = $("#form-status");
  if (!box) return;
  box.textContent = message || "";
  box.dataset.kind = kind;
}

function clearFieldErrors(form) {
  form.querySelectorAll(".field-error").forEach((p) => (p.textContent = ""));
  form.querySelectorAll("[aria-invalid]").forEach((input) => input.removeAttribute("aria-invalid"));
}

// Show the server's per-field messages next to their fields; focus the first bad field.
function showFieldErrors(form, errors) {
  let first = null;
  for (const [field, message] of Object.entries(errors)) {
    const slot = form.querySelector(`#${CSS.escape(field)}-error`);
    const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (slot) slot.textContent = message;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first = first || input;
    }
  }
  if (first) first.focus();
}

// Plain-words names of every class, by exam type, from the public model cards (fetched once).
let labelNamesPromise = null;
function labelNames() {
  labelNamesPromise = labelNamesPromise || api("/api/v1/models")
    .then((cards) => Object.fromEntries(cards.map((card) =>
      [card.exam_type, Object.fromEntries((card.labels || []).map((l) => [l.code, l.display_name]))])))
    .catch(() => ({}));
  return labelNamesPromise;
}

// Flatten a card's metrics ({"test": {"auc": 0.91}} -> [["test auc", 0.91]]), numbers and text only.
function flatMetrics(metrics, prefix = "", depth = 0) {
  const rows = [];
  for (const [key, value] of Object.entries(metrics || {})) {
    const name = prefix ? `${prefix} ${key}` : key;
    if (value !== null && typeof value === "object" && !Array.isArray(value) && depth < 2) {
      rows.push(...flatMetrics(value, name, depth + 1));
    } else if (typeof value === "number" || typeof value === "string") {
      rows.push([name, value]);
    }
  }
  return rows;
}

function percent(value) {
  return `${(value * 100).toFixed(1)}%`;
}

function formatDate(iso) {
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

// ---- log out -------------------------------------------------------------------------------
function initLogout() {
  const button = $("#logout-button");
  if (!button) return;
  button.addEventListener("click", async () => {
    try {
      await api("/api/v1/auth/logout", { method: "POST" });
    } finally {
      window.location.assign("/");
    }
  });
}

// ---- sign up / log in ----------------------------------------------------------------------
function formValues(form) {
  const values = {};
  for (const [key, value] of new FormData(form).entries()) values[key] = typeof value === "string" ? value : "";
  return values;
}

function initSignup() {
  const form = $("#signup-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    setStatus("");
    const values = formValues(form);
    try {
      await api("/api/v1/auth/signup", { method: "POST", body: values });
      await api("/api/v1/auth/login", { method: "POST", body: { email: values.email, password: values.password } });
      window.location.assign("/app");
    } catch (error) {
      setStatus(error.status === 422 ? "Please correct the fields marked below." : error.message);
      showFieldErrors(form, error.errors || {});
    }
  });
}

function initLogin() {
  const form = $("#login-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    setStatus("");
    const values = formValues(form);
    try {
      await api("/api/v1/auth/login", { method: "POST", body: { email: values.email, password: values.password } });
      window.location.assign(form.dataset.next || "/app");
    } catch (error) {
      setStatus(error.message);
      showFieldErrors(form, error.errors || {});
    }
  });
}

// ---- one result ----------------------------------------------------------------------------
function findingText(d) {
  if (d.status !== "completed") return "No result: the model could not answer.";
  let text = `Finding: ${d.label_display} (${percent(d.confidence)} probability).`;
  if (d.extra && d.extra.kl_grade !== undefined) text += ` Kellgren–Lawrence grade ${d.extra.kl_grade} of 4.`;
  return text;
}

async function renderResult(d) {
  const section = $("#result");
  section.hidden = false;
  $("#result-finding").textContent = findingText(d);
  const detail = $("#result-detail");
  detail.hidden = !d.detail;
  detail.textContent = d.detail || "";
  if (d.status === "failed") {
    const retry = el("button", { type: "button", className: "button secondary", text: "Try again" });
    retry.addEventListener("click", async () => {
      retry.disabled = true;
      try {
        await renderResult(await api(`/api/v1/diagnoses/${d.id}/retry`, { method: "POST" }));
      } catch (error) {
        detail.textContent = error.message;
        retry.disabled = false;
      }
    });
    detail.append(" ", retry);
  }

  const bars = $("#result-bars");
  bars.replaceChildren();
  const entries = Object.entries(d.probabilities || {}).sort((a, b) => b[1] - a[1]);
  const names = (await labelNames())[d.exam_type] || {};
  for (const [code, p] of entries) {
    const fill = el("span", { className: "bar-fill" + (code === d.label ? " top" : "") });
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`; // CSSOM: allowed by the CSP
    const name = code === d.label && d.label_display ? d.label_display : names[code] || code;
    bars.append(
      el("li", { className: "bar" },
        el("span", { className: "bar-label", text: `${name} (${code})` }),
        el("span", { className: "bar-track", role: "img", "aria-label": `${name}: ${percent(p)}` }, fill),
        el("span", { className: "bar-value", text: percent(p) })),
    );
  }
  $("#result-exam").textContent = EXAM_NAMES[d.exam_type] || d.exam_type;
  $("#result-model").textContent = d.model && d.model.name ? `${d.model.name} ${d.model.version || ""}` : "—";
  $("#result-when").textContent = formatDate(d.created_at);

  const image = $("#result-image");
  image.src = d.image_url;
  const heatmap = $("#result-heatmap");
  const toggleWrap = $("#heatmap-toggle-wrap");
  const toggle = $("#heatmap-toggle");
  if (d.heatmap_url) {
    heatmap.src = d.heatmap_url;
    toggleWrap.hidden = false;
    toggle.checked = true;
    heatmap.hidden = false;
    toggle.onchange = () => (heatmap.hidden = !toggle.checked);
  } else {
    toggleWrap.hidden = true;
    heatmap.hidden = true;
  }
}

function initDiagnose() {
  const form = $("#diagnose-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const file = $("#file").files[0];
    if (!file) {
      showFieldErrors(form, { file: "Choose an image file." });
      return;
    }
    const data = new FormData();
    data.append("file", file);
    data.append("exam_type", form.querySelector('input[name="exam_type"]:checked').value);
    const explain = $("#explain").checked;
    const button = $("#diagnose-button");
    button.disabled = true;
    setStatus("Analysing the image…", "info");
    try {
      const diagnosis = await api(`/api/v1/diagnoses?explain=${explain}`, { method: "POST", body: data });
      setStatus(diagnosis.status === "completed" ? "Done." : "The model could not answer.", "info");
      await renderResult(diagnosis);
      $("#result").scrollIntoView({ behavior: "smooth" });
      $("#result-finding").focus();
    } catch (error) {
      if (error.status === 401) window.location.assign("/login?next=/app");
      setStatus(error.message);
      showFieldErrors(form, error.errors || {});
    } finally {
      button.disabled = false;
    }
  });
}

async function initResultPage() {
  const section = $("#result");
  if (!section || !section.dataset.diagnosisId) return;
  try {
    await renderResult(await api(`/api/v1/diagnoses/${encodeURIComponent(section.dataset.diagnosisId)}`));
  } catch (error) {
    setStatus(error.message);
  }
}

// ---- history -------------------------------------------------------------------------------
function initHistory() {
  const list = $("#history-list");
  if (!list) return;
  const pageSize = 12;
  let offset = 0;
  const filter = $("#filter-exam");

  async function load() {
    const params = new URLSearchParams({ limit: pageSize, offset });
    if (filter.value) params.set("exam_type", filter.value);
    try {
      const page = await api(`/api/v1/diagnoses?${params}`);
      list.replaceChildren(...page.items.map(historyItem));
      $("#history-empty").hidden = page.total !== 0;
      $("#prev-page").disabled = offset === 0;
      $("#next-page").disabled = offset + pageSize >= page.total;
      $("#page-info").textContent = page.total
        ? `${offset + 1}–${Math.min(offset + pageSize, page.total)} of ${page.total}` : "";
    } catch (error) {
      setStatus(error.message);
    }
  }

  function historyItem(d) {
    const summary = d.status === "completed" ? `${d.label_display} · ${percent(d.confidence)}` : "Failed — open to retry";
    const remove = el("button", { type: "button", className: "button danger", text: "Delete",
      "aria-label": `Delete the ${EXAM_NAMES[d.exam_type] || d.exam_type} result from ${formatDate(d.created_at)}` });
    remove.addEventListener("click", async () => {
      if (!window.confirm("Delete this result and its image? This cannot be undone.")) return;
      try {
        await api(`/api/v1/diagnoses/${d.id}`, { method: "DELETE" });
        setStatus("Deleted.", "info");
        await load();
      } catch (error) {
        setStatus(error.message);
      }
    });
    return el("li", { className: "history-item" },
      el("img", { src: d.image_url, alt: "", loading: "lazy", width: "96", height: "96", className: "thumb" }),
      el("div", { className: "history-text" },
        el("a", { href: `/results/${d.id}`, text: `${EXAM_NAMES[d.exam_type] || d.exam_type}: ${summary}` }),
        el("span", { className: "hint", text: `${formatDate(d.created_at)} · ${d.model.name || ""} ${d.model.version || ""}` })),
      remove);
  }

  filter.addEventListener("change", () => { offset = 0; load(); });
  $("#prev-page").addEventListener("click", () => { offset = Math.max(0, offset - pageSize); load(); });
  $("#next-page").addEventListener("click", () => { offset += pageSize; load(); });
  load();
}

// ---- model cards ---------------------------------------------------------------------------
function initModels() {
  const box = $("#model-cards");
  if (!box) return;
  api("/api/v1/models").then((cards) => {
    box.replaceChildren(...cards.map((card) => {
      const metrics = el("dl", { className: "facts" });
      for (const [name, value] of flatMetrics(card.metrics)) {
        const shown = typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : String(value);
        metrics.append(el("dt", { text: name }), el("dd", { text: shown }));
      }
      const limitations = el("ul", {}, ...(card.limitations || []).map((text) => el("li", { text })));
      return el("article", { className: "card" },
        el("h2", { text: `${EXAM_NAMES[card.exam_type] || card.exam_type} — ${card.name} ${card.version}` }),
        el("p", { text: card.intended_use || "" }),
        el("p", { text: "Labels: " + (card.labels || []).map((l) => `${l.display_name} (${l.code})`).join(", ") }),
        el("h3", { text: "Held-out metrics" }), metrics,
        el("h3", { text: "Limitations" }), limitations);
    }));
  }).catch((error) => setStatus(error.message));
}

document.addEventListener("DOMContentLoaded", () => {
  initLogout();
  initSignup();
  initLogin();
  initDiagnose();
  initResultPage();
  initHistory();
  initModels();
});
