// Pure helpers of the loader status line (tested by tests/test_web.py with Node.js).

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

export function statusColor(ok) {
  if (ok === true) return "#7c7";
  if (ok === false) return "#e77";
  return "#aaa";
}

// Break `text` into lines no wider than `maxWidth` by `measure(text) -> width`, at spaces, and
// inside words too long for a line (paths). Beyond `maxLines` the last line ends with "…".
export function wrapText(text, maxWidth, measure, maxLines = 8) {
  const lines = [];
  let line = "";
  const push = (piece) => {
    lines.push(piece);
  };
  for (const word of String(text).split(/\s+/).filter(Boolean)) {
    const candidate = line ? `${line} ${word}` : word;
    if (measure(candidate) <= maxWidth) {
      line = candidate;
      continue;
    }
    if (line) push(line);
    line = word;
    while (measure(line) > maxWidth && line.length > 1) {
      let cut = line.length - 1;
      while (cut > 1 && measure(line.slice(0, cut)) > maxWidth) cut -= 1;
      push(line.slice(0, cut));
      line = line.slice(cut);
    }
  }
  if (line) push(line);
  if (lines.length > maxLines) {
    const kept = lines.slice(0, maxLines);
    let last = kept[maxLines - 1];
    while (last.length > 1 && measure(last + "…") > maxWidth) last = last.slice(0, -1);
    kept[maxLines - 1] = last + "…";
    return kept;
  }
  return lines;
}
