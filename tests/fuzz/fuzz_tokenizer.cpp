// tests/fuzz/fuzz_tokenizer.cpp — libFuzzer target for the tokenizer: the tokenizer.json loader
// (arbitrary bytes as a file) and encode / decode / the streaming decoder (arbitrary bytes as
// text or ids). The first input byte picks the mode:
//   0: data is a tokenizer.json; when it loads, encode and decode a few strings with it
//   1: data is text for a BPE trained at start-up (NFC, Qwen regex, specials): when valid UTF-8,
//      encode(decode(encode(x))) == encode(x) and decode(encode(x)) is valid UTF-8; else an Error
//   2: data is a list of 16-bit ids: decode == the streamed decode, both valid UTF-8
// Errors must be qwen::Error; anything else (crash, other exception, sanitizer report) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "qwen/error.h"
#include "qwen/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {

const qwen::Tokenizer& trained() {
  static const qwen::Tokenizer tok = [] {
    std::string corpus;
    const char* lines[] = {
        "In the beginning God created the heaven and the earth. ",
        "It is a truth universally acknowledged, that a single man in possession of a good fortune ",
        "hacker n. [originally, someone who makes furniture with an axe] 1. A person who enjoys ",
        "int main(int argc, char** argv) {\n\treturn 0;\n}\r\n",
        "caf\xC3\xA9 na\xC3\xAFve \xE6\x88\x91\xE7\x88\xB1\xE4\xBD\xA0 \xEC\x95\x88\xEB\x85\x95 \xF0\x9F\x98\x80 1234567 I'M you're ",
    };
    for (int i = 0; i < 40; ++i)
      for (const char* l : lines) corpus += l;
    qwen::BpeTrainOptions o;
    o.vocab_size = 420;
    o.n_threads = 1;
    qwen::BpeTrainResult r = qwen::train_bpe({corpus}, o);
    return qwen::Tokenizer::from_json(r.tokenizer_json, r.tokenizer_config_json);
  }();
  return tok;
}

[[noreturn]] void bug(const char* what) {
  (void)what;
  std::abort();
}

void exercise(const qwen::Tokenizer& tok, const std::string& text) {
  try {
    std::vector<int32_t> ids = tok.encode(text, true);
    std::string back = tok.decode(ids, false);
    if (!qwen::tok::utf8_valid(back)) bug("decode gave invalid UTF-8");
    tok.decode(ids, true);
    qwen::StreamDecoder sd(tok, false);
    std::string streamed;
    for (int32_t id : ids) streamed += sd.push(id);
    streamed += sd.flush();
    if (streamed != back) bug("streamed decode differs from decode");
  } catch (const qwen::Error&) {
    if (qwen::tok::utf8_valid(text)) bug("Error on valid UTF-8 text");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int mode = data[0] % 3;
  std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (mode == 0) {
    try {
      qwen::Tokenizer tok = qwen::Tokenizer::from_json(body);
      for (const char* s : {"", "Hello world", " x<|endoftext|>y  \n\n\t 123 caf\xC3\xA9", "a\xCC\x81"})
        exercise(tok, s);
      tok.apply_chat_template({{"user", "hi"}});
    } catch (const qwen::Error&) {
    }
    return 0;
  }
  const qwen::Tokenizer& tok = trained();
  if (mode == 1) {
    std::vector<int32_t> ids;
    try {
      ids = tok.encode(body, false);
    } catch (const qwen::Error&) {
      if (qwen::tok::utf8_valid(body)) bug("Error on valid UTF-8 text");
      return 0;
    }
    std::string back = tok.decode(ids);
    if (!qwen::tok::utf8_valid(back)) bug("decode gave invalid UTF-8");
    if (tok.encode(back, false) != ids) bug("encode(decode(encode(x))) != encode(x)");
    exercise(tok, body);
    return 0;
  }
  std::vector<int32_t> ids;
  for (size_t i = 0; i + 1 < body.size(); i += 2)
    ids.push_back(int32_t(uint16_t(uint8_t(body[i]) | (uint8_t(body[i + 1]) << 8))) % 512 - 40);
  for (bool skip : {false, true}) {
    std::string d = tok.decode(ids, skip);
    if (!qwen::tok::utf8_valid(d)) bug("decode gave invalid UTF-8");
    qwen::StreamDecoder sd(tok, skip);
    std::string streamed;
    for (int32_t id : ids) {
      std::string piece = sd.push(id);
      if (!qwen::tok::utf8_valid(piece)) bug("a streamed piece is not valid UTF-8");
      streamed += piece;
    }
    streamed += sd.flush();
    if (streamed != d) bug("streamed decode differs from decode");
  }
  return 0;
}
