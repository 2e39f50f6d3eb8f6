// Minimal work sharing over std::thread: items are handed out in chunks from an atomic
// counter, so uneven items (long and short sequences) balance themselves.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace fk {

// Most worker threads one call may ask for (the Python side rejects more).
constexpr int kMaxThreads = 1024;

// threads <= 0 means "all hardware threads" (at most kMaxThreads).
inline int resolve_threads(int threads) {
  if (threads > 0) return threads;
  const unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : static_cast<int>(std::min<unsigned>(hc, kMaxThreads));
}

// Calls fn(worker_index, begin, end) over [0, n) in chunks of `chunk`. Runs inline when one
// thread suffices. The first exception thrown by any worker is rethrown after all join.
template <class Fn>
void parallel_for(int64_t n, int threads, int64_t chunk, Fn&& fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  const int t = static_cast<int>(std::min<int64_t>(resolve_threads(threads), n_chunks));
  if (t <= 1) {
    fn(0, int64_t{0}, n);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&](int w) {
    try {
      while (true) {
        const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
        if (c >= n_chunks) break;
        const int64_t begin = c * chunk;
        fn(w, begin, std::min(n, begin + chunk));
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next.store(n_chunks);  // stop handing out work
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  std::string start_error;
  for (int w = 1; w < t; ++w) {
    try {
      pool.emplace_back(worker, w);
    } catch (const std::system_error& e) {
      // The OS refused another thread: stop the ones running, then report (never terminate).
      start_error = "could not start worker thread " + std::to_string(w + 1) + " of " + std::to_string(t) +
                    " (" + e.what() + "); pass fewer threads";
      next.store(n_chunks);
      break;
    }
  }
  if (start_error.empty()) worker(0);
  for (auto& th : pool) th.join();
  if (!start_error.empty()) throw std::runtime_error(start_error);
  if (error) std::rethrow_exception(error);
}

}  // namespace fk
