// tests/test_tokenizer_cli.cpp — `qwen tokenizer encode|decode|train|info` as outside scripts use
// them (the built CLI at QWEN_BIN, stdin -> stdout): plain / --json / --jsonl output, special
// tokens on and off, decode with and without --skip-special, training, and one-line errors.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

namespace {

const std::string kData = std::string(QWEN_TEST_DATA) + "/tokenizer";
const std::string kQwen = kData + "/qwen3";

std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          ("qwen_tok_cli_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct CliRun {
  int code;
  std::string out, err;
};

// Runs `qwen ARGS` with `input` on stdin.
CliRun qwen(const std::string& args, const std::string& input) {
  std::string in = tmp_path("in"), out = tmp_path("out"), err = tmp_path("err");
  std::ofstream(in, std::ios::binary) << input;
  std::string cmd = std::string("'") + QWEN_BIN + "' " + args + " < '" + in + "' > '" + out + "' 2> '" + err + "'";
  int st = std::system(cmd.c_str());
  CliRun r{WIFEXITED(st) ? WEXITSTATUS(st) : -1, read_file(out), read_file(err)};
  std::filesystem::remove(in);
  std::filesystem::remove(out);
  std::filesystem::remove(err);
  return r;
}

}  // namespace

TEST(TokenizerCli, Encode) {
  CliRun r = qwen("tokenizer encode --tokenizer " + kQwen, "Hello world");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "9707 1879\n");
  r = qwen("tokenizer encode --tokenizer " + kQwen + " --json", " Hello world<|im_end|>");
  EXPECT_EQ(r.out, "{\"ids\": [21927, 1879, 151645]}\n");
  // the input is taken byte for byte (here with its final newline)
  r = qwen("tokenizer encode --tokenizer " + kQwen, "Hello world\n");
  EXPECT_EQ(r.out, "9707 1879 198\n");
  // Llama-3 style: the template adds <|begin_of_text|> unless --no-special
  std::string l3 = kData + "/llama3_style";
  CliRun with = qwen("tokenizer encode --tokenizer " + l3, "hi there");
  CliRun without = qwen("tokenizer encode --tokenizer " + l3 + " --no-special", "hi there");
  EXPECT_EQ(with.out, "0 " + without.out);  // <|begin_of_text|> is id 0 in that file
}

TEST(TokenizerCli, EncodeJsonl) {
  CliRun r = qwen("tokenizer encode --tokenizer " + kQwen + " --jsonl",
               "{\"text\": \"Hello world\"}\n{\"text\": \" Hello world\"}\n\n{\"text\": \"\"}\n");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"ids\": [9707, 1879]}\n{\"ids\": [21927, 1879]}\n{\"ids\": []}\n");
  // many lines keep their order through the threaded batches
  std::string in, want;
  for (int i = 0; i < 5000; ++i) {
    in += "{\"text\": \"Hello world\"}\n{\"text\": \" Hello world\"}\n";
    want += "{\"ids\": [9707, 1879]}\n{\"ids\": [21927, 1879]}\n";
  }
  EXPECT_EQ(qwen("tokenizer encode --tokenizer " + kQwen + " --jsonl --threads 2", in).out, want);
  r = qwen("tokenizer encode --tokenizer " + kQwen + " --jsonl", "{\"text\": 5}\n");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("line 1"), std::string::npos) << r.err;
}

TEST(TokenizerCli, Decode) {
  CliRun r = qwen("tokenizer decode --tokenizer " + kQwen, "9707 1879 151645\n");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "Hello world<|im_end|>");
  EXPECT_EQ(qwen("tokenizer decode --tokenizer " + kQwen + " --skip-special", "[9707, 1879, 151645]").out,
            "Hello world");
  EXPECT_EQ(qwen("tokenizer decode --tokenizer " + kQwen, "{\"ids\": [21927,1879]}").out, " Hello world");
  EXPECT_EQ(qwen("tokenizer decode --tokenizer " + kQwen + " --jsonl", "{\"ids\": [9707]}\n[1879]\n").out,
            "{\"text\":\"Hello\"}\n{\"text\":\" world\"}\n");
  r = qwen("tokenizer decode --tokenizer " + kQwen, "12 x 13");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.err, "error: tokenizer decode: stdin: expected token ids (integers), found \"x\"\n");
}

TEST(TokenizerCli, TrainThenEncode) {
  std::string dir = tmp_path("trained");
  CliRun r = qwen("tokenizer train --input " + kData + "/train_corpus.txt --vocab-size 700 --out " + dir + " --quiet", "");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_file(dir + "/tokenizer.json"), read_file(kData + "/trained/tokenizer.json"));
  CliRun e = qwen("tokenizer encode --tokenizer " + dir + " --no-special", "In the beginning");
  EXPECT_EQ(e.code, 0) << e.err;
  CliRun d = qwen("tokenizer decode --tokenizer " + dir, e.out);
  EXPECT_EQ(d.out, "In the beginning");
  std::filesystem::remove_all(dir);
}

TEST(TokenizerCli, ErrorsAreOneLine) {
  for (const std::string& args :
       {std::string("tokenizer encode --tokenizer /nonexistent"),
        std::string("tokenizer train --input /nonexistent.txt --vocab-size 500 --out ") + tmp_path("x"),
        std::string("tokenizer train --input ") + kData + "/train_corpus.txt --vocab-size 10 --out " + tmp_path("y")}) {
    CliRun r = qwen(args, "");
    EXPECT_NE(r.code, 0) << args;
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  }
  CliRun r = qwen("tokenizer encode --tokenizer " + kQwen, std::string("bad \xFF byte"));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("not valid UTF-8"), std::string::npos) << r.err;
  r = qwen("tokenizer info --tokenizer " + kQwen, "");
  EXPECT_EQ(r.out, "{\"bos_id\":-1,\"eos_id\":151645,\"pad_id\":151643,\"stop_ids\":[151645,151643],\"vocab_size\":151669}\n");
}
