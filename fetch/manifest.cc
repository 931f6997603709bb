#include "fetch/manifest.h"

#include <simdjson.h>
#include <sys/utsname.h>

#include <optional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/status_macros.h"

namespace lazypull {
namespace {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::object;

std::string NormalizeArch(absl::string_view a) {
  std::string s = absl::AsciiStrToLower(a);
  if (s == "x86_64" || s == "x86-64") return "amd64";
  if (s == "aarch64") return "arm64";
  if (s == "i386" || s == "i686") return "386";
  // 32-bit ARM: uname's armv6l / armv7l / armv8l, Debian's armhf / armel.
  if (s == "armhf" || s == "armel" ||
      (absl::StartsWith(s, "armv") && s != "armv8b")) {
    return "arm";
  }
  return s;
}

// The variant of a 32-bit ARM machine name: "armv6l" -> "v6"; "v7" for the
// rest (armhf, armv7l, and armv8l: a 32-bit v8 runs v7 code).
std::string ArmVariant(absl::string_view machine) {
  if (absl::StartsWith(machine, "armv6") || machine == "armel") return "v6";
  if (absl::StartsWith(machine, "armv5")) return "v5";
  return "v7";
}

std::string DefaultVariant(absl::string_view arch) {
  if (arch == "arm64") return "v8";
  if (arch == "arm") return "v7";
  if (arch == "amd64") return "v1";
  return "";
}

std::string Str(element e, const char* key) {
  std::string_view s;
  if (e[key].get(s) != simdjson::SUCCESS) return "";
  return std::string(s);
}

// The first key an object holds twice, if any, anywhere in `e`: readers
// disagree on which one counts (simdjson and this code take the first, Go
// and Python the last), so such a document means different images to
// different clients.
std::optional<std::string> DuplicateKey(element e) {
  if (e.is_object()) {
    absl::flat_hash_set<std::string_view> keys;
    for (auto field : object(e)) {
      if (!keys.insert(field.key).second) return std::string(field.key);
      if (auto d = DuplicateKey(field.value)) return d;
    }
  } else if (e.is_array()) {
    for (element v : simdjson::dom::array(e)) {
      if (auto d = DuplicateKey(v)) return d;
    }
  }
  return std::nullopt;
}

absl::StatusOr<element> ParseObject(simdjson::dom::parser& parser,
                                    absl::string_view json,
                                    absl::string_view what) {
  element root;
  simdjson::error_code err = parser.parse(json.data(), json.size()).get(root);
  if (err != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is not valid JSON: ", simdjson::error_message(err)));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not a JSON object"));
  }
  if (std::optional<std::string> key = DuplicateKey(root)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " holds the key \"", *key,
        "\" twice in one object (clients disagree on which one counts)"));
  }
  return root;
}

// More than this many `urls` of one descriptor are ignored (each is tried
// in turn when the registry lacks the blob).
constexpr size_t kMaxUrls = 8;

absl::StatusOr<Descriptor> ParseDescriptor(element e, absl::string_view what) {
  Descriptor d;
  d.media_type = Str(e, "mediaType");
  std::string_view digest;
  if (e["digest"].get(digest) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has no digest"));
  }
  absl::StatusOr<Digest> dg =
      Digest::Parse(absl::string_view(digest.data(), digest.size()));
  if (!dg.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", dg.status().message()));
  }
  d.digest = *dg;
  int64_t size;
  if (e["size"].get(size) != simdjson::SUCCESS || size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(what, " has no valid size"));
  }
  d.size = size;
  element p;
  if (e["platform"].get(p) == simdjson::SUCCESS) {
    Platform pl;
    pl.os = Str(p, "os");
    pl.architecture = NormalizeArch(Str(p, "architecture"));
    pl.variant = Str(p, "variant");
    d.platform = pl;
  }
  array urls;
  if (e["urls"].get(urls) == simdjson::SUCCESS) {
    for (element u : urls) {
      std::string_view s;
      if (u.get(s) == simdjson::SUCCESS && d.urls.size() < kMaxUrls) {
        d.urls.emplace_back(s);
      }
    }
  }
  object ann;
  if (e["annotations"].get(ann) == simdjson::SUCCESS) {
    for (auto [k, v] : ann) {
      std::string_view s;
      if (v.get(s) == simdjson::SUCCESS) {
        d.annotations[std::string(k)] = std::string(s);
      }
    }
  }
  return d;
}

}  // namespace

std::string ManifestAcceptHeader() {
  return absl::StrCat(kOciIndexType, ", ", kOciManifestType, ", ",
                      kDockerManifestListType, ", ", kDockerManifestType);
}

bool IsIndexMediaType(absl::string_view t) {
  return t == kOciIndexType || t == kDockerManifestListType;
}

bool IsManifestMediaType(absl::string_view t) {
  return t == kOciManifestType || t == kDockerManifestType;
}

absl::StatusOr<Platform> Platform::Parse(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, '/');
  if (parts.size() < 2 || parts.size() > 3 || parts[0].empty() ||
      parts[1].empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "platform \"", text, "\" is not of the form os/arch[/variant]"));
  }
  Platform p;
  p.os = absl::AsciiStrToLower(parts[0]);
  p.architecture = NormalizeArch(parts[1]);
  if (parts.size() == 3) p.variant = parts[2];
  return p;
}

Platform Platform::Host() {
  struct utsname u;
  return FromMachine(uname(&u) == 0 ? u.machine : "x86_64");
}

Platform Platform::FromMachine(absl::string_view machine) {
  Platform p;
  p.os = "linux";
  p.architecture = NormalizeArch(machine);
  if (p.architecture == "arm64") p.variant = "v8";
  if (p.architecture == "arm") p.variant = ArmVariant(machine);
  return p;
}

std::string Platform::String() const {
  std::string s = absl::StrCat(os, "/", architecture);
  if (!variant.empty()) absl::StrAppend(&s, "/", variant);
  return s;
}

bool Platform::Matches(const Platform& c) const {
  if (c.os != os || NormalizeArch(c.architecture) != architecture) return false;
  std::string def = DefaultVariant(architecture);
  std::string want = variant.empty() ? def : variant;
  std::string have = c.variant.empty() ? def : c.variant;
  return want == have;
}

absl::StatusOr<ManifestKind> SniffManifestKind(absl::string_view json) {
  simdjson::dom::parser parser;
  ASSIGN_OR_RETURN(element root, ParseObject(parser, json, "manifest"));
  std::string mt = Str(root, "mediaType");
  element unused;
  if (IsIndexMediaType(mt) ||
      (mt.empty() && root["manifests"].get(unused) == simdjson::SUCCESS)) {
    return ManifestKind::kIndex;
  }
  if (IsManifestMediaType(mt) ||
      (mt.empty() && root["layers"].get(unused) == simdjson::SUCCESS)) {
    return ManifestKind::kManifest;
  }
  int64_t schema = 0;
  if (root["schemaVersion"].get(schema) == simdjson::SUCCESS && schema == 1) {
    return absl::UnimplementedError(
        "Docker schema 1 manifests are not supported (deprecated since 2017)");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("manifest has unknown media type \"", mt,
                   "\" (expected an OCI or Docker image manifest or index)"));
}

absl::StatusOr<ImageIndex> ParseImageIndex(absl::string_view json) {
  simdjson::dom::parser parser;
  ASSIGN_OR_RETURN(element root, ParseObject(parser, json, "image index"));
  ImageIndex idx;
  idx.media_type = Str(root, "mediaType");
  array ms;
  if (root["manifests"].get(ms) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("image index has no \"manifests\" array");
  }
  size_t i = 0;
  for (element m : ms) {
    ASSIGN_OR_RETURN(Descriptor d,
                     ParseDescriptor(m, absl::StrCat("manifests[", i++, "]")));
    idx.manifests.push_back(std::move(d));
  }
  return idx;
}

absl::StatusOr<ImageManifest> ParseImageManifest(absl::string_view json) {
  simdjson::dom::parser parser;
  ASSIGN_OR_RETURN(element root, ParseObject(parser, json, "image manifest"));
  ImageManifest m;
  m.media_type = Str(root, "mediaType");
  element config;
  if (root["config"].get(config) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("image manifest has no \"config\"");
  }
  ASSIGN_OR_RETURN(m.config, ParseDescriptor(config, "config"));
  array layers;
  if (root["layers"].get(layers) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError("image manifest has no \"layers\" array");
  }
  size_t i = 0;
  for (element l : layers) {
    ASSIGN_OR_RETURN(Descriptor d,
                     ParseDescriptor(l, absl::StrCat("layers[", i++, "]")));
    m.layers.push_back(std::move(d));
  }
  return m;
}

absl::StatusOr<ImageConfig> ParseImageConfig(absl::string_view json) {
  simdjson::dom::parser parser;
  ASSIGN_OR_RETURN(element root, ParseObject(parser, json, "image config"));
  ImageConfig c;
  c.platform.os = Str(root, "os");
  c.platform.architecture = NormalizeArch(Str(root, "architecture"));
  c.platform.variant = Str(root, "variant");
  array ids;
  if (root["rootfs"]["diff_ids"].get(ids) != simdjson::SUCCESS) {
    return absl::InvalidArgumentError(
        "image config has no rootfs.diff_ids array");
  }
  for (element e : ids) {
    std::string_view s;
    if (e.get(s) != simdjson::SUCCESS) {
      return absl::InvalidArgumentError("rootfs.diff_ids holds a non-string");
    }
    absl::StatusOr<Digest> d =
        Digest::Parse(absl::string_view(s.data(), s.size()));
    if (!d.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("rootfs.diff_ids: ", d.status().message()));
    }
    c.diff_ids.push_back(*d);
  }
  // The run settings ("config" may be absent or null).
  element run;
  if (root["config"].get(run) == simdjson::SUCCESS && run.is_object()) {
    c.working_dir = Str(run, "WorkingDir");
    c.user = Str(run, "User");
    array env;
    if (run["Env"].get(env) == simdjson::SUCCESS) {
      for (element e : env) {
        std::string_view s;
        if (e.get(s) != simdjson::SUCCESS) {
          return absl::InvalidArgumentError("config.Env holds a non-string");
        }
        c.env.emplace_back(s.data(), s.size());
      }
    }
  }
  return c;
}

absl::StatusOr<Descriptor> SelectPlatform(const ImageIndex& index,
                                          const Platform& want) {
  std::vector<std::string> offered;
  for (const Descriptor& d : index.manifests) {
    if (!d.platform) continue;
    offered.push_back(d.platform->String());
    if (want.Matches(*d.platform)) return d;
  }
  // With no variant asked for, any variant of the architecture will do.
  if (want.variant.empty()) {
    for (const Descriptor& d : index.manifests) {
      if (d.platform && d.platform->os == want.os &&
          d.platform->architecture == want.architecture) {
        return d;
      }
    }
  }
  for (const Descriptor& d : index.manifests) {
    if (!d.platform) return d;
  }
  return absl::NotFoundError(absl::StrCat(
      "the image has no manifest for ", want.String(), " (it offers: ",
      offered.empty() ? std::string("no platforms")
                      : absl::StrJoin(offered, ", "),
      "); choose one with --platform"));
}

absl::Status CheckConfigPlatform(const ImageConfig& config,
                                 const Platform& want) {
  const Platform& p = config.platform;
  if (p.os.empty() && p.architecture.empty()) return absl::OkStatus();
  if (want.Matches(p) || (want.variant.empty() && p.os == want.os &&
                          NormalizeArch(p.architecture) == want.architecture)) {
    return absl::OkStatus();
  }
  return absl::NotFoundError(
      absl::StrCat("the image has no manifest for ", want.String(),
                   " (its index entry names no platform; its config says ",
                   p.String(), "); choose one with --platform"));
}

}  // namespace lazypull
