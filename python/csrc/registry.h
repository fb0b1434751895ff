// Group name -> communicator, shared by the torch ops (which name their group with a string, as torch.ops.symm_mem
// does) and the Python API that creates the communicators. A torch.distributed group registers under its
// group_name; each rank of a loopback world under its own name (all ranks live in one process).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tpcomm/communicator.h"

namespace tpcomm::binding {

struct GroupEntry {
  std::shared_ptr<Communicator> comm;
  // Who owns the NCCL communicator underneath: "torch" (adopted from the ProcessGroup; torch destroys it),
  // "tpcomm" (created by tpcomm from an ncclUniqueId broadcast over the group), "loopback" (no NCCL).
  std::string owner;
};

// Throws kInvalidArgument("group_name: ...") when `name` is empty or already names another communicator.
void register_group(const std::string& name, std::shared_ptr<Communicator> comm, const std::string& owner);
// Removes `name` (no-op when absent); returns whether it was there.
bool unregister_group(const std::string& name);
// Removes every name that points at `comm`.
void unregister_comm(const Communicator* comm);
// nullptr-comm entry when absent.
GroupEntry find_group(const std::string& name);
// The communicator of `name`; throws kInvalidArgument("group_name: ...") naming how to create one when absent.
std::shared_ptr<Communicator> group_comm(const std::string& name);
std::vector<std::string> group_names();

}  // namespace tpcomm::binding
