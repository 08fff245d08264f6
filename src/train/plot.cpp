// train/plot.cpp — the SVG line chart behind loss.svg. See plot.h.
#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace qwen::train {

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string fmt(double v) {
  char buf[32];
  if (v != 0 && (std::fabs(v) >= 1e6 || std::fabs(v) < 1e-3)) std::snprintf(buf, sizeof buf, "%.3g", v);
  else std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string px(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

}  // namespace

std::vector<double> nice_ticks(double lo, double hi, int target) {
  std::vector<double> t;
  if (!std::isfinite(lo) || !std::isfinite(hi)) return t;
  if (hi < lo) std::swap(lo, hi);
  if (hi == lo) {
    t.push_back(lo);
    return t;
  }
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * mag;
    if (step >= raw) break;
  }
  const double first = std::ceil(lo / step - 1e-9) * step;
  for (double v = first; v <= hi + step * 1e-9; v += step) t.push_back(std::fabs(v) < step * 1e-9 ? 0 : v);
  return t;
}

std::string line_chart_svg(const std::vector<PlotSeries>& series, const std::string& title,
                           const std::string& x_label, const std::string& y_label, int width,
                           int height) {
  const double ml = 70, mr = 20, mt = 40, mb = 50;  // margins
  const double pw = width - ml - mr, ph = height - mt - mb;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& s : series)
    for (auto [x, y] : s.xy) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      x0 = std::min(x0, x); x1 = std::max(x1, x);
      y0 = std::min(y0, y); y1 = std::max(y1, y);
    }
  if (!std::isfinite(x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) { y0 -= 0.5; y1 += 0.5; }
  const double pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  auto sx = [&](double x) { return ml + (x - x0) / (x1 - x0) * pw; };
  auto sy = [&](double y) { return mt + (1.0 - (y - y0) / (y1 - y0)) * ph; };

  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + std::to_string(width) +
       "\" height=\"" + std::to_string(height) + "\" viewBox=\"0 0 " + std::to_string(width) + " " +
       std::to_string(height) + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o += "<text x=\"" + px(width / 2.0) + "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" +
       esc(title) + "</text>\n";
  // Grid and ticks.
  for (double v : nice_ticks(y0, y1, 6)) {
    const double y = sy(v);
    o += "<line x1=\"" + px(ml) + "\" y1=\"" + px(y) + "\" x2=\"" + px(ml + pw) + "\" y2=\"" + px(y) +
         "\" stroke=\"#e0e0e0\"/>\n";
    o += "<line x1=\"" + px(ml - 5) + "\" y1=\"" + px(y) + "\" x2=\"" + px(ml) + "\" y2=\"" + px(y) +
         "\" stroke=\"black\"/>\n";
    o += "<text x=\"" + px(ml - 8) + "\" y=\"" + px(y + 4) + "\" text-anchor=\"end\">" + fmt(v) +
         "</text>\n";
  }
  for (double v : nice_ticks(x0, x1, 8)) {
    const double x = sx(v);
    o += "<line x1=\"" + px(x) + "\" y1=\"" + px(mt) + "\" x2=\"" + px(x) + "\" y2=\"" + px(mt + ph) +
         "\" stroke=\"#f0f0f0\"/>\n";
    o += "<line x1=\"" + px(x) + "\" y1=\"" + px(mt + ph) + "\" x2=\"" + px(x) + "\" y2=\"" +
         px(mt + ph + 5) + "\" stroke=\"black\"/>\n";
    o += "<text x=\"" + px(x) + "\" y=\"" + px(mt + ph + 18) + "\" text-anchor=\"middle\">" + fmt(v) +
         "</text>\n";
  }
  // Axes and labels.
  o += "<polyline points=\"" + px(ml) + "," + px(mt) + " " + px(ml) + "," + px(mt + ph) + " " +
       px(ml + pw) + "," + px(mt + ph) + "\" fill=\"none\" stroke=\"black\"/>\n";
  o += "<text x=\"" + px(ml + pw / 2) + "\" y=\"" + px(height - 10.0) + "\" text-anchor=\"middle\">" +
       esc(x_label) + "</text>\n";
  o += "<text x=\"16\" y=\"" + px(mt + ph / 2) + "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " +
       px(mt + ph / 2) + ")\">" + esc(y_label) + "</text>\n";
  // Series.
  int k = 0;
  for (const auto& s : series) {
    std::string pts;
    std::string dots;
    for (auto [x, y] : s.xy) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      pts += px(sx(x)) + "," + px(sy(y)) + " ";
      if (s.markers)
        dots += "<circle cx=\"" + px(sx(x)) + "\" cy=\"" + px(sy(y)) + "\" r=\"3\" fill=\"" +
                esc(s.color) + "\"/>\n";
    }
    if (!pts.empty()) pts.pop_back();
    o += "<polyline points=\"" + pts + "\" fill=\"none\" stroke=\"" + esc(s.color) +
         "\" stroke-width=\"1.5\"/>\n" + dots;
    const double ly = mt + 12 + 16 * k;
    o += "<line x1=\"" + px(ml + pw - 150) + "\" y1=\"" + px(ly - 4) + "\" x2=\"" + px(ml + pw - 130) +
         "\" y2=\"" + px(ly - 4) + "\" stroke=\"" + esc(s.color) + "\" stroke-width=\"2\"/>\n";
    o += "<text x=\"" + px(ml + pw - 124) + "\" y=\"" + px(ly) + "\">" + esc(s.label) + "</text>\n";
    ++k;
  }
  o += "</svg>\n";
  return o;
}

}  // namespace qwen::train
