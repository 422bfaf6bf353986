// Pure helpers of the loader status line (tested by tests/test_web.py with Node.js).

export const STATUS_PREFIX = "⚙ ";

export function statusQuery(checkpoint, scan) {
  const params = new URLSearchParams();
  if (checkpoint) params.set("checkpoint", checkpoint);
  params.set("scan", scan || "auto");
  return `/mambast/status?${params.toString()}`;
}

export function statusColor(ok) {
  if (ok === true) return "#7c7";
  if (ok === false) return "#e77";
  return "#aaa";
}
