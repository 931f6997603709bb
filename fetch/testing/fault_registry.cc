#include "fetch/testing/fault_registry.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/layer_writer.h"
#include "core/status_macros.h"

namespace lazypull::testing {

TestLayer GzipTestLayer(const std::string& tar) {
  TestLayer l;
  l.blob = GzipForTest(tar);
  l.diff_id = Sha256::Of(tar);
  return l;
}

absl::StatusOr<TestLayer> EstargzTestLayer(
    const std::string& tar, uint64_t chunk_size,
    const std::vector<std::string>& prioritized) {
  LayerWriterOptions o;
  o.chunk_size = chunk_size;
  o.prioritized_files = prioritized;
  StringBlobSink sink;
  ASSIGN_OR_RETURN(LayerWriteResult r, WriteLayer(tar, o, &sink));
  TestLayer l;
  l.blob = std::move(sink.out);
  l.diff_id = r.diff_id;
  l.annotations = r.annotations;
  return l;
}

absl::StatusOr<TestImage> PushTestImage(const std::string& layout_dir,
                                        const std::string& host,
                                        const std::string& repo,
                                        const std::string& tag,
                                        const std::vector<TestLayer>& layers) {
  ASSIGN_OR_RETURN(OciLayout layout, OciLayout::Create(layout_dir));
  TestImage img;
  std::vector<std::string> diff_ids, descriptors;
  for (const TestLayer& l : layers) {
    ASSIGN_OR_RETURN(TestDescriptor d, layout.AddBlob(l.media_type, l.blob));
    img.layers.push_back(d);
    std::string json = d.Json();
    if (!l.annotations.empty()) {
      std::vector<std::string> kv;
      for (const auto& [k, v] : l.annotations) {
        kv.push_back(absl::StrCat("\"", k, "\":\"", v, "\""));
      }
      json.pop_back();  // the closing brace
      absl::StrAppend(&json, ",\"annotations\":{", absl::StrJoin(kv, ","),
                      "}}");
    }
    descriptors.push_back(json);
    diff_ids.push_back(absl::StrCat("\"", l.diff_id.ToString(), "\""));
  }
  const std::string config = absl::StrCat(
      "{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{},"
      "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[",
      absl::StrJoin(diff_ids, ","), "]}}");
  ASSIGN_OR_RETURN(
      img.config,
      layout.AddBlob("application/vnd.oci.image.config.v1+json", config));
  const std::string manifest = absl::StrCat(
      "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image."
      "manifest.v1+json\",\"config\":",
      img.config.Json(), ",\"layers\":[", absl::StrJoin(descriptors, ","),
      "]}");
  ASSIGN_OR_RETURN(
      img.manifest,
      layout.AddBlob("application/vnd.oci.image.manifest.v1+json", manifest));
  RETURN_IF_ERROR(layout.Tag(tag, img.manifest));
  RETURN_IF_ERROR(PushWithSkopeo(layout, tag, host, repo));
  return img;
}

absl::StatusOr<std::unique_ptr<FaultRegistry>> FaultRegistry::Start(
    const RegistryServerOptions& options) {
  if (options.tls) {
    return absl::InvalidArgumentError(
        "the fault proxy speaks plain HTTP to its upstream: no TLS");
  }
  std::unique_ptr<FaultRegistry> f(new FaultRegistry());
  f->work_dir_ = options.work_dir;
  ASSIGN_OR_RETURN(f->registry_, RegistryServer::Start(options));
  proxy::FaultProxy::Options po;
  po.upstream_port = f->registry_->port();
  ASSIGN_OR_RETURN(f->proxy_, proxy::FaultProxy::Start(po));
  return f;
}

std::string FaultRegistry::host() const {
  return absl::StrCat("127.0.0.1:", proxy_->port());
}

absl::StatusOr<TestImage> FaultRegistry::Push(
    const std::string& repo, const std::vector<TestLayer>& layers,
    const std::string& tag) {
  const std::string layout = absl::StrCat(work_dir_, "/layout-", ++pushes_);
  return PushTestImage(layout, registry_->host(), repo, tag, layers);
}

absl::Status FaultRegistry::SetRules(absl::string_view text) {
  ASSIGN_OR_RETURN(std::vector<proxy::FaultRule> rules,
                   proxy::ParseFaultRules(text));
  return SetRules(std::move(rules));
}

absl::Status FaultRegistry::SetRules(std::vector<proxy::FaultRule> rules) {
  RETURN_IF_ERROR(proxy_->SetRules(std::move(rules)));
  proxy_->ResetCounters();
  return absl::OkStatus();
}

proxy::FaultRuleSet::RuleCounts FaultRegistry::Rule(size_t i) const {
  std::vector<proxy::FaultRuleSet::RuleCounts> r = proxy_->counters().rules;
  return i < r.size() ? r[i] : proxy::FaultRuleSet::RuleCounts{};
}

}  // namespace lazypull::testing
