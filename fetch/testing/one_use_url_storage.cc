#include "fetch/testing/one_use_url_storage.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lazypull::testing {

absl::StatusOr<std::unique_ptr<OneUseUrlStorage>> OneUseUrlStorage::Start(
    std::string blob, size_t cut_after) {
  std::unique_ptr<OneUseUrlStorage> s(
      new OneUseUrlStorage(std::move(blob), cut_after));
  OneUseUrlStorage* self = s.get();
  absl::StatusOr<std::unique_ptr<LoopbackHttpServer>> server =
      LoopbackHttpServer::Start([self](const TestRequest& q, TestResponse* r) {
        self->Handle(q, r);
      });
  if (!server.ok()) return server.status();
  s->server_ = *std::move(server);
  return s;
}

std::string OneUseUrlStorage::host() const {
  return absl::StrCat("127.0.0.1:", server_->port());
}

void OneUseUrlStorage::Reset() {
  absl::MutexLock l(&mu_);
  used_.clear();
  tokens_ = 0;
  registry_hits_ = 0;
}

void OneUseUrlStorage::Handle(const TestRequest& q, TestResponse* r) {
  if (absl::StartsWith(q.path, "/v2/")) {
    ++registry_hits_;
    r->status = 307;
    r->headers.push_back(
        {"Location", absl::StrCat("/store?t=", tokens_.fetch_add(1))});
    return;
  }
  const std::string t = q.query.count("t") ? q.query.at("t") : "";
  {
    absl::MutexLock l(&mu_);
    if (!used_.insert(t).second) {
      r->status = 403;
      r->body = "<Error><Code>AccessDenied</Code></Error>";
      return;
    }
  }
  uint64_t a = 0, b = blob_.size() - 1;
  auto range = q.headers.find("range");
  if (range != q.headers.end()) {
    std::vector<std::string> ab = absl::StrSplit(range->second.substr(6), '-');
    if (ab.size() != 2 || !absl::SimpleAtoi(ab[0], &a) ||
        !absl::SimpleAtoi(ab[1], &b) || a > b || b >= blob_.size()) {
      r->status = 416;
      return;
    }
    r->status = 206;
    r->headers.push_back({"Content-Range", absl::StrCat("bytes ", a, "-", b,
                                                        "/", blob_.size())});
  }
  r->body = blob_.substr(a, b - a + 1);
  if (t == "0") r->truncate_after = cut_after_;  // the first answer breaks off
}

}  // namespace lazypull::testing
