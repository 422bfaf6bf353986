// The "MambaST Loader" node's status: which device, scan backend and dtype will run (what "auto"
// resolves to on this machine) and whether the chosen weights load, from GET /mambast/status; and,
// where the release is not installed, a button that has the server fetch it from the authors'
// folder (POST /mambast/download), with its progress and a Cancel.
//
// The status is a DOM widget, so that both renderings show it: the classic canvas and the
// Vue-rendered nodes ("Nodes 2.0"), which draw nothing a node paints on the canvas. It always
// describes the values the widgets hold: workflows set widget values after a node is created
// (and again on tab switches and undo), so it is checked against the current values each time the
// node is drawn and fetched again when they differ, besides on every widget change and on a
// refresh of the model lists (the r key).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { downloadText, statusClass, statusKey, statusQuery, STATUS_PREFIX } from "./status_logic.js";

const WIDGET = "mambast_status";
const DOWNLOAD_EVENT = "mambast.download";
const STYLE = `
.mambast-status { font: 13px/17px sans-serif; color: var(--input-text, #ddd); padding: 4px 2px 6px;
  overflow-wrap: anywhere; box-sizing: border-box; pointer-events: auto; }
.mambast-status .mambast-line { white-space: normal; }
.mambast-status.ok .mambast-line { color: #7c7; }
.mambast-status.bad .mambast-line { color: #f88; }
.mambast-status.checking .mambast-line { color: #aaa; }
.mambast-status .mambast-actions { display: flex; gap: 6px; flex-wrap: wrap; margin-top: 4px; }
.mambast-status button { font: 12px sans-serif; padding: 2px 8px; border-radius: 4px; cursor: pointer;
  border: 1px solid #666; background: #333; color: #eee; }
.mambast-status button.mambast-primary { background: #2f6f3f; border-color: #4a9a5f; }
.mambast-status .mambast-details { margin: 4px 0 0; padding: 4px; max-height: 160px; overflow: auto;
  white-space: pre-wrap; background: rgba(0, 0, 0, 0.3); border-radius: 4px; font: 11px/14px sans-serif; }
.mambast-status .mambast-bar { height: 6px; margin-top: 4px; background: #444; border-radius: 3px; overflow: hidden; }
.mambast-status .mambast-bar > div { height: 100%; width: 0; background: #4a9a5f; }
`;

let download = { state: "idle" }; // the server's download, shared by every Loader node

function addStyle() {
  if (document.getElementById("mambast-status-style")) return;
  const style = document.createElement("style");
  style.id = "mambast-status-style";
  style.textContent = STYLE;
  document.head.append(style);
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function currentKey(node) {
  return statusKey(widgetValue(node, "checkpoint"), widgetValue(node, "scan"), widgetValue(node, "dtype"));
}

function loaders() {
  return (app.graph?._nodes ?? []).filter((node) => node.comfyClass === "MambaSTLoader");
}

async function refresh(node) {
  const checkpoint = widgetValue(node, "checkpoint");
  const scan = widgetValue(node, "scan");
  const dtype = widgetValue(node, "dtype");
  const request = (node.mambastRequest = (node.mambastRequest ?? 0) + 1);
  node.mambastStatusKey = statusKey(checkpoint, scan, dtype);
  node.mambastStatus = { summary: "checking weights…", ok: null };
  render(node);
  let status;
  try {
    const response = await api.fetchApi(statusQuery(checkpoint, scan, dtype));
    status = await response.json();
  } catch (error) {
    status = { summary: `status unavailable: ${error}`, ok: false };
  }
  if (request !== node.mambastRequest) return; // a newer request for newer values won
  node.mambastStatus = status;
  render(node);
}

function button(text, className, onClick) {
  const element = document.createElement("button");
  element.textContent = text;
  element.className = className;
  element.addEventListener("pointerdown", (event) => event.stopPropagation());
  element.addEventListener("click", (event) => {
    event.stopPropagation();
    onClick();
  });
  return element;
}

// Redraw a node's status from node.mambastStatus and the download's state.
function render(node) {
  const view = node.mambastView;
  if (!view) return;
  const status = node.mambastStatus ?? { summary: "checking weights…", ok: null };
  const running = download.state === "running";
  view.root.className = `mambast-status ${running ? "checking" : statusClass(status.ok)}`;
  view.line.textContent = STATUS_PREFIX + (running ? downloadText(download) : status.summary);
  view.actions.replaceChildren();
  if (running) {
    view.actions.append(button("Cancel", "mambast-cancel", () => api.fetchApi("/mambast/download/cancel",
      { method: "POST" })));
  } else if (status.download) {
    view.actions.append(button("Download weights", "mambast-primary mambast-download", () => startDownload()));
  }
  const details = download.state === "failed" ? download.message : status.ok === false ? status.message : null;
  if (details) {
    view.actions.append(button(view.open ? "Hide details" : "Details", "mambast-toggle", () => {
      view.open = !view.open;
      render(node);
    }));
  }
  view.details.textContent = details ?? "";
  view.details.hidden = !(details && view.open);
  view.bar.hidden = !running;
  const fraction = running && download.total ? download.done / download.total : 0;
  view.bar.firstChild.style.width = `${Math.round(100 * fraction)}%`;
  fitHeight(node);
}

// The node grows (never shrinks under the user) to hold the status's lines.
function fitHeight(node) {
  requestAnimationFrame(() => {
    const needed = node.computeSize()[1];
    if (node.size[1] < needed) node.setSize([node.size[0], needed]);
    node.setDirtyCanvas(true, true);
  });
}

async function startDownload() {
  const response = await api.fetchApi("/mambast/download", { method: "POST" });
  const state = await response.json();
  if (!response.ok && response.status !== 409) showToast("error", state.message ?? "The download could not start.");
  onDownload(state);
}

function showToast(severity, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary: "MambaST weights", detail, life: 12000 });
}

async function onDownload(state) {
  const before = download.state;
  download = state;
  for (const node of loaders()) {
    if (state.state === "failed" && node.mambastView) node.mambastView.open = true;
    render(node);
  }
  if (before !== "running" || state.state === "running") return;
  if (state.state === "done") {
    showToast("success", state.message);
    await app.refreshComboInNodes?.();
    for (const node of loaders()) {
      const widget = node.widgets?.find((w) => w.name === "checkpoint");
      const offered = widget?.options?.values ?? [];
      if (widget && state.checkpoint && !offered.includes(widget.value) && offered.includes(state.checkpoint)) {
        widget.value = state.checkpoint;
      }
      refresh(node);
    }
  } else if (state.state === "cancelled") {
    showToast("info", state.message);
  } else if (state.state === "failed") {
    showToast("error", state.reason ?? state.message);
  }
}

function addStatusWidget(node) {
  const root = document.createElement("div");
  const line = document.createElement("div");
  line.className = "mambast-line";
  const bar = document.createElement("div");
  bar.className = "mambast-bar";
  bar.append(document.createElement("div"));
  const actions = document.createElement("div");
  actions.className = "mambast-actions";
  const details = document.createElement("pre");
  details.className = "mambast-details";
  root.append(line, bar, actions, details);
  node.mambastView = { root, line, bar, actions, details, open: false, height: 40 };
  const height = () => {
    // Measured once the frontend has laid the element out at the node's width; before that (no
    // width yet, every word on a line of its own) the last good measure stands.
    if (root.offsetWidth >= 80) node.mambastView.height = contentHeight(root);
    return node.mambastView.height;
  };
  const widget = node.addDOMWidget(WIDGET, "mambast-status", root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: height,
    getMaxHeight: height,
  });
  widget.serialize = false; // not a value of the workflow: saved workflows keep their three values
  return widget;
}

function contentHeight(root) {
  let height = 10; // padding
  for (const child of root.children) if (!child.hidden && child.offsetHeight) height += child.offsetHeight + 4;
  return Math.max(24, height);
}

app.registerExtension({
  name: "mambast.loaderStatus",
  async setup() {
    addStyle();
    api.addEventListener(DOWNLOAD_EVENT, (event) => onDownload(event.detail));
    try {
      const response = await api.fetchApi("/mambast/download");
      if (response.ok) onDownload(await response.json());
    } catch {
      // an older server without the route: no download offered
    }
  },
  async nodeCreated(node) {
    if (node.comfyClass !== "MambaSTLoader") return;
    addStyle();
    for (const widget of node.widgets ?? []) {
      const previous = widget.callback;
      widget.callback = function (...args) {
        const result = previous?.apply(this, args);
        refresh(node);
        return result;
      };
    }
    // The r key: the files behind an unchanged name may have changed too.
    const refreshCombo = node.refreshComboInNode;
    node.refreshComboInNode = function (...args) {
      const result = refreshCombo?.apply(this, args);
      refresh(node);
      return result;
    };
    const drawForeground = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      drawForeground?.apply(this, arguments);
      if (this.mambastStatusKey !== currentKey(this)) refresh(this);
    };
    addStatusWidget(node);
    // Vue-rendered nodes do not draw on the canvas: the values are checked on a timer there too.
    const watch = setInterval(() => {
      if (node.mambastStatusKey !== currentKey(node)) refresh(node);
    }, 1000);
    const removed = node.onRemoved;
    node.onRemoved = function (...args) {
      clearInterval(watch);
      return removed?.apply(this, args);
    };
    refresh(node);
  },
});
