// Dr.Tech web UI. Plain JavaScript, no dependencies, no CDN. Talks to the JSON API with the
// session cookie; the X-Requested-With header is the gateway's CSRF guard for cookie requests.
"use strict";

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `Request failed (${status})`);
    this.status = status;
    this.errors = (body && body.errors) || {};
  }
}

// On a page for signed-in users, a 401 means the session has ended (expired, or logged out in
// another tab): go to the log-in page, which comes back here. Elsewhere (log in, sign up) a 401 is
// the answer itself ("wrong email or password") and is shown.
function sessionEnded(status, path = "", body = null) {
  // A log-in's or sign-up's 401 is its answer ("wrong email or password"), even from a visitor
  // who is still signed in and opened the log-in page; so is a password change's 401 that names the
  // current password (the session itself is fine).
  const answersItself = path === "/api/v1/auth/login" || path.startsWith("/api/v1/auth/signup") ||
    (path === "/api/v1/auth/password" && Boolean(body && body.errors && body.errors.current_password));
  if (status !== 401 || document.body.dataset.signedIn !== "true" || answersItself) return false;
  window.location.assign(`/login?next=${encodeURIComponent(window.location.pathname)}`);
  return true;
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
  if (!response.ok) {
    sessionEnded(response.status, path, payload);
    throw new ApiError(response.status, payload);
  }
  return payload;
}

// Runs `work` with `button` disabled, so a second click cannot send the request twice.
async function whileDisabled(button, work) {
  if (button) button.disabled = true;
  try {
    return await work();
  } finally {
    if (button) button.disabled = false;
  }
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
  for (const [field, message] of Object.entries(errors)) {
    const slot = form.querySelector(`#${CSS.escape(field)}-error`);
    const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (slot) slot.textContent = message;
    if (input) input.setAttribute("aria-invalid", "true");
  }
  // The first bad field in page order, not in the order the server listed them.
  const first = [...form.elements].find((input) => input.getAttribute("aria-invalid") === "true");
  if (first) first.focus();
}

// The exam types the model services serve, from their public cards (fetched once): exam type ->
// {name, task, labels: {code: plain-words name}}. The cards are those of the services that answered:
// asked for one that is missing (or after a failure), they are fetched again next time.
let examsPromise = null;
async function exams(examType) {
  examsPromise = examsPromise || api("/api/v1/models").then((cards) => Object.fromEntries(cards.map((card) =>
    [card.exam_type, { name: card.exam_display_name || card.exam_type, task: card.task,
      labels: Object.fromEntries((card.labels || []).map((l) => [l.code, l.display_name])) }])));
  try {
    const all = await examsPromise;
    if (!examType || all[examType]) return all;
  } catch (error) {
    // fall through: exam types and codes are shown as they are this time
  }
  examsPromise = null;
  return {};
}

// An exam type's name for people ("Chest X-ray"), or the exam type itself when no card names it.
function examName(all, examType) {
  return (all[examType] && all[examType].name) || examType;
}

// The newest upload or retry on this page: a reply to an older one (a slow retry) is not shown over it.
let resultTicket = 0;

// One decimal, but never a rounded certainty: a model's 0.9996 is ">99.9%", not "100.0%".
function percent(value) {
  if (value > 0.999) return ">99.9%";
  if (value < 0.001) return "<0.1%";
  return `${(value * 100).toFixed(1)}%`;
}

function formatDate(iso) {
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

// A page restored from the back/forward cache (Back after log-out) is fetched again, so it shows
// what the server says now, not the previous user's findings.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) window.location.reload();
});

// ---- log out -------------------------------------------------------------------------------
function initLogout() {
  const button = $("#logout-button");
  if (!button) return;
  button.addEventListener("click", async () => {
    try {
      await whileDisabled(button, () => api("/api/v1/auth/logout", { method: "POST" }));
      window.location.assign("/");
    } catch (error) {
      if (error.status === 401) return; // already logged out: sessionEnded() went to the log-in page
      // Still logged in (the auth service did not answer): say so rather than pretend.
      const message = `Logging out failed: ${error.message}`;
      if ($("#form-status")) setStatus(message);
      else window.alert(message);
    }
  });
}

// ---- account: change password, log out everywhere ----------------------------------------------
function initAccount() {
  const form = $("#password-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    setStatus("");
    const values = formValues(form);
    try {
      await whileDisabled(form.querySelector('button[type="submit"]'), () =>
        api("/api/v1/auth/password", {
          method: "POST",
          body: { current_password: values.current_password, new_password: values.new_password },
        }));
    } catch (error) {
      if (error.status === 401 && !error.errors.current_password) return; // session ended: sent to log in
      setStatus(error.status === 422 || error.status === 401 ? "Please correct the fields marked below." : error.message);
      showFieldErrors(form, error.errors || {});
      return;
    }
    form.reset();
    setStatus("Your password was changed. Every other session of your account has been logged out.", "info");
  });

  const everywhere = $("#logout-all-button");
  everywhere.addEventListener("click", async () => {
    setStatus("");
    try {
      await whileDisabled(everywhere, () => api("/api/v1/auth/logout-all", { method: "POST" }));
      window.location.assign("/");
    } catch (error) {
      if (error.status === 401) return;
      setStatus(`Logging out everywhere failed: ${error.message}`);
    }
  });
}

// ---- sign up / log in ----------------------------------------------------------------------
function formValues(form) {
  const values = {};
  for (const [key, value] of new FormData(form).entries()) values[key] = typeof value === "string" ? value : "";
  return values;
}

// The sign-up rules live in services/auth/validation.py; POST /api/v1/auth/signup/check runs them on a
// draft without creating anything, so the messages shown while typing are the server's own.
async function checkSignup(values) {
  try {
    const reply = await api("/api/v1/auth/signup/check", { method: "POST", body: values });
    return (reply && reply.errors) || {};
  } catch (_) {
    return null; // cannot check now: the server checks again on submit
  }
}

function showFieldError(form, field, message) {
  const slot = form.querySelector(`#${CSS.escape(field)}-error`);
  const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
  if (slot) slot.textContent = message || "";
  if (input) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

function initSignup() {
  const form = $("#signup-form");
  if (!form) return;
  const touched = new Set();
  // Check a field when the user leaves it (not on every key press: no messages while typing).
  form.addEventListener("focusout", async (event) => {
    const name = event.target && event.target.name;
    if (!name || !event.target.value) return;
    touched.add(name);
    const errors = await checkSignup(formValues(form));
    if (errors === null) return;
    for (const field of touched) showFieldError(form, field, errors[field]);
  });
  let submitting = false;   // a second click or Enter while the first is being checked is ignored
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submitting) return;
    submitting = true;
    try {
      await signUp();
    } finally {
      submitting = false;
    }
  });

  async function signUp() {
    clearFieldErrors(form);
    setStatus("");
    const values = formValues(form);
    const errors = await checkSignup(values);
    if (errors && Object.keys(errors).length) {
      setStatus("Please correct the fields marked below.");
      showFieldErrors(form, errors);
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    try {
      await whileDisabled(button, () => api("/api/v1/auth/signup", { method: "POST", body: values }));
    } catch (error) {
      setStatus(error.status === 422 ? "Please correct the fields marked below." : error.message);
      showFieldErrors(form, error.errors || {});
      return;
    }
    try {
      await api("/api/v1/auth/login", { method: "POST", body: { email: values.email, password: values.password } });
      window.location.assign("/app");
    } catch (error) {
      // The account exists now: signing up again would only be refused as a duplicate.
      button.disabled = true;
      setStatus(`Your account was created, but logging in failed: ${error.message} Please log in.`);
      form.append(el("p", {}, el("a", { href: "/login?next=/app", className: "button", text: "Log in" })));
    }
  }
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
      await whileDisabled(form.querySelector('button[type="submit"]'), () =>
        api("/api/v1/auth/login", { method: "POST", body: { email: values.email, password: values.password } }));
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

function setHeatmapOpacity(value) {
  const heatmap = $("#result-heatmap");
  const slider = $("#heatmap-opacity");
  heatmap.style.opacity = String(value / 100); // CSSOM: allowed by the CSP
  slider.setAttribute("aria-valuetext", `${value}%`);
  $("#heatmap-opacity-value").textContent = `${value}%`;
}

async function renderResult(d) {
  const section = $("#result");
  section.dataset.ready = "false";
  section.hidden = false;
  const all = await exams(d.exam_type);
  $("#result-finding").textContent = findingText(d);
  const detail = $("#result-detail");
  // The API's detail names its retry endpoint; a person gets plain words and the button below.
  const text = d.status === "failed"
    ? `The ${examName(all, d.exam_type)} model could not answer just now. Your image is kept: try again in a moment.`
    : d.detail || "";
  const message = el("span", { id: "result-detail-text", text });
  detail.replaceChildren(message);
  detail.hidden = !text;
  if (d.status === "failed") {
    const retry = el("button", { type: "button", className: "button secondary", id: "retry-button", text: "Try again" });
    retry.addEventListener("click", async () => {
      const ticket = ++resultTicket;
      try {
        const again = await whileDisabled(retry, () => api(`/api/v1/diagnoses/${d.id}/retry`, { method: "POST" }));
        if (ticket !== resultTicket) return;
        setStatus(again.status === "completed" ? "Done." : "The model could not answer.", "info");
        await renderResult(again);
        // The button that had focus is gone: hand focus to the new finding (or the new button).
        ($("#retry-button") || $("#result-finding")).focus();
      } catch (error) {
        if (ticket !== resultTicket || sessionEnded(error.status)) return;
        if (error.status === 409) {
          // Completed meanwhile (another tab retried it): show what is stored.
          await renderResult(await api(`/api/v1/diagnoses/${d.id}`));
          $("#result-finding").focus();
          return;
        }
        // The message changes; the button stays for a later try, unless the upload itself is gone.
        message.textContent = error.message;
        detail.hidden = false;
        setStatus(error.message);
        if (error.status === 410) {
          retry.remove();
          $("#result-finding").focus();
        } else {
          retry.focus();
        }
      }
    });
    detail.append(" ", retry);
  }

  const bars = $("#result-bars");
  bars.replaceChildren();
  const entries = Object.entries(d.probabilities || {}).sort((a, b) => b[1] - a[1]);
  const names = (all[d.exam_type] || {}).labels || {};
  for (const [code, p] of entries) {
    const fill = el("span", { className: "bar-fill" + (code === d.label ? " top" : "") });
    fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`; // CSSOM: allowed by the CSP
    const name = code === d.label && d.label_display ? d.label_display : names[code] || code;
    bars.append(
      el("li", { className: "bar" },
        el("span", { className: "bar-label", text: name }),
        el("span", { className: "bar-track", role: "img", "aria-label": `${name}: ${percent(p)}` }, fill),
        el("span", { className: "bar-value", text: percent(p) })),
    );
  }
  let exam = examName(all, d.exam_type);
  if (d.requested_exam_type === "auto") exam += " (recognised automatically)";
  $("#result-exam").textContent = exam;
  $("#result-model").textContent = d.model && d.model.name ? `${d.model.name} ${d.model.version || ""}` : "—";
  // Cards are anchored by task; a model's name may differ (training.experiments.arch_training: "skin-<arch>").
  const task = (all[d.exam_type] && all[d.exam_type].task) || (d.model && d.model.name);
  $("#result-card-link").href = `/models#model-${task}`;
  $("#result-card-link").textContent = `${(d.model && d.model.name) || task} model card`;
  $("#result-when").textContent = formatDate(d.created_at);

  const image = $("#result-image");
  // A DICOM is rendered to PNG server-side: at most 2048 px a side is plenty for the page.
  image.src = d.media_type === "application/dicom" ? `${d.image_url}?max_side=2048` : d.image_url;
  const heatmap = $("#result-heatmap");
  const controls = $("#heatmap-controls");
  const toggle = $("#heatmap-toggle");
  const slider = $("#heatmap-opacity");
  if (d.heatmap_url) {
    heatmap.src = d.heatmap_url;
    controls.hidden = false;
    $("#no-heatmap").hidden = true;
    toggle.checked = true;
    heatmap.hidden = false;
    slider.disabled = false;
    toggle.onchange = () => {
      heatmap.hidden = !toggle.checked;
      slider.disabled = !toggle.checked;
    };
    slider.oninput = () => setHeatmapOpacity(Number(slider.value));
    setHeatmapOpacity(Number(slider.value));
    $("#heatmap-method").textContent =
      `Grad-CAM: the redder a region, the more it supported “${d.label_display}”; clear regions did not.`;
  } else {
    controls.hidden = true;
    heatmap.hidden = true;
    $("#no-heatmap").hidden = d.status !== "completed";
  }
  section.dataset.ready = "true"; // every part is filled in (tests wait for this)
}

function isDicomFile(file) {
  return /\.(dcm|dicom)$/i.test(file.name) || file.type === "application/dicom";
}

// A PNG of the file rendered by the gateway (the same decoder as the models); throws ApiError.
async function serverPreview(file) {
  const data = new FormData();
  data.append("file", file);
  const response = await fetch("/api/v1/previews", {
    method: "POST", body: data, credentials: "same-origin", headers: { "X-Requested-With": "fetch" },
  });
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    throw new ApiError(response.status, body);
  }
  return URL.createObjectURL(await response.blob());
}

let previewedFile = null; // the file whose preview is wanted; older, slower previews are dropped

// Preview the chosen file: JPEG/PNG in the browser; DICOM (which browsers cannot show), or a file
// the browser cannot show, rendered by the gateway, whose refusal explains what is wrong with it.
async function showPreview(file) {
  previewedFile = file;
  const figure = $("#preview");
  const img = $("#preview-image");
  const form = $("#diagnose-form");
  showFieldError(form, "file", "");
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  figure.hidden = true;
  img.onerror = null;
  if (!file) return;
  $("#preview-name").textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KiB)`;
  const fromServer = async () => {
    try {
      const url = await serverPreview(file);
      if (previewedFile !== file) {
        URL.revokeObjectURL(url); // another file was chosen meanwhile: its preview stands
        return;
      }
      if (img.dataset.url) URL.revokeObjectURL(img.dataset.url); // the browser could not show the file itself
      img.dataset.url = url;
      img.src = url;
      figure.hidden = false;
    } catch (error) {
      if (previewedFile !== file) return;
      figure.hidden = true;
      showFieldError(form, "file", error.message);
    }
  };
  if (isDicomFile(file) || !/^image\/(jpeg|png)$/.test(file.type)) {
    await fromServer();
    return;
  }
  img.onerror = () => {
    img.onerror = null;
    if (previewedFile === file) fromServer();
  };
  img.dataset.url = URL.createObjectURL(file);
  img.src = img.dataset.url;
  figure.hidden = false;
}

function initDropzone() {
  const zone = $("#dropzone");
  const input = $("#file");
  if (!zone || !input) return;
  input.addEventListener("change", () => showPreview(input.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files;
    showPreview(files[0]);
  });
}

// POST with upload progress (fetch() cannot report it); resolves to the parsed JSON reply.
function postWithProgress(url, data, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", url);
    request.setRequestHeader("X-Requested-With", "fetch");
    request.setRequestHeader("Accept", "application/json");
    request.responseType = "json";
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    };
    request.upload.onload = () => onProgress(1);
    request.onload = () => {
      if (request.status >= 200 && request.status < 300) resolve(request.response);
      else reject(new ApiError(request.status, request.response));
    };
    request.onerror = () => reject(new ApiError(0, { detail: "The server cannot be reached; check your connection." }));
    request.send(data);
  });
}

function initDiagnose() {
  const form = $("#diagnose-form");
  if (!form) return;
  initDropzone();
  const progress = $("#progress");
  const bar = $("#progress-bar");
  const label = $("#progress-label");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    setStatus("");
    const file = $("#file").files[0];
    if (!file) {
      showFieldErrors(form, { file: "Choose an image file." });
      return;
    }
    const maxBytes = Number(form.dataset.maxBytes);
    if (maxBytes && file.size > maxBytes) {
      // The server would refuse it with 413 after the whole upload; say so before sending it.
      let sizes = [file.size, maxBytes].map((n) => `${(n / 1048576).toFixed(1)} MiB`);
      if (sizes[0] === sizes[1]) sizes = [file.size, maxBytes].map((n) => `${n.toLocaleString("en")} bytes`);
      showFieldErrors(form, { file: `This file is ${sizes[0]}; the largest accepted is ${sizes[1]}.` });
      return;
    }
    const data = new FormData();
    data.append("file", file);
    data.append("exam_type", form.querySelector('input[name="exam_type"]:checked').value);
    const explain = $("#explain").checked;
    const button = $("#diagnose-button");
    button.disabled = true;
    $("#result").hidden = true;
    progress.hidden = false;
    bar.value = 0;
    label.textContent = "Uploading…";
    try {
      const ticket = ++resultTicket;
      const diagnosis = await postWithProgress(`/api/v1/diagnoses?explain=${explain}`, data, (fraction) => {
        if (fraction < 1) {
          bar.value = Math.round(fraction * 100);
        } else {
          bar.removeAttribute("value"); // indeterminate while the model runs
          label.textContent = "Analysing the image…";
        }
      });
      if (ticket !== resultTicket) return;
      setStatus(diagnosis.status === "completed" ? "Done." : "The model could not answer.", "info");
      await renderResult(diagnosis);
      $("#result").scrollIntoView({ behavior: "smooth" });
      $("#result-finding").focus();
    } catch (error) {
      if (sessionEnded(error.status)) return;
      // A refusal about the file is shown (and announced) next to it; repeated above the form it
      // was shown twice. Anything else (a bad request, a service down) is said above the form.
      const nextToFields = Object.values(error.errors).includes(error.message);
      setStatus(nextToFields ? "" : error.message);
      showFieldErrors(form, error.errors);
    } finally {
      progress.hidden = true;
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
  let shown = 0;    // the offset of the page on screen: the pager moves from it, not from a pending load
  let latest = 0;   // the newest load: a reply to an older one (a filter since changed) is dropped
  const filter = $("#filter-exam");

  async function load(offset) {
    const ticket = ++latest;
    const params = new URLSearchParams({ limit: pageSize, offset });
    if (filter.value) params.set("exam_type", filter.value);
    try {
      const [page, all] = await Promise.all([api(`/api/v1/diagnoses?${params}`), exams()]);
      if (ticket !== latest) return;
      if (!page.items.length && offset > 0) {
        // This page became empty (its last result was deleted): show the one before it.
        return load(Math.max(0, offset - pageSize));
      }
      shown = offset;
      list.replaceChildren(...page.items.map((d) => historyItem(d, all)));
      $("#history-empty").hidden = page.total !== 0 || Boolean(filter.value);
      $("#history-empty-filtered").hidden = page.total !== 0 || !filter.value;
      $("#prev-page").disabled = offset === 0;
      $("#next-page").disabled = offset + pageSize >= page.total;
      $("#page-info").textContent = page.total
        ? `${offset + 1}–${Math.min(offset + pageSize, page.total)} of ${page.total}` : "";
    } catch (error) {
      if (ticket === latest) setStatus(error.message);
    }
  }

  function historyItem(d, all) {
    const summary = d.status === "completed" ? `${d.label_display} · ${percent(d.confidence)}` : "Failed — open to retry";
    const remove = el("button", { type: "button", className: "button danger", text: "Delete",
      "aria-label": `Delete the ${examName(all, d.exam_type)} result from ${formatDate(d.created_at)}` });
    remove.addEventListener("click", async () => {
      if (!window.confirm("Delete this result and its image? This cannot be undone.")) return;
      try {
        await whileDisabled(remove, () => api(`/api/v1/diagnoses/${d.id}`, { method: "DELETE" }));
        setStatus("Deleted.", "info");
        await load(shown);
        // The focused button is gone: continue from the list (or the filter when it is empty).
        ($("#history-list a") || filter).focus();
      } catch (error) {
        setStatus(error.message);
      }
    });
    return el("li", { className: "history-item" },
      el("img", { src: `${d.image_url}?max_side=192`, alt: "", loading: "lazy", width: "96", height: "96", className: "thumb" }),
      el("div", { className: "history-text" },
        el("a", { href: `/results/${d.id}`, text: `${examName(all, d.exam_type)}: ${summary}` }),
        el("span", { className: "hint", text: `${formatDate(d.created_at)} · ${d.model.name || ""} ${d.model.version || ""}` })),
      remove);
  }

  filter.addEventListener("change", () => load(0));
  $("#prev-page").addEventListener("click", () => load(Math.max(0, shown - pageSize)));
  $("#next-page").addEventListener("click", () => load(shown + pageSize));
  load(0);
}

// ---- activity (the account's audit trail) -------------------------------------------------------
const ACTIVITY_NAMES = {
  sign_up: "Account created",
  log_in: "Log-in",
  log_out: "Log-out",
  log_out_all: "Logged out everywhere",
  password_change: "Password change",
  diagnosis_create: "Result created",
  diagnosis_view: "Result opened",
  diagnosis_image: "Image viewed",
  diagnosis_heatmap: "Heatmap viewed",
  diagnosis_retry: "Result retried",
  diagnosis_delete: "Result deleted",
};
const OUTCOME_NAMES = {
  success: "Done",
  failure: "Refused",
  throttled: "Blocked: too many attempts",
  not_found: "Not found",
  error: "Failed",
};

function activityRow(item) {
  const what = el("td", {}, ACTIVITY_NAMES[item.event] || item.event);
  if (item.diagnosis_id) {
    // The record may be deleted since: its short id still says which one it was.
    what.append(" ", el("a", { href: `/results/${item.diagnosis_id}`, text: item.diagnosis_id.slice(0, 8),
      "aria-label": `result ${item.diagnosis_id}` }));
  }
  return el("tr", {},
    el("td", {}, el("time", { datetime: item.at, text: formatDate(item.at) })),
    what,
    el("td", {}, el("span", { className: "outcome", "data-outcome": item.outcome,
      text: OUTCOME_NAMES[item.outcome] || item.outcome })),
    el("td", {}, item.ip || "unknown address",
      el("span", { className: "hint agent", title: item.user_agent, text: item.user_agent || "unknown browser" })));
}

function initActivity() {
  const list = $("#activity-list");
  if (!list) return;
  const pageSize = 25;
  let shown = 0;
  let latest = 0;

  async function load(offset) {
    const ticket = ++latest;
    try {
      const page = await api(`/api/v1/me/activity?${new URLSearchParams({ limit: pageSize, offset })}`);
      if (ticket !== latest) return;
      shown = offset;
      list.replaceChildren(...page.items.map(activityRow));
      $("#activity-table").hidden = page.total === 0;
      $("#activity-empty").hidden = page.total !== 0;
      $("#prev-page").disabled = offset === 0;
      $("#next-page").disabled = offset + pageSize >= page.total;
      $("#page-info").textContent = page.total
        ? `${offset + 1}–${Math.min(offset + pageSize, page.total)} of ${page.total}` : "";
    } catch (error) {
      if (ticket === latest) setStatus(error.message);
    }
  }

  $("#prev-page").addEventListener("click", () => load(Math.max(0, shown - pageSize)));
  $("#next-page").addEventListener("click", () => load(shown + pageSize));
  load(0);
}

// ---- model cards ---------------------------------------------------------------------------
function isInterval(value) {
  return value !== null && typeof value === "object" && typeof value.value === "number";
}

// Headline metrics first, in this order; then the rest alphabetically. Described above the table.
const METRIC_ORDER = ["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1", "kappa"];
const METRIC_NOTES = new Set(["split", "interval", "measured_with"]);

function metricRows(metrics) {
  const rows = [];
  const rank = (key) => (METRIC_ORDER.includes(key) ? METRIC_ORDER.indexOf(key) : METRIC_ORDER.length);
  const keys = Object.keys(metrics || {}).filter((key) => !METRIC_NOTES.has(key))
    .sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  for (const key of keys) {
    const value = metrics[key];
    const name = key.replace(/_/g, " ");
    if (isInterval(value)) {
      let shown = value.value.toFixed(3);
      if (typeof value.ci95_low === "number" && typeof value.ci95_high === "number") {
        shown += ` (95% CI ${value.ci95_low.toFixed(3)}–${value.ci95_high.toFixed(3)})`;
      }
      rows.push([name, shown]);
    } else if (typeof value === "number") {
      rows.push([name, Number.isInteger(value) ? String(value) : value.toFixed(3)]);
    } else if (typeof value === "string") {
      rows.push([name, value]);
    }
  }
  return rows;
}

// The views a model averages over for each answer (training/tta.py), or null for one view.
function testTimeAugmentation(architecture) {
  const tta = architecture && architecture.test_time_augmentation;
  if (!tta || !Array.isArray(tta.views)) return null;
  const text = `mean over ${tta.views.length} views of each image (${tta.views.join(", ")})`;
  return tta.cost ? `${text}; ${tta.cost}` : text;
}

function modelCard(card) {
  const title = card.exam_type === "auto" ? "Router (exam type = auto)" : card.exam_display_name || card.exam_type;
  const metrics = el("dl", { className: "facts metrics" });
  for (const [name, value] of metricRows(card.metrics)) metrics.append(el("dt", { text: name }), el("dd", { text: value }));
  const data = card.data || {};
  const about = el("dl", { className: "facts" });
  const facts = [
    ["Intended use", card.intended_use],
    ["Labels", (card.labels || []).map((l) => l.display_name).join(", ")],
    ["Data", data.source],
    ["Licence", data.licence],
    ["Images", data.images ? `${data.images} images of ${data.groups || "?"} patients/lesions` : null],
    ["Split", card.split && card.split.method],
    ["Architecture", card.architecture && card.architecture.head
      ? `${card.architecture.backbone || ""}; head: ${card.architecture.head}` : null],
    ["Test-time augmentation", testTimeAugmentation(card.architecture)],
  ];
  for (const [name, value] of facts) if (value) about.append(el("dt", { text: name }), el("dd", { text: String(value) }));
  const plots = (card.plots || []).map((url) => el("figure", { className: "plot" },
    el("img", { src: url, alt: `Training plot ${url.split("/").pop()} of the ${card.name} model`, loading: "lazy" }),
    el("figcaption", { text: url.split("/").pop().replace(/\.png$/, "").replace(/[_-]/g, " ") })));
  const parts = [
    el("h2", { text: `${title} — ${card.name} ${card.version}` }),
    about,
    el("h3", { text: "Held-out metrics" }),
  ];
  const m = card.metrics || {};
  const notes = [m.split, m.measured_with, m.interval ? `intervals: ${m.interval}` : null].filter(Boolean);
  if (notes.length) parts.push(el("p", { className: "hint", text: notes.join("; ") + "." }));
  parts.push(metrics);
  if (plots.length) parts.push(el("h3", { text: "Training plots" }), el("div", { className: "plots" }, ...plots));
  parts.push(el("h3", { text: "Limitations" }), el("ul", {}, ...(card.limitations || []).map((text) => el("li", { text }))));
  parts.push(el("p", { className: "disclaimer", text: "Not for clinical use." }));
  return el("article", { className: "card model-card", id: `model-${card.task || card.name}` }, ...parts);
}

function initModels() {
  const box = $("#model-cards");
  if (!box) return;
  api("/api/v1/models").then((cards) => {
    box.replaceChildren(...cards.map(modelCard));
    $("#model-toc").replaceChildren(el("ul", {}, ...cards.map((card) =>
      el("li", {}, el("a", { href: `#model-${card.task || card.name}`, text: card.exam_type === "auto" ? "Router" : card.exam_display_name || card.name })))));
    box.setAttribute("aria-busy", "false");
    if (window.location.hash) {
      const target = document.getElementById(window.location.hash.slice(1));
      if (target) target.scrollIntoView();
    }
  }).catch((error) => {
    box.setAttribute("aria-busy", "false");
    box.replaceChildren();
    setStatus(error.message);
  });
}

// ---- home carousel (WAI-ARIA APG pattern: buttons, slide picker, pause; no motion if reduced) ----
function initCarousel() {
  const root = $("#carousel");
  if (!root) return;
  const slides = [...root.querySelectorAll(".slide")];
  const dots = [...root.querySelectorAll("#carousel-dots button")];
  const live = $("#carousel-slides");
  const pause = $("#carousel-pause");
  let current = 0;
  let timer = null;
  root.classList.add("js");
  function show(index) {
    current = (index + slides.length) % slides.length;
    slides.forEach((slide, i) => (slide.hidden = i !== current));
    dots.forEach((dot, i) => dot.setAttribute("aria-current", i === current ? "true" : "false"));
  }
  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
    live.setAttribute("aria-live", "polite");
    pause.textContent = "Play";
    pause.setAttribute("aria-label", "Start automatic slide show");
  }
  function start() {
    timer = setInterval(() => show(current + 1), 7000);
    live.setAttribute("aria-live", "off"); // do not announce slides that change by themselves
    pause.textContent = "Pause";
    pause.setAttribute("aria-label", "Stop automatic slide show");
  }
  $("#carousel-prev").addEventListener("click", () => { stop(); show(current - 1); });
  $("#carousel-next").addEventListener("click", () => { stop(); show(current + 1); });
  dots.forEach((dot, i) => dot.addEventListener("click", () => { stop(); show(i); }));
  pause.addEventListener("click", () => (timer ? stop() : start()));
  root.addEventListener("focusin", stop);
  show(0);
  if (!window.matchMedia("(prefers-reduced-motion: reduce)").matches) {
    pause.hidden = false;
    start();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  initLogout();
  initSignup();
  initLogin();
  initAccount();
  initDiagnose();
  initResultPage();
  initHistory();
  initActivity();
  initModels();
  initCarousel();
});
