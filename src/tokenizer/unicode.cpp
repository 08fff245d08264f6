// tokenizer/unicode.cpp — UTF-8 helpers, the GPT-2 byte table and normalization (see unicode.h).
#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "qwen/error.h"

namespace qwen::tok {

namespace {

struct ByteTables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};  // every mapped code point is < 0x144
  ByteTables() {
    from_cp.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = keep ? uint32_t(b) : uint32_t(0x100 + n++);
      from_cp[to_cp[b]] = int16_t(b);
    }
  }
};
const ByteTables& byte_tables() {
  static const ByteTables t;
  return t;
}

inline bool all_ascii8(const unsigned char* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return (w & 0x8080808080808080ull) == 0;
}

// One bit per code point: 1 = NFC can neither change this code point nor combine it with the
// one before it, and it has canonical combining class 0 (so it is a safe segment boundary).
class InertTable {
 public:
  InertTable() : bits_((0x110000 + 63) / 64, ~uint64_t(0)) {
    utf8proc_int32_t buf[16];
    for (int32_t cp = 0x300; cp < 0x110000; ++cp) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      const utf8proc_property_t* prop = utf8proc_get_property(cp);
      if (prop->combining_class != 0) clear(cp);
      int bc = 0;
      utf8proc_ssize_t n = utf8proc_decompose_char(cp, buf, 16, UTF8PROC_DECOMPOSE, &bc);
      if (n <= 0 || (n == 1 && buf[0] == cp)) continue;
      // Everything after the first code point of a canonical decomposition may compose with
      // what precedes it.
      for (utf8proc_ssize_t k = 1; k < n && k < 16; ++k) clear(buf[k]);
      // Does NFC keep this code point as it is (false for singletons and exclusions)?
      unsigned char s[4];
      utf8proc_ssize_t len = utf8proc_encode_char(cp, s);
      utf8proc_uint8_t* out = nullptr;
      utf8proc_ssize_t m =
          utf8proc_map(s, len, &out, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (m != len || std::memcmp(out, s, size_t(len)) != 0) clear(cp);
      std::free(out);
    }
  }
  bool inert(uint32_t cp) const { return (bits_[cp >> 6] >> (cp & 63)) & 1; }

 private:
  void clear(int32_t cp) {
    if (cp >= 0 && cp < 0x110000) bits_[size_t(cp) >> 6] &= ~(uint64_t(1) << (cp & 63));
  }
  std::vector<uint64_t> bits_;
};
const InertTable& inert_table() {
  static const InertTable t;
  return t;
}

void utf8proc_append(std::string& out, std::string_view in, int options) {
  if (in.empty()) return;
  utf8proc_uint8_t* dst = nullptr;
  utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(in.data()),
                                    utf8proc_ssize_t(in.size()), &dst,
                                    utf8proc_option_t(options | UTF8PROC_STABLE));
  if (n < 0) {
    throw Error(std::string("tokenizer: Unicode normalization failed (") + utf8proc_errmsg(n) +
                "); the input must be valid UTF-8");
  }
  std::unique_ptr<utf8proc_uint8_t, void (*)(void*)> hold(dst, std::free);
  out.append(reinterpret_cast<const char*>(dst), size_t(n));
}

}  // namespace

const std::array<uint32_t, 256>& byte_to_cp() { return byte_tables().to_cp; }

int cp_to_byte(uint32_t cp) {
  const auto& t = byte_tables();
  return cp < t.from_cp.size() ? t.from_cp[cp] : -1;
}

void append_utf8(std::string& out, uint32_t cp) {
  char b[4];
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    b[0] = char(0xC0 | (cp >> 6));
    b[1] = char(0x80 | (cp & 0x3F));
    out.append(b, 2);
  } else if (cp < 0x10000) {
    b[0] = char(0xE0 | (cp >> 12));
    b[1] = char(0x80 | ((cp >> 6) & 0x3F));
    b[2] = char(0x80 | (cp & 0x3F));
    out.append(b, 3);
  } else {
    b[0] = char(0xF0 | (cp >> 18));
    b[1] = char(0x80 | ((cp >> 12) & 0x3F));
    b[2] = char(0x80 | ((cp >> 6) & 0x3F));
    b[3] = char(0x80 | (cp & 0x3F));
    out.append(b, 4);
  }
}

namespace {
// For a lead byte: how many continuation bytes follow and the allowed range of the first one
// (Unicode table 3-7, well-formed byte sequences). need == 0: not a valid lead byte.
struct Lead {
  uint8_t need, lo, hi;
};
constexpr Lead lead_info(unsigned char c) {
  if (c >= 0xC2 && c <= 0xDF) return {1, 0x80, 0xBF};
  if (c == 0xE0) return {2, 0xA0, 0xBF};
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return {2, 0x80, 0xBF};
  if (c == 0xED) return {2, 0x80, 0x9F};
  if (c == 0xF0) return {3, 0x90, 0xBF};
  if (c >= 0xF1 && c <= 0xF3) return {3, 0x80, 0xBF};
  if (c == 0xF4) return {3, 0x80, 0x8F};
  return {0, 0, 0};
}
}  // namespace

size_t utf8_valid_prefix(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n && all_ascii8(p + i)) {
      i += 8;
      continue;
    }
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    Lead L = lead_info(c);
    if (L.need == 0 || i + L.need >= n) return i;
    if (p[i + 1] < L.lo || p[i + 1] > L.hi) return i;
    for (size_t k = 2; k <= L.need; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return i;
    i += L.need + 1u;
  }
  return n;
}

size_t utf8_lossy_append(std::string& out, std::string_view in, bool final) {
  static constexpr char kFFFD[] = "\xEF\xBF\xBD";
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  size_t i = 0, run = 0;  // [run, i) is valid text not yet copied
  while (i < n) {
    if (i + 8 <= n && all_ascii8(p + i)) {
      i += 8;
      continue;
    }
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    Lead L = lead_info(c);
    if (L.need == 0) {
      out.append(in.data() + run, i - run);
      out.append(kFFFD, 3);
      run = ++i;
      continue;
    }
    size_t k = 1;
    bool ok = true, truncated = false;
    for (; k <= L.need; ++k) {
      if (i + k >= n) {
        truncated = true;
        break;
      }
      unsigned char b = p[i + k];
      unsigned char lo = k == 1 ? L.lo : 0x80, hi = k == 1 ? L.hi : 0xBF;
      if (b < lo || b > hi) {
        ok = false;
        break;
      }
    }
    if (truncated) {
      out.append(in.data() + run, i - run);
      if (!final) return i;
      out.append(kFFFD, 3);
      return n;
    }
    if (ok) {
      i += L.need + 1u;
      continue;
    }
    out.append(in.data() + run, i - run);
    out.append(kFFFD, 3);
    i += k;
    run = i;
  }
  out.append(in.data() + run, n - run);
  return n;
}

bool is_white_space(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

bool is_word_char(uint32_t cp) {
  if (cp < 0x80) {
    return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
           cp == '_';
  }
  if (cp == 0x200C || cp == 0x200D) return true;
  switch (utf8proc_category(utf8proc_int32_t(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

void normalize_append(std::string& out, std::string_view in, NormForm form) {
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
  if (form != NormForm::NFC) {
    size_t i = 0;
    while (i < n && p[i] < 0x80) ++i;
    if (i == n) {
      out.append(in);
      return;
    }
    int opt = form == NormForm::NFD    ? UTF8PROC_DECOMPOSE
              : form == NormForm::NFKC ? (UTF8PROC_COMPOSE | UTF8PROC_COMPAT)
                                       : (UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
    utf8proc_append(out, in, opt);
    return;
  }
  // NFC: copy stretches of inert code points; normalize each stretch of non-inert ones together
  // with the inert code point just before it (a starter they may compose with).
  const size_t npos = size_t(-1);
  size_t i = 0, copied = 0, last_inert = npos;
  const InertTable* table = nullptr;
  while (i < n) {
    if (i + 8 <= n && all_ascii8(p + i)) {
      i += 8;
      last_inert = i - 1;
      continue;
    }
    if (p[i] < 0x80) {
      last_inert = i++;
      continue;
    }
    if (!table) table = &inert_table();
    size_t start = i;
    uint32_t cp = utf8_next(in, i);
    if (table->inert(cp)) {
      last_inert = start;
      continue;
    }
    size_t seg_start = (last_inert != npos && last_inert >= copied) ? last_inert : start;
    size_t seg_end = i;
    while (seg_end < n) {
      size_t j = seg_end;
      uint32_t c2 = utf8_next(in, j);
      if (c2 < 0x80 || table->inert(c2)) break;
      seg_end = j;
    }
    out.append(in.data() + copied, seg_start - copied);
    utf8proc_append(out, in.substr(seg_start, seg_end - seg_start), UTF8PROC_COMPOSE);
    copied = i = seg_end;
    last_inert = npos;
  }
  out.append(in.data() + copied, n - copied);
}

}  // namespace qwen::tok
