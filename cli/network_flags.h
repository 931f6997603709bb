// The flags every networked command takes (pull, mount IMAGE_REF) and their
// translation into RegistryOptions: one list, one parser.
//
// Thread-safety: single-threaded use at start-up.
#ifndef LAZYPULL_CLI_NETWORK_FLAGS_H_
#define LAZYPULL_CLI_NETWORK_FLAGS_H_

#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/flags.h"
#include "fetch/auth.h"
#include "fetch/curl_http.h"
#include "fetch/registry.h"

namespace lazypull::cli {

// --ca-file, --plain-http, --insecure-skip-tls-verify, --hosts-dir,
// --platform, --http1.1, --stall-timeout, --min-speed.
std::vector<FlagSpec> NetworkFlags();

// Fills o->hosts, o->platform and the stall limits from those flags (http and
// credentials are the caller's).
absl::Status RegistryOptionsFromArgs(const ParsedArgs& args,
                                     RegistryOptions* o);

// What a networked command talks to registries with: the one HTTP engine,
// the user's credentials, and RegistryOptions from the flags whose `http`
// and `credentials` point into this object (so it must outlive their use).
struct RegistrySession {
  std::unique_ptr<CurlHttpTransport> http;
  CredentialStore credentials;
  RegistryOptions options;
};
// The HTTP engine flags of NetworkFlags() (--http1.1) applied to `http`.
void ApplyHttpFlags(const ParsedArgs& args, CurlHttpOptions* http);

// Errors: InvalidArgument for a bad flag value (a usage error); anything
// else if the HTTP engine cannot start. NetworkFlags' HTTP engine flags
// are applied to `http`.
absl::StatusOr<std::unique_ptr<RegistrySession>> OpenRegistrySession(
    const ParsedArgs& args, const CurlHttpOptions& http = {});

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_NETWORK_FLAGS_H_
