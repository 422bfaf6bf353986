// Pure helpers of the loader's status (tested by tests/test_web.py with Node.js).

export const STATUS_PREFIX = "⚙ ";

export function statusQuery(checkpoint, scan, dtype) {
  const params = new URLSearchParams();
  if (checkpoint) params.set("checkpoint", checkpoint);
  params.set("scan", scan || "auto");
  params.set("dtype", dtype || "auto");
  return `/mambast/status?${params.toString()}`;
}

// What a status was fetched for: the widget values it describes. A status whose key differs
// from the widgets' current values is stale and must be fetched again.
export function statusKey(checkpoint, scan, dtype) {
  return JSON.stringify([checkpoint ?? null, scan ?? null, dtype ?? null]);
}

// The CSS class of a status: usable, not usable, or still being checked.
export function statusClass(ok) {
  if (ok === true) return "ok";
  if (ok === false) return "bad";
  return "checking";
}

function megabytes(bytes) {
  return (bytes / 2 ** 20).toFixed(1);
}

// One line for a running download: which file, how far.
export function downloadText(state) {
  if (!state.name) return state.message ?? "Downloading the weights…";
  const which = state.count ? ` (${state.index + 1} of ${state.count})` : "";
  const amount = state.total ? `${megabytes(state.done)} of ${megabytes(state.total)} MB` : `${megabytes(state.done)} MB`;
  return `Downloading ${state.name}${which}: ${amount}`;
}
