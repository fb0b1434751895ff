#include "registry.h"

#include <map>
#include <mutex>

#include "tpcomm/error.h"

namespace tpcomm::binding {
namespace {

std::mutex& mu() {
  static std::mutex m;
  return m;
}
// Never destroyed: the communicators are released from Python (tpcomm.shutdown(), also run at interpreter exit) while
// CUDA and the interpreter are alive, not by a static destructor after both are gone.
std::map<std::string, GroupEntry>& table() {
  static auto* t = new std::map<std::string, GroupEntry>();
  return *t;
}

}  // namespace

void register_group(const std::string& name, std::shared_ptr<Communicator> comm, const std::string& owner) {
  if (name.empty()) throw Error(ErrorCode::kInvalidArgument, "group_name: must not be empty");
  if (!comm) throw Error(ErrorCode::kInvalidArgument, "comm: null communicator");
  std::lock_guard<std::mutex> lock(mu());
  auto it = table().find(name);
  if (it != table().end() && it->second.comm != comm)
    throw Error(ErrorCode::kInvalidArgument, "group_name: '" + name + "' already names another tpcomm communicator");
  table()[name] = GroupEntry{std::move(comm), owner};
}

bool unregister_group(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu());
  return table().erase(name) > 0;
}

void unregister_comm(const Communicator* comm) {
  std::lock_guard<std::mutex> lock(mu());
  for (auto it = table().begin(); it != table().end();) {
    if (it->second.comm.get() == comm)
      it = table().erase(it);
    else
      ++it;
  }
}

GroupEntry find_group(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu());
  auto it = table().find(name);
  return it == table().end() ? GroupEntry{} : it->second;
}

std::shared_ptr<Communicator> group_comm(const std::string& name) {
  {
    std::lock_guard<std::mutex> lock(mu());
    auto it = table().find(name);
    if (it != table().end()) return it->second.comm;
  }
  throw Error(ErrorCode::kInvalidArgument,
              "group_name: no tpcomm communicator for group '" + name +
                  "' (create one first: tpcomm.init(group) for a torch.distributed group, or tpcomm.loopback_world(n))");
}

std::vector<std::string> group_names() {
  std::lock_guard<std::mutex> lock(mu());
  std::vector<std::string> names;
  for (const auto& kv : table()) names.push_back(kv.first);
  return names;
}

}  // namespace tpcomm::binding
