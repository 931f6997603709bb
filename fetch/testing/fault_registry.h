// A real docker-registry behind the fault proxy (proxy/fault_proxy.h), for
// tests that drive the registry client, `lazypull pull` and lazy image
// mounts through every fault the proxy can inject.
//
// Images are pushed with skopeo straight to the registry (no faults on the
// way in); clients are pointed at the proxy (host()), whose rules the test
// changes between steps. SetRules() also zeroes every counter, so a step's
// counts are its own.
//
// Layers are made here too: plain gzip, or eStargz by the project's own
// writer (core/layer_writer.h) with the descriptor annotations a lazy mount
// needs (toc.digest, uncompressed size).
//
// Thread-safety: one thread per object (the proxy itself may be read from
// any thread).
#ifndef LAZYPULL_FETCH_TESTING_FAULT_REGISTRY_H_
#define LAZYPULL_FETCH_TESTING_FAULT_REGISTRY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/digest.h"
#include "fetch/testing/oci_image.h"
#include "fetch/testing/registry_fixture.h"
#include "proxy/fault_proxy.h"
#include "proxy/fault_rules.h"

namespace lazypull::testing {

// A layer blob ready to be pushed, with its descriptor's annotations.
struct TestLayer {
  std::string media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
  std::string blob;
  Digest diff_id;  // sha256 of the uncompressed tar
  std::vector<std::pair<std::string, std::string>> annotations;
};

// `tar` gzipped in one member (not lazily mountable).
TestLayer GzipTestLayer(const std::string& tar);

// `tar` as eStargz, chunks of at most `chunk_size` bytes, annotated with its
// TOC digest and uncompressed size; `prioritized` files (paths in the tar)
// go first, before the prefetch landmark.
absl::StatusOr<TestLayer> EstargzTestLayer(
    const std::string& tar, uint64_t chunk_size = 4 << 20,
    const std::vector<std::string>& prioritized = {});

// Writes an OCI layout of one linux/amd64 image of `layers` (bottom first;
// the config lists their diff_ids) into `layout_dir` and pushes it with
// skopeo as <host>/<repo>:<tag> over plain HTTP.
absl::StatusOr<TestImage> PushTestImage(const std::string& layout_dir,
                                        const std::string& host,
                                        const std::string& repo,
                                        const std::string& tag,
                                        const std::vector<TestLayer>& layers);

class FaultRegistry {
 public:
  // Starts docker-registry with `options` (plain HTTP: `tls` must be false;
  // work_dir is required) and a fault proxy in front of it, without rules.
  static absl::StatusOr<std::unique_ptr<FaultRegistry>> Start(
      const RegistryServerOptions& options);

  RegistryServer& registry() { return *registry_; }
  proxy::FaultProxy& proxy() { return *proxy_; }
  // "127.0.0.1:PORT" of the proxy: the registry host clients are given.
  std::string host() const;

  // PushTestImage to the registry itself (under the work dir), as repo:tag.
  absl::StatusOr<TestImage> Push(const std::string& repo,
                                 const std::vector<TestLayer>& layers,
                                 const std::string& tag = "v1");

  // Installs rules (fault_rules.h syntax, or values) and zeroes every
  // counter of the proxy.
  absl::Status SetRules(absl::string_view text);
  absl::Status SetRules(std::vector<proxy::FaultRule> rules);
  // The counts of rule `i` (in rule order) since the last SetRules.
  proxy::FaultRuleSet::RuleCounts Rule(size_t i) const;

 private:
  FaultRegistry() = default;

  std::string work_dir_;
  int pushes_ = 0;
  std::unique_ptr<RegistryServer> registry_;
  std::unique_ptr<proxy::FaultProxy> proxy_;
};

}  // namespace lazypull::testing

#endif  // LAZYPULL_FETCH_TESTING_FAULT_REGISTRY_H_
