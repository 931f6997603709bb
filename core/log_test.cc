#include "core/log.h"

#include "gtest/gtest.h"

namespace lazypull {
namespace {

// A registry's error text or a layer's name must not drive the terminal
// (ESC sequences) or start a forged log line.
TEST(LogTest, ControlCharactersAreWrittenAsEscapes) {
  EXPECT_EQ(WithoutControls("a\x1b[31mred\nW forged\r\x7f"),
            "a\\x1b[31mred\\x0aW forged\\x0d\\x7f");
  EXPECT_EQ(WithoutControls("tab\tand\nline", "\t\n"), "tab\tand\nline");
  EXPECT_EQ(WithoutControls("caf\xc3\xa9 \xe2\x9c\x93"),
            "caf\xc3\xa9 \xe2\x9c\x93")
      << "UTF-8 stays";
  EXPECT_EQ(WithoutControls(absl::string_view("nul\0x", 5)), "nul\\x00x");
}

}  // namespace
}  // namespace lazypull
