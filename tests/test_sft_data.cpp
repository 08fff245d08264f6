// tests/test_sft_data.cpp — instruction-tuning data (src/train/sft_data.h): ids and loss mask of
// both JSONL forms against a hand-checked example and against golden files made by Hugging Face
// transformers + tokenizers (tests/data/sft/make_golden.py) with the real Qwen3 tokenizer;
// malformed lines with file:line under both policies; truncation; packing covers every example
// token exactly once per epoch; determinism and exact save/restore of the position; the
// evaluation rows and prompts; the exact-match scorer.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <memory>

#include "core/rng.h"
#include "qwen/error.h"
#include "qwen/tokenizer.h"
#include "test_util.h"
#include "train/sft_data.h"

using namespace qwen_test;
using namespace qwen::train;

namespace {

const qwen::Tokenizer& qwen3() {
  static const qwen::Tokenizer tok = qwen::Tokenizer::from_dir(data_path("tokenizer/qwen3"));
  return tok;
}

std::string sft(const std::string& f) { return data_path("sft/" + f); }

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const qwen::Error& e) {
    return e.what();
  }
  return "<no qwen::Error>";
}

void expect_contains(const std::string& m, std::initializer_list<std::string> frags) {
  for (const auto& f : frags) EXPECT_NE(m.find(f), std::string::npos) << "'" << f << "' not in: " << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << "one line: " << m;
}

SftOptions opts(int64_t seq, OnBadLine p = OnBadLine::stop, Truncate t = Truncate::keep_end) {
  SftOptions o;
  o.seq = seq;
  o.on_bad_line = p;
  o.truncate = t;
  return o;
}

std::vector<std::string> file_lines(const std::string& path) {
  std::vector<std::string> lines;
  std::string text = read_text(path), cur;
  for (char c : text) {
    if (c == '\n') { lines.push_back(cur); cur.clear(); } else cur += c;
  }
  if (!cur.empty()) lines.push_back(cur);
  return lines;
}

// Synthetic examples whose every id is unique (so a packed row can be read back), lengths
// 2..max_len, random masks with a 0 first position.
std::vector<SftExample> synthetic(int64_t n, int64_t max_len, uint64_t seed, bool all_loss = false) {
  qwen::Rng rng(seed);
  std::vector<SftExample> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t len = 2 + int64_t(rng.next() % uint64_t(max_len - 1));
    auto& ex = v[size_t(i)];
    for (int64_t t = 0; t < len; ++t) {
      ex.ids.push_back(int32_t(1 + i * 1000 + t));
      ex.loss_mask.push_back(t == 0 ? 0 : all_loss ? 1 : uint8_t(rng.next() % 3 != 0));
    }
    ex.loss_mask.back() = 1;
    ex.line = i + 1;
  }
  return v;
}

}  // namespace

// Worked out by hand from the Qwen3 vocabulary ("user" 872, "\n" 198, "Hi" 13048,
// "assistant" 77091, "\n\n" 271, "Hello" 9707; <|im_start|> 151644, <|im_end|> 151645,
// <think> 151667, </think> 151668) and the Qwen3 template, which writes an empty think block
// before the final answer; confirmed with HF tokenizers (golden_qwen3.json, pairs.jsonl:1).
TEST(SftTokenize, HandCheckedPromptResponse) {
  const std::vector<int32_t> want_ids = {151644, 872,    198, 13048,  151645, 198,  151644, 77091,
                                         198,    151667, 271, 151668, 271,    9707, 151645, 198};
  //                          <s> user \n  Hi  </s> \n  <s> assistant \n
  const std::vector<uint8_t> want_mask = {0, 0, 0, 0, 0, 0, 0, 0, 0,
  //                          <think> \n\n </think> \n\n Hello </s>   \n
                                          1, 1, 1, 1, 1, 1, 0};
  SftExample ex = tokenize_chat(qwen3(), {{"user", "Hi"}, {"assistant", "Hello"}});
  EXPECT_EQ(ex.ids, want_ids);
  EXPECT_EQ(ex.loss_mask, want_mask);
  EXPECT_EQ(ex.n_prompt, 9);
  EXPECT_EQ(ex.reference, "Hello");
  EXPECT_EQ(ex.n_loss(), 6);

  auto d = SftDataset::load(sft("pairs.jsonl"), qwen3(), opts(256));
  EXPECT_EQ(d.examples()[0].ids, want_ids);
  EXPECT_EQ(d.examples()[0].loss_mask, want_mask);
  EXPECT_EQ(d.examples()[0].line, 1);
  EXPECT_EQ(d.pad_id(), 151645);  // Qwen3's eos is <|im_end|>
}

TEST(SftTokenize, BothFormsMatchHuggingFace) {
  const auto golden = read_json(sft("golden_qwen3.json"));
  int n_checked = 0, n_differs = 0;
  for (const char* name : {"pairs.jsonl", "chat.jsonl"}) {
    auto d = SftDataset::load(sft(name), qwen3(), opts(512));
    const auto& rows = golden["files"][name];
    ASSERT_EQ(d.size(), int64_t(rows.size())) << name;
    EXPECT_EQ(d.report().n_skipped, 0);
    EXPECT_EQ(d.report().n_truncated, 0);
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& g = rows[i];
      const auto& ex = d.examples()[i];
      SCOPED_TRACE(std::string(name) + ":" + std::to_string(ex.line));
      EXPECT_EQ(ex.line, g["line"].get<int64_t>());
      EXPECT_EQ(ex.ids, g["ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(ex.loss_mask, g["mask"].get<std::vector<uint8_t>>());
      EXPECT_EQ(ex.n_prompt, g["n_prompt"].get<int64_t>());
      EXPECT_EQ(ex.reference, g["reference"].get<std::string>());
      // The documented claim: piece-wise ids equal the whole rendered string's ids, except
      // where a body starts with a line break (chat.jsonl:5).
      const auto whole = qwen3().encode(g["rendered"].get<std::string>(), false);
      EXPECT_EQ(whole, g["whole_ids"].get<std::vector<int32_t>>());
      EXPECT_EQ(whole == ex.ids, g["whole_equal"].get<bool>());
      n_differs += g["whole_equal"].get<bool>() ? 0 : 1;
      ++n_checked;
    }
  }
  EXPECT_EQ(n_checked, 10);
  EXPECT_EQ(n_differs, 1);
}

TEST(SftTokenize, EvalPromptIsTheGenerationPrompt) {
  // The evaluation prompt of an example is what apply_chat_template(..., add_generation_prompt)
  // gives for the conversation before its last answer, tokenised as at inference.
  auto d = SftDataset::load(sft("pairs.jsonl"), qwen3(), opts(512));
  SftEvalIterator it(d);
  const auto lines = file_lines(sft("pairs.jsonl"));
  for (int64_t i = 0; i < d.size(); ++i) {
    const auto j = nlohmann::json::parse(lines[size_t(i)]);
    qwen::train::ChatMessages m;
    if (j.contains("system")) m.emplace_back("system", j["system"].get<std::string>());
    m.emplace_back("user", j["prompt"].get<std::string>());
    const auto want = qwen3().encode(qwen3().apply_chat_template(m, true), false);
    EXPECT_EQ(it.prompt_ids(i), want) << "line " << i + 1;
    EXPECT_EQ(it.reference(i), j["response"].get<std::string>());
  }
}

TEST(SftBadLines, StopReportsFileAndLine) {
  const std::string path = sft("bad.jsonl");
  std::string m = error_of([&] { SftDataset::load(path, qwen3(), opts(64)); });
  expect_contains(m, {path + ":2:", "not valid JSON", "skip"});

  // Each malformed line, alone after good lines (earlier bad lines blanked so the numbering
  // stays), names its line and what is wrong.
  const std::map<int, std::string> why = {
      {2, "not valid JSON"},      {4, "no \"response\""},      {6, "unknown role 'tool'"},
      {7, "\"response\" is empty"}, {8, "must be a JSON object"}, {9, "no assistant message"},
      {10, "must be a string, not a number"}, {11, "ChatML marker <|im_end|>"},
      {13, "neither is present"}};
  const auto lines = file_lines(path);
  ASSERT_EQ(lines.size(), 13u);
  for (const auto& [line, frag] : why) {
    std::string text;
    for (int k = 1; k <= line; ++k) text += (why.count(k) && k != line ? "" : lines[size_t(k - 1)]) + "\n";
    m = error_of([&] { SftDataset::from_text(text, "x.jsonl", qwen3(), opts(64)); });
    expect_contains(m, {"x.jsonl:" + std::to_string(line) + ":", frag});
  }
}

TEST(SftBadLines, SkipCountsAndLists) {
  const std::string path = sft("bad.jsonl");
  auto d = SftDataset::load(path, qwen3(), opts(64, OnBadLine::skip));
  const auto& r = d.report();
  EXPECT_EQ(r.n_lines, 12);  // line 5 is blank
  EXPECT_EQ(r.n_examples, 3);
  ASSERT_EQ(d.size(), 3);
  EXPECT_EQ(d.examples()[0].line, 1);
  EXPECT_EQ(d.examples()[1].line, 3);
  EXPECT_EQ(d.examples()[2].line, 12);
  EXPECT_EQ(r.n_skipped, 9);
  EXPECT_EQ(r.skipped_lines, (std::vector<int64_t>{2, 4, 6, 7, 8, 9, 10, 11, 13}));
  ASSERT_EQ(r.skipped_errors.size(), 9u);
  for (size_t i = 0; i < 9; ++i)
    EXPECT_EQ(r.skipped_errors[i].rfind(path + ":" + std::to_string(r.skipped_lines[i]) + ":", 0), 0u)
        << r.skipped_errors[i];
  expect_contains(r.summary(), {"3 examples", "skipped 9 malformed lines (2, 4, 6, 7, 8, 9, 10, 11, 13)"});

  SftOptions few = opts(64, OnBadLine::skip);
  few.max_listed = 2;
  auto d2 = SftDataset::load(path, qwen3(), few);
  EXPECT_EQ(d2.report().skipped_errors.size(), 2u);
  EXPECT_EQ(d2.report().n_skipped, 9);
}

TEST(SftBadLines, FileLevelErrors) {
  expect_contains(error_of([] { SftDataset::load("/nonexistent/sft.jsonl", qwen3(), opts(64)); }),
                  {"/nonexistent/sft.jsonl"});
  expect_contains(error_of([] { SftDataset::from_text("\n  \n", "e.jsonl", qwen3(), opts(64)); }),
                  {"e.jsonl", "no examples"});
  expect_contains(error_of([] {
                    SftDataset::from_text("nope\n{}\n", "b.jsonl", qwen3(), opts(64, OnBadLine::skip));
                  }),
                  {"b.jsonl", "no usable example", "b.jsonl:1:"});
  expect_contains(error_of([] { SftDataset::from_text("{\"prompt\":\"a\",\"response\":\"b\"}", "s", qwen3(), opts(0)); }),
                  {"--seq"});
  // CRLF line ends and a BOM are accepted.
  auto d = SftDataset::from_text("\xEF\xBB\xBF{\"prompt\":\"Hi\",\"response\":\"Hello\"}\r\n", "crlf", qwen3(), opts(64));
  EXPECT_EQ(d.examples()[0].ids, tokenize_chat(qwen3(), {{"user", "Hi"}, {"assistant", "Hello"}}).ids);
}

TEST(SftTruncate, KeepEndAndKeepStart) {
  const auto golden = read_json(sft("golden_qwen3.json"));
  const auto& rows = golden["files"]["chat.jsonl"];
  for (Truncate side : {Truncate::keep_end, Truncate::keep_start}) {
    const int64_t seq = 9;  // rows of 10 tokens: every chat.jsonl example is longer
    auto d = SftDataset::load(sft("chat.jsonl"), qwen3(), opts(seq, OnBadLine::stop, side));
    int64_t k = 0, dropped = 0;
    for (const auto& g : rows) {
      auto ids = g["ids"].get<std::vector<int32_t>>();
      auto mask = g["mask"].get<std::vector<uint8_t>>();
      const size_t cut = side == Truncate::keep_end ? ids.size() - 10 : 0;
      std::vector<int32_t> want_ids(ids.begin() + cut, ids.begin() + cut + 10);
      std::vector<uint8_t> want_mask(mask.begin() + cut, mask.begin() + cut + 10);
      want_mask[0] = 0;
      if (std::count(want_mask.begin(), want_mask.end(), 1) == 0) {
        ++dropped;
        continue;
      }
      ASSERT_LT(k, d.size());
      const auto& ex = d.examples()[size_t(k++)];
      EXPECT_EQ(ex.line, g["line"].get<int64_t>());
      EXPECT_TRUE(ex.truncated);
      EXPECT_EQ(ex.ids, want_ids);
      EXPECT_EQ(ex.loss_mask, want_mask);
    }
    EXPECT_EQ(k, d.size());
    EXPECT_EQ(d.report().n_truncated, int64_t(rows.size()));
    EXPECT_EQ(d.report().n_dropped, dropped);
    // keep_end drops chat.jsonl:4, whose last 10 tokens are a trailing user question.
    if (side == Truncate::keep_end) {
      EXPECT_EQ(dropped, 1);
    }
  }
}

TEST(SftPack, EveryTokenExactlyOncePerEpoch) {
  const int64_t seq = 37;
  auto d = SftDataset::from_examples(synthetic(203, 30, 5, /*all_loss=*/true), 0, opts(seq));
  SftPacker p(d, 11);
  for (int epoch = 0; epoch < 3; ++epoch) {
    ASSERT_EQ(p.state().epoch, epoch);
    const int64_t R = p.rows_in_epoch();
    std::vector<int32_t> tok(size_t(R * seq)), tgt(size_t(R * seq));
    p.next_batch(R, tok.data(), tgt.data());
    // Read every id back from the rows (the row's last id shows as the last target).
    std::map<int32_t, int> seen;
    int64_t n_targets = 0;
    for (int64_t r = 0; r < R; ++r) {
      for (int64_t t = 0; t < seq; ++t) {
        if (tok[size_t(r * seq + t)] != 0) ++seen[tok[size_t(r * seq + t)]];
        n_targets += tgt[size_t(r * seq + t)] >= 0;
      }
      if (tgt[size_t(r * seq + seq - 1)] >= 0) ++seen[tgt[size_t(r * seq + seq - 1)]];
      // Targets follow the tokens by one, except across examples (id jumps) and padding.
      for (int64_t t = 0; t + 1 < seq; ++t) {
        const int32_t a = tok[size_t(r * seq + t)], b = tok[size_t(r * seq + t + 1)];
        EXPECT_EQ(tgt[size_t(r * seq + t)], b != 0 && b == a + 1 ? b : -1);
      }
    }
    int64_t n_tokens = 0, n_loss = 0;
    for (const auto& ex : d.examples()) {
      n_tokens += int64_t(ex.ids.size());
      n_loss += ex.n_loss();
      for (int32_t id : ex.ids) EXPECT_EQ(seen[id], 1) << "id " << id << " epoch " << epoch;
    }
    EXPECT_EQ(int64_t(seen.size()), n_tokens);
    EXPECT_EQ(n_targets, n_loss);
    // Fill: rows are only closed when the next example does not fit.
    EXPECT_LT(R, n_tokens / (seq + 1) * 2);
  }
}

TEST(SftPack, RowsFollowTheLayoutAndTheMask) {
  const int64_t seq = 29;
  auto d = SftDataset::from_examples(synthetic(97, 40, 9), 7, opts(seq));  // some exceed seq + 1
  EXPECT_GT(d.report().n_truncated, 0);
  SftPacker p(d, 3);
  const auto layout = p.layout(0);
  ASSERT_EQ(int64_t(layout.size()), p.rows_in_epoch());
  std::vector<int> count(size_t(d.size()), 0);
  for (size_t r = 0; r < layout.size(); ++r) {
    std::vector<int32_t> row;
    std::vector<uint8_t> mask;
    for (int64_t e : layout[r]) {
      ++count[size_t(e)];
      const auto& ex = d.examples()[size_t(e)];
      row.insert(row.end(), ex.ids.begin(), ex.ids.end());
      mask.insert(mask.end(), ex.loss_mask.begin(), ex.loss_mask.end());
    }
    ASSERT_LE(int64_t(row.size()), seq + 1);
    if (r + 1 < layout.size()) {  // greedy: the next row's first example did not fit here
      EXPECT_GT(int64_t(row.size() + d.examples()[size_t(layout[r + 1][0])].ids.size()), seq + 1);
    }
    row.resize(size_t(seq + 1), 7);
    mask.resize(size_t(seq + 1), 0);
    std::vector<int32_t> tok(static_cast<size_t>(seq)), tgt(static_cast<size_t>(seq));
    p.next_batch(1, tok.data(), tgt.data());
    for (int64_t t = 0; t < seq; ++t) {
      EXPECT_EQ(tok[size_t(t)], row[size_t(t)]);
      EXPECT_EQ(tgt[size_t(t)], mask[size_t(t + 1)] ? row[size_t(t + 1)] : -1);
    }
  }
  for (int c : count) EXPECT_EQ(c, 1);
}

TEST(SftPack, DeterministicPerSeedAndEpoch) {
  auto d = SftDataset::from_examples(synthetic(150, 20, 21), 0, opts(64));
  auto run = [&](uint64_t seed, int64_t n_batches) {
    SftPacker p(d, seed);
    std::vector<int32_t> all, tok(4 * 64), tgt(4 * 64);
    for (int64_t i = 0; i < n_batches; ++i) {
      p.next_batch(4, tok.data(), tgt.data());
      all.insert(all.end(), tok.begin(), tok.end());
      all.insert(all.end(), tgt.begin(), tgt.end());
    }
    return all;
  };
  EXPECT_EQ(run(42, 30), run(42, 30));
  EXPECT_NE(run(42, 30), run(43, 30));
  SftPacker p(d, 42);
  EXPECT_EQ(p.layout(1), p.layout(1));
  EXPECT_NE(p.layout(0), p.layout(1));  // reshuffled every epoch
}

TEST(SftPack, SaveRestoreIsExact) {
  const int64_t seq = 48, B = 3;
  auto d = SftDataset::from_examples(synthetic(120, 25, 33), 0, opts(seq));
  SftPacker a(d, 77);
  std::vector<int32_t> ta(size_t(B * seq)), ga(size_t(B * seq)), tb(ta), gb(ga);
  const int64_t rows = a.rows_in_epoch();
  // Stop mid-epoch at several points, including just before the epoch ends; restore into a
  // fresh packer and compare the following batches (which cross into the next epochs).
  for (int64_t warm : {int64_t(0), int64_t(1), rows / B, rows / B + 1}) {
    SftPacker x(d, 77);
    for (int64_t i = 0; i < warm; ++i) x.next_batch(B, ta.data(), ga.data());
    const std::string saved = x.save_state();
    EXPECT_EQ(saved.find('\n'), std::string::npos);
    SftPacker y(d, 1);  // seed comes from the state
    y.restore_state(saved);
    EXPECT_EQ(y.state().epoch, x.state().epoch);
    EXPECT_EQ(y.state().row, x.state().row);
    EXPECT_EQ(y.state().seed, 77u);
    for (int64_t i = 0; i < 2 * rows / B + 2; ++i) {
      x.next_batch(B, ta.data(), ga.data());
      y.next_batch(B, tb.data(), gb.data());
      ASSERT_EQ(ta, tb) << "warm " << warm << " batch " << i;
      ASSERT_EQ(ga, gb);
    }
  }
  // Large seeds survive the JSON round trip.
  SftPacker big(d, 0xfedcba9876543210ull);
  SftPacker big2(d, 0);
  big2.restore_state(big.save_state());
  EXPECT_EQ(big2.state().seed, 0xfedcba9876543210ull);

  // Another data set or seq, garbage, or a row outside the epoch: one-line errors.
  auto other = SftDataset::from_examples(synthetic(120, 25, 34), 0, opts(seq));
  SftPacker o(other, 77);
  expect_contains(error_of([&] { o.restore_state(a.save_state()); }), {"other data", "--seq"});
  auto other_seq = SftDataset::from_examples(synthetic(120, 25, 33), 0, opts(seq + 1));
  SftPacker os(other_seq, 77);
  expect_contains(error_of([&] { os.restore_state(a.save_state()); }), {"other data"});
  expect_contains(error_of([&] { a.restore_state("{not json"); }), {"not valid"});
  expect_contains(error_of([&] { a.restore_state("{\"format\":\"x\"}"); }), {"not a qwen-sft-loader"});
  SftLoaderState bad = a.state();
  bad.row = rows + 1;
  expect_contains(error_of([&] { a.set_state(bad); }), {"outside epoch"});
}

TEST(SftEval, OneExamplePerRowPadded) {
  const int64_t seq = 40;
  auto d = SftDataset::load(sft("chat.jsonl"), qwen3(), opts(seq));
  ASSERT_EQ(d.size(), 5);
  SftEvalIterator it(d);
  std::vector<int32_t> tok(size_t(2 * seq)), tgt(size_t(2 * seq));
  int64_t seen = 0;
  while (!it.done()) {
    const int64_t first = it.position();
    const int64_t n = it.next_batch(2, tok.data(), tgt.data());
    ASSERT_EQ(n, std::min<int64_t>(2, d.size() - first));
    for (int64_t b = 0; b < 2; ++b) {
      const int32_t* tr = tok.data() + b * seq;
      const int32_t* gr = tgt.data() + b * seq;
      if (b >= n) {  // past the end: padding only
        for (int64_t t = 0; t < seq; ++t) EXPECT_EQ(tr[t], d.pad_id());
        for (int64_t t = 0; t < seq; ++t) EXPECT_EQ(gr[t], -1);
        continue;
      }
      const auto& ex = d.examples()[size_t(first + b)];
      int64_t n_targets = 0;
      for (int64_t t = 0; t < seq; ++t) {
        const bool real = t < int64_t(ex.ids.size());
        EXPECT_EQ(tr[t], real ? ex.ids[size_t(t)] : d.pad_id());
        const bool counted = t + 1 < int64_t(ex.ids.size()) && ex.loss_mask[size_t(t + 1)];
        EXPECT_EQ(gr[t], counted ? ex.ids[size_t(t + 1)] : -1);
        n_targets += gr[t] >= 0;
      }
      EXPECT_EQ(n_targets, ex.n_loss());
      ++seen;
    }
  }
  EXPECT_EQ(seen, d.size());
  EXPECT_EQ(it.next_batch(2, tok.data(), tgt.data()), 0);
  it.reset();
  EXPECT_EQ(it.position(), 0);
}

TEST(SftScore, ExactMatch) {
  EXPECT_TRUE(exact_match("ANSWER: 82", "ANSWER: 82"));
  EXPECT_TRUE(exact_match("  ANSWER: 82\n<|im_end|>garbage", "ANSWER: 82"));
  EXPECT_TRUE(exact_match("<think>\n\n</think>\n\nANSWER: 82<|endoftext|>", "ANSWER: 82"));
  EXPECT_TRUE(exact_match("ANSWER: 82", "<think>x</think>ANSWER: 82"));
  EXPECT_FALSE(exact_match("ANSWER: 83", "ANSWER: 82"));
  EXPECT_FALSE(exact_match("answer: 82", "ANSWER: 82"));
  EXPECT_FALSE(exact_match("ANSWER:  82", "ANSWER: 82"));
  EXPECT_FALSE(exact_match("ANSWER: 82.", "ANSWER: 82"));
  EXPECT_FALSE(exact_match("The ANSWER: 82", "ANSWER: 82"));
  EXPECT_FALSE(exact_match("", "ANSWER: 82"));
  EXPECT_EQ(normalize_answer("<think>a</think> x <|im_end|>"), "x");
}
