// serve/metrics.cpp — see metrics.h.
#include "serve/metrics.h"

#include <algorithm>
#include <cstdio>

namespace qwen::serve {

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double v) {
  const size_t i = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin());
  ++counts_[i];
  ++count_;
  sum_ += v;
}

static std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void Histogram::render(const std::string& name, std::string* out) const {
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    *out += name + "_bucket{le=\"" + num(bounds_[i]) + "\"} " + std::to_string(cum) + "\n";
  }
  cum += counts_.back();
  *out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
  *out += name + "_sum " + num(sum_) + "\n";
  *out += name + "_count " + std::to_string(count_) + "\n";
}

double Histogram::quantile(double q) const {
  if (count_ == 0) return 0;
  const double target = q * double(count_);
  uint64_t cum = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    if (double(cum + counts_[i]) >= target && counts_[i] > 0) {
      const double lo = i == 0 ? 0 : bounds_[i - 1];
      const double hi = i < bounds_.size() ? bounds_[i] : bounds_.back();
      return lo + (hi - lo) * (target - double(cum)) / double(counts_[i]);
    }
    cum += counts_[i];
  }
  return bounds_.back();
}

namespace {
std::vector<double> latency_buckets() {
  return {0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1,
          0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0};
}
}  // namespace

Metrics::Metrics()
    : ttft_(latency_buckets()),
      itl_(latency_buckets()),
      e2e_({0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300}),
      step_time_(latency_buckets()),
      batch_size_({1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}) {}

void Metrics::request_finished(const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  ++finished_[reason];
}
void Metrics::http_response(int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++http_[status];
}
void Metrics::prompt_tokens(int64_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  prompt_tokens_ += uint64_t(n);
}
void Metrics::generated_tokens(int64_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  generated_tokens_ += uint64_t(n);
}
void Metrics::preemptions(int64_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  preemptions_ += uint64_t(n);
}
void Metrics::prefix_hit_tokens(int64_t n) {
  std::lock_guard<std::mutex> lk(mu_);
  prefix_hits_ += uint64_t(n);
}
void Metrics::step(int64_t n_tokens, int64_t n_seqs, double seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  ++steps_;
  step_tokens_ += uint64_t(n_tokens);
  step_seconds_ += seconds;
  step_time_.observe(seconds);
  batch_size_.observe(double(n_seqs));
}
void Metrics::time_to_first_token(double s) {
  std::lock_guard<std::mutex> lk(mu_);
  ttft_.observe(s);
}
void Metrics::inter_token_latency(double s) {
  std::lock_guard<std::mutex> lk(mu_);
  itl_.observe(s);
}
void Metrics::token(bool first, double s) {
  std::lock_guard<std::mutex> lk(mu_);
  ++generated_tokens_;
  (first ? ttft_ : itl_).observe(s);
}
void Metrics::request_latency(double s) {
  std::lock_guard<std::mutex> lk(mu_);
  e2e_.observe(s);
}
void Metrics::set_state(int64_t running, int64_t waiting, int64_t kv_used, int64_t kv_total) {
  std::lock_guard<std::mutex> lk(mu_);
  running_ = running;
  waiting_ = waiting;
  kv_used_ = kv_used;
  kv_total_ = kv_total;
}
int64_t Metrics::kv_blocks_used() const {
  std::lock_guard<std::mutex> lk(mu_);
  return kv_used_;
}
int64_t Metrics::requests_running() const {
  std::lock_guard<std::mutex> lk(mu_);
  return running_;
}
int64_t Metrics::requests_waiting() const {
  std::lock_guard<std::mutex> lk(mu_);
  return waiting_;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lk(mu_);
  std::string o;
  auto head = [&](const char* name, const char* type, const char* help) {
    o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  head("qwen_requests_total", "counter", "Generation requests finished, by finish reason.");
  for (const char* r : {"stop", "length", "cancelled", "error"}) {
    auto it = finished_.find(r);
    o += std::string("qwen_requests_total{finish_reason=\"") + r + "\"} " +
         std::to_string(it == finished_.end() ? 0 : it->second) + "\n";
  }
  head("qwen_http_responses_total", "counter", "HTTP responses, by status code.");
  for (const auto& [code, n] : http_)
    o += "qwen_http_responses_total{code=\"" + std::to_string(code) + "\"} " + std::to_string(n) + "\n";
  head("qwen_prompt_tokens_total", "counter", "Prompt tokens received.");
  o += "qwen_prompt_tokens_total " + std::to_string(prompt_tokens_) + "\n";
  head("qwen_generation_tokens_total", "counter", "Tokens generated.");
  o += "qwen_generation_tokens_total " + std::to_string(generated_tokens_) + "\n";
  head("qwen_prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.");
  o += "qwen_prefix_cache_hit_tokens_total " + std::to_string(prefix_hits_) + "\n";
  head("qwen_preemptions_total", "counter", "Requests preempted (blocks freed, recomputed later).");
  o += "qwen_preemptions_total " + std::to_string(preemptions_) + "\n";
  head("qwen_engine_steps_total", "counter", "Engine steps (batched forward passes).");
  o += "qwen_engine_steps_total " + std::to_string(steps_) + "\n";
  head("qwen_engine_step_tokens_total", "counter", "Tokens computed by engine steps.");
  o += "qwen_engine_step_tokens_total " + std::to_string(step_tokens_) + "\n";
  head("qwen_requests_running", "gauge", "Requests being computed.");
  o += "qwen_requests_running " + std::to_string(running_) + "\n";
  head("qwen_requests_waiting", "gauge", "Requests queued for admission.");
  o += "qwen_requests_waiting " + std::to_string(waiting_) + "\n";
  head("qwen_kv_blocks_used", "gauge", "KV cache blocks held by requests.");
  o += "qwen_kv_blocks_used " + std::to_string(kv_used_) + "\n";
  head("qwen_kv_blocks_total", "gauge", "KV cache blocks in the pool.");
  o += "qwen_kv_blocks_total " + std::to_string(kv_total_) + "\n";
  head("qwen_time_to_first_token_seconds", "histogram", "Time from arrival to the first generated token.");
  ttft_.render("qwen_time_to_first_token_seconds", &o);
  head("qwen_inter_token_latency_seconds", "histogram", "Time between consecutive tokens of a request.");
  itl_.render("qwen_inter_token_latency_seconds", &o);
  head("qwen_request_latency_seconds", "histogram", "Time from arrival to the last token.");
  e2e_.render("qwen_request_latency_seconds", &o);
  head("qwen_engine_step_seconds", "histogram", "Duration of one engine step.");
  step_time_.render("qwen_engine_step_seconds", &o);
  head("qwen_engine_step_sequences", "histogram", "Sequences in one engine step.");
  batch_size_.render("qwen_engine_step_sequences", &o);
  return o;
}

}  // namespace qwen::serve
