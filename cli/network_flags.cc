#include "cli/network_flags.h"

#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "core/status_macros.h"

namespace lazypull::cli {

std::vector<FlagSpec> NetworkFlags() {
  return {
      {"ca-file", "FILE",
       "also trust the CA certificates in this PEM file (the system's are "
       "always trusted)"},
      {"plain-http", "", "talk plain HTTP to the image's registry"},
      {"insecure-skip-tls-verify", "",
       "do not verify the TLS certificate of the image's registry"},
      {"hosts-dir", "DIR",
       "containerd-style per-host settings, DIR/<host[:port]>/hosts.toml "
       "(default /etc/containerd/certs.d)"},
      {"platform", "OS/ARCH[/VARIANT]",
       "the platform to pick from a multi-platform image (default: this "
       "machine's)"},
      {"http1.1", "",
       "use HTTP/1.1 connection pools even where HTTP/2 is offered"},
      {"stall-timeout", "SECONDS",
       "a transfer whose body averages under --min-speed for this long is "
       "given up and retried, a download resuming where it stopped (default "
       "30)"},
      {"min-speed", "BYTES",
       "bytes per second a transfer must average over --stall-timeout "
       "(default 1K; 1: only a transfer making no progress at all stalls)"},
  };
}

absl::Status RegistryOptionsFromArgs(const ParsedArgs& args,
                                     RegistryOptions* o) {
  if (auto ca = args.Get("ca-file")) {
    if (access(ca->c_str(), R_OK) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--ca-file ", *ca, ": cannot read it"));
    }
    o->hosts.ca_files.push_back(*ca);
  }
  o->hosts.plain_http = args.Has("plain-http");
  o->hosts.skip_verify = args.Has("insecure-skip-tls-verify");
  o->hosts.hosts_dir = args.GetOr("hosts-dir", "/etc/containerd/certs.d");
  if (auto p = args.Get("platform")) {
    absl::StatusOr<Platform> pl = Platform::Parse(*p);
    if (!pl.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--platform: ", pl.status().message()));
    }
    o->platform = *pl;
  }
  if (auto v = args.Get("stall-timeout")) {
    int secs;
    if (!absl::SimpleAtoi(*v, &secs) || secs < 1 || secs > 3600) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--stall-timeout takes seconds from 1 to 3600, not \"", *v, "\""));
    }
    o->stall_timeout = absl::Seconds(secs);
  }
  if (auto v = args.Get("min-speed")) {
    absl::StatusOr<uint64_t> n = ParseByteSize(*v);
    if (!n.ok() || *n == 0 || *n > (uint64_t{1} << 30)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--min-speed takes bytes per second from 1 to 1G, not \"", *v, "\""));
    }
    o->stall_bytes_per_second = *n;
  }
  return absl::OkStatus();
}

void ApplyHttpFlags(const ParsedArgs& args, CurlHttpOptions* http) {
  if (args.Has("http1.1")) http->http2 = false;
}

absl::StatusOr<std::unique_ptr<RegistrySession>> OpenRegistrySession(
    const ParsedArgs& args, const CurlHttpOptions& http) {
  auto s = std::make_unique<RegistrySession>();
  RETURN_IF_ERROR(RegistryOptionsFromArgs(args, &s->options));
  CurlHttpOptions h = http;
  ApplyHttpFlags(args, &h);
  ASSIGN_OR_RETURN(s->http, CurlHttpTransport::Create(h));
  s->options.http = s->http.get();
  s->options.credentials = &s->credentials;
  return s;
}

}  // namespace lazypull::cli
