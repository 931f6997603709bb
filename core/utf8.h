// UTF-8 validation, shared by the JSON writers (lazypull's own output and the
// Go-compatible TOC writer).
//
// Thread-safety: pure function.
#ifndef LAZYPULL_CORE_UTF8_H_
#define LAZYPULL_CORE_UTF8_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace lazypull {

// Length (1-4) of the valid UTF-8 sequence starting at s[i], storing its code
// point in *cp; 0 if the bytes there are not valid UTF-8 (overlong forms,
// surrogates and code points past U+10FFFF included). REQUIRES: i < s.size().
size_t Utf8SequenceLength(absl::string_view s, size_t i, uint32_t* cp);

}  // namespace lazypull

#endif  // LAZYPULL_CORE_UTF8_H_
