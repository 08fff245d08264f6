// tests/test_util.h — small helpers shared by the tests: reading golden files, temp folders,
// running the CLI.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace qwen_test {

inline std::string data_path(const std::string& rel) { return std::string(QWEN_TEST_DATA) + "/" + rel; }

inline std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text(path)); }

inline std::vector<float> read_f32(const std::string& path) {
  std::string s = read_text(path);
  std::vector<float> v(s.size() / 4);
  std::memcpy(v.data(), s.data(), v.size() * 4);
  return v;
}

// A fresh empty folder under the system temp dir, removed when the object dies.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("qwen-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::error_code ec; std::filesystem::remove_all(path, ec); }
  std::string str(const std::string& rel = "") const { return rel.empty() ? path.string() : (path / rel).string(); }
};

struct RunResult {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Run the built `qwen` CLI with arguments (a shell string) and optional stdin text.
inline RunResult run_qwen(const std::string& args, const std::string& stdin_text = "") {
  TempDir td;
  std::string in = td.str("in"), out = td.str("out"), err = td.str("err");
  { std::ofstream(in, std::ios::binary) << stdin_text; }
  std::string cmd = std::string(QWEN_BIN) + " " + args + " <" + in + " >" + out + " 2>" + err;
  int rc = std::system(cmd.c_str());
  RunResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

}  // namespace qwen_test
