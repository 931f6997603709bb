#include "cli/signal_watcher.h"

#include <pthread.h>

namespace lazypull::cli {

sigset_t BlockTerminationSignals() {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  return sigs;
}

SignalWatcher::SignalWatcher(const sigset_t& sigs)
    : sigs_(sigs), thread_([this] { Run(); }) {}

SignalWatcher::~SignalWatcher() {
  {
    std::lock_guard<std::mutex> l(mu_);
    closing_ = true;
  }
  // (A no-op if the thread already took a signal and returned.)
  pthread_kill(thread_.native_handle(), SIGHUP);
  thread_.join();
}

void SignalWatcher::OnSignal(std::function<void()> f) {
  std::lock_guard<std::mutex> cb(cb_mu_);
  bool now;
  {
    std::lock_guard<std::mutex> l(mu_);
    on_signal_ = std::move(f);
    now = sig_ != 0 && on_signal_;
  }
  if (now) on_signal_();
}

int SignalWatcher::signal() const {
  std::lock_guard<std::mutex> l(mu_);
  return sig_;
}

int SignalWatcher::Wait() {
  std::unique_lock<std::mutex> l(mu_);
  cv_.wait(l, [&] { return sig_ != 0; });
  return sig_;
}

void SignalWatcher::Run() {
  int sig = 0;
  while (sigwait(&sigs_, &sig) != 0) {
  }
  {
    std::lock_guard<std::mutex> cb(cb_mu_);
    std::function<void()> f;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (closing_) return;
      sig_ = sig;
      f = on_signal_;
    }
    if (f) f();
  }
  cv_.notify_all();
}

}  // namespace lazypull::cli
