// libtorch's own c10d for src/torch/distributed/mod.rs (tch has no bindings): the TCPStore rendezvous
// and one ProcessGroupGloo (or ProcessGroupNCCL with the `nccl` feature), set up with the store
// prefixes of torch.distributed.init_process_group ("default_pg" -> "0/" -> "cpu/" | "cuda/"),
// so a Rust rank and a Python rank can share a group. Collectives take the `at::Tensor*` that
// tch's `as_mut_ptr()` gives and wait for completion. mae's own keys (each rank's Gloo address,
// the heartbeats that tell which rank was lost) sit beside them under "mae/". Every entry point
// catches C++ exceptions: status 0 is success, otherwise mae_c10d_last_error() says what failed.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MAE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

thread_local std::string last_error;

struct Store {
  c10::intrusive_ptr<c10d::Store> tcp;  // the TCPStore itself
};

struct Group {
  c10::intrusive_ptr<c10d::Store> store;  // the "default_pg" prefix store
  c10::intrusive_ptr<c10d::Backend> backend;
};

template <typename F>
int guarded(F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();  // the message, not libtorch's C++ stack
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return 1;
}

void wait(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
}

}  // namespace

extern "C" {

const char* mae_c10d_last_error() {
  return last_error.c_str();
}

int mae_c10d_has_nccl() {
#ifdef MAE_C10D_NCCL
  return 1;
#else
  return 0;
#endif
}

// The TCPStore of `init_process_group(backend, init_method="tcp://addr:port", timeout)`.
// `is_server`: rank 0 hosts the TCPStore (and waits for all ranks) unless torchrun's agent
// already does (TORCHELASTIC_USE_AGENT_STORE), as torch.distributed's `_create_c10d_store`.
int mae_c10d_store(
    const char* addr,
    int port,
    int world_size,
    int is_server,
    int64_t timeout_ms,
    void** out) {
  return guarded([&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world_size);
    opts.waitWorkers = true;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    opts.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), opts);
    *out = new Store{tcp};
  });
}

// `store.add(key, delta)` on the TCPStore itself (no "default_pg" prefix): mae's own keys.
int mae_c10d_store_add(void* store, const char* key, int64_t delta, int64_t* value) {
  return guarded([&] { *value = static_cast<Store*>(store)->tcp->add(key, delta); });
}

// `store.set(key, value)` of a string.
int mae_c10d_store_set(void* store, const char* key, const char* value) {
  return guarded([&] {
    std::string v(value);
    static_cast<Store*>(store)->tcp->set(key, std::vector<uint8_t>(v.begin(), v.end()));
  });
}

// `store.get(key)` if the key is set now (no waiting): `*len` bytes into `buf` (truncated to
// `cap`), or `*len = -1`.
int mae_c10d_store_get_if_set(void* store, const char* key, char* buf, int64_t cap, int64_t* len) {
  return guarded([&] {
    auto& tcp = static_cast<Store*>(store)->tcp;
    *len = -1;
    if (tcp->check({key})) {
      auto v = tcp->get(key);
      *len = static_cast<int64_t>(v.size());
      std::memcpy(buf, v.data(), std::min<std::size_t>(v.size(), static_cast<std::size_t>(cap)));
    }
  });
}

// One heartbeat of `rank`: its counter "mae/alive/<rank>" + 1, then every rank's counter into
// `counts` (all counters exist: each rank adds 1 before the first barrier).
int mae_c10d_store_beat(void* store, int rank, int world_size, int64_t* counts) {
  return guarded([&] {
    auto& tcp = static_cast<Store*>(store)->tcp;
    tcp->add("mae/alive/" + std::to_string(rank), 1);
    std::vector<std::string> keys;
    for (int r = 0; r < world_size; r++) {
      keys.push_back("mae/alive/" + std::to_string(r));
    }
    auto values = tcp->multiGet(keys);
    for (int r = 0; r < world_size; r++) {
      counts[r] = std::stoll(std::string(values[r].begin(), values[r].end()));
    }
  });
}

void mae_c10d_store_free(void* store) {
  delete static_cast<Store*>(store);
}

// The rest of `init_process_group`: the group over the store's "default_pg" prefix.
// `gloo_host`: empty, Gloo's default device (GLOO_SOCKET_IFNAME, else this machine's host
// name); otherwise the address (or host name) the Gloo device binds and advertises.
// `cuda_device`: with NCCL, `torch.cuda.set_device(args.gpu)` first (ignored by Gloo).
int mae_c10d_group(
    void* store,
    const char* backend,
    int rank,
    int world_size,
    int64_t timeout_ms,
    int cuda_device,
    const char* gloo_host,
    void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Store> pg_store =
        c10::make_intrusive<c10d::PrefixStore>("default_pg", static_cast<Store*>(store)->tcp);
    auto group_store = c10::make_intrusive<c10d::PrefixStore>("0/", pg_store);
    auto g = std::make_unique<Group>();
    g->store = pg_store;
    std::string name(backend);
    if (name == "gloo") {
      auto prefix = c10::make_intrusive<c10d::PrefixStore>("cpu/", group_store);
      std::string host(gloo_host);
      c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options;
      if (host.empty()) {
        options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      } else {
        options = c10d::ProcessGroupGloo::Options::create(timeout);
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
      }
      g->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
          prefix, rank, world_size, options);
    } else if (name == "nccl") {
#ifdef MAE_C10D_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(cuda_device));
      auto prefix = c10::make_intrusive<c10d::PrefixStore>("cuda/", group_store);
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      g->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          prefix, rank, world_size, options);
#else
      throw std::runtime_error(
          "this build has no NCCL: rebuild with `cargo build --release --features nccl`");
#endif
    } else {
      throw std::runtime_error("unknown backend " + name + " (expected gloo or nccl)");
    }
    g->backend->setSequenceNumberForGroup();
    *out = g.release();
  });
}

int mae_c10d_allreduce(void* group, at::Tensor* tensor, int average) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    wait(g->backend->allreduce(tensors, opts));
    if (average != 0) {
      tensor->div_(g->backend->getSize());
    }
  });
}

int mae_c10d_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    wait(g->backend->broadcast(tensors, opts));
  });
}

int mae_c10d_barrier(void* group) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    wait(g->backend->barrier(c10d::BarrierOptions()));
  });
}

// setup_for_distributed(is_master=False): what this rank prints goes nowhere (stderr stays).
int mae_c10d_silence_stdout() {
  std::fflush(stdout);
  int fd = open("/dev/null", O_WRONLY);
  if (fd < 0) {
    return 1;
  }
  int rc = dup2(fd, 1) < 0 ? 1 : 0;
  close(fd);
  return rc;
}

void mae_c10d_destroy(void* group) {
  delete static_cast<Group*>(group);
}

}  // extern "C"
