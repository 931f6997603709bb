// lazypull-proxy: the link emulator and fault injector in front of a
// registry, for scripts and benchmarks (tests use the libraries in-process).
//
//   lazypull-proxy --upstream 127.0.0.1:5000 --rtt 20ms --bw 100mbit
//   lazypull-proxy --upstream 127.0.0.1:5000 --faults rules.txt [--rtt ...]
//
// Prints "listening 127.0.0.1:PORT" (and "blob-storage ..." / "control ..."
// lines) on stdout once ready, then runs until SIGINT or SIGTERM.
#include <signal.h>
#include <stdio.h>

#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "cli/flags.h"
#include "core/log.h"
#include "core/status_macros.h"
#include "proxy/control_server.h"
#include "proxy/fault_proxy.h"
#include "proxy/fault_rules.h"
#include "proxy/link_model.h"
#include "proxy/link_proxy.h"
#include "proxy/tcp_socket.h"

namespace lazypull::proxy {
namespace {

const cli::CommandSpec& Spec() {
  static const cli::CommandSpec* spec = new cli::CommandSpec{
      "lazypull-proxy",
      "--upstream HOST:PORT [--rtt DURATION] [--bw RATE] [--faults FILE]",
      "emulate a network link and inject HTTP faults in front of a registry",
      "Without --faults: a TCP proxy (TLS and HTTP/2 pass through) whose\n"
      "connections all share one emulated link: --rtt is the round-trip\n"
      "delay (rtt/2 each way), --bw the rate of each direction, one bounded\n"
      "queue per direction.\n"
      "\n"
      "With --faults FILE: an HTTP/1.1 reverse proxy (plain HTTP upstream)\n"
      "applying the rules in FILE (format: proxy/fault_rules.h), with a\n"
      "built-in blob storage for redirect rules; --rtt/--bw then emulate\n"
      "the link between this proxy (and its blob storage) and the upstream.\n"
      "\n"
      "Stdout gets 'listening 127.0.0.1:PORT', then 'blob-storage\n"
      "127.0.0.1:PORT' (with --faults) and 'control 127.0.0.1:PORT' (with\n"
      "--control-port). The control port answers GET /counters (JSON with\n"
      "\"link\" and/or \"faults\" objects), POST /reset, and with --faults\n"
      "POST /rules (body: a rule file replacing the rules).",
      {},
      {
          {"upstream", "HOST:PORT", "the server to forward to (required)"},
          {"port", "N", "listening port on 127.0.0.1 (default 0: any free)"},
          {"rtt", "DURATION", "round-trip delay, e.g. 20ms (default 0)"},
          {"bw", "RATE",
           "rate per direction: 100mbit, 1gbit, ... (default "
           "unlimited)"},
          {"queue", "BYTES",
           "link queue per direction (default 64 KiB or "
           "5 ms at the rate)"},
          {"no-handshake-rtt", "", "new connections do not pay one RTT"},
          {"faults", "FILE", "fault rules; turns on the HTTP fault proxy"},
          {"blob-port", "N", "blob storage port (default 0: any free)"},
          {"control-port", "N", "control interface port (0: any free)"},
      }};
  return *spec;
}

absl::StatusOr<int> PortFlag(const cli::ParsedArgs& args,
                             const std::string& name) {
  int port = 0;
  std::string v = args.GetOr(name, "0");
  if (!absl::SimpleAtoi(v, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, ": bad port \"", v, "\""));
  }
  return port;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void Announce(absl::string_view what, int port) {
  std::cout << what << " 127.0.0.1:" << port << std::endl;  // flushed
}

absl::Status Run(const cli::ParsedArgs& args) {
  std::string upstream_host;
  int upstream_port = 0;
  if (!args.Has("upstream")) {
    return absl::InvalidArgumentError("--upstream HOST:PORT is required");
  }
  RETURN_IF_ERROR(
      ParseHostPort(*args.Get("upstream"), &upstream_host, &upstream_port));
  LinkProxy::Options link;
  if (!absl::ParseDuration(args.GetOr("rtt", "0"), &link.rtt) ||
      link.rtt < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--rtt: bad duration \"", args.GetOr("rtt", ""), "\" (e.g. 20ms)"));
  }
  ASSIGN_OR_RETURN(link.bits_per_second, ParseBandwidth(args.GetOr("bw", "0")));
  if (args.Has("queue") &&
      !absl::SimpleAtoi(*args.Get("queue"), &link.queue_bytes)) {
    return absl::InvalidArgumentError("--queue: expected a byte count");
  }
  link.handshake_rtt = !args.Has("no-handshake-rtt");
  ASSIGN_OR_RETURN(int port, PortFlag(args, "port"));
  ASSIGN_OR_RETURN(int blob_port, PortFlag(args, "blob-port"));

  std::unique_ptr<LinkProxy> link_proxy;
  std::unique_ptr<FaultProxy> fault_proxy;
  const bool faults = args.Has("faults");
  const bool emulate =
      link.rtt > absl::ZeroDuration() || link.bits_per_second > 0 || !faults;
  if (emulate) {
    link.upstream_host = upstream_host;
    link.upstream_port = upstream_port;
    // Behind the fault proxy when there is one, so that its upstream and
    // blob-storage traffic both cross the link.
    link.listen_port = faults ? 0 : port;
    ASSIGN_OR_RETURN(link_proxy, LinkProxy::Start(link));
  }
  if (faults) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(*args.Get("faults")));
    ASSIGN_OR_RETURN(std::vector<FaultRule> rules, ParseFaultRules(text));
    FaultProxy::Options fo;
    fo.upstream_host = link_proxy ? "127.0.0.1" : upstream_host;
    fo.upstream_port = link_proxy ? link_proxy->port() : upstream_port;
    fo.listen_port = port;
    fo.blob_port = blob_port;
    ASSIGN_OR_RETURN(fault_proxy, FaultProxy::Start(fo, std::move(rules)));
  }

  std::unique_ptr<ControlServer> control;
  if (args.Has("control-port")) {
    ASSIGN_OR_RETURN(int control_port, PortFlag(args, "control-port"));
    LinkProxy* lp = link_proxy.get();
    FaultProxy* fp = fault_proxy.get();
    std::map<std::string, ControlServer::Handler> routes;
    routes["GET /counters"] = [lp, fp](const std::string&) {
      std::string json = "{";
      if (lp != nullptr)
        absl::StrAppend(&json, "\"link\":", lp->CountersJson());
      if (fp != nullptr) {
        absl::StrAppend(&json, lp != nullptr ? "," : "",
                        "\"faults\":", fp->CountersJson());
      }
      return ControlServer::Reply{200, json + "}\n"};
    };
    routes["POST /reset"] = [lp, fp](const std::string&) {
      if (lp != nullptr) lp->ResetCounters();
      if (fp != nullptr) fp->ResetCounters();
      return ControlServer::Reply{200, "{}\n"};
    };
    if (fp != nullptr) {
      routes["POST /rules"] = [fp](const std::string& body) {
        absl::StatusOr<std::vector<FaultRule>> rules = ParseFaultRules(body);
        absl::Status st =
            rules.ok() ? fp->SetRules(std::move(*rules)) : rules.status();
        if (!st.ok()) {
          return ControlServer::Reply{400, absl::StrCat(st.message(), "\n")};
        }
        return ControlServer::Reply{200, "{}\n"};
      };
    }
    ASSIGN_OR_RETURN(control,
                     ControlServer::Start(control_port, std::move(routes)));
  }

  Announce("listening", fault_proxy ? fault_proxy->port() : link_proxy->port());
  if (fault_proxy) Announce("blob-storage", fault_proxy->blob_port());
  if (control) Announce("control", control->port());
  LogInfo("lazypull-proxy: upstream ", upstream_host, ":", upstream_port,
          link_proxy ? absl::StrCat(", rtt ", absl::FormatDuration(link.rtt),
                                    ", ", link.bits_per_second, " bit/s")
                     : "",
          fault_proxy ? absl::StrCat(", ", fault_proxy->counters().rules.size(),
                                     " fault rules")
                      : "");

  // The signals were blocked in main() before any thread started, so every
  // thread inherits the mask and only sigwait() sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int sig = 0;
  sigwait(&set, &sig);
  LogInfo("lazypull-proxy: signal ", sig, ", stopping");
  if (control) control->Stop();
  if (fault_proxy) fault_proxy->Stop();
  if (link_proxy) link_proxy->Stop();
  return absl::OkStatus();
}

}  // namespace
}  // namespace lazypull::proxy

// cli::Usage() speaks of "lazypull NAME" subcommands; this is a binary.
std::string ProxyUsage(const lazypull::cli::CommandSpec& spec) {
  std::string s = lazypull::cli::Usage(spec);
  absl::string_view prefix = "usage: lazypull ";
  if (absl::StartsWith(s, prefix)) s.erase(7, prefix.size() - 7);
  return s;
}

int main(int argc, char** argv) {
  using namespace lazypull;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);

  const cli::CommandSpec& spec = proxy::Spec();
  absl::StatusOr<cli::ParsedArgs> args = cli::Parse(spec, argc, argv);
  if (!args.ok()) {
    std::cerr << "lazypull-proxy: " << args.status().message() << "\n\n"
              << ProxyUsage(spec);
    return 2;
  }
  if (args->help) {
    std::cout << ProxyUsage(spec);
    return 0;
  }
  absl::Status st = proxy::Run(*args);
  if (!st.ok()) {
    std::cerr << "lazypull-proxy: " << st.message() << "\n";
    return absl::IsInvalidArgument(st) ? 2 : 1;
  }
  return 0;
}
