// tests/test_train_data.cpp — token shards (round trip in both id widths, every corruption the
// reader must name), `data prepare` (documents, eos separators, validation split, tokenizer
// copy), and the loader: shuffled windows are a permutation per epoch and reproducible from the
// seed and a saved position; --sequential rows follow the k·B … k·B+B−1 rule and wrap.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "qwen/error.h"
#include "qwen/tokenizer.h"
#include "test_util.h"
#include "train/data.h"

using namespace qwen_test;
using namespace qwen::train;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> random_ids(size_t n, int32_t max_id, uint64_t seed) {
  qwen::Rng rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = int32_t(rng.next() % uint64_t(max_id + 1));
  return v;
}

std::vector<int32_t> read_all(const Shard& s) {
  std::vector<int32_t> v(size_t(s.size()));
  s.read(0, s.size(), v.data());
  return v;
}

// Expect qwen::Error whose message contains every fragment.
template <class F>
void expect_error(F&& f, std::initializer_list<const char*> fragments) {
  try {
    f();
    ADD_FAILURE() << "no qwen::Error thrown";
  } catch (const qwen::Error& e) {
    const std::string m = e.what();
    for (const char* frag : fragments) EXPECT_NE(m.find(frag), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "one line: " << m;
  }
}

std::string ids_text(const std::vector<int32_t>& v, const char* sep = " ") {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

TEST(TrainShard, RoundTripBothWidths) {
  TempDir td;
  for (int32_t max_id : {1000, 65535, 65536, 200000}) {
    auto ids = random_ids(4097, max_id, uint64_t(max_id));
    ids[17] = max_id;  // the width depends on the largest id
    const std::string p = td.str("s" + std::to_string(max_id) + ".bin");
    write_shard(p, ids);
    auto s = Shard::open(p);
    EXPECT_EQ(s->bytes_per_id(), max_id <= 65535 ? 2 : 4);
    EXPECT_EQ(s->size(), int64_t(ids.size()));
    EXPECT_EQ(read_all(*s), ids);
    EXPECT_EQ(s->at(17), max_id);
    EXPECT_EQ(fs::file_size(p), kShardHeaderBytes + ids.size() * size_t(s->bytes_per_id()));
    EXPECT_FALSE(fs::exists(p + ".tmp"));
  }
  // An empty shard is valid.
  write_shard(td.str("empty.bin"), {});
  EXPECT_EQ(Shard::open(td.str("empty.bin"))->size(), 0);
}

TEST(TrainShard, CorruptFilesAreNamed) {
  TempDir td;
  const std::string good = td.str("good.bin");
  write_shard(good, random_ids(100, 500, 1));
  const std::string bytes = read_text(good);
  auto variant = [&](const std::string& name, std::string s) {
    std::ofstream(td.str(name), std::ios::binary) << s;
    return td.str(name);
  };
  std::string s = bytes;
  s[0] = 'X';
  expect_error([&] { Shard::open(variant("magic.bin", s)); }, {"magic.bin", "wrong magic"});
  expect_error([&] { Shard::open(variant("trunc.bin", bytes.substr(0, bytes.size() - 3))); },
               {"trunc.bin", "truncated", "100 ids"});
  expect_error([&] { Shard::open(variant("short.bin", bytes.substr(0, 10))); },
               {"short.bin", "truncated", "header"});
  expect_error([&] { Shard::open(variant("long.bin", bytes + "xy")); }, {"long.bin", "2 bytes after"});
  s = bytes;
  s[8] = 9;
  expect_error([&] { Shard::open(variant("version.bin", s)); }, {"version.bin", "version 9"});
  s = bytes;
  s[12] = 3;
  expect_error([&] { Shard::open(variant("width.bin", s)); }, {"width.bin", "id width"});
  expect_error([&] { Shard::open(td.str("missing.bin")); }, {"missing.bin", "cannot open"});
}

TEST(TrainPrepare, IdsFilesSplitAndSeparators) {
  TempDir td;
  auto d1 = random_ids(1000, 300, 2), d2 = random_ids(501, 300, 3);
  std::ofstream(td.str("a.txt")) << ids_text(d1, ", ") << "\n";
  std::ofstream(td.str("b.txt")) << ids_text(d2, "\n");
  // One document, no tokenizer: the training split is the ids verbatim, then the tail is val.
  PrepareOptions o;
  o.ids_files = {td.str("a.txt")};
  o.out_dir = td.str("one");
  o.val_fraction = 0.1;
  o.verbose = false;
  DataMeta m = prepare_data(o);
  EXPECT_EQ(m.n_train_tokens, 900);
  EXPECT_EQ(m.n_val_tokens, 100);
  EXPECT_EQ(m.eos_id, -1);
  TokenStream tr(o.out_dir, "train"), va(o.out_dir, "val");
  std::vector<int32_t> got(900), gotv(100);
  tr.read(0, 900, got.data());
  va.read(0, 100, gotv.data());
  EXPECT_EQ(got, std::vector<int32_t>(d1.begin(), d1.begin() + 900));
  EXPECT_EQ(gotv, std::vector<int32_t>(d1.begin() + 900, d1.end()));
  EXPECT_EQ(m.vocab_size, *std::max_element(d1.begin(), d1.end()) + 1);

  // Two documents with a tokenizer: eos between them in each split; small shards force the
  // stream to cross shard boundaries.
  const std::string tokdir = data_path("tokenizer/trained");
  const int32_t eos = qwen::Tokenizer::from_dir(tokdir).eos_id();
  ASSERT_GE(eos, 0);
  o.ids_files = {td.str("a.txt"), td.str("b.txt")};
  o.tokenizer_dir = tokdir;
  o.out_dir = td.str("two");
  o.shard_tokens = 97;
  m = prepare_data(o);
  EXPECT_EQ(m.eos_id, eos);
  std::vector<int32_t> want = std::vector<int32_t>(d1.begin(), d1.begin() + 900);
  want.push_back(eos);
  want.insert(want.end(), d2.begin(), d2.begin() + 451);  // 501 - floor(50.1)
  std::vector<int32_t> wantv(d1.begin() + 900, d1.end());
  wantv.push_back(eos);
  wantv.insert(wantv.end(), d2.begin() + 451, d2.end());
  TokenStream tr2(o.out_dir, "train"), va2(o.out_dir, "val");
  ASSERT_EQ(tr2.size(), int64_t(want.size()));
  ASSERT_EQ(va2.size(), int64_t(wantv.size()));
  EXPECT_EQ(m.train_shards.size(), (want.size() + 96) / 97);
  got.resize(want.size());
  tr2.read(0, tr2.size(), got.data());
  EXPECT_EQ(got, want);
  // A read that starts and ends inside different shards.
  std::vector<int32_t> mid(300);
  tr2.read(90, 300, mid.data());
  EXPECT_EQ(mid, std::vector<int32_t>(want.begin() + 90, want.begin() + 390));
  gotv.resize(wantv.size());
  va2.read(0, va2.size(), gotv.data());
  EXPECT_EQ(gotv, wantv);
  EXPECT_TRUE(fs::exists(o.out_dir + "/tokenizer/tokenizer.json"));
  EXPECT_EQ(m.vocab_size, qwen::Tokenizer::from_dir(tokdir).vocab_size());
}

TEST(TrainPrepare, TextInputsMatchTheTokenizer) {
  TempDir td;
  const std::string tokdir = data_path("tokenizer/trained");
  qwen::Tokenizer tok = qwen::Tokenizer::from_dir(tokdir);
  const std::string a = "It is a truth universally acknowledged, that a single man in possession "
                        "of a good fortune, must be in want of a wife.\n";
  const std::string b = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home.\n";
  std::ofstream(td.str("a.txt")) << a;
  std::ofstream(td.str("b.txt")) << b;
  PrepareOptions o;
  o.inputs = {td.str("a.txt"), td.str("b.txt")};
  o.tokenizer_dir = tokdir;
  o.out_dir = td.str("d");
  o.val_fraction = 0;
  o.verbose = false;
  DataMeta m = prepare_data(o);
  std::vector<int32_t> want = tok.encode(a, true);
  want.push_back(tok.eos_id());
  auto eb = tok.encode(b, true);
  want.insert(want.end(), eb.begin(), eb.end());
  TokenStream tr(o.out_dir, "train");
  std::vector<int32_t> got(size_t(tr.size()));
  tr.read(0, tr.size(), got.data());
  EXPECT_EQ(got, want);
  EXPECT_EQ(m.n_val_tokens, 0);
  EXPECT_EQ(m.n_documents, 2);
}

TEST(TrainPrepare, BadInputIsNamed) {
  TempDir td;
  PrepareOptions o;
  o.out_dir = td.str("d");
  o.verbose = false;
  expect_error([&] { prepare_data(o); }, {"--input", "--ids-file"});
  o.inputs = {td.str("nope.txt")};
  expect_error([&] { prepare_data(o); }, {"--tokenizer"});
  o.tokenizer_dir = data_path("tokenizer/trained");
  expect_error([&] { prepare_data(o); }, {"nope.txt"});
  o.inputs.clear();
  std::ofstream(td.str("bad.txt")) << "1 2 x3 4";
  o.ids_files = {td.str("bad.txt")};
  expect_error([&] { prepare_data(o); }, {"bad.txt", "x3"});
  std::ofstream(td.str("big.txt")) << "1 2 100000";
  o.ids_files = {td.str("big.txt")};
  expect_error([&] { prepare_data(o); }, {"100000", "tokenizer"});
  o.ids_files = {td.str("bad.txt")};
  o.val_fraction = 1.0;
  expect_error([&] { prepare_data(o); }, {"--val-fraction"});
  // Reading a folder that is not there / not prepared.
  expect_error([&] { TokenStream(td.str("missing"), "train"); }, {"missing", "does not exist", "data prepare"});
  fs::create_directories(td.str("empty"));
  expect_error([&] { TokenStream(td.str("empty"), "train"); }, {"meta.json"});
  // A shard that meta.json lists but that was cut short.
  std::ofstream(td.str("ok.txt")) << ids_text(random_ids(300, 50, 4));
  o.ids_files = {td.str("ok.txt")};
  o.tokenizer_dir.clear();
  o.val_fraction = 0.1;
  o.out_dir = td.str("cut");
  prepare_data(o);
  fs::resize_file(td.str("cut/train_000.bin"), 100);
  expect_error([&] { TokenStream(td.str("cut"), "train"); }, {"train_000.bin", "truncated"});
}

namespace {

// A data folder whose training stream is 0, 1, 2, ... n-1 (so windows are easy to check).
std::string counting_data(const TempDir& td, int64_t n) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t(i);
  std::ofstream(td.str("count.txt")) << ids_text(ids);
  PrepareOptions o;
  o.ids_files = {td.str("count.txt")};
  o.out_dir = td.str("count");
  o.val_fraction = 0;
  o.verbose = false;
  o.shard_tokens = 1000;
  prepare_data(o);
  return o.out_dir;
}

}  // namespace

TEST(TrainLoader, SequentialRowsAndWrap) {
  TempDir td;
  const int64_t N = 5000, T = 31, B = 3;
  TokenStream s(counting_data(td, N), "train");
  DataLoader dl(s, B, T, 123, true);
  const int64_t rows = N / (T + 1);
  EXPECT_EQ(dl.windows_per_epoch(), rows);
  std::vector<int32_t> tk(size_t(B * T)), tg(size_t(B * T));
  for (int64_t k = 0; k < 2 * rows / B + 3; ++k) {  // past the end: wraps
    dl.next(tk.data(), tg.data());
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = (k * B + b) % rows;
      for (int64_t t = 0; t < T; ++t) {
        ASSERT_EQ(tk[size_t(b * T + t)], row * (T + 1) + t) << "batch " << k << " row " << b;
        ASSERT_EQ(tg[size_t(b * T + t)], row * (T + 1) + t + 1);
      }
    }
  }
  // The seed does not matter in sequential mode.
  DataLoader a(s, B, T, 1, true), b(s, B, T, 2, true);
  std::vector<int32_t> ta(size_t(B * T)), tb(size_t(B * T)), ga(size_t(B * T)), gb(size_t(B * T));
  a.next(ta.data(), ga.data());
  b.next(tb.data(), gb.data());
  EXPECT_EQ(ta, tb);
}

TEST(TrainLoader, ShuffledWindowsArePermutationsAndReproducible) {
  TempDir td;
  const int64_t N = 4003, T = 16, B = 5;
  TokenStream s(counting_data(td, N), "train");
  DataLoader dl(s, B, T, 7, false);
  const int64_t n = dl.windows_per_epoch();
  EXPECT_GE(n, (N - 1) / T - 1);
  EXPECT_LE(n, (N - 1) / T);
  // One epoch: windows are consecutive ids, targets shifted by one, starts on one grid, each
  // start exactly once.
  std::vector<int32_t> tk(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
  std::set<int64_t> starts;
  int64_t offset = -1;
  DataLoader one(s, 1, T, 7, false);
  for (int64_t i = 0; i < n; ++i) {
    one.next(tk.data(), tg.data());
    for (int64_t t = 0; t < T; ++t) {
      ASSERT_EQ(tk[size_t(t)], tk[0] + t);
      ASSERT_EQ(tg[size_t(t)], tk[0] + t + 1);
    }
    if (offset < 0) offset = tk[0] % T;
    EXPECT_EQ(tk[0] % T, offset);
    starts.insert(tk[0]);
  }
  EXPECT_EQ(int64_t(starts.size()), n);
  EXPECT_EQ(one.state().epoch, 0);
  // Shuffled: not in increasing order.
  std::vector<int64_t> first;
  DataLoader again(s, 1, T, 7, false);
  for (int i = 0; i < 20; ++i) {
    again.next(tk.data(), tg.data());
    first.push_back(tk[0]);
  }
  EXPECT_FALSE(std::is_sorted(first.begin(), first.end()));
  // The next epoch starts after n windows and has another order.
  one.next(tk.data(), tg.data());
  EXPECT_EQ(one.state().epoch, 1);

  // Same seed -> same batches; different seed -> different; a restored position continues
  // exactly as the uninterrupted loader does (across an epoch boundary too).
  DataLoader a(s, B, T, 99, false), b(s, B, T, 99, false), c(s, B, T, 100, false);
  std::vector<int32_t> ta(size_t(B * T)), ga(size_t(B * T)), tb(ta), gb(ga), tc(ta), gc(ga);
  bool any_diff = false;
  LoaderState saved;
  std::vector<std::vector<int32_t>> after;
  const int64_t cut = n / B - 2;
  for (int64_t k = 0; k < n / B + 10; ++k) {
    a.next(ta.data(), ga.data());
    b.next(tb.data(), gb.data());
    c.next(tc.data(), gc.data());
    ASSERT_EQ(ta, tb);
    ASSERT_EQ(ga, gb);
    any_diff |= ta != tc;
    if (k == cut) saved = a.state();
    if (k > cut) after.push_back(ta);
  }
  EXPECT_TRUE(any_diff);
  DataLoader r(s, B, T, 0, false);
  r.set_state(saved);
  for (const auto& want : after) {
    r.next(tb.data(), gb.data());
    ASSERT_EQ(tb, want);
  }
}

TEST(TrainLoader, TooLittleData) {
  TempDir td;
  TokenStream s(counting_data(td, 10), "train");
  expect_error([&] { DataLoader(s, 1, 10, 0, false); }, {"10 tokens", "--seq"});
  DataLoader ok(s, 2, 9, 0, false);  // exactly one window
  std::vector<int32_t> tk(18), tg(18);
  ok.next(tk.data(), tg.data());
  EXPECT_EQ(tk[0], 0);
  EXPECT_EQ(tk[9], 0);  // the second row is the same single window, next epoch
}
