#include "core/tar_reader.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "core/testing/tar_builder.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace lazypull {
namespace {

using ::lazypull::testing::PaxRecord;
using ::lazypull::testing::TarBuilder;
using ::lazypull::testing::TarDialect;
using ::lazypull::testing::TarSpec;
using ::testing::HasSubstr;
using ::testing::Pair;

struct Parsed {
  TarHeader h;
  std::string data;
};

absl::StatusOr<std::vector<Parsed>> ParseAll(absl::string_view tar) {
  MemoryByteStream s(tar);
  TarReader r(&s);
  std::vector<Parsed> out;
  for (;;) {
    Parsed p;
    absl::StatusOr<bool> more = r.Next(&p.h);
    if (!more.ok()) return more.status();
    if (!*more) return out;
    for (;;) {
      absl::StatusOr<absl::string_view> d = r.ReadData(7);  // odd pieces
      if (!d.ok()) return d.status();
      if (d->empty()) break;
      p.data.append(d->data(), d->size());
    }
    out.push_back(std::move(p));
  }
}

TEST(TarReaderTest, EveryTypeAndField) {
  TarBuilder b;
  b.Dir("dir/", 0755);
  TarSpec f;
  f.name = "dir/file";
  f.content = "hello world";
  f.mode = 04755;
  f.uid = 1000;
  f.gid = 100;
  f.uname = "alice";
  f.gname = "users";
  b.Add(f);
  b.Symlink("dir/sym", "../target");
  b.Hardlink("dir/hard", "dir/file");
  TarSpec c;
  c.name = "dev/null";
  c.typeflag = '3';
  c.dev_major = 1;
  c.dev_minor = 3;
  b.Add(c);
  c.name = "dev/sda";
  c.typeflag = '4';
  c.dev_major = 8;
  c.dev_minor = 2;
  b.Add(c);
  TarSpec fifo;
  fifo.name = "run/fifo";
  fifo.typeflag = '6';
  b.Add(fifo);
  TarSpec contig;
  contig.name = "contig";
  contig.typeflag = '7';
  contig.content = "x";
  b.Add(contig);
  std::string tar = b.Finish();

  absl::StatusOr<std::vector<Parsed>> p = ParseAll(tar);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 8u);
  const auto& e = *p;
  EXPECT_EQ(e[0].h.type, TarType::kDir);
  EXPECT_EQ(e[0].h.name, "dir/");
  EXPECT_EQ(e[0].h.mode, 0755);
  EXPECT_EQ(e[1].h.type, TarType::kReg);
  EXPECT_EQ(e[1].data, "hello world");
  EXPECT_EQ(e[1].h.size, 11u);
  EXPECT_EQ(e[1].h.mode, 04755);
  EXPECT_EQ(e[1].h.uid, 1000u);
  EXPECT_EQ(e[1].h.gid, 100u);
  EXPECT_EQ(e[1].h.uname, "alice");
  EXPECT_EQ(e[1].h.gname, "users");
  EXPECT_EQ(e[1].h.mtime_sec, 1622548800);
  EXPECT_EQ(e[1].h.header_offset, 512u);
  EXPECT_EQ(e[1].h.data_offset, 1024u);
  EXPECT_EQ(e[1].h.raw, tar.substr(512, 512));
  EXPECT_EQ(e[2].h.type, TarType::kSymlink);
  EXPECT_EQ(e[2].h.link_name, "../target");
  EXPECT_EQ(e[3].h.type, TarType::kHardlink);
  EXPECT_EQ(e[3].h.link_name, "dir/file");
  EXPECT_EQ(e[4].h.type, TarType::kChar);
  EXPECT_EQ(e[4].h.dev_major, 1u);
  EXPECT_EQ(e[4].h.dev_minor, 3u);
  EXPECT_EQ(e[5].h.type, TarType::kBlock);
  EXPECT_EQ(e[5].h.dev_minor, 2u);
  EXPECT_EQ(e[6].h.type, TarType::kFifo);
  EXPECT_EQ(e[7].h.type, TarType::kReg);
  EXPECT_EQ(e[7].data, "x");
}

TEST(TarReaderTest, PaxRecords) {
  TarBuilder b(TarDialect::kPax);
  TarSpec s;
  s.name = "long/" + std::string(150, 'n') + ".txt";
  s.content = "data";
  s.uid = 4000000000;
  s.gid = 3000000;
  s.pax_mtime = "1622548800.75";
  s.xattrs = {{"user.comment", "hi"},
              {"security.capability", std::string("\0\xff", 2)}};
  s.pax_records = {{"LIBARCHIVE.xattr.user.a%3Db",
                    absl::Base64Escape(std::string("v\0w", 3))},
                   {"uname", "bigname"}};
  b.Add(s);
  TarSpec neg;
  neg.name = "neg";
  neg.pax_mtime = "-1.5";
  b.Add(neg);
  TarSpec link;
  link.name = "l";
  link.typeflag = '2';
  link.link = std::string(120, 't');
  b.Add(link);
  absl::StatusOr<std::vector<Parsed>> p = ParseAll(b.Finish());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 3u);
  const TarHeader& h = (*p)[0].h;
  EXPECT_EQ(h.name, s.name);
  EXPECT_EQ((*p)[0].data, "data");
  EXPECT_EQ(h.uid, 4000000000u);
  EXPECT_EQ(h.gid, 3000000u);
  EXPECT_EQ(h.uname, "bigname");
  EXPECT_EQ(h.mtime_sec, 1622548800);
  EXPECT_EQ(h.mtime_nsec, 750000000u);
  EXPECT_THAT(h.xattrs,
              ::testing::UnorderedElementsAre(
                  Pair("user.comment", "hi"),
                  Pair("security.capability", std::string("\0\xff", 2))));
  // LIBARCHIVE.xattr.user.a%3Db is not an xattr: Go's archive/tar (the
  // eStargz writer, containerd's unpack) reads SCHILY.xattr.* only.
  // The raw bytes include the PAX header.
  EXPECT_GT(h.raw.size(), 1024u);
  EXPECT_EQ(h.data_offset, h.header_offset + h.raw.size());
  EXPECT_EQ((*p)[1].h.mtime_sec, -2);
  EXPECT_EQ((*p)[1].h.mtime_nsec, 500000000u);
  EXPECT_EQ((*p)[2].h.link_name, std::string(120, 't'));
}

TEST(TarReaderTest, GnuLongNamesAndBase256) {
  TarBuilder b(TarDialect::kGnu);
  TarSpec s;
  s.name = "./" + std::string(200, 'g');
  s.content = "z";
  s.uid = 4000000000;
  b.Add(s);
  TarSpec l;
  l.name = "link";
  l.typeflag = '1';
  l.link = "./" + std::string(200, 'g');
  b.Add(l);
  absl::StatusOr<std::vector<Parsed>> p = ParseAll(b.Finish());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 2u);
  EXPECT_EQ((*p)[0].h.name, s.name);
  EXPECT_EQ((*p)[0].h.uid, 4000000000u);
  EXPECT_EQ((*p)[0].data, "z");
  EXPECT_EQ((*p)[1].h.link_name, l.link);
  EXPECT_EQ((*p)[0].h.header_offset, 0u);
}

TEST(TarReaderTest, UstarPrefixOldTypesGlobalHeaders) {
  std::string h = TarBuilder::Header("file", '0', 0);
  // Set the prefix field and fix the checksum.
  std::memcpy(h.data() + 345, "some/prefix", 11);
  std::memset(h.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : h) sum += static_cast<uint8_t>(c);
  snprintf(h.data() + 148, 8, "%06o", sum);
  h[155] = ' ';
  std::string global = PaxRecord("comment", "ignored");
  TarBuilder b;
  b.Raw(TarBuilder::Header("pax_global_header", 'g', global.size()));
  b.Raw(global + std::string(512 - global.size(), '\0'));
  b.Raw(h);
  b.Raw(TarBuilder::Header("olddir/", '\0', 0));
  b.Raw(TarBuilder::Header("oldfile", '\0', 0));
  absl::StatusOr<std::vector<Parsed>> p = ParseAll(b.Finish());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 3u);
  EXPECT_EQ((*p)[0].h.name, "some/prefix/file");
  EXPECT_EQ((*p)[0].h.raw, h);  // the global header is not part of it
  EXPECT_EQ((*p)[1].h.type, TarType::kDir);
  EXPECT_EQ((*p)[2].h.type, TarType::kReg);
}

TEST(TarReaderTest, EndWithoutEofBlocksOrWithOne) {
  TarBuilder b;
  b.File("a", "123");
  absl::StatusOr<std::vector<Parsed>> p = ParseAll(b.bytes());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 1u);
  p = ParseAll(b.bytes() + std::string(512, '\0'));
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 1u);
  // Missing trailing padding after the last payload is tolerated too.
  std::string cut = b.bytes().substr(0, 512 + 3);
  p = ParseAll(cut);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 1u);
  p = ParseAll("");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->empty());
}

absl::Status ParseError(absl::string_view tar) {
  absl::StatusOr<std::vector<Parsed>> p = ParseAll(tar);
  return p.ok() ? absl::OkStatus() : p.status();
}

TEST(TarReaderTest, HostileHeaders) {
  TarBuilder ok;
  ok.File("a", "123");
  std::string good = ok.Finish();

  std::string bad_sum = good;
  bad_sum[0] = 'b';
  EXPECT_THAT(ParseError(bad_sum).message(), HasSubstr("bad checksum"));
  EXPECT_EQ(ParseError(bad_sum).code(), absl::StatusCode::kInvalidArgument);

  EXPECT_THAT(ParseError(std::string(512, 'x')).message(),
              HasSubstr("bad checksum"));

  // A payload far beyond any real layer.
  std::string huge = TarBuilder::Header("huge", '0', uint64_t{1} << 50);
  EXPECT_THAT(ParseError(huge).message(), HasSubstr("claims"));

  // The stream ends inside a payload / a header.
  EXPECT_EQ(ParseError(good.substr(0, 514)).code(),
            absl::StatusCode::kDataLoss);
  std::string truncated = TarBuilder::Header("big", '0', 5000) + "abc";
  EXPECT_EQ(ParseError(truncated).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseError(good.substr(0, 100)).code(),
            absl::StatusCode::kDataLoss);

  EXPECT_THAT(ParseError(TarBuilder::Header("sparse", 'S', 0)).message(),
              HasSubstr("GNU sparse"));
  EXPECT_THAT(ParseError(TarBuilder::Header("vol", 'V', 0)).message(),
              HasSubstr("not supported"));

  // A hardlink claiming a payload.
  EXPECT_THAT(ParseError(TarBuilder::Header("h", '1', 10, 0644, "a") +
                         std::string(512, 'x'))
                  .message(),
              HasSubstr("not a regular file"));

  // Malformed PAX records.
  for (std::string rec :
       {std::string("abc path=x\n"), std::string("99 path=x\n"),
        std::string("10 pathx\n"), PaxRecord("size", "-1"),
        PaxRecord("GNU.sparse.map", "0,1")}) {
    TarBuilder b;
    b.Raw(TarBuilder::Header("pax", 'x', rec.size()));
    b.Raw(rec + std::string(512 - rec.size() % 512, '\0'));
    b.File("f", "");
    absl::Status st = ParseError(b.Finish());
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << rec;
  }

  // An extension header beyond the limit.
  EXPECT_THAT(ParseError(TarBuilder::Header("././@LongLink", 'L', 2 << 20)),
              ::testing::Property(&absl::Status::message,
                                  HasSubstr("extension header")));

  // Extension headers chained before one entry: kept until it comes, so
  // their sum is bounded (each 1 MiB of NULs or letters costs ~1 KiB of
  // gzip: a memory bomb otherwise).
  auto chained = [](int n) {
    std::string t;
    for (int i = 0; i < n; ++i) {
      t += TarBuilder::Header("././@LongLink", 'L', (1 << 20) - 1);
      t += std::string((1 << 20) - 1, 'n') + std::string(1, '\0');
    }
    TarBuilder b;
    b.File("f", "x");
    return t + b.Finish();
  };
  absl::StatusOr<std::vector<Parsed>> three = ParseAll(chained(3));
  ASSERT_TRUE(three.ok()) << three.status();
  ASSERT_EQ(three->size(), 1u);
  EXPECT_EQ((*three)[0].h.name.size(), (1u << 20) - 1);
  EXPECT_THAT(ParseError(chained(5)).message(),
              HasSubstr("exceed 4194304 bytes before their entry"));

  // Negative base-256 size.
  std::string neg = TarBuilder::Header("neg", '0', 0);
  std::memset(neg.data() + 124, 0xff, 12);
  std::memset(neg.data() + 148, ' ', 8);
  unsigned sum = 0;
  for (char c : neg) sum += static_cast<uint8_t>(c);
  snprintf(neg.data() + 148, 8, "%06o", sum);
  EXPECT_THAT(ParseError(neg).message(), HasSubstr("malformed size"));

  // An extension header with no entry after it.
  std::string rec = PaxRecord("path", "x");
  EXPECT_EQ(
      ParseError(TarBuilder::Header("pax", 'x', rec.size()) + rec +
                 std::string(512 - rec.size(), '\0') + std::string(1024, '\0'))
          .code(),
      absl::StatusCode::kDataLoss);
}

TEST(TarReaderTest, ParseTarNumber) {
  uint64_t v;
  EXPECT_TRUE(ParseTarNumber(absl::string_view("0000755\0", 8), &v));
  EXPECT_EQ(v, 0755u);
  EXPECT_TRUE(ParseTarNumber(absl::string_view("  755 \0\0", 8), &v));
  EXPECT_EQ(v, 0755u);
  EXPECT_TRUE(ParseTarNumber(absl::string_view("\0\0\0\0\0\0\0\0", 8), &v));
  EXPECT_EQ(v, 0u);
  EXPECT_FALSE(ParseTarNumber("0000758", &v));
  EXPECT_FALSE(ParseTarNumber("12 34", &v));
  EXPECT_TRUE(
      ParseTarNumber(absl::string_view("\x80\0\0\0\0\0\x01\x02", 8), &v));
  EXPECT_EQ(v, 0x102u);
  EXPECT_FALSE(ParseTarNumber(absl::string_view("\xff\xff\xff\xff", 4), &v));
  EXPECT_FALSE(ParseTarNumber(
      absl::string_view("\x80\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 12),
      &v));
}

}  // namespace
}  // namespace lazypull
