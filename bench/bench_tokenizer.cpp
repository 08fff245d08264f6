// bench/bench_tokenizer.cpp — tokenizer throughput: encode of a few MB of real English text (Jane
// Austen's six novels) as one string and as a batch of its paragraphs, on 1 and 2 threads, with
// the Qwen3 tokenizer; decode; BPE training of an 8k vocabulary on the same text. In the same run
// the Rust `tokenizers` library (Python binding, bench/bench_tokenizer_hf.py) does the same work
// on the same text, and the ids of both sides are compared (count + checksum).
//
//   bench_tokenizer [--tokenizer DIR] [--text FILE] [--reps N] [--train-vocab N] [--no-hf]
// Defaults: the Qwen3 files of tests/data/tokenizer/qwen3; the text is extracted once with
// Rscript from the Debian package r-cran-janeaustenr into /tmp/qwen_bench_austen.txt. The
// reference runs under $QWEN_PYTHON (default python3), which needs `pip install tokenizers`.
// Times are the best of N repetitions (the machine may be shared).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/cpu.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"

namespace {

double best_of(int reps, const std::function<void()>& f) {
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

uint64_t checksum(const std::vector<int32_t>& ids, uint64_t h = 0) {
  const uint64_t mod = uint64_t(1) << 61;
  for (int32_t i : ids) h = uint64_t((static_cast<unsigned __int128>(h) * 1000003u + uint64_t(i) + 1) % mod);
  return h;
}

std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw qwen::Error("bench_tokenizer: cannot read " + p);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string default_text() {
  const std::string path = "/tmp/qwen_bench_austen.txt";
  if (!std::filesystem::exists(path)) {
    std::string cmd =
        "Rscript -e 'e <- new.env(); data(list=c(\"sensesensibility\",\"prideprejudice\",\"mansfieldpark\","
        "\"emma\",\"northangerabbey\",\"persuasion\"), package=\"janeaustenr\", envir=e); "
        "for (b in c(\"sensesensibility\",\"prideprejudice\",\"mansfieldpark\",\"emma\",\"northangerabbey\","
        "\"persuasion\")) cat(get(b, envir=e), sep=\"\\n\", file=\"" + path + ".tmp\", append=TRUE)' && mv " +
        path + ".tmp " + path;
    if (std::system(cmd.c_str()) != 0)
      throw qwen::Error("bench_tokenizer: cannot extract Jane Austen's novels (needs Rscript and r-cran-janeaustenr); pass --text FILE");
  }
  return path;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string dir = (std::filesystem::path(__FILE__).parent_path().parent_path() / "tests/data/tokenizer/qwen3").string();
  std::string text_path;
  int reps = 5;
  int64_t train_vocab = 8192;
  bool hf = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw qwen::Error("bench_tokenizer: " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--tokenizer") dir = next();
    else if (a == "--text") text_path = next();
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--train-vocab") train_vocab = std::stoll(next());
    else if (a == "--no-hf") hf = false;
    else throw qwen::Error("bench_tokenizer: unknown argument " + a + " (see the comment at the top of bench_tokenizer.cpp)");
  }
  if (text_path.empty()) text_path = default_text();
  const std::string text = read_file(text_path);
  std::vector<std::string> paras;
  for (size_t p = 0; p <= text.size();) {
    size_t e = text.find("\n\n", p);
    if (e == std::string::npos) e = text.size();
    if (e > p) paras.push_back(text.substr(p, e - p));
    p = e + 2;
  }
  size_t para_bytes = 0;
  for (const auto& p : paras) para_bytes += p.size();
  const double mb = double(text.size()) / 1e6, pmb = double(para_bytes) / 1e6;

  auto t0 = std::chrono::steady_clock::now();
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(dir);
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("tokenizer %s (vocabulary %lld), loaded in %.3f s\n", dir.c_str(), (long long)tok.vocab_size(), load_s);
  std::printf("text %s: %.2f MB, %zu paragraphs (%.2f MB)\n\n", text_path.c_str(), mb, paras.size(), pmb);

  std::vector<int32_t> whole;
  std::vector<std::vector<int32_t>> batch;
  struct Row {
    int threads;
    double whole_s, batch_s;
  };
  std::vector<Row> rows;
  for (int nt : {1, 2}) {
    qwen::set_num_threads(nt);
    tok.encode_batch(std::vector<std::string>(paras.begin(), paras.begin() + std::min<size_t>(200, paras.size())), false);
    double ws = best_of(reps, [&] { whole = tok.encode(text, false); });
    double bs = best_of(reps, [&] { batch = tok.encode_batch(paras, false); });
    rows.push_back({nt, ws, bs});
  }
  uint64_t whole_sum = checksum(whole), batch_sum = 0;
  size_t batch_ids = 0;
  for (const auto& b : batch) {
    batch_sum = checksum(b, batch_sum);
    batch_ids += b.size();
  }
  std::string decoded;
  qwen::set_num_threads(1);
  double dec_s = best_of(reps, [&] { decoded = tok.decode(whole); });
  if (decoded != text) std::printf("WARNING: decode(encode(text)) != text\n");

  std::printf("qwen (this project)      threads  encode whole MB/s  encode batch MB/s\n");
  for (const Row& r : rows)
    std::printf("                         %7d  %17.2f  %17.2f\n", r.threads, mb / r.whole_s, pmb / r.batch_s);
  std::printf("  %zu ids (whole), %zu ids (batch); decode %.1f MB/s\n", whole.size(), batch_ids, mb / dec_s);

  double train_s[2] = {0, 0};
  if (train_vocab > 0) {
    for (int nt : {1, 2}) {
      qwen::BpeTrainOptions o;
      o.vocab_size = train_vocab;
      o.n_threads = nt;
      train_s[nt - 1] = best_of(1, [&] { qwen::train_bpe({text}, o); });
    }
    std::printf("  BPE training, vocabulary %lld on %.2f MB: %.2f s (1 thread), %.2f s (2 threads)\n",
                (long long)train_vocab, mb, train_s[0], train_s[1]);
  }

  if (hf) {
    const char* py_env = std::getenv("QWEN_PYTHON");
    std::string py = py_env ? py_env : "python3";
    std::string script = (std::filesystem::path(__FILE__).parent_path() / "bench_tokenizer_hf.py").string();
    std::printf("\nHugging Face tokenizers (%s)  threads  encode whole MB/s  encode batch MB/s  ids identical\n", py.c_str());
    for (int nt : {1, 2}) {
      std::string cmd = "RAYON_NUM_THREADS=" + std::to_string(nt) + " " + py + " " + script + " --tokenizer " +
                        dir + "/tokenizer.json --text " + text_path + " --reps " + std::to_string(reps) +
                        (nt == 1 && train_vocab > 0 ? " --train-vocab " + std::to_string(train_vocab) : "");
      FILE* p = popen(cmd.c_str(), "r");
      std::string out;
      char buf[4096];
      size_t n;
      while (p && (n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
      if (!p || pclose(p) != 0 || out.empty()) {
        std::printf("  (reference not run: `%s` failed; set QWEN_PYTHON to a Python with `tokenizers`)\n", cmd.c_str());
        break;
      }
      auto j = nlohmann::json::parse(out);
      bool same = j["whole_ids"].get<size_t>() == whole.size() && j["whole_checksum"].get<uint64_t>() == whole_sum &&
                  j["batch_ids"].get<size_t>() == batch_ids && j["batch_checksum"].get<uint64_t>() == batch_sum;
      double hw = j["whole_s"].get<double>(), hb = j["batch_s"].get<double>();
      std::printf("                         %7d  %17.2f  %17.2f  %s\n", nt, mb / hw, pmb / hb, same ? "yes" : "NO");
      const Row& r = rows[size_t(nt - 1)];
      std::printf("  ratio qwen / tokenizers: whole %.2fx, batch %.2fx\n", hw / r.whole_s, hb / r.batch_s);
      if (j.contains("train_s"))
        std::printf("  BpeTrainer, vocabulary %lld: %.2f s\n", (long long)train_vocab, j["train_s"].get<double>());
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
