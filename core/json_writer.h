// JsonWriter: a small streaming JSON serializer for lazypull's outputs
// (`inspect --json`, `convert`'s report, state files).
//
// The caller is responsible for well-formed nesting; the writer handles
// commas, escaping and optional indentation. Strings are written as UTF-8
// with control characters, quotes and backslashes escaped; bytes that are not
// valid UTF-8 are escaped as \u00XX so the output is always valid JSON text.
//
// Thread-safety: one thread per object.
#ifndef LAZYPULL_CORE_JSON_WRITER_H_
#define LAZYPULL_CORE_JSON_WRITER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace lazypull {

class JsonWriter {
 public:
  // indent = 0: compact; otherwise spaces per level.
  explicit JsonWriter(int indent = 0) : indent_(indent) {}

  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  // Object key; must be followed by exactly one value.
  JsonWriter& Key(absl::string_view key);
  JsonWriter& String(absl::string_view s);
  JsonWriter& Int(int64_t v);
  JsonWriter& Uint(uint64_t v);
  JsonWriter& Double(double v);
  JsonWriter& Bool(bool v);
  JsonWriter& Null();

  const std::string& str() const { return out_; }
  std::string Release() { return std::move(out_); }

  // Appends `s` to `out` as a quoted JSON string.
  static void AppendQuoted(absl::string_view s, std::string* out);

 private:
  void BeforeValue();
  JsonWriter& Close(char bracket);
  void Newline();

  std::string out_;
  int indent_;
  // Per open container: whether it already has an element.
  std::vector<bool> has_elem_;
  bool after_key_ = false;
};

}  // namespace lazypull

#endif  // LAZYPULL_CORE_JSON_WRITER_H_
