#!/usr/bin/env python3
"""Plot for docs/lora.md: train loss (thin) and validation loss (thick, markers) of `qwen finetune`
runs against step, one colour per run, from their metrics.jsonl. Standard library only.
Run: python3 docs/lora/plot_finetune.py OUT.svg LABEL=RUN_DIR [LABEL=RUN_DIR ...]"""
import json
import sys

W, H, L, R, T, B = 720, 420, 70, 20, 40, 50
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def series(run):
    tr, va = [], []
    for line in open(run + "/metrics.jsonl"):
        j = json.loads(line)
        if j.get("type") == "train":
            tr.append((j["step"], j["loss"]))
        elif j.get("type") == "eval":
            va.append((j["step"], j["val_loss"]))
    return tr, va


def main():
    out, runs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    data = [(lab, *series(d)) for lab, d in runs]
    xs = [p[0] for _, tr, va in data for p in tr + va]
    ys = [p[1] for _, tr, va in data for p in tr + va]
    x0, x1, y0, y1 = 0, max(xs), 0, max(ys) * 1.05
    sx = lambda x: L + (x - x0) / (x1 - x0) * (W - L - R)
    sy = lambda y: T + (y1 - y) / (y1 - y0) * (H - T - B)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">qwen finetune: LoRA vs QLoRA (NF4), loss on answer tokens</text>']
    for k in range(6):
        y = y0 + (y1 - y0) * k / 5
        o.append(f'<line x1="{L}" x2="{W-R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#ddd"/>'
                 f'<text x="{L-6}" y="{sy(y)+4:.1f}" text-anchor="end">{y:.1f}</text>')
        x = x0 + (x1 - x0) * k / 5
        o.append(f'<text x="{sx(x):.1f}" y="{H-B+16}" text-anchor="middle">{x:.0f}</text>')
    o.append(f'<text x="{W/2}" y="{H-12}" text-anchor="middle">step</text>')
    o.append(f'<text x="16" y="{H/2}" transform="rotate(-90 16 {H/2})" text-anchor="middle">loss (nats/token)</text>')
    for i, (lab, tr, va) in enumerate(data):
        c = COLORS[i % len(COLORS)]
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in tr)
        o.append(f'<polyline fill="none" stroke="{c}" stroke-opacity="0.45" stroke-width="1" points="{pts}"/>')
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in va)
        o.append(f'<polyline fill="none" stroke="{c}" stroke-width="2.5" points="{pts}"/>')
        o += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>' for x, y in va]
        o.append(f'<rect x="{W-R-230}" y="{T+8+i*18}" width="12" height="4" fill="{c}"/>'
                 f'<text x="{W-R-212}" y="{T+14+i*18}">{lab} (thin: train, thick: val)</text>')
    o.append("</svg>")
    open(out, "w").write("\n".join(o) + "\n")


if __name__ == "__main__":
    main()
