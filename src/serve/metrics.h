// serve/metrics.h — the server's counters, gauges and latency histograms, safe to update from the
// engine thread and the HTTP threads at once, rendered in the Prometheus text format (0.0.4) for
// GET /metrics.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace qwen::serve {

// Cumulative histogram with fixed upper bounds (seconds), as Prometheus expects.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);
  // Appends the _bucket / _sum / _count lines of metric `name`.
  void render(const std::string& name, std::string* out) const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }
  // Value below which a fraction q of the observations lie, interpolated within its bucket.
  double quantile(double q) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket, last one is +Inf
  uint64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  Metrics();
  // Counters.
  void request_finished(const std::string& reason);  // stop | length | cancelled | error
  void http_response(int status);
  void prompt_tokens(int64_t n);
  void generated_tokens(int64_t n);
  void preemptions(int64_t n);
  void prefix_hit_tokens(int64_t n);
  void step(int64_t n_tokens, int64_t n_seqs, double seconds);
  // Latencies (seconds).
  void time_to_first_token(double s);
  void inter_token_latency(double s);
  // One generated token (one lock): counts it and observes its time to first token (first) or
  // its inter-token latency.
  void token(bool first, double s);
  void request_latency(double s);
  // Gauges, set by the engine after every step.
  void set_state(int64_t running, int64_t waiting, int64_t kv_used, int64_t kv_total);

  std::string render() const;
  int64_t kv_blocks_used() const;
  int64_t requests_running() const;
  int64_t requests_waiting() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, uint64_t> finished_;
  std::map<int, uint64_t> http_;
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, preemptions_ = 0, prefix_hits_ = 0;
  uint64_t steps_ = 0, step_tokens_ = 0;
  double step_seconds_ = 0;
  int64_t running_ = 0, waiting_ = 0, kv_used_ = 0, kv_total_ = 0;
  Histogram ttft_, itl_, e2e_, step_time_, batch_size_;
};

}  // namespace qwen::serve
