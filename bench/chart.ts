/** One system's acknowledged writes, as milliseconds since its run started. */
export interface Series {
  name: string;
  acks: number[];
}

/** An SVG chart of acknowledged writes per second over time, one panel per system. */
export function renderAvailabilityChart(series: Series[], bucketMs = 1000): string {
  const width = 960;
  const panel = 160;
  const left = 60;
  const top = 30;
  const height = top + series.length * (panel + 40) + 20;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="18" font-size="14">Write availability: acknowledged writes per second through the VIP (leader power loss, repeated)</text>`,
  ];
  series.forEach((s, i) => {
    const y0 = top + i * (panel + 40);
    const end = Math.max(1, ...s.acks);
    const buckets = new Array(Math.ceil(end / bucketMs) + 1).fill(0) as number[];
    for (const t of s.acks) buckets[Math.floor(t / bucketMs)]!++;
    const maxRate = Math.max(1, ...buckets);
    const x = (k: number): number => left + (k / buckets.length) * (width - left - 20);
    const y = (v: number): number => y0 + panel - (v / maxRate) * panel;
    const path = buckets.map((v, k) => `${k === 0 ? 'M' : 'L'}${x(k).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    const zero = buckets.filter((v) => v === 0).length;
    parts.push(
      `<text x="${left}" y="${y0 - 6}" font-weight="bold">${escape(s.name)}: ${s.acks.length} writes, ${zero} s without any</text>`,
      `<line x1="${left}" y1="${y0 + panel}" x2="${width - 20}" y2="${y0 + panel}" stroke="#999"/>`,
      `<line x1="${left}" y1="${y0}" x2="${left}" y2="${y0 + panel}" stroke="#999"/>`,
      `<text x="${left - 6}" y="${y0 + 10}" text-anchor="end">${maxRate}/s</text>`,
      `<text x="${left - 6}" y="${y0 + panel}" text-anchor="end">0</text>`,
      `<text x="${width - 20}" y="${y0 + panel + 14}" text-anchor="end">${Math.round(end / 1000)} s</text>`,
      `<path d="${path}" fill="none" stroke="${i === 0 ? '#1f77b4' : '#d62728'}" stroke-width="1.5"/>`,
    );
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

function escape(s: string): string {
  return s.replaceAll('&', '&amp;').replaceAll('<', '&lt;');
}
