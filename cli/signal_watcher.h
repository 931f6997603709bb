// SignalWatcher: takes termination signals on a thread of its own, so that
// a process acts on one at once whatever its other threads are doing (a
// server still setting up its mount cancels the set-up's requests; a
// command running a workload cleans up its mounts), instead of dying by the
// default action with its mounts left behind.
//
// The signals must be blocked in every thread (pthread_sigmask before any
// thread is started: threads inherit the mask); the watcher takes them with
// sigwait. BlockTerminationSignals() does that for SIGINT, SIGTERM and
// SIGHUP.
//
// Thread-safety: every method may be called from any thread; callbacks run
// on the watcher's thread.
#ifndef LAZYPULL_CLI_SIGNAL_WATCHER_H_
#define LAZYPULL_CLI_SIGNAL_WATCHER_H_

#include <signal.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace lazypull::cli {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and so in every
// thread it starts from then on); returns that set.
sigset_t BlockTerminationSignals();

// Takes the signals of `sigs` for as long as it lives; the first one
// arriving is recorded (signal()) and runs the OnSignal callback.
class SignalWatcher {
 public:
  explicit SignalWatcher(const sigset_t& sigs);
  // Stops taking signals (a signal arriving after this is the default
  // action's again, once unblocked).
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  // Runs `f` on the watcher thread when a signal arrives (at once if one
  // already has). Replaces any earlier callback.
  // Returns only when no earlier callback is running: OnSignal(nullptr)
  // before what a callback uses goes away.
  void OnSignal(std::function<void()> f);
  // The signal taken, 0 before one.
  int signal() const;
  // Blocks until a signal arrives; returns it.
  int Wait();

 private:
  void Run();

  const sigset_t sigs_;
  std::mutex cb_mu_;  // held while a callback runs or is replaced
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> on_signal_;
  int sig_ = 0;
  bool closing_ = false;
  std::thread thread_;  // last: starts once the rest is set
};

}  // namespace lazypull::cli

#endif  // LAZYPULL_CLI_SIGNAL_WATCHER_H_
