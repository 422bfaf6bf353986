// Shows on each "MambaST Loader" node which device, scan backend and dtype will run (what "auto"
// resolves to on this machine), and whether the chosen weights load, from the pack's
// GET /mambast/status route.
//
// The line always describes the values the widgets hold: workflows set widget values after a
// node is created (and again on tab switches and undo), so the status is checked against the
// current values each time the node is drawn and fetched again when they differ, besides on
// every widget change and on a refresh of the model lists (the r key).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { statusQuery, statusColor, statusKey, wrapText, STATUS_PREFIX } from "./status_logic.js";

const LINE_HEIGHT = 16;
const FONT = "12px sans-serif";
const MARGIN = 10;
const MAX_LINES = 4; // the essential part; a click on the line shows the whole message

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

function currentKey(node) {
  return statusKey(widgetValue(node, "checkpoint"), widgetValue(node, "scan"), widgetValue(node, "dtype"));
}

async function refresh(node) {
  const checkpoint = widgetValue(node, "checkpoint");
  const scan = widgetValue(node, "scan");
  const dtype = widgetValue(node, "dtype");
  const key = statusKey(checkpoint, scan, dtype);
  const request = (node.mambastRequest = (node.mambastRequest ?? 0) + 1);
  node.mambastStatusKey = key;
  node.mambastStatus = { summary: "checking weights…", ok: null };
  node.setDirtyCanvas(true, true);
  let status;
  try {
    const response = await api.fetchApi(statusQuery(checkpoint, scan, dtype));
    status = await response.json();
  } catch (error) {
    status = { summary: `status unavailable: ${error}`, ok: false };
  }
  if (request !== node.mambastRequest) return; // a newer request for newer values won
  node.mambastStatus = status;
  node.setDirtyCanvas(true, true);
}

function statusLines(node, ctx) {
  const width = Math.max(40, node.size[0] - 2 * MARGIN);
  ctx.font = FONT;
  return wrapText(STATUS_PREFIX + node.mambastStatus.summary, width, (t) => ctx.measureText(t).width, MAX_LINES);
}

function showDetails(node) {
  const status = node.mambastStatus;
  const detail = status.ok === false ? status.message ?? status.summary : status.summary;
  const toast = app.extensionManager?.toast;
  if (toast?.add) {
    toast.add({ severity: status.ok === false ? "error" : "info", summary: "MambaST Loader", detail, life: 20000 });
  } else {
    console.info(`MambaST Loader: ${detail}`);
  }
}

app.registerExtension({
  name: "mambast.loaderStatus",
  async nodeCreated(node) {
    if (node.comfyClass !== "MambaSTLoader") return;
    node.mambastLines = 1;
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
    const computeSize = node.computeSize;
    node.computeSize = function (...args) {
      const size = computeSize.apply(this, args);
      size[1] += (this.mambastLines ?? 1) * LINE_HEIGHT + 4;
      return size;
    };
    const drawForeground = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      drawForeground?.apply(this, arguments);
      if (this.mambastStatusKey !== currentKey(this)) refresh(this);
      if (!this.mambastStatus || this.flags?.collapsed) return;
      ctx.save();
      const lines = statusLines(this, ctx);
      if (lines.length !== this.mambastLines) {
        this.mambastLines = lines.length;
        const needed = this.computeSize()[1];
        if (this.size[1] < needed) this.setSize([this.size[0], needed]);
      }
      this.mambastDrawnLines = lines;
      ctx.fillStyle = statusColor(this.mambastStatus.ok);
      const top = this.size[1] - lines.length * LINE_HEIGHT;
      lines.forEach((line, index) => ctx.fillText(line, MARGIN, top + (index + 1) * LINE_HEIGHT - 4));
      ctx.restore();
    };
    const mouseDown = node.onMouseDown;
    node.onMouseDown = function (event, position, ...rest) {
      const inStatus = this.mambastStatus && position?.[1] > this.size[1] - (this.mambastLines ?? 1) * LINE_HEIGHT - 2;
      if (inStatus) {
        showDetails(this);
        return true;
      }
      return mouseDown?.call(this, event, position, ...rest);
    };
    node.setSize([node.size[0], node.computeSize()[1]]);
  },
});
