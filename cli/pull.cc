// lazypull pull IMAGE_REF DIR: the conventional full pull (every layer
// downloaded, verified and unpacked, whiteouts applied) into DIR.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "cli/network_flags.h"
#include "core/status_macros.h"
#include "fetch/auth.h"
#include "fetch/curl_http.h"
#include "fetch/image_puller.h"
#include "fetch/reference.h"
#include "fetch/registry.h"

namespace lazypull::cli {
namespace {

CommandSpec Spec() {
  CommandSpec s = {
      "pull",
      "IMAGE_REF DIR [--platform OS/ARCH] [--plain-http] ...",
      "Pull an image and unpack its root filesystem into DIR.",
      "IMAGE_REF is [registry[:port]/]repository[:tag|@sha256:digest]; short\n"
      "names are Docker Hub's (alpine = docker.io/library/alpine:latest).\n"
      "Layers are downloaded in parallel, each blob checked against its\n"
      "digest and each layer against the config's diff_id, unpacked as it\n"
      "streams and applied in order (whiteouts and opaque directories\n"
      "honoured). DIR must be absent or empty; it is filled only once every\n"
      "layer is in, so a failed pull leaves it as it was.\n\n"
      "Credentials come from $DOCKER_CONFIG/config.json (~/.docker), then\n"
      "Podman's: $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/\n"
      "auth.json (/run/containers/$UID/auth.json without XDG_RUNTIME_DIR)\n"
      "and ~/.config/containers/auth.json; credential helpers included.\n"
      "Mirrors and per-host TLS come from --hosts-dir.",
      {"IMAGE_REF", "DIR"},
      NetworkFlags(),
  };
  s.flags.push_back({"parallel", "N", "layers fetched at once (default 3)"});
  s.flags.push_back(
      {"no-same-owner", "", "do not apply owners (default when not root)"});
  return s;
}

}  // namespace

int PullMain(int argc, char** argv) {
  int code;
  const CommandSpec spec = Spec();
  std::optional<ParsedArgs> args = ParseOrExit(spec, argc, argv, &code);
  if (!args) return code;
  absl::StatusOr<ImageReference> ref =
      ImageReference::Parse(args->positionals[0]);
  if (!ref.ok()) return Fail("pull", ref.status());
  const std::string dir = args->positionals[1];

  absl::StatusOr<std::unique_ptr<RegistrySession>> session =
      OpenRegistrySession(*args);
  if (!session.ok()) return Fail("pull", session.status());
  const RegistryOptions& ro = (*session)->options;
  PullOptions po;
  po.same_owner = geteuid() == 0 && !args->Has("no-same-owner");
  if (auto p = args->Get("parallel")) {
    po.parallel_layers = std::atoi(p->c_str());
    if (po.parallel_layers < 1 || po.parallel_layers > 64) {
      return Fail("pull", absl::InvalidArgumentError(
                              "--parallel must be between 1 and 64"));
    }
  }
  absl::StatusOr<std::unique_ptr<RegistryClient>> client =
      RegistryClient::Create(*ref, ro);
  if (!client.ok()) return Fail("pull", client.status());
  absl::StatusOr<PullResult> r = PullImage(client->get(), dir, po);
  if (!r.ok()) return Fail("pull", r.status());

  const double secs = std::max(absl::ToDoubleSeconds(r->elapsed), 1e-6);
  const double mb = static_cast<double>(r->compressed_bytes) / 1e6;
  std::cout << absl::StrFormat(
      "pulled %s (manifest %s) into %s\n"
      "%d layers, %d entries: %d bytes downloaded (%.1f MB; %.1f MB "
      "unpacked) in %.2f s: %.1f MB/s\n",
      r->reference, r->manifest_digest.ToString(), dir, r->layers, r->entries,
      r->compressed_bytes, mb, static_cast<double>(r->uncompressed_bytes) / 1e6,
      secs, mb / secs);
  return 0;
}

}  // namespace lazypull::cli
