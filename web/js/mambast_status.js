// Shows on each "MambaST Loader" node which device and scan backend will run, and whether the
// chosen weights load, from the pack's GET /mambast/status route.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { statusQuery, statusColor, STATUS_PREFIX } from "./status_logic.js";

const LINE_HEIGHT = 18;

async function refresh(node) {
  const value = (name) => node.widgets?.find((w) => w.name === name)?.value;
  node.mambastStatus = { summary: "checking weights…", ok: null };
  node.setDirtyCanvas(true, true);
  try {
    const response = await api.fetchApi(statusQuery(value("checkpoint"), value("scan")));
    node.mambastStatus = await response.json();
  } catch (error) {
    node.mambastStatus = { summary: `status unavailable: ${error}`, ok: false };
  }
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "mambast.loaderStatus",
  async nodeCreated(node) {
    if (node.comfyClass !== "MambaSTLoader") return;
    for (const widget of node.widgets ?? []) {
      const previous = widget.callback;
      widget.callback = function (...args) {
        const result = previous?.apply(this, args);
        refresh(node);
        return result;
      };
    }
    const drawForeground = node.onDrawForeground;
    node.onDrawForeground = function (ctx) {
      drawForeground?.apply(this, arguments);
      if (!this.mambastStatus || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = statusColor(this.mambastStatus.ok);
      const text = STATUS_PREFIX + this.mambastStatus.summary;
      ctx.fillText(text.length > 90 ? text.slice(0, 89) + "…" : text, 10, this.size[1] - 6);
      ctx.restore();
    };
    node.setSize([node.size[0], node.size[1] + LINE_HEIGHT]);
    refresh(node);
  },
});
