// train/plot.h — a loss-curve chart as a self-contained SVG (axes, ticks, grid, one polyline per
// series, legend), written without any plotting dependency.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace qwen::train {

struct PlotSeries {
  std::string label;
  std::string color;                          // any SVG colour, e.g. "#1f77b4"
  std::vector<std::pair<double, double>> xy;  // (step, value), in drawing order
  bool markers = false;                       // a dot at every point
};

// An SVG document (width × height pixels). Non-finite points are skipped; an empty chart still
// draws its axes.
std::string line_chart_svg(const std::vector<PlotSeries>& series, const std::string& title,
                           const std::string& x_label, const std::string& y_label,
                           int width = 800, int height = 450);

// "Nice" tick values (1, 2 or 5 × 10^k apart) covering [lo, hi], about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target = 6);

}  // namespace qwen::train
