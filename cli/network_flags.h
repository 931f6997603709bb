// The flags every networked command takes (pull, mount IMAGE_REF) and their
// translation into RegistryOptions: one list, one parser.
//
// Thread-safety: single-threaded use at start-up.
#ifndef LAZYPULL_CLI_NETWORK_FLAGS_H_
#define LAZYPULL_CLI_NETWORK_FLAGS_H_

#include <vector>

#include "absl/status/status.h"
#include "cli/flags.h"
#include "fetch/registry.h"

namespace lazypull::cli {

// --ca-file, --plain-http, --insecure-skip-tls-verify, --hosts-dir,
// --platform.
std::vector<FlagSpec> NetworkFlags();

// Fills o->hosts and o->platform from those flags (http and credentials are
// the caller's).
absl::Status RegistryOptionsFromArgs(const ParsedArgs& args,
                                     RegistryOptions* o);

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_NETWORK_FLAGS_H_
